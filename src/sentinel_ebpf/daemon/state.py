"""What the daemon attached, recorded so `sentinel-ebpf down` can remove it after a crash.

BPF links (tracepoints, cgroup hooks) are released by the kernel when the process dies; TC filters and
clsact qdiscs made through netlink are not, so those are what the state file lists. It also records the
rules in force in the kernel and their resource ids, so that a daemon taking over after a crash can
adopt the maps of the programs left attached and go on counting where they are.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sentinel_ebpf import netns
from sentinel_ebpf.daemon.private_dir import open_private_dir, read_private, write_private
from sentinel_ebpf.enforce.loader import TC_HANDLE, TC_PRIORITY
from sentinel_ebpf.errors import SentinelError
from sentinel_ebpf.libbpf import TcAttachPoint, TcFilter, TcHook

DEFAULT_STATE_DIR = "/run/sentinel-ebpf"
PIN_DIR = Path("/sys/fs/bpf/sentinel-ebpf")
STATE_FILE = "state.json"


@dataclass
class Attachment:
    ifname: str
    ifindex: int
    created_qdisc: bool


@dataclass
class State:
    pid: int
    attachments: list[Attachment] = field(default_factory=list)
    # the rules in force in the kernel: {"rules": document, "ids": {name: id}, "last_id", "fingerprint"}
    inbound: dict[str, Any] | None = None

    def write(self, state_dir: str) -> Path:
        """Mode 0600 (it holds the rules), in a directory only the daemon's user controls."""
        fd = open_private_dir(state_dir)
        assert fd is not None
        try:
            write_private(fd, STATE_FILE, json.dumps(asdict(self)).encode())
        finally:
            os.close(fd)
        return Path(state_dir, STATE_FILE)

    @classmethod
    def read(cls, state_dir: str) -> State | None:
        path = Path(state_dir, STATE_FILE)
        fd = open_private_dir(state_dir, create=False)
        if fd is None:
            return None
        try:
            data = read_private(fd, STATE_FILE, path)
        finally:
            os.close(fd)
        if data is None:
            return None
        try:
            raw = json.loads(data)
            inbound = raw.get("inbound")
            if inbound is not None and not isinstance(inbound, dict):
                raise TypeError("inbound is not an object")
            return cls(int(raw["pid"]), [Attachment(**a) for a in raw.get("attachments", [])], inbound)
        except (ValueError, KeyError, TypeError) as exc:
            raise SentinelError(f"{path}: unreadable state file ({exc}); remove it") from None


def remove_state(state_dir: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        Path(state_dir, STATE_FILE).unlink()  # unlink never follows a symbolic link


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def down(state_dir: str = DEFAULT_STATE_DIR, force: bool = False) -> list[str]:
    """Remove our TC filters from every interface, the clsact qdiscs we created, and pins. Idempotent;
    returns what it removed."""
    state = State.read(state_dir)
    if state is not None and state.pid != os.getpid() and alive(state.pid) and not force:
        raise SentinelError(f"a daemon (pid {state.pid}) is running: stop it (SIGTERM) or use --force")
    removed: list[str] = []
    # this namespace's interfaces, and those of other namespaces the record names (IFACE@NETNS)
    elsewhere = netns.present(
        [a.ifname for a in state.attachments if netns.split(a.ifname)[1]] if state else []
    )
    here = [(ifname, ifindex) for ifindex, ifname in socket.if_nameindex()]
    for ifname, ifindex in [*here, *elsewhere.items()]:
        hook = TcHook(ifindex, netns.split(ifname)[1])
        for point in (TcAttachPoint.INGRESS, TcAttachPoint.EGRESS):
            if hook.has_filter(point, TC_HANDLE, TC_PRIORITY):
                TcFilter(hook, point, TC_HANDLE, TC_PRIORITY).close()
                removed.append(f"tc filter {ifname} {point.name.lower()}")
    present = {*here, *elsewhere.items()}
    for a in state.attachments if state else []:
        if a.created_qdisc and (a.ifname, a.ifindex) in present:
            hook = TcHook(a.ifindex, netns.split(a.ifname)[1])
            hook.created_qdisc = True
            hook.destroy()
            removed.append(f"clsact qdisc {a.ifname}")
    if PIN_DIR.exists():
        for pin in sorted(PIN_DIR.rglob("*"), reverse=True):
            pin.rmdir() if pin.is_dir() else pin.unlink()
            removed.append(f"pin {pin}")
        PIN_DIR.rmdir()
    remove_state(state_dir)
    return removed
