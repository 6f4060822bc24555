"""Hotspot scale: how many distinct parameter values the kernel tracks, and the kernel memory it takes.

usage: sudo python bench/hotspot_scale.py [--keys N] [--capacity N] [--json]

Loads the inbound programs with the hotspot value LRU (``hot_values``) sized ``--capacity`` entries
(``InboundDataplane(hot_values_max=...)``), one TCP resource on port 9000 with a hotspot QPS rule on
``remote_ip`` (a threshold no client reaches), and sends ``--keys`` SYNs through ``tc_ingress`` with
BPF_PROG_TEST_RUN, each from a distinct client address (10.0.0.0/8, then 172.16.0.0/12 upwards), one run
per address. Nothing is filled from user space: every value is hashed and inserted by the program on
the real ingress path (parse, port table, hotspot check, in-flight tracking). The frames' checksums are
not recomputed after the address is patched (the program does not read them).

Printed: values sent, values the LRU still holds (an LRU map may evict before it is full: the kernel
keeps per-CPU free lists), time per SYN, and the kernel memory of every map of the object as the kernel
accounts it (``memlock`` in /proc/self/fdinfo of each map fd, which is what ``bpftool map`` shows),
against the issue's budget of 128 MiB for 1,000,000 keys.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "dataplane"))

from packets import SYN, SYN_OPTIONS, tcp_frame

from sentinel_ebpf.inbound import InboundDataplane
from sentinel_ebpf.rules import load_text

CLONE_NEWNET = 0x40000000
PORT = 9000
BUDGET_BYTES = 128 * 1024 * 1024
RULES = f"""
resources:
  - {{name: conns, match: {{protocol: tcp, port: {PORT}}}}}
hotSpotParamRules:
  - {{resource: conns, paramKey: remote_ip, metricType: 1, threshold: 1000000000, durationInSec: 1}}
"""


def private_netns() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=10)


def memlock_bytes(fd: int) -> int:
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        if line.startswith("memlock:"):
            return int(line.split()[1])
    return 0


def client_addr(i: int) -> bytes:
    """The i-th distinct IPv4 client address: 10.0.0.1 upwards (16.7 M before leaving 10/8)."""
    return (0x0A000001 + i).to_bytes(4, "big")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--capacity", type=int, default=1_048_576, help="hot_values max_entries")
    ap.add_argument("--no-netns", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("hotspot_scale.py needs root (BPF)")
    if not args.no_netns:
        private_netns()
    template = bytearray(tcp_frame("10.0.0.1", "127.0.0.1", 40000, PORT, flags=SYN, options=SYN_OPTIONS))
    saddr_off = 14 + 12
    progress = max(1, args.keys // 10)
    with InboundDataplane(hot_values_max=args.capacity) as dp:
        dp.apply(dp.compile(load_text(RULES)))
        prog = dp.obj.program("tc_ingress")
        t0 = time.perf_counter()
        kernel_ns = 0
        for i in range(args.keys):
            template[saddr_off : saddr_off + 4] = client_addr(i)
            kernel_ns += prog.test_run(bytes(template)).duration_ns
            if (i + 1) % progress == 0:
                print(f"  {i + 1:,} SYNs sent", file=sys.stderr, flush=True)
        wall = time.perf_counter() - t0
        hot = dp.obj.map("hot_values")
        held = sum(1 for _ in hot)
        maps = {name: memlock_bytes(m.fd) for name, m in dp.obj.maps.items()}
        stats = dp.resource_stats()[0]
    hot_bytes = maps["hot_values"]
    total = sum(maps.values())
    print("command: " + " ".join(["python", *sys.argv]))
    print(f"kernel: {os.uname().release}, cpus: {os.cpu_count()}")
    print(f"hot_values capacity (max_entries)      {args.capacity:>14,}")
    print(f"distinct client addresses sent         {args.keys:>14,}")
    print(f"SYNs passed (resource counter)         {stats.passed:>14,}")
    print(
        f"values tracked in hot_values (LRU)     {held:>14,}  ({100 * held / args.keys:.2f}% of those sent)"
    )
    print(
        f"hot_values kernel memory               {hot_bytes / 2**20:>11.1f} MiB  ({hot_bytes / args.capacity:.0f} B per entry of capacity)"
    )
    print(
        f"budget for 1,000,000 keys              {BUDGET_BYTES / 2**20:>11.1f} MiB  -> {'within' if hot_bytes <= BUDGET_BYTES else 'OVER'}"
    )
    print(f"all maps of the inbound object         {total / 2**20:>11.1f} MiB")
    print(
        f"time per SYN: {1e9 * wall / args.keys:.0f} ns wall (Python + syscall), {kernel_ns / args.keys:.0f} ns in the program"
    )
    print("kernel memory by map (memlock, MiB):")
    for name, b in sorted(maps.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<24} {b / 2**20:>9.2f}")
    if args.json:
        print(json.dumps({"keys": args.keys, "capacity": args.capacity, "tracked": held, "maps": maps}))


if __name__ == "__main__":
    main()
