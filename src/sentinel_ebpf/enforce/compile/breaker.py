"""Circuit breaker rules (circuitBreakerRules) -> each resource's ``KBreaker``s."""

from __future__ import annotations

import zlib

from sentinel_ebpf._types import SentinelLimits
from sentinel_ebpf.enforce.compile.kernel import KBreaker, check_per_resource, governed_rules
from sentinel_ebpf.rules import RuleSet
from sentinel_ebpf.rules.circuitbreaker import Strategy as CbStrategy
from sentinel_ebpf.rules.resource import Resource


def compile_breakers(
    rules: RuleSet, by_name: dict[str, Resource], problems: list[str]
) -> dict[str, list[KBreaker]]:
    """Resource name -> its circuit breakers, in order."""
    breakers: dict[str, list[KBreaker]] = {}
    for where, cb, res in governed_rules(
        rules.circuit_breaker_rules, "circuitBreakerRules", by_name, problems
    ):
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
    check_per_resource(breakers, "circuit breakers", int(SentinelLimits.SE_BREAKERS_PER_RESOURCE), problems)
    return breakers
