"""RuleSet -> the kernel maps' contents, as plain values (``CompiledInbound``): everything the hot path
can do without is decided here (routes expanded per method, thresholds scaled, throttling costs
precomputed), one module per rule kind.

What the kernel data plane does not enforce yet is refused with a message naming the rule, never
silently dropped.
"""

from __future__ import annotations

from collections.abc import Mapping

from sentinel_ebpf._types import SentinelLimits
from sentinel_ebpf.enforce.compile.breaker import compile_breakers
from sentinel_ebpf.enforce.compile.flow import compile_flow
from sentinel_ebpf.enforce.compile.hotspot import compile_hotspot
from sentinel_ebpf.enforce.compile.kernel import (
    CgroupResolver,
    CompiledInbound,
    CompileError,
    KResource,
    ResourceKey,
)
from sentinel_ebpf.enforce.compile.outbound import check_outbound
from sentinel_ebpf.enforce.compile.resources import (
    assign_ids,
    cgroup2_identity,
    compile_isolation,
    compile_ports_routes,
)
from sentinel_ebpf.enforce.compile.system import compile_system
from sentinel_ebpf.rules import RuleSet


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
    check_outbound(rules, problems)
    # every resource: inbound at TC, outbound at connect() and TC; but TLS ones, which the daemon
    # observes by tracing OpenSSL (daemon/tls_observer.py): the packet path cannot read them
    inbound = [r for r in rules.resources if not r.match.tls]
    if len(inbound) >= int(SentinelLimits.SE_MAX_RESOURCES):
        problems.append(f"{len(inbound)} resources: at most {int(SentinelLimits.SE_MAX_RESOURCES) - 1}")
    keyed = assign_ids([(r.name, r.match.key()) for r in inbound], previous or {}, last_id)
    ids = {r.name: keyed[(r.name, r.match.key())] for r in inbound}
    by_name = {r.name: r for r in inbound}
    breakers = compile_breakers(rules, by_name, problems)
    hots = compile_hotspot(rules, by_name, problems)
    flows = compile_flow(rules, ids, problems)
    isolation = compile_isolation(rules, ids, problems)
    system = compile_system(rules, problems)
    placed = compile_ports_routes(rules, inbound, ids, cgroups, problems)
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
        ports=placed.ports,
        routes=placed.routes,
        out_routes=placed.out_routes,
        out_http_ports=placed.out_http_ports,
        http_reply=rules.reject.http.response_bytes(),
        http_reply_keepalive=rules.reject.http.response_bytes(keep_alive=True),
    )
