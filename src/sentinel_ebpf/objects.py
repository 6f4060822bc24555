"""Where the compiled BPF objects shipped with the package live."""

from __future__ import annotations

from pathlib import Path

from sentinel_ebpf.errors import BuildMissingError

BPF_DIR = Path(__file__).resolve().parent / "bpf"


def object_path(name: str) -> Path:
    """Path of ``<name>.bpf.o``; a clear error when the package was installed without building it."""
    path = BPF_DIR / f"{name}.bpf.o"
    if not path.exists():
        raise BuildMissingError(
            f"{path.name} is not built: install clang and libbpf headers "
            "(apt-get install clang-19 libbpf-dev bpftool) and reinstall the package "
            "(pip install .), or run `python -m sentinel_ebpf._build` in a checkout"
        )
    return path
