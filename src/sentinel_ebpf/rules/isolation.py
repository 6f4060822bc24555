"""Isolation rules (``isolationRules``): concurrency limits, sentinel-golang ``core/isolation``."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from sentinel_ebpf.rules._fields import (
    U32_MAX,
    FieldSpec,
    ReadOptions,
    RuleContext,
    RuleParser,
    check_resource_name,
)

KIND = "isolationRules"


class MetricType(enum.IntEnum):
    Concurrency = 0


@dataclass(frozen=True)
class IsolationRule:
    resource: str
    threshold: int
    id: str = ""
    metric_type: MetricType = MetricType.Concurrency


FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("id", "id", "str", ""),
    FieldSpec("resource", "resource", "str", ""),
    FieldSpec("metricType", "metric_type", "enum", MetricType.Concurrency, enum=MetricType),
    FieldSpec("threshold", "threshold", "int", 0, min=0, max=U32_MAX),
    FieldSpec("regex", "regex", "bool", False),
)


def _build(values: dict[str, Any], ctx: RuleContext, _options: ReadOptions) -> IsolationRule:
    regex = values.pop("regex")
    rule = IsolationRule(**values)
    validate(rule, ctx, regex=regex)
    return rule


parse = RuleParser(FIELDS, _build)


def validate(rule: IsolationRule, ctx: RuleContext, *, regex: bool = False) -> None:
    """sentinel-golang ``isolation.IsValidRule``."""
    check_resource_name(rule.resource, ctx, regex=regex)
    if rule.threshold == 0:
        ctx.add("threshold must be > 0 (a concurrency limit of 0 would block everything)", "threshold")
