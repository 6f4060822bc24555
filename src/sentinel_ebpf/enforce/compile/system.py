"""System rules (systemRules) -> ``KSystemRule``s."""

from __future__ import annotations

import math

from sentinel_ebpf._types import SentinelLimits
from sentinel_ebpf.enforce.compile.kernel import KSystemRule
from sentinel_ebpf.rules import RuleSet


def compile_system(rules: RuleSet, problems: list[str]) -> tuple[KSystemRule, ...]:
    system = tuple(
        KSystemRule(int(r.metric_type), r.is_bbr, math.floor(r.trigger_count * 1000 + 1e-6))
        for r in rules.system_rules
    )
    if len(system) > int(SentinelLimits.SE_SYSTEM_RULES_MAX):
        problems.append(
            f"systemRules: {len(system)} rules, the kernel checks at most "
            f"{int(SentinelLimits.SE_SYSTEM_RULES_MAX)}"
        )
    return system
