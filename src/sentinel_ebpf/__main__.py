from sentinel_ebpf.cli import main

main()
