"""``sentinel-ebpf doctor`` (work in progress)."""
