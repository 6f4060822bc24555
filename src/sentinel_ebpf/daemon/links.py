"""Which interfaces the TC programs are attached to, kept right as interfaces come and go.

The configured set is a list of ``-i`` values, each an interface name or a shell-style pattern
(``fnmatch``: ``veth*``, ``eth[01]``); none means every interface (``*``). An interface is attached when
its name matches and it is up; one named literally is attached even while down, and must exist when
the daemon starts (a typo is an error, not a silent no-op). Interfaces created or brought up later (a
container's veth, a new VLAN) are attached when the kernel announces them: a netlink socket subscribed
to link events (pyroute2, ``RTMGRP_LINK``) wakes the daemon, which compares what is there with what it
has attached (``reconcile``). An interface that goes away takes its clsact qdisc and filters with it;
the daemon forgets it. One that goes down stays attached (its filters survive down and up).

``IFACE@NETNS`` names an interface of another network namespace (``sentinel_ebpf.netns``): a server's
(a pod's) own end of its veth, attached from the daemon's namespace, up or down. Either part may be a
pattern: ``eth0@cni-*`` is the eth0 of every namespace ``ip netns`` lists as ``cni-...`` (containerd's
and CRI-O's pod namespaces, once /run/netns is visible to the daemon). The link events watched are the
daemon's namespace's: other namespaces are looked at again whenever an interface there changes (a pod's
host-side veth comes and goes with the pod).

The programs read an Ethernet header first, so only interfaces that have one are attached (Ethernet,
which covers veth, bridges, bonds and VLANs, and loopback). L3 devices (tun, WireGuard, IP tunnels:
their packets start at the IP header) are left out explicitly: a pattern skips them with one log line
each, naming one with ``-i`` is an error.
"""

from __future__ import annotations

import fnmatch
import logging
import select
import socket
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from sentinel_ebpf import netns
from sentinel_ebpf.errors import SentinelError

log = logging.getLogger("sentinel_ebpf.daemon")
ALL = "*"
IFF_UP = 0x1
# ARPHRD_* link types whose frames start with an Ethernet header (include/uapi/linux/if_arp.h)
ETHERNET_LINK_TYPES = {1: "Ethernet", 772: "loopback"}


class Attacher(Protocol):
    def attach(self, ifname: str) -> None: ...

    def detach(self, ifname: str) -> None: ...

    def attached(self) -> list[tuple[str, int, bool]]: ...


def is_pattern(value: str) -> bool:
    return any(c in value for c in "*?[")


def interfaces(namespaced: Sequence[str] = ()) -> dict[str, int]:
    """Every interface of this network namespace, and those of ``namespaced`` (``IFACE@NETNS``) that
    exist: name -> ifindex."""
    return {**{name: index for index, name in socket.if_nameindex()}, **netns.present(list(namespaced))}


def is_up(name: str) -> bool:
    try:
        return bool(int(Path(f"/sys/class/net/{name}/flags").read_text(), 16) & IFF_UP)
    except (OSError, ValueError):
        return False


def link_type(name: str) -> int | None:
    """The interface's ARPHRD_* type (``/sys/class/net/NAME/type``), None when it cannot be read."""
    try:
        return int(Path(f"/sys/class/net/{name}/type").read_text())
    except (OSError, ValueError):
        return None


def has_ethernet_header(name: str, kind: Callable[[str], int | None] = link_type) -> bool:
    t = kind(name)
    return t is None or t in ETHERNET_LINK_TYPES


class LinkSet:
    """The configured set: ``wanted`` says which present interfaces should be attached."""

    def __init__(self, values: Sequence[str]) -> None:
        self.values = list(values) or [ALL]
        self.literals = [v for v in self.values if not is_pattern(v)]
        self.patterns = [v for v in self.values if is_pattern(v)]
        self.namespaced = [v for v in self.values if netns.split(v)[1] is not None]
        self.skipped: set[str] = set()  # L3 devices a pattern matched, logged once each

    def check_literals(self, present: dict[str, int], kind: Callable[[str], int | None] = link_type) -> None:
        for name in self.namespaced:
            if name not in present and not is_pattern(name):
                netns.check(name)  # says which of the namespace and the interface is missing
        missing = [n for n in self.literals if n not in present]
        if missing:
            raise SentinelError(
                f"no interface named {', '.join(missing)} (see `ip link`; quote a pattern such as 'veth*' "
                f"to attach to interfaces as they appear)"
            )
        l3 = [f"{n} (link type {kind(n)})" for n in self.literals if not has_ethernet_header(n, kind)]
        if l3:
            raise SentinelError(
                f"{', '.join(l3)}: an L3 device without an Ethernet header (tun, WireGuard, IP tunnel) "
                "cannot be enforced on; attach to the Ethernet or loopback interface the traffic crosses"
            )

    def wanted(self, present: dict[str, int], up: Callable[[str], bool] = is_up,
               kind: Callable[[str], int | None] = link_type) -> list[str]:  # fmt: skip
        names = []
        for name in present:
            elsewhere = netns.split(name)[1] is not None  # attached up or down, like a literal
            if name not in self.literals and not (
                any(fnmatch.fnmatchcase(name, p) for p in self.patterns) and (elsewhere or up(name))
            ):
                continue
            if not has_ethernet_header(name, kind):
                if name not in self.skipped:
                    self.skipped.add(name)
                    log.info("not attached to %s: an L3 device (link type %s) has no Ethernet header", name,
                             kind(name))  # fmt: skip
                continue
            names.append(name)
        return names


def reconcile(dp: Attacher, links: LinkSet, present: dict[str, int] | None = None,
              up: Callable[[str], bool] = is_up) -> list[str]:  # fmt: skip
    """Forget attachments whose interface is gone (or is another one under the name), attach wanted
    interfaces not attached yet. Returns what changed, for the log; an interface that vanishes while
    being attached is skipped (its removal event comes next)."""
    present = interfaces(links.namespaced) if present is None else present
    changes = []
    for name, ifindex, _ in dp.attached():
        if present.get(name) != ifindex:
            dp.detach(name)
            changes.append(f"detached from {name} (ifindex {ifindex}): the interface is gone")
    have = {name for name, _, _ in dp.attached()}
    for name in links.wanted(present, up):
        if name in have:
            continue
        try:
            dp.attach(name)
        except (OSError, SentinelError) as exc:
            if name in interfaces(links.namespaced):
                log.warning("cannot attach to %s: %s", name, exc)
            continue
        changes.append(f"attached to {name}")
    return changes


class LinkWatcher:
    """Calls ``on_change`` (from its own thread) when the kernel announces a link change: an interface
    added, removed, renamed, up or down. Also after a lost notification (socket overrun)."""

    def __init__(self, on_change: Callable[[], None]) -> None:
        self._on_change = on_change
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="links", daemon=True)

    def start(self) -> LinkWatcher:
        """Subscribed to link events when this returns (SentinelError if netlink refuses)."""
        # pyroute2's import takes seconds on a slow machine (an emulated guest: over 10 s): paid here,
        # untimed, so that the wait below is for the subscription alone
        from pyroute2 import IPRoute  # noqa: F401
        from pyroute2.netlink.rtnl import RTMGRP_LINK  # noqa: F401

        self._thread.start()
        self._ready.wait(10)
        if self._error is not None or not self._ready.is_set():
            self.stop()
            raise SentinelError(f"cannot follow interface changes over netlink: {self._error or 'timed out'}")
        return self

    def _run(self) -> None:
        # pyroute2's socket belongs to the thread that made it (its event loop): made and used here
        from pyroute2 import IPRoute
        from pyroute2.netlink.rtnl import RTMGRP_LINK

        try:
            ipr = IPRoute()
            ipr.bind(groups=RTMGRP_LINK)
        except Exception as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            fd = ipr.fileno()
            while not self._stop.is_set():
                ready, _, _ = select.select([fd], [], [], 0.2)
                if not ready or self._stop.is_set():
                    continue
                try:
                    ipr.get()
                except Exception as exc:  # ENOBUFS (events lost) among others: look at everything again
                    log.debug("link events: %s", exc)
                self._on_change()
        finally:
            ipr.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
