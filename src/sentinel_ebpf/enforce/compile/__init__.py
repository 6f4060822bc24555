"""RuleSet -> kernel map contents: ``compile_inbound`` (ruleset.py) calls one module per rule kind
(resources: ids, port scopes, routes, isolation, cgroups; flow; hotspot; breaker; system; outbound) and
gives the values of kernel.py (``CompiledInbound`` and its ``K*`` entries)."""

from sentinel_ebpf.enforce.compile.hotspot import fnv1a, hot_value_bytes
from sentinel_ebpf.enforce.compile.kernel import (
    CgroupResolver,
    CompiledInbound,
    CompileError,
    KBreaker,
    KFlowRule,
    KHotRule,
    KOutRoute,
    KPort,
    KResource,
    KRoute,
    KSystemRule,
    ResourceKey,
)
from sentinel_ebpf.enforce.compile.resources import assign_ids, cgroup2_identity
from sentinel_ebpf.enforce.compile.ruleset import compile_inbound

__all__ = [
    "CgroupResolver",
    "CompileError",
    "CompiledInbound",
    "KBreaker",
    "KFlowRule",
    "KHotRule",
    "KOutRoute",
    "KPort",
    "KResource",
    "KRoute",
    "KSystemRule",
    "ResourceKey",
    "assign_ids",
    "cgroup2_identity",
    "compile_inbound",
    "fnv1a",
    "hot_value_bytes",
]
