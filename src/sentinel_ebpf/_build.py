"""Compile the BPF C programs in ``bpf/`` into CO-RE objects.

Used by ``setup.py`` at build/install time and by ``python -m sentinel_ebpf._build`` in a checkout.
Standard library only: it runs inside pip's isolated build environment.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

BPF_DIR = Path(__file__).resolve().parent / "bpf"
VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")
CLANG_CANDIDATES = ("clang-19", "clang-18", "clang-17", "clang-16", "clang-15", "clang-14", "clang")
APT_HINT = "apt-get install clang-19 libbpf-dev bpftool"

_ARCH = {"x86_64": "x86", "aarch64": "arm64", "arm64": "arm64", "s390x": "s390", "ppc64le": "powerpc"}


class BuildError(RuntimeError):
    """The BPF objects could not be built; the message says which package is missing."""


def find_clang() -> str:
    override = os.environ.get("SENTINEL_EBPF_CLANG")
    if override:
        return override
    for name in CLANG_CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    raise BuildError(f"clang not found: BPF programs cannot be compiled ({APT_HINT})")


def _multiarch_include() -> list[str]:
    try:
        triplet = subprocess.run(
            ["gcc", "-print-multiarch"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        triplet = f"{platform.machine()}-linux-gnu"
    path = Path("/usr/include") / triplet
    return [f"-I{path}"] if path.is_dir() else []


def ensure_vmlinux_h(out_dir: Path) -> Path:
    """Dump the running kernel's BTF as C (CO-RE relocations make the objects portable)."""
    target = out_dir / "vmlinux.h"
    if target.exists() and target.stat().st_size > 0:
        return target
    bpftool = shutil.which("bpftool") or ("/usr/sbin/bpftool" if Path("/usr/sbin/bpftool").exists() else None)
    if bpftool is None:
        raise BuildError(f"bpftool not found: cannot generate vmlinux.h ({APT_HINT})")
    if not VMLINUX_BTF.exists():
        raise BuildError(
            f"{VMLINUX_BTF} missing: the build kernel has no BTF (CONFIG_DEBUG_INFO_BTF=y needed)"
        )
    dump = subprocess.run(
        [bpftool, "btf", "dump", "file", str(VMLINUX_BTF), "format", "c"], capture_output=True, check=False
    )
    if dump.returncode != 0:
        raise BuildError(f"bpftool btf dump failed: {dump.stderr.decode(errors='replace').strip()}")
    tmp = target.with_suffix(".h.tmp")
    tmp.write_bytes(dump.stdout)
    tmp.replace(target)
    return target


def compile_object(source: Path, clang: str, out_dir: Path) -> Path:
    if not Path("/usr/include/bpf/bpf_helpers.h").exists():
        raise BuildError(f"libbpf headers not found (/usr/include/bpf/bpf_helpers.h) ({APT_HINT})")
    arch = _ARCH.get(platform.machine(), platform.machine())
    obj = out_dir / (source.name[: -len(".c")] + ".o")
    cmd = [
        clang, "-g", "-O2", "-target", "bpf", f"-D__TARGET_ARCH_{arch}",
        "-Wall", "-Werror", "-Wno-unused-function",
        f"-I{out_dir}", f"-I{source.parent}", *_multiarch_include(),
        "-c", str(source), "-o", str(obj),
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BuildError(f"compiling {source.name} failed:\n{result.stderr}")
    return obj


def build_all(src_dir: Path = BPF_DIR, out_dir: Path | None = None) -> list[Path]:
    """Compile every ``*.bpf.c`` in ``src_dir``; objects land next to the sources unless told otherwise."""
    out = out_dir or src_dir
    out.mkdir(parents=True, exist_ok=True)
    clang = find_clang()
    ensure_vmlinux_h(src_dir)
    return [compile_object(src, clang, out) for src in sorted(src_dir.glob("*.bpf.c"))]


def main() -> int:
    try:
        for obj in build_all():
            print(f"built {obj}")
    except BuildError as exc:
        print(f"sentinel-ebpf: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
