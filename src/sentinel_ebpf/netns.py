"""Network namespaces other than the daemon's own: interfaces named ``IFACE@NETNS`` on the command line.

One daemon in the host's namespace can govern servers in other namespaces (a node's pods): it attaches
its TC programs to the interface inside the server's namespace, where the server's sockets can be
looked up and a refusal answered, by entering that namespace on the attaching thread for each netlink
operation (``setns(2)`` changes the calling thread's namespace only) and leaving it after. ``NETNS`` is
a name of ``ip netns`` (a file under /run/netns) or a path to a namespace file (``/proc/PID/ns/net``).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fnmatch
import os
import socket
from collections.abc import Iterator

from sentinel_ebpf.errors import SentinelError

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"


def split(name: str) -> tuple[str, str | None]:
    """``eth0@pod-a`` -> ("eth0", "pod-a"); ``eth0`` -> ("eth0", None)."""
    ifname, sep, netns = name.partition("@")
    return (ifname, netns) if sep and netns else (name, None)


def path_of(netns: str) -> str:
    return netns if "/" in netns else os.path.join(NETNS_RUN_DIR, netns)


def _setns(fd: int) -> None:
    fn = getattr(os, "setns", None)  # Python 3.12+
    if fn is not None:
        fn(fd, CLONE_NEWNET)
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def entered(netns: str | None) -> Iterator[None]:
    """This thread inside ``netns`` (None: where it is) until the block ends. OSError when the namespace
    cannot be opened or entered (gone, not a namespace, no CAP_SYS_ADMIN)."""
    if netns is None:
        yield
        return
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(path_of(netns), os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(home)  # a thread that cannot go back must not go on in another namespace
    finally:
        os.close(home)


def ifindex(name: str) -> int:
    """The ifindex of ``IFACE`` or ``IFACE@NETNS`` (in that namespace); OSError when it is not there."""
    ifname, netns = split(name)
    with entered(netns):
        return socket.if_nametoindex(ifname)


def _is_pattern(value: str) -> bool:
    return any(c in value for c in "*?[")


def _namespaces(pattern: str) -> list[str]:
    """The ``ip netns`` names a pattern matches (a name or path as it is)."""
    if "/" in pattern or not _is_pattern(pattern):
        return [pattern]
    try:
        return sorted(n for n in os.listdir(NETNS_RUN_DIR) if fnmatch.fnmatchcase(n, pattern))
    except OSError:
        return []


def present(values: list[str]) -> dict[str, int]:
    """The interfaces of other namespaces that ``IFACE@NETNS`` values name or match now (either part may
    be a pattern: ``eth0@cni-*`` is every pod's eth0): ``IFACE@NETNS`` -> ifindex in its namespace."""
    out = {}
    for value in values:
        if_pattern, ns_pattern = split(value)
        if ns_pattern is None:
            continue
        for ns in _namespaces(ns_pattern):
            try:
                with entered(ns):
                    names = socket.if_nameindex()
            except OSError:
                continue  # gone since, or not a namespace
            for index, name in names:
                if fnmatch.fnmatchcase(name, if_pattern):
                    out[f"{name}@{ns}"] = index
    return out


def check(name: str) -> None:
    """SentinelError naming what is wrong with an ``IFACE@NETNS`` value."""
    ifname, netns = split(name)
    if netns is None:
        return
    if not os.path.exists(path_of(netns)):
        raise SentinelError(
            f"-i {name}: no network namespace {netns!r} ({path_of(netns)} does not exist; see `ip netns`, "
            "or give a path such as /proc/PID/ns/net)"
        )
    try:
        ifindex(name)
    except OSError as exc:
        raise SentinelError(
            f"-i {name}: no interface {ifname!r} in network namespace {netns!r} ({exc})"
        ) from None
