"""sentinel-ebpf: Sentinel traffic governance enforced in the Linux kernel with eBPF.

Public modules: ``sentinel_ebpf.libbpf`` (thin libbpf binding), ``sentinel_ebpf.tracing`` (TCP connection
and HTTP tracers), ``sentinel_ebpf.doctor`` (kernel feature probes), ``sentinel_ebpf.rules`` (rule model and loaders),
``sentinel_ebpf.model`` (pure-Python reference model of Sentinel's algorithms).
"""

__version__ = "0.1.0"
