"""System adaptive protection rules (``systemRules``), sentinel-golang ``core/system``.

System rules have no resource: they guard all inbound traffic of the host together.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sentinel_ebpf.rules._fields import U32_MAX, FieldSpec, RuleContext, RuleParser, plain_rule

KIND = "systemRules"


class MetricType(enum.IntEnum):
    Load = 0
    AvgRT = 1
    Concurrency = 2
    InboundQPS = 3
    CpuUsage = 4


class AdaptiveStrategy(enum.IntEnum):
    """``strategy``: -1 NoAdaptive, 1 BBR. sentinel-golang treats any value other than BBR (0 included)
    as no adaptive strategy; 0 is accepted and kept as written."""

    NoAdaptive = -1
    Unset = 0
    BBR = 1


@dataclass(frozen=True)
class SystemRule:
    metric_type: MetricType
    trigger_count: float
    id: str = ""
    strategy: AdaptiveStrategy = AdaptiveStrategy.Unset

    @property
    def is_bbr(self) -> bool:
        return self.strategy is AdaptiveStrategy.BBR


FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("id", "id", "str", ""),
    FieldSpec("metricType", "metric_type", "enum", MetricType.Load, enum=MetricType),
    FieldSpec("triggerCount", "trigger_count", "float", 0.0, max=U32_MAX),
    FieldSpec("strategy", "strategy", "enum", AdaptiveStrategy.Unset, enum=AdaptiveStrategy),
)


def validate(rule: SystemRule, ctx: RuleContext) -> None:
    """sentinel-golang ``system.IsValidSystemRule`` (same messages)."""
    if rule.trigger_count < 0:
        ctx.add("negative threshold", "triggerCount")
    if rule.metric_type is MetricType.CpuUsage and rule.trigger_count > 1:
        ctx.add("invalid CPU usage, valid range is [0.0, 1.0]", "triggerCount")


parse = RuleParser(FIELDS, plain_rule(SystemRule, validate))
