"""RuleSet -> the inbound maps' contents, as plain values; everything the hot path can do without is
decided here (routes expanded per method, thresholds scaled, throttling costs precomputed).

What the kernel data plane does not enforce yet is refused with a message naming the rule, never
silently dropped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import math
import os
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from sentinel_ebpf._types import (
    FlowBehavior,
    HotParam,
    HttpMethod,
    IncompleteMode,
    RejectMode,
    SentinelLimits,
)
from sentinel_ebpf.enforce import routes as route_table
from sentinel_ebpf.errors import SentinelError
from sentinel_ebpf.rules import RuleSet
from sentinel_ebpf.rules.circuitbreaker import Strategy as CbStrategy
from sentinel_ebpf.rules.flow import ControlBehavior, FlowRule, RelationStrategy, TokenCalculateStrategy
from sentinel_ebpf.rules.hotspot import HotspotRule
from sentinel_ebpf.rules.resource import IPNetwork, Resource
from sentinel_ebpf.rules.target import normalize_target

BUCKET_MS = int(SentinelLimits.SE_BUCKET_MS)
PATH_MAX = int(SentinelLimits.SE_PATH_MAX)
WINDOW_MS = BUCKET_MS * int(SentinelLimits.SE_BUCKETS)
DEFAULT_INTERVAL_MS = 1000
METHODS = {m.name.removeprefix("HTTP_"): int(m) for m in HttpMethod if m.name.startswith("HTTP_") and
           m not in (HttpMethod.HTTP_METHOD_NONE, HttpMethod.HTTP_METHOD_MAX)}  # fmt: skip


class CompileError(SentinelError):
    """The rule set uses something the kernel data plane cannot enforce (yet); ``problems`` lists it all."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("cannot enforce in the kernel:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class KFlowRule:
    stat_resource: int
    behavior: int
    interval_ms: int
    threshold_milli: int
    cost_ns: int
    max_queue_ns: int
    # WarmUp / MemoryAdaptive: the control plane recomputes the threshold (enforce.adaptive)
    dynamic: bool = False
    source: FlowRule | None = None


@dataclass(frozen=True)
class KHotRule:
    uid: int  # identity of the rule's per-value state: same rule, same uid, state kept across reloads
    metric: int
    behavior: int
    param: int  # enum hot_param
    pattern: bytes
    threshold: int
    v6_prefix_len: int  # remote_ip: bits of an IPv6 client address that key its state
    burst: int
    duration_ms: int
    max_queue_ms: int
    specific: tuple[tuple[int, int], ...] = ()  # (value hash, threshold)


@dataclass(frozen=True)
class KBreaker:
    uid: int  # identity of the breaker's state: same rule, same uid, state kept across reloads
    id: str  # the rule's id, or "<resource>#<n>"
    strategy: int
    retry_timeout_ms: int
    min_request: int
    interval_ms: int
    bucket_ms: int
    probe_num: int
    max_rt_ms: int
    threshold_ppb: int  # ratio x 1e9, or the ErrorCount count


@dataclass(frozen=True)
class KResource:
    id: int
    name: str
    key: tuple[str, tuple[object, ...]]  # (name, match) identity across reloads
    isolation_threshold: int = 0
    flow: tuple[KFlowRule, ...] = ()
    hot: tuple[KHotRule, ...] = ()
    breakers: tuple[KBreaker, ...] = ()


@dataclass(frozen=True)
class KPort:
    """One scope of a local port (struct port_conf): the connections to ``address`` (None: any) whose
    local socket is in ``cgroup`` (None: any; its level and id as the kernel compares them); its own slot
    (1 + index in ``ports``) and the slot of the port's next scope."""

    port: int
    address: IPNetwork | None = None
    cgroup: str | None = None
    cgroup_level: int = 0
    cgroup_id: int = 0
    slot: int = 0
    next: int = 0
    tcp_resource: int = 0
    has_http: bool = False
    reject_tcp: int = int(RejectMode.REJECT_RST)
    reject_http: int = int(RejectMode.REJECT_RST)
    incomplete: int = int(IncompleteMode.INCOMPLETE_DROP)
    defer_accept: bool = False
    lens: tuple[int, ...] = ()  # path lengths of the port's routes (struct route_lens)


@dataclass(frozen=True)
class KRoute:
    port: int  # inbound: its port scope's slot (KPort.slot); outbound: its service id
    method: int
    path: bytes
    resource: int
    outbound: bool = False


@dataclass(frozen=True)
class KSystemRule:
    metric: int  # enum system_metric (Sentinel's metricType)
    bbr: bool
    trigger_milli: int


@dataclass(frozen=True)
class KOutRoute:
    family: int  # 4 or 6
    port: int
    network: bytes  # 4 or 16 bytes
    prefix_bits: int
    resource: int  # TCP resource judged at connect(), 0 = none
    cgroup_level: int = 0  # 0: every process
    cgroup_id: int = 0
    http_service: int = 0  # HTTP resources of this destination (routes with outbound=True, port=id)
    lens: tuple[int, ...] = ()  # path lengths of the service's routes (struct route_lens)


@dataclass(frozen=True)
class CompiledInbound:
    resources: tuple[KResource, ...] = ()
    out_routes: tuple[KOutRoute, ...] = ()
    out_http_ports: tuple[int, ...] = ()  # remote ports of outbound HTTP resources
    system: tuple[KSystemRule, ...] = ()
    ports: tuple[KPort, ...] = ()
    routes: tuple[route_table.RouteEntry, ...] = ()  # routes and search markers
    http_reply: bytes = b""
    http_reply_keepalive: bytes = b""  # the same without Connection: close (the connection is kept)

    def fingerprint(self) -> str:
        """A digest of everything the kernel is given: equal rules, equal fingerprint."""
        return hashlib.sha256(repr(self).encode()).hexdigest()

    def resource_id(self, name: str) -> int:
        for r in self.resources:
            if r.name == name:
                return r.id
        raise KeyError(name)


def _interval(rule: FlowRule) -> int:
    return rule.stat_interval_in_ms or DEFAULT_INTERVAL_MS


def _flow(rule: FlowRule, ids: dict[str, int], where: str, problems: list[str]) -> KFlowRule | None:
    # cluster rules too: the daemon sets the node's threshold from its lease (sentinel_ebpf.cluster)
    dynamic = rule.token_calculate_strategy is not TokenCalculateStrategy.Direct or rule.cluster_mode
    interval = _interval(rule)
    if rule.control_behavior is ControlBehavior.Reject and (interval % BUCKET_MS or interval > WINDOW_MS):
        problems.append(
            f"{where}: statIntervalInMs {interval} must be a multiple of {BUCKET_MS} up to "
            f"{WINDOW_MS} for the kernel's LeapArray"
        )
        return None
    stat = rule.stat_resource
    if stat not in ids:
        problems.append(f"{where}: refResource {stat!r} is not a declared resource")
        return None
    if rule.control_behavior is ControlBehavior.Throttling:
        if rule.relation_strategy is RelationStrategy.AssociatedResource:
            problems.append(f"{where}: Throttling with AssociatedResource is not supported")
            return None
        cost_ns = 0 if rule.threshold <= 0 else math.ceil(interval * 1_000_000 / rule.threshold)
        return KFlowRule(
            ids[rule.resource], int(FlowBehavior.FLOW_THROTTLING), interval, 0, cost_ns,
            rule.max_queueing_time_ms * 1_000_000, dynamic, rule,
        )  # fmt: skip
    threshold_milli = math.floor(rule.threshold * 1000 + 1e-6)
    return KFlowRule(ids[stat], int(FlowBehavior.FLOW_REJECT), interval, threshold_milli, 0, 0, dynamic, rule)


ResourceKey = tuple[str, tuple[object, ...]]

FNV_OFFSET, FNV_PRIME = 0xCBF29CE484222325, 0x100000001B3


def fnv1a(data: bytes) -> int:
    """The kernel's hash of a parameter value (hotspot.bpf.h)."""
    h = FNV_OFFSET
    for b in data:
        h = ((h ^ b) * FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return h


def hot_value_bytes(param: str, value: str, ipv6_prefix_len: int = 128) -> bytes:
    """The bytes the kernel hashes for a parameter value: a client address as 16 bytes (IPv4 in the
    first 4; IPv6 cut to its first `ipv6_prefix_len` bits), a header value without optional whitespace, a
    query value decoded; at most SE_HOT_VALUE_MAX bytes (the kernel's one length, hotspot.bpf.h)."""
    if param == "remote_ip":
        addr = ipaddress.ip_address(value)
        if addr.version == 6:
            addr = ipaddress.ip_network(f"{addr}/{ipv6_prefix_len}", strict=False).network_address
        return addr.packed.ljust(16, b"\0")
    if param == "header":
        value = value.strip(" \t")
    return value.encode()[: int(SentinelLimits.SE_HOT_VALUE_MAX)]


def _hot(
    rule: HotspotRule, res_key: ResourceKey, protocol: str, where: str, problems: list[str]
) -> KHotRule | None:
    src = rule.param
    if src.kind != "remote_ip" and protocol != "http":
        problems.append(
            f"{where}: paramKey {rule.param_key!r} needs an HTTP resource (a TCP connection has no "
            "request to read it from)"
        )
        return None
    param = {"remote_ip": HotParam.HOT_REMOTE_IP, "header": HotParam.HOT_HEADER, "query": HotParam.HOT_QUERY}[
        src.kind
    ]
    pattern = (
        b""
        if src.kind == "remote_ip"
        else (b"\n" + src.name.lower().encode() + b":" if src.kind == "header" else src.name.encode() + b"=")
    )
    uid = zlib.crc32(repr((res_key, rule)).encode()) or 1
    specific = tuple(sorted((fnv1a(hot_value_bytes(src.kind, item.key, rule.ipv6_prefix)), item.threshold)
                            for item in rule.specific_items))  # fmt: skip
    return KHotRule(
        uid,
        int(rule.metric_type),
        int(rule.control_behavior),
        int(param),
        pattern,
        rule.threshold,
        rule.ipv6_prefix,
        rule.burst_count,
        rule.duration_in_sec * 1000,
        rule.max_queueing_time_ms,
        specific,
    )


def assign_ids(
    keys: list[ResourceKey], previous: Mapping[ResourceKey, int], last_id: int
) -> dict[ResourceKey, int]:
    """Stable resource ids: a resource that stays keeps its id (and so its statistics); a new one gets the
    next id after the last handed out, so an id freed by a reload is not reused while its requests may
    still be in flight."""
    limit = int(SentinelLimits.SE_MAX_RESOURCES) - 1
    ids = {k: previous[k] for k in keys if k in previous}
    used = set(ids.values())
    nxt = last_id
    for k in keys:
        if k in ids:
            continue
        for _ in range(limit):
            nxt = nxt % limit + 1
            if nxt not in used:
                break
        ids[k] = nxt
        used.add(nxt)
    return ids


CgroupResolver = Callable[[str], tuple[int, int]]


def cgroup2_identity(path: str, root: str | None = None) -> tuple[int, int]:
    """(level below the cgroup2 root, cgroup id) of a cgroup path such as /system.slice/app.service: the id
    is the directory's inode number, which is what bpf_get_current_ancestor_cgroup_id() returns."""
    from sentinel_ebpf.host import cgroup2_mount

    mount = root or cgroup2_mount()
    if mount is None:
        raise FileNotFoundError("cgroup2 is not mounted")
    full = os.path.join(mount, path.lstrip("/"))
    return len([p for p in path.split("/") if p]), os.stat(full).st_ino


def _out_route(r: Resource, rid: int, cgroups: CgroupResolver, problems: list[str]) -> KOutRoute:
    host = r.match.host or ipaddress.ip_network("0.0.0.0/0")
    level = cid = 0
    if r.match.cgroup and r.match.protocol == "tcp":
        try:
            level, cid = cgroups(r.match.cgroup)
        except OSError as exc:
            problems.append(f"resource {r.name!r}: cgroup {r.match.cgroup}: {exc.strerror or exc}")
    return KOutRoute(host.version, r.match.port, host.network_address.packed, host.prefixlen, rid, level, cid)


def _inbound_cgroup(r: Resource, cgroups: CgroupResolver, problems: list[str]) -> tuple[int, int]:
    """(level, id) of an inbound resource's match.cgroup, (0, 0) for none."""
    if not r.match.cgroup:
        return 0, 0
    try:
        return cgroups(r.match.cgroup)
    except OSError as exc:
        problems.append(f"resource {r.name!r}: cgroup {r.match.cgroup}: {exc.strerror or exc}")
        return 0, 0


ScopeKey = tuple[int, IPNetwork | None, str | None]  # port, match.address, match.cgroup


def _chain_scopes(ports: dict[ScopeKey, KPort], problems: list[str]) -> dict[ScopeKey, KPort]:
    """Slots for every scope, in port order, and each port's chain (struct port_conf ``next``): the most
    specific first, by address (longest prefix first, IPv6 before IPv4 at equal length, none last), then
    by cgroup (deepest first, none last)."""

    def specificity(kp: KPort) -> tuple[int, int, int]:
        bits = -1 if kp.address is None else kp.address.prefixlen
        version = 0 if kp.address is None else kp.address.version
        depth = -1 if kp.cgroup is None else kp.cgroup_level
        return (-bits, -version, -depth)

    by_port: dict[int, list[KPort]] = {}
    for kp in ports.values():
        by_port.setdefault(kp.port, []).append(kp)
    out: dict[ScopeKey, KPort] = {}
    slot = 1
    for port, scopes in by_port.items():
        scopes.sort(key=specificity)
        if len(scopes) > int(SentinelLimits.SE_PORT_SCOPES_MAX):
            problems.append(
                f"port {port}: {len(scopes)} scopes (each match.address and match.cgroup, and one for "
                f"resources naming neither): at most {int(SentinelLimits.SE_PORT_SCOPES_MAX)}"
            )
        for i, kp in enumerate(scopes):
            nxt = slot + 1 if i + 1 < len(scopes) else 0
            out[(port, kp.address, kp.cgroup)] = dataclasses.replace(kp, slot=slot, next=nxt)
            slot += 1
    return out


def compile_inbound(
    rules: RuleSet,
    previous: Mapping[ResourceKey, int] | None = None,
    last_id: int = 0,
    cgroups: CgroupResolver = cgroup2_identity,
) -> CompiledInbound:
    """Map entries for the resources of ``rules`` the kernel governs (inbound, and outbound TCP
    connections); CompileError lists everything unsupported.

    ``previous`` maps (name, match) of the rule set in force to its resource ids, which are kept."""
    problems: list[str] = []
    if not rules.bound:
        problems.append(
            "the document declares no resources: the kernel needs each resource's match "
            "(use this project's rules file format)"
        )
    for r in rules.resources:
        if not r.match.inbound and r.match.protocol == "http" and r.match.cgroup:
            problems.append(
                f"resource {r.name!r}: cgroup limits outbound connect()s; it cannot be applied to outbound "
                "HTTP requests (seen at TC, where no process is known)"
            )
    # every resource: inbound at TC, outbound at connect() and TC; but TLS ones, which the daemon
    # observes by tracing OpenSSL (daemon/tls_observer.py): the packet path cannot read them
    inbound = [r for r in rules.resources if not r.match.tls]
    if len(inbound) >= int(SentinelLimits.SE_MAX_RESOURCES):
        problems.append(f"{len(inbound)} resources: at most {int(SentinelLimits.SE_MAX_RESOURCES) - 1}")
    keyed = assign_ids([(r.name, r.match.key()) for r in inbound], previous or {}, last_id)
    ids = {r.name: keyed[(r.name, r.match.key())] for r in inbound}
    by_name = {r.name: r for r in inbound}
    breakers: dict[str, list[KBreaker]] = {}
    for i, cb in enumerate(rules.circuit_breaker_rules):
        where = f"circuitBreakerRules[{i}] ({cb.id or cb.resource})"
        res = by_name.get(cb.resource)
        if res is None:
            problems.append(f"{where}: resource {cb.resource!r} is not a resource the kernel governs")
            continue
        if cb.bucket_count > int(SentinelLimits.SE_CB_BUCKETS_MAX):
            problems.append(
                f"{where}: statSlidingWindowBucketCount {cb.bucket_count}: the kernel holds at most "
                f"{int(SentinelLimits.SE_CB_BUCKETS_MAX)} buckets"
            )
            continue
        mine = breakers.setdefault(cb.resource, [])
        threshold = int(cb.threshold) if cb.strategy is CbStrategy.ErrorCount else round(cb.threshold * 1e9)
        mine.append(KBreaker(
            uid=zlib.crc32(repr(((res.name, res.match.key()), cb)).encode()) or 1,
            id=cb.id or f"{cb.resource}#{len(mine)}", strategy=int(cb.strategy),
            retry_timeout_ms=cb.retry_timeout_ms, min_request=cb.min_request_amount,
            interval_ms=cb.stat_interval_ms, bucket_ms=cb.stat_interval_ms // cb.bucket_count,
            probe_num=cb.probe_num, max_rt_ms=cb.max_allowed_rt_ms, threshold_ppb=threshold,
        ))  # fmt: skip
    cb_limit = int(SentinelLimits.SE_BREAKERS_PER_RESOURCE)
    for name, bl in breakers.items():
        if len(bl) > cb_limit:
            problems.append(
                f"resource {name!r}: {len(bl)} circuit breakers, the kernel checks at most {cb_limit}"
            )
    hots: dict[str, list[KHotRule]] = {}
    for i, hr in enumerate(rules.hotspot_rules):
        where = f"hotSpotParamRules[{i}] ({hr.id or hr.resource})"
        res = by_name.get(hr.resource)
        if res is None:
            problems.append(f"{where}: resource {hr.resource!r} is not a resource the kernel governs")
            continue
        if not res.match.inbound:
            problems.append(f"{where}: hotspot rules on outbound resources are not enforced yet")
            continue
        kh = _hot(hr, (res.name, res.match.key()), res.match.protocol, where, problems)
        if kh is not None:
            hots.setdefault(hr.resource, []).append(kh)
    hot_limit = int(SentinelLimits.SE_HOTSPOT_RULES_PER_RESOURCE)
    for name, hl in hots.items():
        if len(hl) > hot_limit:
            problems.append(
                f"resource {name!r}: {len(hl)} hotspot rules, the kernel checks at most {hot_limit}"
            )

    flows: dict[str, list[KFlowRule]] = {}
    for i, rule in enumerate(rules.flow_rules):
        where = f"flowRules[{i}] ({rule.id or rule.resource})"
        if rule.resource not in ids:
            problems.append(f"{where}: resource {rule.resource!r} is not a resource the kernel governs")
            continue
        k = _flow(rule, ids, where, problems)
        if k is not None:
            flows.setdefault(rule.resource, []).append(k)
    limit = int(SentinelLimits.SE_FLOW_RULES_PER_RESOURCE)
    for name, fl in flows.items():
        if len(fl) > limit:
            problems.append(f"resource {name!r}: {len(fl)} flow rules, the kernel checks at most {limit}")
    isolation: dict[str, int] = {}
    for i, iso in enumerate(rules.isolation_rules):
        if iso.resource not in ids:
            problems.append(
                f"isolationRules[{i}]: resource {iso.resource!r} is not a resource the kernel governs"
            )
            continue
        # several isolation rules on one resource: the smallest threshold decides first
        isolation[iso.resource] = min(iso.threshold, isolation.get(iso.resource, iso.threshold))

    system = tuple(
        KSystemRule(int(r.metric_type), r.is_bbr, math.floor(r.trigger_count * 1000 + 1e-6))
        for r in rules.system_rules
    )
    if len(system) > int(SentinelLimits.SE_SYSTEM_RULES_MAX):
        problems.append(
            f"systemRules: {len(system)} rules, the kernel checks at most "
            f"{int(SentinelLimits.SE_SYSTEM_RULES_MAX)}"
        )

    reject_tcp = RejectMode.REJECT_DROP if rules.reject.tcp == "drop" else RejectMode.REJECT_RST
    http_mode = {"rst": RejectMode.REJECT_RST, "drop": RejectMode.REJECT_DROP}.get(
        rules.reject.http.mode, RejectMode.REJECT_HTTP_REPLY
    )
    incomplete = (
        IncompleteMode.INCOMPLETE_PASS
        if rules.reject.incomplete == "pass"
        else IncompleteMode.INCOMPLETE_DROP
    )
    ports: dict[ScopeKey, KPort] = {}
    scope_ids: dict[ScopeKey, int] = {}
    routes: list[KRoute] = []
    out_by_dest: dict[tuple[str, int], KOutRoute] = {}
    services: dict[tuple[str, int], int] = {}
    for r in inbound:
        if not r.match.inbound:
            route = _out_route(r, ids[r.name] if r.match.protocol == "tcp" else 0, cgroups, problems)
            dest = (str(r.match.host or "0.0.0.0/0"), r.match.port)
            if r.match.protocol == "http":
                sid = services.setdefault(dest, len(services) + 1)
                path = normalize_target(r.match.path or "/").encode("latin-1")  # as the kernel reads targets
                methods = [METHODS[r.match.method]] if r.match.method else list(METHODS.values())
                routes += [KRoute(sid, m, path, ids[r.name], outbound=True) for m in methods]
                route = dataclasses.replace(route, http_service=sid)
            prev = out_by_dest.get(dest)
            if prev is not None:  # a TCP and HTTP resources of one destination share its route
                route = dataclasses.replace(
                    prev, resource=prev.resource or route.resource, http_service=prev.http_service or route.http_service,
                    cgroup_level=prev.cgroup_level or route.cgroup_level, cgroup_id=prev.cgroup_id or route.cgroup_id,
                )  # fmt: skip
            out_by_dest[dest] = route
            continue
        scope = (r.match.port, r.match.address, r.match.cgroup)
        port = ports.get(
            scope,
            KPort(
                r.match.port,
                r.match.address,
                r.match.cgroup,
                *_inbound_cgroup(r, cgroups, problems),
                reject_tcp=int(reject_tcp),
                reject_http=int(http_mode),
                incomplete=int(incomplete),
            ),
        )
        if r.match.protocol == "tcp":
            port = dataclasses.replace(port, tcp_resource=ids[r.name])
        else:
            defer = rules.reject.defer_accept
            port = dataclasses.replace(
                port,
                has_http=True,
                defer_accept=defer is True or (not isinstance(defer, bool) and port.port in defer),
            )
            path = normalize_target(r.match.path or "/").encode("latin-1")  # as the kernel reads targets
            methods = [METHODS[r.match.method]] if r.match.method else list(METHODS.values())
            sid = scope_ids.setdefault(scope, len(scope_ids))  # the scope's slot once the chains are made
            routes += [KRoute(sid, m, path, ids[r.name]) for m in methods]
        ports[scope] = port
    ports = _chain_scopes(ports, problems)
    slot_of = {sid: ports[scope].slot for scope, sid in scope_ids.items()}
    routes = [rt if rt.outbound else dataclasses.replace(rt, port=slot_of[rt.port]) for rt in routes]
    # A specific-method route must win over an any-method route with the same path.
    any_method = {ids[r.name] for r in inbound if r.match.method is None}
    seen: dict[tuple[bool, int, int, bytes], KRoute] = {}
    for rt in routes:
        key = (rt.outbound, rt.port, rt.method, rt.path[:PATH_MAX])
        if key in seen and rt.resource in any_method:
            continue
        seen[key] = rt
    lens, entries = route_table.build((*k, rt.resource) for k, rt in seen.items())
    if len(entries) > int(SentinelLimits.SE_HTTP_ROUTES_MAX):
        problems.append(
            f"{len(entries)} HTTP route entries (routes per method and search markers): at most "
            f"{int(SentinelLimits.SE_HTTP_ROUTES_MAX)}; give resources a method, or fewer distinct path lengths"
        )
    ports = {p: dataclasses.replace(kp, lens=lens.get((False, kp.slot), ())) for p, kp in ports.items()}
    out_by_dest = {
        d: dataclasses.replace(r, lens=lens.get((True, r.http_service), ())) if r.http_service else r
        for d, r in out_by_dest.items()
    }
    if len(ports) > int(SentinelLimits.SE_PORTS_MAX):
        plain = all(kp.address is None and kp.cgroup is None for kp in ports.values())
        what = "protected ports" if plain else "port scopes"
        problems.append(f"{len(ports)} {what}: at most {int(SentinelLimits.SE_PORTS_MAX)}")
    if not isinstance(rules.reject.defer_accept, bool):
        http_ports = {kp.port for kp in ports.values() if kp.has_http}
        for p in sorted(set(rules.reject.defer_accept) - http_ports):
            problems.append(f"reject.deferAccept: port {p} has no inbound HTTP resource")
    if problems:
        raise CompileError(problems)
    resources = tuple(
        KResource(ids[r.name], r.name, (r.name, r.match.key()), isolation.get(r.name, 0),
                  tuple(flows.get(r.name, ())), tuple(hots.get(r.name, ())), tuple(breakers.get(r.name, ())))
        for r in inbound
    )  # fmt: skip
    return CompiledInbound(
        resources=resources,
        system=system,
        ports=tuple(ports.values()),
        routes=tuple(entries),
        out_routes=tuple(out_by_dest.values()),
        out_http_ports=tuple(sorted({port for _, port in services})),
        http_reply=rules.reject.http.response_bytes(),
        http_reply_keepalive=rules.reject.http.response_bytes(keep_alive=True),
    )
