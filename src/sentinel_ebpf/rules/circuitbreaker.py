"""Circuit breaker rules (``circuitBreakerRules``), sentinel-golang ``core/circuitbreaker``."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sentinel_ebpf.rules._fields import U32_MAX, FieldSpec, RuleContext, RuleParser, plain_rule

KIND = "circuitBreakerRules"
# The kernel keeps a breaker's sliding window in a fixed array.
MAX_BUCKET_COUNT = 100


class Strategy(enum.IntEnum):
    SlowRequestRatio = 0
    ErrorRatio = 1
    ErrorCount = 2


@dataclass(frozen=True)
class CircuitBreakerRule:
    resource: str
    strategy: Strategy
    retry_timeout_ms: int
    stat_interval_ms: int
    threshold: float
    id: str = ""
    min_request_amount: int = 0
    stat_sliding_window_bucket_count: int = 0
    max_allowed_rt_ms: int = 0
    probe_num: int = 0

    @property
    def bucket_count(self) -> int:
        """sentinel-golang ``getRuleStatSlidingWindowBucketCount``: 0 or not dividing the interval -> 1."""
        return effective_bucket_count(self.stat_interval_ms, self.stat_sliding_window_bucket_count)

    @property
    def is_ratio(self) -> bool:
        return self.strategy in (Strategy.SlowRequestRatio, Strategy.ErrorRatio)


def effective_bucket_count(stat_interval_ms: int, bucket_count: int) -> int:
    if bucket_count == 0 or stat_interval_ms % bucket_count != 0:
        return 1
    return bucket_count


FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("id", "id", "str", ""),
    FieldSpec("resource", "resource", "str", ""),
    FieldSpec("strategy", "strategy", "enum", Strategy.SlowRequestRatio, enum=Strategy),
    FieldSpec("retryTimeoutMs", "retry_timeout_ms", "int", 0, min=0, max=U32_MAX),
    FieldSpec("minRequestAmount", "min_request_amount", "int", 0, min=0, max=U32_MAX),
    FieldSpec("statIntervalMs", "stat_interval_ms", "int", 0, min=0, max=U32_MAX),
    FieldSpec(
        "statSlidingWindowBucketCount", "stat_sliding_window_bucket_count", "int", 0, min=0, max=U32_MAX
    ),
    FieldSpec("maxAllowedRtMs", "max_allowed_rt_ms", "int", 0, min=0, max=U32_MAX),
    FieldSpec("threshold", "threshold", "float", 0.0, max=U32_MAX),
    FieldSpec("probeNum", "probe_num", "int", 0, min=0, max=U32_MAX),
)


def validate(rule: CircuitBreakerRule, ctx: RuleContext) -> None:
    """sentinel-golang ``circuitbreaker.IsValidRule`` plus the kernel's window size limit."""
    if not rule.resource:
        ctx.add("empty resource", "resource")
    if rule.stat_interval_ms <= 0:
        ctx.add("statIntervalMs must be > 0", "statIntervalMs")
    if rule.retry_timeout_ms <= 0:
        ctx.add("retryTimeoutMs must be > 0", "retryTimeoutMs")
    if rule.threshold < 0:
        ctx.add("threshold must be >= 0", "threshold")
    elif rule.is_ratio and rule.threshold > 1.0:
        what = "slow request" if rule.strategy is Strategy.SlowRequestRatio else "error"
        ctx.add(f"invalid {what} ratio threshold {rule.threshold} (valid range: [0.0, 1.0])", "threshold")
    elif rule.strategy is Strategy.ErrorCount and not float(rule.threshold).is_integer():
        ctx.add(
            f"ErrorCount threshold must be a whole count, got {rule.threshold} "
            "(sentinel-golang truncates it)",
            "threshold",
        )
    if rule.stat_sliding_window_bucket_count > MAX_BUCKET_COUNT:
        ctx.add(
            f"statSlidingWindowBucketCount must be <= {MAX_BUCKET_COUNT} "
            "(the kernel keeps the window in a fixed array)",
            "statSlidingWindowBucketCount",
        )


parse = RuleParser(FIELDS, plain_rule(CircuitBreakerRule, validate))
