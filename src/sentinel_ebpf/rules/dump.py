"""Write a ``RuleSet`` back out in any of the three formats (the inverse of ``loader``)."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any

from sentinel_ebpf.rules import circuitbreaker, flow, hotspot, isolation, system
from sentinel_ebpf.rules._fields import FieldSpec
from sentinel_ebpf.rules.loader import CRD_API_VERSION, CRD_KINDS
from sentinel_ebpf.rules.ruleset import SECTIONS, AnyRule, RuleSet

FIELDS: dict[str, tuple[FieldSpec, ...]] = {
    "flowRules": flow.FIELDS,
    "isolationRules": isolation.FIELDS,
    "circuitBreakerRules": circuitbreaker.FIELDS,
    "hotSpotParamRules": hotspot.FIELDS,
    "systemRules": system.FIELDS,
}
_SKIP = {"regex", "paramIndex"}


def rule_to_dict(
    rule: AnyRule, section: str, *, enum_names: bool = False, defaults: bool = True
) -> dict[str, Any]:
    """One rule as a JSON object with sentinel-golang keys."""
    out: dict[str, Any] = {}
    for spec in FIELDS[section]:
        if spec.key in _SKIP:
            continue
        value = getattr(rule, spec.attr)
        if (
            not defaults
            and value == spec.default
            and spec.key not in ("resource", "threshold")
            and spec.kind != "enum"
        ):
            continue
        if spec.key == "specificItems":
            value = [
                {
                    "valKind": item.val_kind.name if enum_names else int(item.val_kind),
                    "valStr": item.val_str,
                    "threshold": item.threshold,
                }
                for item in value
            ]
        elif isinstance(value, flow.ClusterConfig):
            kind = value.threshold_type
            value = {
                "thresholdType": kind.name if enum_names else int(kind),
                "fallbackToLocalWhenFail": value.fallback_to_local_when_fail,
            }
        elif isinstance(value, enum.IntEnum):
            value = value.name if enum_names else int(value)
        out[spec.key] = value
    return out


def to_project(rs: RuleSet, *, defaults: bool = False) -> dict[str, Any]:
    """This project's rules file."""
    out: dict[str, Any] = {
        "resources": [{"name": r.name, "match": r.match.as_dict()} for r in rs.resources],
    }
    for section in SECTIONS:
        rules = rs.rules(section)
        if rules:
            out[section] = [rule_to_dict(r, section, enum_names=True, defaults=defaults) for r in rules]
    http = rs.reject.http
    http_out: dict[str, Any] = (
        {"mode": http.mode}
        if http.mode != "response"
        else {"status": http.status, "body": http.body, "headers": dict(http.headers)}
    )
    defer = rs.reject.defer_accept
    out["reject"] = {
        "http": http_out, "tcp": rs.reject.tcp, "incomplete": rs.reject.incomplete,
        "deferAccept": defer if isinstance(defer, bool) else list(defer),
    }  # fmt: skip
    return out


def to_sentinel_json(rs: RuleSet, section: str) -> list[dict[str, Any]]:
    """A sentinel-golang datasource array of one kind (integer enums)."""
    return [rule_to_dict(r, section) for r in rs.rules(section)]


def to_crd(rs: RuleSet, section: str, name: str = "sentinel-rules") -> dict[str, Any]:
    """A ``datasource.sentinel.io/v1alpha1`` object of one kind (enum names, percent thresholds)."""
    kind = {v: k for k, v in CRD_KINDS.items()}[section]
    rules: list[dict[str, Any]] = []
    for rule in rs.rules(section):
        d = rule_to_dict(rule, section, enum_names=True, defaults=False)
        if isinstance(rule, circuitbreaker.CircuitBreakerRule) and rule.is_ratio:
            d["threshold"] = _percent(rule.threshold)
        if isinstance(rule, system.SystemRule) and rule.metric_type in (
            system.MetricType.Load,
            system.MetricType.CpuUsage,
        ):
            d["triggerCount"] = _percent(rule.trigger_count)
        if isinstance(rule, system.SystemRule) and rule.strategy is system.AdaptiveStrategy.Unset:
            d.pop("strategy", None)
        rules.append(d)
    return {"apiVersion": CRD_API_VERSION, "kind": kind, "metadata": {"name": name}, "spec": {"rules": rules}}


def _percent(ratio: float) -> float | int:
    value = round(ratio * 100, 10)
    return int(value) if float(value).is_integer() else value


def sections_present(rs: RuleSet) -> Sequence[str]:
    return [s for s in SECTIONS if rs.rules(s)]
