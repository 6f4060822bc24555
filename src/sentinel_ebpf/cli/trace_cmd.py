"""``sentinel-ebpf trace`` (work in progress)."""
