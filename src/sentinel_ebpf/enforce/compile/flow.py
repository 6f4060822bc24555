"""Flow rules (flowRules) -> each resource's ``KFlowRule``s: thresholds scaled, throttling costs
precomputed."""

from __future__ import annotations

import math

from sentinel_ebpf._types import FlowBehavior, SentinelLimits
from sentinel_ebpf.enforce.compile.kernel import KFlowRule, check_per_resource, governed_rules
from sentinel_ebpf.rules import RuleSet
from sentinel_ebpf.rules.flow import ControlBehavior, FlowRule, RelationStrategy, TokenCalculateStrategy

BUCKET_MS = int(SentinelLimits.SE_BUCKET_MS)
WINDOW_MS = BUCKET_MS * int(SentinelLimits.SE_BUCKETS)
DEFAULT_INTERVAL_MS = 1000


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


def compile_flow(rules: RuleSet, ids: dict[str, int], problems: list[str]) -> dict[str, list[KFlowRule]]:
    """Resource name -> its flow rules, in order."""
    flows: dict[str, list[KFlowRule]] = {}
    for where, rule, _ in governed_rules(rules.flow_rules, "flowRules", ids, problems):
        k = _flow(rule, ids, where, problems)
        if k is not None:
            flows.setdefault(rule.resource, []).append(k)
    check_per_resource(flows, "flow rules", int(SentinelLimits.SE_FLOW_RULES_PER_RESOURCE), problems)
    return flows
