"""The governance programs' BPF object: open it, set its .rodata, reuse the maps of a crashed instance,
load it; attach and detach its TC, cgroup connect and sock_ops programs; its clock; close it. The base of
the data plane's parts (readout.py, writer.py, dataplane.py), which declares the state they share."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

from sentinel_ebpf import netns
from sentinel_ebpf._maps import InboundBss, InboundMaps, set_inbound_rodata
from sentinel_ebpf._types import SentinelLimits
from sentinel_ebpf.enforce.compile import CompiledInbound
from sentinel_ebpf.errors import BpfMapError, SentinelError
from sentinel_ebpf.host import cgroup2_mount
from sentinel_ebpf.libbpf import BpfObject, Link, TcAttachPoint, TcFilter, TcHook
from sentinel_ebpf.libbpf.maps import Map
from sentinel_ebpf.objects import object_path

INFLIGHT_MAX = int(SentinelLimits.SE_INFLIGHT_MAX)
CAS_TRIES = int(SentinelLimits.SE_CAS_TRIES)
# TC filter identity: a fixed handle/priority so `down` can find and remove ours after a crash.
TC_HANDLE = 0x5E17
TC_PRIORITY = 0x5E17


def _u32(v: int) -> bytes:
    return v.to_bytes(4, "little")


@dataclass
class _Attachment:
    ifname: str
    hook: TcHook
    filters: list[TcFilter]


class Loader:
    """The loaded programs and their attachments; ``close`` detaches and unloads them all."""

    def __init__(
        self,
        *,
        test_clock: bool = False,
        socket_lookup: bool = True,
        hotspot_values: int | None = None,
        idle_connections: int | None = None,
        cas_tries: int | None = None,
        reuse: Mapping[str, int] | None = None,
    ) -> None:
        """``hotspot_values``: how many hotspot parameter values the kernel tracks at once (an LRU map,
        preallocated: ~104 bytes of kernel memory each); default ``SE_HOT_VALUES_MAX``.

        ``idle_connections``: how many keep-alive connections between requests keep their in-flight entry
        for the next request (saving a map insert and delete per request); default
        ``SE_INFLIGHT_IDLE_MAX`` (half the in-flight table), 0 deletes the entry at every response.

        ``socket_lookup``: judge a client's data only when the local stack has its connection and the data
        comes next in the stream (see bpf/stream.bpf.h). False for tests that feed crafted packets of
        connections that do not exist: every segment is then taken as next in its stream.

        ``cas_tries``: compare-and-swap tries of a throttling or hotspot update before the request passes
        without it (fail open, counted as ``throttle_contended``); default 4. 0 for the test of that path
        (no other way makes two CPUs contend on purpose).

        ``reuse``: map fds of another loaded instance (by kernel map name, see ``program_maps``), for a
        daemon taking over from one that crashed: this instance then works on the same maps, so the
        statistics, in-flight requests and breaker states go on; ``adopt`` then says what is in force.
        Every map must be there with the same definition (SentinelError otherwise, nothing reused)."""
        if hotspot_values is not None and not 1024 <= hotspot_values <= 1 << 24:
            raise ValueError(f"hotspot_values must be in 1024..{1 << 24}, got {hotspot_values}")
        if idle_connections is not None and not 0 <= idle_connections <= INFLIGHT_MAX // 2:
            raise ValueError(f"idle_connections must be in 0..{INFLIGHT_MAX // 2}, got {idle_connections}")
        if cas_tries is not None and not 0 <= cas_tries <= CAS_TRIES:
            raise ValueError(f"cas_tries must be in 0..{CAS_TRIES}, got {cas_tries}")
        self.obj = BpfObject.open(object_path("inbound"))
        try:
            self.maps = InboundMaps(self.obj)
            set_inbound_rodata(
                self.obj,
                use_test_clock=True if test_clock else None,
                socket_lookup=None if socket_lookup else False,
                # keys the hash of request heads (a segment sent again is known by it) and the followed
                # bits: unguessable
                head_hash_key=self._head_hash_key(reuse),
                inflight_idle_max=idle_connections,
                cas_tries=cas_tries,
            )
            if hotspot_values is not None:
                self.maps.hot_values.set_max_entries(hotspot_values)
            if reuse is not None:
                self._reuse_maps(reuse)
            self.obj.load()
        except BaseException:
            self.obj.close()
            raise
        self.test_clock = test_clock
        self._test_now_ns = 0
        self._sockops_link: Link | None = None
        self._connect_attached = False
        # no sock_ops of ours yet (a crashed daemon's reused map may still say there is)
        self.maps.establish_hook.update(_u32(0), _u32(0))
        self._cgroup_links: list[Link] = []
        self._attachments: list[_Attachment] = []
        self._init_state()

    def _init_state(self) -> None:
        """The state the parts share, set once the programs are loaded: each part (readout, writer, the
        data plane) adds its own to this, calling super() first."""
        self.compiled = CompiledInbound()  # the rules in force (writer.py puts them there)
        self._breaker_names: dict[int, tuple[str, str]] = {}  # breaker uid -> (resource, breaker id)

    def _head_hash_key(self, reuse: Mapping[str, int] | None) -> int:
        """Random for a new instance; an instance on another's maps keeps that one's key (read from its
        .rodata), so that the head hashes of the stream states and the followed bits it takes over read
        the same."""
        rodata = next((fd for name, fd in (reuse or {}).items() if name.endswith(".rodata")), None)
        if rodata is not None:
            previous = Map.of_fd(rodata).lookup(_u32(0))
            offset, size, _ = self.obj.section_layout(".rodata")[1]["head_hash_key"]
            if len(previous) >= offset + size:
                return int.from_bytes(previous[offset : offset + size], "little")
        return int.from_bytes(os.urandom(8), "little")

    def _reuse_maps(self, fds: Mapping[str, int]) -> None:
        # not .rodata/.bss; not out_conns: only the outbound cgroup programs, released with the process
        # that loaded them, use it (adopt resets what it counted)
        maps = [m for m in self.maps if m is not self.maps.out_conns]
        missing = [m.name for m in maps if m.name[:15] not in fds]  # the kernel keeps 15 characters
        if missing:
            raise SentinelError(f"cannot reuse the running programs' maps: they have no {', '.join(missing)}")
        try:
            for m in maps:
                m.reuse(fds[m.name[:15]])
        except BpfMapError as exc:
            raise SentinelError(f"cannot reuse the running programs' maps: {exc}") from None

    def now_ms(self) -> int:
        """The data plane's clock (CLOCK_MONOTONIC, as bpf_ktime_get_ns), or the test clock."""
        return (self._test_now_ns if self.test_clock else time.monotonic_ns()) // 1_000_000

    def set_clock_ns(self, now_ns: int) -> None:
        if not self.test_clock:
            raise SentinelError("set_clock_ns needs InboundDataplane(test_clock=True)")
        bss = InboundBss.from_buffer_copy(self.maps.bss.lookup(0))
        bss.test_clock_ns = now_ns
        self.maps.bss.update(0, bytes(bss))
        self._test_now_ns = now_ns

    # -- attachment -------------------------------------------------------------------------------
    def attach(self, ifname: str) -> None:
        """TC ingress and egress on ``ifname``: an interface of this namespace, or ``IFACE@NETNS`` one of
        another (a server's namespace: its sockets are looked up and refusals answered there)."""
        hook = TcHook(netns.ifindex(ifname), netns.split(ifname)[1]).create()
        att = _Attachment(ifname, hook, [])
        self._attachments.append(att)
        for prog, point in (("tc_ingress", TcAttachPoint.INGRESS), ("tc_egress", TcAttachPoint.EGRESS)):
            att.filters.append(
                hook.attach(
                    self.obj.program(prog), point, handle=TC_HANDLE, priority=TC_PRIORITY, replace=True
                )
            )

    def adopt_qdisc(self, ifname: str) -> None:
        """Treat the clsact qdisc of ``ifname`` as ours (a crashed daemon created it): remove it on close."""
        for a in self._attachments:
            if a.ifname == ifname:
                a.hook.created_qdisc = True

    def attached(self) -> list[tuple[str, int, bool]]:
        """(interface, ifindex, whether we created its clsact qdisc) for every TC attachment."""
        return [(a.ifname, a.hook.ifindex, a.hook.created_qdisc) for a in self._attachments]

    @property
    def outbound_attached(self) -> bool:
        return self._connect_attached

    def attach_outbound(self, cgroup_root: str | None = None) -> None:
        """Judge outbound connect()s of every process: cgroup/connect4|6 and sock_ops at the cgroup2 root
        (a resource's own cgroup is matched in the program)."""
        root = cgroup_root or cgroup2_mount()
        if root is None:
            raise SentinelError("cgroup2 is not mounted: outbound resources cannot be enforced")
        for prog in ("out_connect4", "out_connect6"):
            self._cgroup_links.append(self.obj.program(prog).attach_cgroup(root))
        self._connect_attached = True
        self.attach_sockops(root)

    def attach_sockops(self, cgroup_root: str | None = None) -> None:
        """sock_ops at the cgroup2 root: outbound connections' outcomes and closes, and the handshake of
        inbound TCP resources' connections, which then take their concurrency slot when established
        rather than at the SYN (half-open connections hold none)."""
        if self._sockops_link is not None:
            return
        root = cgroup_root or cgroup2_mount()
        if root is None:
            raise SentinelError("cgroup2 is not mounted: sock_ops cannot be attached")
        self._sockops_link = self.obj.program("out_sockops").attach_cgroup(root)
        self._cgroup_links.append(self._sockops_link)
        self.maps.establish_hook.update(_u32(0), _u32(1))

    @property
    def sockops_attached(self) -> bool:
        return self._sockops_link is not None

    def detach(self, ifname: str) -> None:
        """Remove the filters from ``ifname`` (and the clsact qdisc if we created it); an interface that
        is gone took them with it, which is not an error."""
        for att in [a for a in self._attachments if a.ifname == ifname]:
            self._attachments.remove(att)
            for f in att.filters:
                f.close()
            att.hook.destroy()

    def detach_all(self) -> None:
        if self._sockops_link is not None:
            self.maps.establish_hook.update(_u32(0), _u32(0))  # connections count from the SYN again
            self._sockops_link = None
        self._connect_attached = False
        while self._cgroup_links:
            self._cgroup_links.pop().close()
        while self._attachments:
            att = self._attachments.pop()
            for f in att.filters:
                f.close()
            att.hook.destroy()

    def close(self) -> None:
        try:
            self.detach_all()
        finally:
            self.obj.close()
