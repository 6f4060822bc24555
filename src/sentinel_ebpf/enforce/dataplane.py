"""The inbound TC programs: load, apply compiled rules to their maps, attach to interfaces, read stats."""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass

from sentinel_ebpf import netns
from sentinel_ebpf._maps import InboundBss, InboundMaps, set_inbound_rodata
from sentinel_ebpf._types import (
    BlockType,
    BreakerK,
    BreakerState,
    CbEvent,
    DpCounter,
    FlowRuleK,
    HotKey,
    HotspotRuleK,
    HttpReply,
    HttpRouteKey,
    OutRoute,
    OutRouteKey,
    PortConf,
    PortCounter,
    PortCounts,
    PortSlots,
    ResConf,
    ResStats,
    RouteFlags,
    RouteLens,
    SentinelLimits,
    SysConf,
    SysMetrics,
    SysRuleK,
)
from sentinel_ebpf.enforce.adaptive import AdaptiveThresholds, ExternalThresholds, HostMemory
from sentinel_ebpf.enforce.compile import CompiledInbound, KOutRoute, KPort, KResource, compile_inbound
from sentinel_ebpf.enforce.reconcile import RECONCILE_PERIOD_NS, Reconciler
from sentinel_ebpf.errors import BpfKeyError, BpfMapError, SentinelError
from sentinel_ebpf.host import cgroup2_mount
from sentinel_ebpf.libbpf import BpfObject, Link, RingBuffer, TcAttachPoint, TcFilter, TcHook
from sentinel_ebpf.libbpf.maps import Map
from sentinel_ebpf.model.flow import MemoryReader
from sentinel_ebpf.objects import object_path
from sentinel_ebpf.rules import HttpReject, RuleSet
from sentinel_ebpf.stats import BLOCK_TYPES, BreakerSnapshot, BreakerTransition, ResourceStats

BREAKER_STATE_NAMES = {0: "closed", 1: "half_open", 2: "open"}


def _reply(data: bytes) -> HttpReply:
    reply = HttpReply(len=len(data))
    ctypes.memmove(reply.data, data, len(data))
    return reply


# What a local caller of a blocked outbound HTTP request receives (an open circuit, a limit).
OUT_REJECT = HttpReject(status=503, body="Service Unavailable (sentinel-ebpf)\n")
OUT_REPLY = _reply(OUT_REJECT.response_bytes())
OUT_REPLY_KEEPALIVE = _reply(OUT_REJECT.response_bytes(keep_alive=True))

PATH_MAX = int(SentinelLimits.SE_PATH_MAX)
MAX_RESOURCES = int(SentinelLimits.SE_MAX_RESOURCES)
FLOW_RULES = int(SentinelLimits.SE_FLOW_RULES_PER_RESOURCE)
PORTS_MAX = int(SentinelLimits.SE_PORTS_MAX)
PORT_OUT_HTTP = int(SentinelLimits.SE_PORT_OUT_HTTP)
INFLIGHT_MAX = int(SentinelLimits.SE_INFLIGHT_MAX)
# TC filter identity: a fixed handle/priority so `down` can find and remove ours after a crash.
TC_HANDLE = 0x5E17
TC_PRIORITY = 0x5E17

_BLOCK_NAMES = {
    int(BlockType.BLOCK_FLOW): "flow",
    int(BlockType.BLOCK_ISOLATION): "isolation",
    int(BlockType.BLOCK_CIRCUIT_BREAKING): "circuit_breaking",
    int(BlockType.BLOCK_SYSTEM): "system",
    int(BlockType.BLOCK_HOTSPOT): "hotspot",
}


def _u32(v: int) -> bytes:
    return v.to_bytes(4, "little")


def _wire_port(port: int) -> int:
    """A port's index in the kernel's port table: its 16 bits as they stand in the TCP header."""
    return socket.htons(port)


def out_route_key(r: KOutRoute, gen: int) -> OutRouteKey:
    key = OutRouteKey(prefixlen=32 + r.prefix_bits, gen=gen, family=r.family, port=socket.htons(r.port))
    ctypes.memmove(key.addr, r.network, len(r.network))
    return key


def route_lens(lens: tuple[int, ...]) -> RouteLens:
    out = RouteLens(n=len(lens))
    out.len[: len(lens)] = lens
    return out


def route_key(group: int, method: int, path: bytes, gen: int, outbound: bool = False) -> HttpRouteKey:
    """An http_routes key: inbound by the slot of its port scope, outbound by service id."""
    key = HttpRouteKey()
    key.prefixlen = 32 + 8 * min(len(path), PATH_MAX)
    key.gen = gen | (int(RouteFlags.ROUTE_OUTBOUND) if outbound else 0)
    key.port = group
    key.method = method
    ctypes.memmove(key.path, path[:PATH_MAX], min(len(path), PATH_MAX))
    return key


def _port_heads(compiled: CompiledInbound) -> list[KPort]:
    """The first scope of each port: the one port_slots points to (the others follow by ``next``)."""
    heads: dict[int, KPort] = {}
    for p in compiled.ports:
        if p.port not in heads or p.slot < heads[p.port].slot:
            heads[p.port] = p
    return list(heads.values())


@dataclass
class _Attachment:
    ifname: str
    hook: TcHook
    filters: list[TcFilter]


class InboundDataplane:
    """``with InboundDataplane() as dp: dp.apply(compiled); dp.attach("lo")``.

    ``test_clock=True`` loads the programs with a clock the caller sets (``set_clock_ns``), for tests.
    """

    def __init__(
        self,
        *,
        test_clock: bool = False,
        socket_lookup: bool = True,
        hotspot_values: int | None = None,
        idle_connections: int | None = None,
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

        ``reuse``: map fds of another loaded instance (by kernel map name, see ``program_maps``), for a
        daemon taking over from one that crashed: this instance then works on the same maps, so the
        statistics, in-flight requests and breaker states go on; ``adopt`` then says what is in force.
        Every map must be there with the same definition (SentinelError otherwise, nothing reused)."""
        if hotspot_values is not None and not 1024 <= hotspot_values <= 1 << 24:
            raise ValueError(f"hotspot_values must be in 1024..{1 << 24}, got {hotspot_values}")
        if idle_connections is not None and not 0 <= idle_connections <= INFLIGHT_MAX // 2:
            raise ValueError(f"idle_connections must be in 0..{INFLIGHT_MAX // 2}, got {idle_connections}")
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
        self.compiled = CompiledInbound()
        self.gen = 0
        self._last_id = 0
        self._test_now_ns = 0
        self.memory: MemoryReader = HostMemory()
        # thresholds of cluster flow rules (set by the daemon before apply; see enforce.adaptive)
        self.external_thresholds: ExternalThresholds | None = None
        self.adaptive = AdaptiveThresholds(self.compiled, self.raw_stats, self.memory)
        self._breaker_names: dict[int, tuple[str, str]] = {}
        self._cb_ring: RingBuffer | None = None
        self.reconciler = Reconciler(self)
        self._sockops_link: Link | None = None
        self._connect_attached = False
        # no sock_ops of ours yet (a crashed daemon's reused map may still say there is)
        self.maps.establish_hook.update(_u32(0), _u32(0))
        self._next_reconcile_ns = time.monotonic_ns() + RECONCILE_PERIOD_NS
        self._cb_pending: list[BreakerTransition] = []
        self._cgroup_links: list[Link] = []
        self._attachments: list[_Attachment] = []

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

    def adopt(self, compiled: CompiledInbound, last_id: int, gen: int) -> None:
        """Take ``compiled`` as the rules in force in reused maps (what the previous instance applied
        last as generation ``gen``, compiled again with its resource ids). SentinelError if the maps
        hold something else (a crash between switching generations and recording them, among others)."""
        active = int.from_bytes(self.maps.active_gen.lookup(_u32(0)), "little") & 1
        if active != gen:
            raise SentinelError(f"cannot adopt: generation {active} is in force, the record is of {gen}")
        conf = self.maps.res_conf
        for r in compiled.resources:
            rc = ResConf.from_buffer_copy(conf.lookup(_u32(gen * MAX_RESOURCES + r.id)))
            have = (rc.nflow, rc.nhot, rc.nbreakers, rc.isolation_threshold)
            if have != (len(r.flow), len(r.hot), len(r.breakers), r.isolation_threshold):
                raise SentinelError(
                    f"cannot adopt: resource {r.name!r} (id {r.id}) is not what the maps hold"
                )
        table = PortSlots.from_buffer_copy(self.maps.port_slots.lookup(_u32(gen)))
        for p in _port_heads(compiled):
            if table.slot[_wire_port(p.port)] & ~PORT_OUT_HTTP != p.slot:
                raise SentinelError(f"cannot adopt: port {p.port} is not what the maps hold")
        # Outbound TCP resources count open connections in out_conns, which is new: those still open are
        # not known to this instance, so their count starts again.
        stats = self.maps.res_stats
        for rid in {r.resource for r in compiled.out_routes if r.resource}:
            st = ResStats.from_buffer_copy(stats.lookup(_u32(rid)))
            st.concurrency = 0
            stats.update(_u32(rid), bytes(st))
        self.gen = gen
        self.compiled = compiled
        self._last_id = max([last_id, *(r.id for r in compiled.resources)])
        self.adaptive = AdaptiveThresholds(compiled, self.raw_stats, self.memory,
                                           external=self.external_thresholds)  # fmt: skip
        for r in compiled.resources:
            for b in r.breakers:
                self._breaker_names[b.uid] = (r.name, b.id)

    @property
    def last_id(self) -> int:
        """The highest resource id handed out (ids are not reused while requests may be in flight)."""
        return self._last_id

    # -- rules ------------------------------------------------------------------------------------
    def compile(self, rules: RuleSet) -> CompiledInbound:
        """Compile ``rules`` keeping the ids (and so the statistics) of resources already in force."""
        previous = {r.key: r.id for r in self.compiled.resources}
        return compile_inbound(rules, previous, self._last_id)

    def apply(self, compiled: CompiledInbound) -> bool:
        """Put ``compiled`` in force atomically; False when it is what is already in force.

        The next generation's ports, routes and resource configurations are written beside the current
        ones, one 4-byte store of ``active_gen`` switches every program to them, then the old generation
        is removed. A resource that stays (same name and match) keeps its statistics; a flow rule that
        stays keeps its throttling state. If writing fails, the generation in force is untouched.
        """
        if compiled == self.compiled:
            return False
        old_gen, new_gen = self.gen, 1 - self.gen
        conf, stats = self.maps.res_conf, self.maps.res_stats
        old_by_key = {r.key: r for r in self.compiled.resources}
        try:
            for r in compiled.resources:
                kept = old_by_key.get(r.key)
                if kept is None or kept.id != r.id:
                    stats.update(_u32(r.id), bytes(ctypes.sizeof(ResStats)))
                rc = self._res_conf(r)
                if kept is not None and kept.flow == r.flow:
                    old = ResConf.from_buffer_copy(conf.lookup(_u32(old_gen * MAX_RESOURCES + kept.id)))
                    rc.last_passed_ns[:] = old.last_passed_ns[:]
                conf.update(_u32(new_gen * MAX_RESOURCES + r.id), bytes(rc))
            self.maps.http_reply.update(_u32(new_gen), bytes(_reply(compiled.http_reply)))
            self.maps.http_reply.update(
                _u32(int(RouteFlags.HTTP_REPLY_KEEPALIVE) + new_gen),
                bytes(_reply(compiled.http_reply_keepalive)),
            )
            self.maps.http_reply.update(_u32(int(RouteFlags.HTTP_REPLY_OUTBOUND) + new_gen), bytes(OUT_REPLY))
            self.maps.http_reply.update(
                _u32(int(RouteFlags.HTTP_REPLY_OUT_KEEPALIVE) + new_gen), bytes(OUT_REPLY_KEEPALIVE)
            )
            sc = SysConf(nrules=len(compiled.system))
            for i, rule in enumerate(compiled.system):
                sc.rules[i] = SysRuleK(
                    metric=rule.metric, bbr=int(rule.bbr), trigger_milli=rule.trigger_milli
                )
            self.maps.sys_conf.update(_u32(new_gen), bytes(sc))
            adaptive = AdaptiveThresholds(compiled, self.raw_stats, self.memory, self.adaptive,
                                          self.external_thresholds)  # fmt: skip
            self._write_thresholds(adaptive, new_gen)
            self._write_hot_specific(compiled)
            self._create_breakers(compiled)
            self._write_ports_routes(compiled, new_gen)
        except BaseException:
            self._clear_gen(new_gen, compiled)
            raise
        self.maps.active_gen.update(_u32(0), _u32(new_gen))
        self._clear_gen(old_gen, self.compiled)
        self._drop_hot_specific(self.compiled, keep=compiled)
        self._drop_breakers(self.compiled, keep=compiled)
        self._drop_port_stats(keep=compiled)
        self.gen = new_gen
        self.compiled = compiled
        self.adaptive = adaptive
        self._last_id = max([self._last_id, *(r.id for r in compiled.resources)])
        return True

    def now_ms(self) -> int:
        """The data plane's clock (CLOCK_MONOTONIC, as bpf_ktime_get_ns), or the test clock."""
        return (self._test_now_ns if self.test_clock else time.monotonic_ns()) // 1_000_000

    def _write_thresholds(self, adaptive: AdaptiveThresholds, gen: int) -> None:
        dyn = self.maps.flow_dyn_threshold
        for (rid, i), milli in adaptive.thresholds(self.now_ms()).items():
            dyn.update(_u32((gen * MAX_RESOURCES + rid) * FLOW_RULES + i), milli.to_bytes(8, "little"))

    def tick(self) -> None:
        """Recompute WarmUp and MemoryAdaptive thresholds now (the daemon calls this every 100 ms); every
        RECONCILE_PERIOD_NS give back concurrency that escaped (see enforce.reconcile)."""
        if self.adaptive.calculators:
            self._write_thresholds(self.adaptive, self.gen)
        if not self.test_clock and time.monotonic_ns() >= self._next_reconcile_ns:
            self.reconciler.run()
            self._next_reconcile_ns = time.monotonic_ns() + RECONCILE_PERIOD_NS

    @staticmethod
    def _res_conf(r: KResource) -> ResConf:
        rc = ResConf()
        rc.nflow = len(r.flow)
        rc.isolation_threshold = r.isolation_threshold
        rc.nbreakers = len(r.breakers)
        for i, b in enumerate(r.breakers):
            rc.breakers[i] = BreakerK(
                uid=b.uid, strategy=b.strategy, retry_timeout_ms=b.retry_timeout_ms, min_request=b.min_request,
                interval_ms=b.interval_ms, bucket_ms=b.bucket_ms, probe_num=b.probe_num, max_rt_ms=b.max_rt_ms,
                threshold_ppb=b.threshold_ppb,
            )  # fmt: skip
        rc.nhot = len(r.hot)
        for i, h in enumerate(r.hot):
            rc.hot[i] = HotspotRuleK(
                uid=h.uid, metric=h.metric, behavior=h.behavior, param=h.param, pattern_len=len(h.pattern),
                v6_prefix_len=h.v6_prefix_len, threshold=h.threshold, burst=h.burst, duration_ms=h.duration_ms,
                max_queue_ms=h.max_queue_ms,
            )  # fmt: skip
            ctypes.memmove(rc.hot[i].pattern, h.pattern, len(h.pattern))
        for i, f in enumerate(r.flow):
            rc.flow[i] = FlowRuleK(
                dynamic=int(f.dynamic),
                stat_resource=f.stat_resource, behavior=f.behavior, interval_ms=f.interval_ms,
                threshold_milli=f.threshold_milli, cost_ns=f.cost_ns, max_queue_ns=f.max_queue_ns,
            )  # fmt: skip
        return rc

    def _write_out_routes(self, compiled: CompiledInbound, gen: int) -> None:
        m = self.maps.out_routes
        for r in compiled.out_routes:
            m.update(bytes(out_route_key(r, gen)), bytes(OutRoute(resource=r.resource, cgroup_level=r.cgroup_level,
                                                                  cgroup_id=r.cgroup_id, http_service=r.http_service,
                                                                  lens=route_lens(r.lens))))  # fmt: skip

    def _write_ports_routes(self, compiled: CompiledInbound, gen: int) -> None:
        """Routes, then the ports' configurations, then the generation's port table that leads to them."""
        self._write_out_routes(compiled, gen)
        ports, routes, pstats = (
            self.maps.inbound_ports,
            self.maps.http_routes,
            self.maps.port_stats,
        )
        for route in compiled.routes:
            routes.update(
                bytes(route_key(route.port, route.method, route.path, gen, route.outbound)),
                _u32(route.resource),
            )
        table = PortSlots()
        for i, p in enumerate(compiled.ports):
            assert p.slot == i + 1, (p, i)
            pc = PortConf(tcp_resource=p.tcp_resource, has_http=int(p.has_http), reject_tcp=p.reject_tcp,
                          reject_http=p.reject_http, incomplete=p.incomplete, defer_accept=int(p.defer_accept),
                          lens=route_lens(p.lens), slot=p.slot, next=p.next)  # fmt: skip
            pc.scope_cgroup_level, pc.scope_cgroup_id = p.cgroup_level, p.cgroup_id
            if p.address is not None:
                net, bits = p.address.network_address.packed, p.address.prefixlen
                mask = (((1 << bits) - 1) << (len(net) * 8 - bits)).to_bytes(len(net), "big")
                pc.scope_family = p.address.version
                pc.scope_net[: len(net)] = net
                pc.scope_mask[: len(net)] = mask
            if pstats.get(p.port.to_bytes(2, "little")) is None:
                pstats.update(p.port.to_bytes(2, "little"), bytes(PortCounts()))
            ports.update(_u32(gen * PORTS_MAX + i), bytes(pc))
        for p in _port_heads(compiled):
            table.slot[_wire_port(p.port)] = p.slot
        for port in compiled.out_http_ports:
            table.slot[_wire_port(port)] |= PORT_OUT_HTTP
        self.maps.port_slots.update(_u32(gen), bytes(table))

    def _create_breakers(self, compiled: CompiledInbound) -> None:
        """A new breaker starts Closed with an empty window; one that stays keeps its state."""
        m = self.maps.breakers
        for r in compiled.resources:
            for b in r.breakers:
                if m.get(_u32(b.uid)) is None:
                    m.update(_u32(b.uid), bytes(BreakerState()))
                self._breaker_names[b.uid] = (r.name, b.id)

    def _drop_breakers(self, old: CompiledInbound, keep: CompiledInbound) -> None:
        kept = {b.uid for r in keep.resources for b in r.breakers}
        m = self.maps.breakers
        for r in old.resources:
            for b in r.breakers:
                if b.uid not in kept:
                    with contextlib.suppress(BpfKeyError):
                        m.delete(_u32(b.uid))

    def _drop_port_stats(self, keep: CompiledInbound) -> None:
        """Remove the counters of ports no longer protected (the map holds SE_PORTS_MAX ports: without
        this, ports protected once and dropped since would fill it and make every apply fail). A sweep
        over the map, so entries a crashed daemon left are removed too."""
        m = self.maps.port_stats
        kept = {p.port.to_bytes(2, "little") for p in keep.ports}
        for key in [k for k in m if k not in kept]:
            with contextlib.suppress(BpfKeyError):
                m.delete(key)

    def breaker_states(self) -> dict[str, tuple[BreakerSnapshot, ...]]:
        """resource name -> its breakers' ids and states."""
        m = self.maps.breakers
        out: dict[str, tuple[BreakerSnapshot, ...]] = {}
        for r in self.compiled.resources:
            states = []
            for b in r.breakers:
                raw = m.get(_u32(b.uid))
                state = BreakerState.from_buffer_copy(raw).state if raw is not None else 0
                states.append(BreakerSnapshot(b.id, BREAKER_STATE_NAMES.get(int(state), "closed")))
            out[r.name] = tuple(states)
        return out

    def state_changes(self, timeout_ms: int = 0) -> list[BreakerTransition]:
        """Breaker transitions since the last call, in order (from the cb_events ring buffer)."""
        if self._cb_ring is None:
            self._cb_ring = RingBuffer(self.maps.cb_events, self._on_cb_event)
        self._cb_ring.poll(timeout_ms)
        out, self._cb_pending = self._cb_pending, []
        return out

    def _on_cb_event(self, raw: bytes) -> None:
        ev = CbEvent.from_buffer_copy(raw)
        resource, breaker_id = self._breaker_names.get(ev.uid, (f"#{ev.resource}", f"uid {ev.uid}"))
        self._cb_pending.append(BreakerTransition(
            resource, breaker_id, BREAKER_STATE_NAMES.get(ev.from_state, "?"), BREAKER_STATE_NAMES.get(ev.to_state, "?"),
        ))  # fmt: skip

    def _write_hot_specific(self, compiled: CompiledInbound) -> None:
        m = self.maps.hot_specific
        for r in compiled.resources:
            for h in r.hot:
                for value_hash, threshold in h.specific:
                    m.update(bytes(HotKey(uid=h.uid, hash=value_hash)), threshold.to_bytes(8, "little"))

    def _drop_hot_specific(self, old: CompiledInbound, keep: CompiledInbound) -> None:
        """Remove specific items of hotspot rules that ``keep`` no longer has."""
        kept = {(h.uid, v) for r in keep.resources for h in r.hot for v, _ in h.specific}
        m = self.maps.hot_specific
        for r in old.resources:
            for h in r.hot:
                for value_hash, _ in h.specific:
                    if (h.uid, value_hash) not in kept:
                        with contextlib.suppress(BpfKeyError):
                            m.delete(bytes(HotKey(uid=h.uid, hash=value_hash)))

    def _clear_gen(self, gen: int, compiled: CompiledInbound) -> None:
        """Remove one generation's ports, routes and configurations (never the one in force)."""
        ports, routes, conf = (
            self.maps.inbound_ports,
            self.maps.http_routes,
            self.maps.res_conf,
        )
        self.maps.port_slots.update(_u32(gen), bytes(ctypes.sizeof(PortSlots)))
        for i in range(len(compiled.ports)):
            ports.update(_u32(gen * PORTS_MAX + i), bytes(ctypes.sizeof(PortConf)))
        for route in compiled.routes:
            with contextlib.suppress(BpfKeyError):
                routes.delete(bytes(route_key(route.port, route.method, route.path, gen, route.outbound)))
        for r in compiled.resources:
            conf.update(_u32(gen * MAX_RESOURCES + r.id), bytes(ctypes.sizeof(ResConf)))

    def clear(self) -> None:
        """Remove every rule, route, statistic and in-flight entry (the programs then pass everything)."""
        for gen in (0, 1):
            self.maps.port_slots.update(_u32(gen), bytes(ctypes.sizeof(PortSlots)))
            for i in range(len(self.compiled.ports)):
                self.maps.inbound_ports.update(_u32(gen * PORTS_MAX + i), bytes(ctypes.sizeof(PortConf)))
        m = self.maps
        for table in (
            m.http_routes,
            m.inflight,
            m.refused,
            m.streams,
            m.port_stats,
            m.hot_values,
            m.hot_specific,
            m.breakers,
        ):
            table.clear()
        conf, stats = self.maps.res_conf, self.maps.res_stats
        for r in self.compiled.resources:
            stats.update(_u32(r.id), bytes(ctypes.sizeof(ResStats)))
            for gen in (0, 1):
                conf.update(_u32(gen * MAX_RESOURCES + r.id), bytes(ctypes.sizeof(ResConf)))
        for gen in (0, 1):
            self.maps.sys_conf.update(_u32(gen), bytes(SysConf()))
        self.maps.inbound_total.update(_u32(0), bytes(ResStats()))
        self.maps.sys_metrics.update(_u32(0), bytes(SysMetrics()))
        self.maps.inflight_idle.update(_u32(0), bytes(8))
        self.compiled = CompiledInbound()
        self.adaptive = AdaptiveThresholds(self.compiled, self.raw_stats, self.memory)

    def set_system_metrics(self, load1: float | None, cpu_usage: float | None) -> None:
        """Host metrics for Load and CpuUsage system rules; None means not read (those rules pass)."""
        m = SysMetrics(
            load_milli=round((load1 or 0) * 1000), cpu_milli=round((cpu_usage or 0) * 1000),
            load_valid=int(load1 is not None), cpu_valid=int(cpu_usage is not None),
        )  # fmt: skip
        self.maps.sys_metrics.update(_u32(0), bytes(m))

    def inbound_stats(self) -> ResStats:
        """Sentinel's inbound node: all inbound requests of all resources together."""
        return ResStats.from_buffer_copy(self.maps.inbound_total.lookup(_u32(0)))

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

    # -- statistics -------------------------------------------------------------------------------
    def raw_stats(self, resource_id: int) -> ResStats:
        return ResStats.from_buffer_copy(self.maps.res_stats.lookup(_u32(resource_id)))

    def raw_stats_bytes(self) -> dict[int, bytes]:
        """Every resource's ``struct res_stats`` by id, read in one batched syscall (the daemon does
        this every second for the metric log: a lookup per resource was its main idle cost)."""
        ids = [r.id for r in self.compiled.resources]
        if not ids:
            return {}
        values = self.maps.res_stats.array_prefix(max(ids) + 1)
        return {rid: values[rid] for rid in ids}

    def raw_stats_all(self) -> dict[int, ResStats]:
        return {rid: ResStats.from_buffer_copy(raw) for rid, raw in self.raw_stats_bytes().items()}

    def resource_stats(self) -> list[ResourceStats]:
        breakers = self.breaker_states()
        out = []
        all_stats = self.raw_stats_all()
        for r in self.compiled.resources:
            st = all_stats[r.id]
            by_type = dict.fromkeys(BLOCK_TYPES, 0)
            for code, name in _BLOCK_NAMES.items():
                by_type[name] = int(st.block_by_type[code])
            out.append(ResourceStats(
                name=r.name, passed=st.total_pass, blocked=st.total_block, complete=st.total_complete,
                error=st.total_error, concurrency=max(0, st.concurrency), rt_sum_ms=float(st.total_rt_ms),
                block_by_type=by_type, flow_wait_total=st.flow_wait, abort=st.total_abort,
                circuit_breakers=breakers.get(r.name, ()),
                flow_threshold=(r.flow[0].threshold_milli / 1000 if r.flow else None),
            ))  # fmt: skip
        return out

    def counters(self) -> dict[str, int]:
        m = self.maps.dp_counters
        return {
            c.name.removeprefix("DP_").lower(): sum(
                int.from_bytes(v, "little") for v in m.lookup(_u32(int(c)))
            )
            for c in DpCounter
            if c is not DpCounter.DP_COUNTER_MAX
        }

    def port_counters(self, port: int) -> dict[str, int]:
        raw = PortCounts.from_buffer_copy(self.maps.port_stats.lookup(port.to_bytes(2, "little")))
        return {
            c.name.removeprefix("PORT_").lower(): int(raw.count[int(c)])
            for c in PortCounter
            if c is not PortCounter.PORT_COUNTER_MAX
        }

    def close(self) -> None:
        if self._cb_ring is not None:
            self._cb_ring.close()
            self._cb_ring = None
        try:
            self.detach_all()
        finally:
            self.obj.close()

    def __enter__(self) -> InboundDataplane:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
