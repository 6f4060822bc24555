"""Writing the governance programs' maps: put compiled rules in force (``apply``, atomically by
generation), take over those a crashed instance left (``adopt``), remove them all (``clear``); the
thresholds that move (``tick``) and the host's metrics for system rules."""

from __future__ import annotations

import contextlib
import ctypes
import socket
import time

from sentinel_ebpf._types import (
    BreakerK,
    BreakerState,
    FlowRuleK,
    HotKey,
    HotspotRuleK,
    HttpReply,
    HttpRouteKey,
    OutRoute,
    OutRouteKey,
    PortConf,
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
from sentinel_ebpf.enforce.loader import _u32
from sentinel_ebpf.enforce.readout import Readout
from sentinel_ebpf.enforce.reconcile import RECONCILE_PERIOD_NS, Reconciler
from sentinel_ebpf.errors import BpfKeyError, SentinelError
from sentinel_ebpf.model.flow import MemoryReader
from sentinel_ebpf.rules import HttpReject, RuleSet


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


class Writer(Readout):
    """The rules in force (``compiled``, generation ``gen``) and the maps that hold them."""

    reconciler: Reconciler  # made by the data plane (it takes the whole of it)

    def _init_state(self) -> None:
        super()._init_state()
        self.gen = 0
        self._last_id = 0
        self.memory: MemoryReader = HostMemory()
        # thresholds of cluster flow rules (set by the daemon before apply; see enforce.adaptive)
        self.external_thresholds: ExternalThresholds | None = None
        self.adaptive = AdaptiveThresholds(self.compiled, self.raw_stats, self.memory)
        self._next_reconcile_ns = time.monotonic_ns() + RECONCILE_PERIOD_NS

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
            m.inflight_queue,
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
