"""Flow rules (``flowRules``): sentinel-golang ``core/flow`` fields, enums, defaults and validation."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from sentinel_ebpf.rules._fields import (
    _BAD,
    U32_MAX,
    FieldSpec,
    KeyMode,
    ReadOptions,
    RuleContext,
    RuleParser,
    check_resource_name,
    convert,
    match_keys,
    type_name,
)

KIND = "flowRules"
I64 = 2**63 - 1


class TokenCalculateStrategy(enum.IntEnum):
    Direct = 0
    WarmUp = 1
    MemoryAdaptive = 2


class ControlBehavior(enum.IntEnum):
    """Also the ``controlBehavior`` of hotspot rules: sentinel-golang has one per package, alike."""

    Reject = 0
    Throttling = 1


class RelationStrategy(enum.IntEnum):
    CurrentResource = 0
    AssociatedResource = 1


class ClusterThresholdType(enum.IntEnum):
    """Sentinel's ``ClusterRuleConstant``: what ``threshold`` means in cluster mode."""

    AvgLocal = 0  # per node: the fleet's limit is threshold x live nodes
    Global = 1  # one limit for the whole fleet


@dataclass(frozen=True)
class ClusterConfig:
    """``clusterConfig`` of a flow rule with ``clusterMode: true`` (Sentinel's field names and defaults)."""

    threshold_type: ClusterThresholdType = ClusterThresholdType.AvgLocal
    fallback_to_local_when_fail: bool = True


DEFAULT_WARM_UP_COLD_FACTOR = 3
# Above this, sentinel-golang only logs a hint; we follow it and accept any u32.
STAT_INTERVAL_HINT_MS = 10 * 60 * 1000


@dataclass(frozen=True)
class FlowRule:
    resource: str
    threshold: float
    id: str = ""
    token_calculate_strategy: TokenCalculateStrategy = TokenCalculateStrategy.Direct
    control_behavior: ControlBehavior = ControlBehavior.Reject
    relation_strategy: RelationStrategy = RelationStrategy.CurrentResource
    ref_resource: str = ""
    max_queueing_time_ms: int = 0
    warm_up_period_sec: int = 0
    warm_up_cold_factor: int = 0
    stat_interval_in_ms: int = 0
    low_mem_usage_threshold: int = 0
    high_mem_usage_threshold: int = 0
    mem_low_water_mark_bytes: int = 0
    mem_high_water_mark_bytes: int = 0
    cluster_mode: bool = False
    cluster_config: ClusterConfig = field(default_factory=ClusterConfig)

    @property
    def effective_cold_factor(self) -> int:
        """sentinel-golang replaces a cold factor <= 1 by 3."""
        c = self.warm_up_cold_factor
        return DEFAULT_WARM_UP_COLD_FACTOR if c <= 1 else c

    @property
    def stat_resource(self) -> str:
        """The resource whose statistics this rule reads."""
        if self.relation_strategy is RelationStrategy.AssociatedResource:
            return self.ref_resource
        return self.resource

    def needs_statistic(self) -> bool:
        return (
            self.token_calculate_strategy is TokenCalculateStrategy.WarmUp
            or self.control_behavior is ControlBehavior.Reject
        )


FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("id", "id", "str", ""),
    FieldSpec("resource", "resource", "str", ""),
    FieldSpec(
        "tokenCalculateStrategy",
        "token_calculate_strategy",
        "enum",
        TokenCalculateStrategy.Direct,
        enum=TokenCalculateStrategy,
    ),
    FieldSpec("controlBehavior", "control_behavior", "enum", ControlBehavior.Reject, enum=ControlBehavior),
    FieldSpec("threshold", "threshold", "float", 0.0, min=0, max=U32_MAX),
    FieldSpec(
        "relationStrategy",
        "relation_strategy",
        "enum",
        RelationStrategy.CurrentResource,
        enum=RelationStrategy,
    ),
    FieldSpec("refResource", "ref_resource", "str", ""),
    FieldSpec("maxQueueingTimeMs", "max_queueing_time_ms", "int", 0, min=0, max=U32_MAX),
    FieldSpec("warmUpPeriodSec", "warm_up_period_sec", "int", 0, min=0, max=U32_MAX),
    FieldSpec("warmUpColdFactor", "warm_up_cold_factor", "int", 0, min=0, max=U32_MAX),
    FieldSpec("statIntervalInMs", "stat_interval_in_ms", "int", 0, min=0, max=U32_MAX),
    FieldSpec("lowMemUsageThreshold", "low_mem_usage_threshold", "int", 0, min=-I64 - 1, max=U32_MAX),
    FieldSpec("highMemUsageThreshold", "high_mem_usage_threshold", "int", 0, min=-I64 - 1, max=U32_MAX),
    FieldSpec("memLowWaterMarkBytes", "mem_low_water_mark_bytes", "int", 0, min=-I64 - 1, max=I64),
    FieldSpec("memHighWaterMarkBytes", "mem_high_water_mark_bytes", "int", 0, min=-I64 - 1, max=I64),
    FieldSpec("clusterMode", "cluster_mode", "bool", False),
    FieldSpec("clusterConfig", "cluster_config", "any", ClusterConfig()),
    FieldSpec("regex", "regex", "bool", False),
)

CLUSTER_FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec(
        "thresholdType", "threshold_type", "enum", ClusterThresholdType.AvgLocal, enum=ClusterThresholdType
    ),
    FieldSpec("fallbackToLocalWhenFail", "fallback_to_local_when_fail", "bool", True),
)


def _build(values: dict[str, Any], ctx: RuleContext, options: ReadOptions) -> FlowRule:
    regex = values.pop("regex")
    values["cluster_config"] = _parse_cluster_config(values["cluster_config"], ctx, options)
    rule = FlowRule(**values)
    validate(rule, ctx, regex=regex)
    return rule


parse = RuleParser(FIELDS, _build)


def _parse_cluster_config(raw: Any, ctx: RuleContext, options: ReadOptions) -> ClusterConfig:
    mode, enum_names, enum_ints = options.mode, options.enum_names, options.enum_ints
    if isinstance(raw, ClusterConfig):
        return raw
    if not isinstance(raw, dict):
        ctx.add(f"must be an object {{thresholdType, fallbackToLocalWhenFail}}, got {type_name(raw)}",
                "clusterConfig")  # fmt: skip
        return ClusterConfig()
    found, unknown = match_keys(raw, [s.key for s in CLUSTER_FIELDS], mode)
    if mode is KeyMode.STRICT:
        for key in unknown:
            ctx.add(f"unknown key {key!r} (known: thresholdType, fallbackToLocalWhenFail)", "clusterConfig")
    values: dict[str, Any] = {}
    for spec in CLUSTER_FIELDS:
        values[spec.attr] = spec.default
        if spec.key in found and raw[found[spec.key]] is not None:
            named = FieldSpec(f"clusterConfig.{spec.key}", spec.attr, spec.kind, spec.default, enum=spec.enum)
            v = convert(raw[found[spec.key]], named, ctx, enum_names=enum_names, enum_ints=enum_ints)
            if v is not _BAD:
                values[spec.attr] = v
    return ClusterConfig(**values)


def validate(rule: FlowRule, ctx: RuleContext, *, regex: bool = False) -> None:
    """sentinel-golang ``flow.IsValidRule``, every check reported instead of the first."""
    check_resource_name(rule.resource, ctx, regex=regex)
    rel = rule.relation_strategy
    if rel is RelationStrategy.AssociatedResource and not rule.ref_resource:
        ctx.add("refResource must be non empty when relationStrategy is AssociatedResource", "refResource")
    if rule.token_calculate_strategy is TokenCalculateStrategy.WarmUp:
        if rule.warm_up_period_sec <= 0:
            ctx.add("warmUpPeriodSec must be greater than 0 for WarmUp", "warmUpPeriodSec")
        if rule.warm_up_cold_factor == 1:
            ctx.add("warmUpColdFactor must be greater than 1 (0 means the default, 3)", "warmUpColdFactor")
    if rule.token_calculate_strategy is TokenCalculateStrategy.MemoryAdaptive:
        if rule.low_mem_usage_threshold <= 0:
            ctx.add("lowMemUsageThreshold must be > 0", "lowMemUsageThreshold")
        if rule.high_mem_usage_threshold <= 0:
            ctx.add("highMemUsageThreshold must be > 0", "highMemUsageThreshold")
        if rule.high_mem_usage_threshold >= rule.low_mem_usage_threshold:
            ctx.add(
                "highMemUsageThreshold must be < lowMemUsageThreshold "
                "(the threshold shrinks as memory usage grows)",
                "highMemUsageThreshold",
            )
        if rule.mem_low_water_mark_bytes <= 0:
            ctx.add("memLowWaterMarkBytes must be > 0", "memLowWaterMarkBytes")
        if rule.mem_high_water_mark_bytes <= 0:
            ctx.add("memHighWaterMarkBytes must be > 0", "memHighWaterMarkBytes")
        if rule.mem_low_water_mark_bytes >= rule.mem_high_water_mark_bytes:
            ctx.add("memLowWaterMarkBytes must be < memHighWaterMarkBytes", "memLowWaterMarkBytes")
    if rule.cluster_mode:
        # The fleet shares a count per window (leased into the kernel's Reject check): the other
        # behaviours have no shared count to lease from.
        if rule.token_calculate_strategy is not TokenCalculateStrategy.Direct:
            ctx.add("a cluster rule needs tokenCalculateStrategy Direct (WarmUp and MemoryAdaptive are "
                    "computed per node)", "clusterMode")  # fmt: skip
        if rule.control_behavior is not ControlBehavior.Reject:
            ctx.add("a cluster rule needs controlBehavior Reject (Throttling paces each node's own queue)",
                    "clusterMode")  # fmt: skip
        if rule.relation_strategy is not RelationStrategy.CurrentResource:
            ctx.add("a cluster rule needs relationStrategy CurrentResource", "clusterMode")
