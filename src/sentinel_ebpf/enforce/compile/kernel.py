"""What the kernel is given, as plain values: the ``K*`` entries of one compiled rule set
(``CompiledInbound``), and ``CompileError`` for what it cannot enforce (yet)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from sentinel_ebpf._types import HttpMethod, IncompleteMode, RejectMode
from sentinel_ebpf.enforce import routes as route_table
from sentinel_ebpf.errors import SentinelError
from sentinel_ebpf.rules.flow import FlowRule
from sentinel_ebpf.rules.resource import IPNetwork

METHODS = {m.name.removeprefix("HTTP_"): int(m) for m in HttpMethod if m.name.startswith("HTTP_") and
           m not in (HttpMethod.HTTP_METHOD_NONE, HttpMethod.HTTP_METHOD_MAX)}  # fmt: skip

ResourceKey = tuple[str, tuple[object, ...]]
CgroupResolver = Callable[[str], tuple[int, int]]


class CompileError(SentinelError):
    """The rule set uses something the kernel data plane cannot enforce (yet); ``problems`` lists it all."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("cannot enforce in the kernel:\n" + "\n".join(f"  - {p}" for p in problems))


class _ResourceRule(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def resource(self) -> str: ...


R = TypeVar("R", bound=_ResourceRule)
V = TypeVar("V")


def governed_rules(
    rules: Iterable[R], section: str, governed: Mapping[str, V], problems: list[str]
) -> Iterator[tuple[str, R, V]]:
    """(where, rule, governed[rule.resource]) for each rule of a document ``section`` (flowRules...) whose
    resource the kernel governs; a problem for each other one."""
    for i, rule in enumerate(rules):
        where = f"{section}[{i}] ({rule.id or rule.resource})"
        res = governed.get(rule.resource)
        if res is None:
            problems.append(f"{where}: resource {rule.resource!r} is not a resource the kernel governs")
            continue
        yield where, rule, res


def check_per_resource(
    by_resource: Mapping[str, Sequence[object]], what: str, limit: int, problems: list[str]
) -> None:
    """A problem for each resource with more than ``limit`` of ``what`` (the kernel checks that many)."""
    for name, items in by_resource.items():
        if len(items) > limit:
            problems.append(f"resource {name!r}: {len(items)} {what}, the kernel checks at most {limit}")


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
