"""Exceptions raised by sentinel-ebpf.

::

    SentinelError                    base of everything this package raises on purpose
    +-- BuildMissingError            a compiled BPF object is not installed (clang/libbpf missing at build)
    +-- LibbpfUnavailableError       libbpf.so.1 cannot be loaded
    +-- BpfError                     a libbpf/kernel operation failed: .op, .errno, .hint
        +-- BpfLoadError             object open/load failed: .log keeps libbpf's and the verifier's log
        +-- BpfAttachError           attaching a program to its hook failed
        +-- BpfMapError              a map operation failed
            +-- BpfKeyError          the key is not in the map (ENOENT); also a KeyError
"""

from __future__ import annotations

import errno as _errno
import os


class SentinelError(Exception):
    """Base class of the errors sentinel-ebpf raises on purpose."""


class BuildMissingError(SentinelError):
    """A BPF object was not built into the installed package."""


class LibbpfUnavailableError(SentinelError):
    """The system libbpf shared library could not be loaded."""


_HINTS = {
    _errno.EPERM: "needs root (CAP_BPF + CAP_NET_ADMIN/CAP_PERFMON) and a kernel that allows this program type",
    _errno.EACCES: "the verifier rejected the program; see the verifier log",
    _errno.ENOMEM: "out of memory for BPF maps (check RLIMIT_MEMLOCK on kernels before 5.11)",
    _errno.EINVAL: "the kernel does not support this operation or its arguments",
    _errno.ENOENT: "no such object (hook, map entry, pin or kernel function)",
    _errno.EEXIST: "already attached or already exists",
    _errno.EOPNOTSUPP: "not supported by this kernel or device",
    _errno.ENOTSUP: "not supported by this kernel or device",
    _errno.E2BIG: "program or map too large for this kernel",
    _errno.ESRCH: "no such kernel function or tracepoint",
    _errno.EBUSY: "the hook is busy (another program is attached exclusively)",
}


class BpfError(SentinelError):
    """A libbpf or kernel operation failed."""

    def __init__(self, op: str, err: int, hint: str | None = None) -> None:
        self.op = op
        self.errno = abs(err)
        self.hint = hint if hint is not None else _HINTS.get(self.errno, "")
        name = _errno.errorcode.get(self.errno, str(self.errno))
        message = f"{op}: {os.strerror(self.errno)} ({name})"
        if self.hint:
            message += f" ({self.hint})"
        super().__init__(message)


class BpfLoadError(BpfError):
    """Opening or loading an object failed; ``log`` holds libbpf's messages including the verifier log."""

    def __init__(self, op: str, err: int, log: str = "", hint: str | None = None) -> None:
        super().__init__(op, err, hint)
        self.log = log

    def __str__(self) -> str:
        base = super().__str__()
        if not self.log:
            return base
        tail = "\n".join(self.log.strip().splitlines()[-30:])
        return f"{base}\n--- libbpf/verifier log (last lines) ---\n{tail}"


class BpfAttachError(BpfError):
    """Attaching a program to a hook failed."""


class BpfMapError(BpfError):
    """A map operation failed."""


class BpfKeyError(BpfMapError, KeyError):
    """The key is not present in the map."""

    def __str__(self) -> str:
        return BpfError.__str__(self)
