"""Hotspot parameter rules (``hotSpotParamRules``), sentinel-golang ``core/hotspot``.

Here the "parameter" is a property of the traffic, named by ``paramKey``:

- ``remote_ip``: the client (inbound) or peer (outbound) address;
- ``header:<Name>``: an HTTP request header, name matched case-insensitively;
- ``query:<name>``: a query-string parameter of the request line, name matched exactly.

Values are compared as servers see them: a header value without its optional whitespace, a query name
and value %XX-decoded. ``ipv6PrefixLen`` keys IPv6 clients of a ``remote_ip`` rule by a prefix of their
address (default /64, what one site is usually given: per /128, one client could take 2**64 buckets).

``paramIndex`` (a position in a Go function's argument list) has no meaning for network traffic.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from sentinel_ebpf.rules._fields import (
    _BAD,
    U32_MAX,
    FieldSpec,
    KeyMode,
    ReadOptions,
    RuleContext,
    RuleParser,
    convert,
    match_keys,
    type_name,
)
from sentinel_ebpf.rules.flow import ControlBehavior as ControlBehavior  # also this kind's

KIND = "hotSpotParamRules"

# LRU sizes when paramsMaxCapacity is 0 (sentinel-golang hotspot/params_metric.go).
CONCURRENCY_MAX_COUNT = 4000
PARAMS_CAPACITY_BASE = 4000
PARAMS_MAX_CAPACITY = 20000
# Kernel limits: LRU map entries per rule, bytes of a parameter value and of a header/query name.
MAX_PARAMS_CAPACITY = 1 << 20
PARAM_VALUE_MAX_BYTES = 64
PARAM_NAME_MAX_BYTES = 64
DEFAULT_IPV6_PREFIX_LEN = 64
MAX_SPECIFIC_ITEMS = 256

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_QUERY_NAME = re.compile(r"^[^\s&=#?]+$")


class MetricType(enum.IntEnum):
    Concurrency = 0
    QPS = 1


class ParamKind(enum.IntEnum):
    """``valKind`` of a specific item (sentinel-golang ext/datasource ``ParamKind``)."""

    KindInt = 0
    KindString = 1
    KindBool = 2
    KindFloat64 = 3


@dataclass(frozen=True)
class ParamSource:
    kind: str  # "remote_ip", "header", "query"
    name: str = ""  # header name (lower case) or query parameter name

    def __str__(self) -> str:
        return self.kind if self.kind == "remote_ip" else f"{self.kind}:{self.name}"


@dataclass(frozen=True)
class SpecificItem:
    val_kind: ParamKind
    val_str: str
    threshold: int

    @property
    def key(self) -> str:
        """The canonical text a traffic value must equal to get this item's threshold."""
        return canonical_item_value(self.val_kind, self.val_str)


@dataclass(frozen=True)
class HotspotRule:
    resource: str
    param_key: str
    threshold: int
    id: str = ""
    metric_type: MetricType = MetricType.Concurrency
    control_behavior: ControlBehavior = ControlBehavior.Reject
    max_queueing_time_ms: int = 0
    burst_count: int = 0
    duration_in_sec: int = 0
    params_max_capacity: int = 0
    specific_items: tuple[SpecificItem, ...] = ()
    ipv6_prefix_len: int = 0  # remote_ip only; 0 (absent): DEFAULT_IPV6_PREFIX_LEN

    @property
    def ipv6_prefix(self) -> int:
        """Bits of an IPv6 client address that key its state (remote_ip rules)."""
        return self.ipv6_prefix_len or DEFAULT_IPV6_PREFIX_LEN

    @property
    def param(self) -> ParamSource:
        src = parse_param_key(self.param_key)
        assert src is not None, "validated rules always have a parseable paramKey"
        return src

    def specific_thresholds(self) -> dict[str, int]:
        return {item.key: item.threshold for item in self.specific_items}

    @property
    def capacity(self) -> int:
        """LRU capacity for per-value state (sentinel-golang ``newBaseTrafficShapingController``)."""
        return lru_capacity(self.metric_type, self.params_max_capacity, self.duration_in_sec)


def lru_capacity(metric_type: MetricType, params_max_capacity: int, duration_in_sec: int) -> int:
    if params_max_capacity > 0:
        return params_max_capacity
    if metric_type is MetricType.Concurrency:
        return CONCURRENCY_MAX_COUNT
    if duration_in_sec == 0:
        return PARAMS_MAX_CAPACITY
    size = min(PARAMS_MAX_CAPACITY, PARAMS_CAPACITY_BASE * duration_in_sec)
    return size if size > 0 else PARAMS_MAX_CAPACITY


def parse_param_key(key: str) -> ParamSource | None:
    if key == "remote_ip":
        return ParamSource("remote_ip")
    kind, sep, name = key.partition(":")
    if not sep or not name:
        return None
    if kind == "header" and _TOKEN.match(name) and len(name.encode()) <= PARAM_NAME_MAX_BYTES:
        return ParamSource("header", name.lower())
    if kind == "query" and _QUERY_NAME.match(name) and len(name.encode()) <= PARAM_NAME_MAX_BYTES:
        return ParamSource("query", name)
    return None


def canonical_float(value: float) -> str:
    # sentinel-golang rounds float items to 5 decimals: ParseFloat(Sprintf("%.5f", v)).
    return repr(float(f"{value:.5f}"))


def canonical_value(value: object) -> str:
    """Text form of an in-process parameter value, comparable with ``SpecificItem.key``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return canonical_float(value)
    return str(value)


_GO_BOOLS = {
    "1": True,
    "t": True,
    "T": True,
    "TRUE": True,
    "true": True,
    "True": True,
    "0": False,
    "f": False,
    "F": False,
    "FALSE": False,
    "false": False,
    "False": False,
}
_GO_INT = re.compile(r"^[+-]?[0-9]+$")


def canonical_item_value(kind: ParamKind, text: str) -> str:
    """Raise ValueError when ``text`` does not parse as ``kind`` (Go's strconv rules)."""
    if kind is ParamKind.KindInt:
        if not _GO_INT.match(text):
            raise ValueError(f"{text!r} is not an integer")
        return str(int(text))
    if kind is ParamKind.KindBool:
        if text not in _GO_BOOLS:
            raise ValueError(f"{text!r} is not a boolean")
        return "true" if _GO_BOOLS[text] else "false"
    if kind is ParamKind.KindFloat64:
        try:
            return canonical_float(float(text))
        except ValueError:
            raise ValueError(f"{text!r} is not a number") from None
    return text


FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("id", "id", "str", ""),
    FieldSpec("resource", "resource", "str", ""),
    FieldSpec("metricType", "metric_type", "enum", MetricType.Concurrency, enum=MetricType),
    FieldSpec("controlBehavior", "control_behavior", "enum", ControlBehavior.Reject, enum=ControlBehavior),
    FieldSpec("paramIndex", "param_index", "int", 0),
    FieldSpec("paramKey", "param_key", "str", ""),
    FieldSpec("threshold", "threshold", "int", 0, max=U32_MAX),
    FieldSpec("maxQueueingTimeMs", "max_queueing_time_ms", "int", 0, max=U32_MAX),
    FieldSpec("burstCount", "burst_count", "int", 0, max=U32_MAX),
    FieldSpec("durationInSec", "duration_in_sec", "int", 0, max=U32_MAX // 1000),
    FieldSpec("paramsMaxCapacity", "params_max_capacity", "int", 0, min=0, max=MAX_PARAMS_CAPACITY),
    FieldSpec("specificItems", "specific_items", "any", ()),
    FieldSpec("ipv6PrefixLen", "ipv6_prefix_len", "int", 0, min=0, max=128),
)

_ITEM_FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("valKind", "val_kind", "enum", ParamKind.KindInt, enum=ParamKind),
    FieldSpec("valStr", "val_str", "str", ""),
    FieldSpec("threshold", "threshold", "int", 0, min=0, max=U32_MAX),
)


def _build(values: dict[str, Any], ctx: RuleContext, options: ReadOptions) -> HotspotRule:
    param_index = values.pop("param_index")
    raw_items = values.pop("specific_items")
    indexed = _parse_items(raw_items, ctx, options)
    rule = HotspotRule(**values, specific_items=tuple(item for _, item in indexed))
    validate(rule, ctx, param_index=param_index, item_indices=[i for i, _ in indexed])
    return rule


parse = RuleParser(FIELDS, _build)


def _parse_items(raw_items: Any, ctx: RuleContext, options: ReadOptions) -> list[tuple[int, SpecificItem]]:
    """The well-formed items with their positions in the document."""
    mode, enum_names, enum_ints = options.mode, options.enum_names, options.enum_ints
    if raw_items in ((), None):
        return []
    if not isinstance(raw_items, list):
        ctx.add(
            f"must be a list of {{valKind, valStr, threshold}}, got {type_name(raw_items)}", "specificItems"
        )
        return []
    if len(raw_items) > MAX_SPECIFIC_ITEMS:
        ctx.add(f"at most {MAX_SPECIFIC_ITEMS} specific items", "specificItems")
    items: list[tuple[int, SpecificItem]] = []
    for i, raw in enumerate(raw_items):
        fname = f"specificItems[{i}]"
        if not isinstance(raw, dict):
            ctx.add(f"must be an object {{valKind, valStr, threshold}}, got {type_name(raw)}", fname)
            continue
        sub = _ItemContext(ctx, i)
        values: dict[str, Any] = {}
        found, unknown = match_keys(raw, [s.key for s in _ITEM_FIELDS], mode)
        if mode is KeyMode.STRICT:
            for key in unknown:
                sub.add(f"unknown key {key!r}", key)
        for spec in _ITEM_FIELDS:
            values[spec.attr] = spec.default
            if spec.key in found and raw[found[spec.key]] is not None:
                sub.raw_keys[spec.key] = found[spec.key]
                v = convert(raw[found[spec.key]], spec, sub, enum_names=enum_names, enum_ints=enum_ints)
                if v is not _BAD:
                    values[spec.attr] = v
        item = SpecificItem(**values)
        try:
            canonical_item_value(item.val_kind, item.val_str)
        except ValueError as exc:
            sub.add(f"{exc} but valKind is {item.val_kind.name}", "valStr")
            continue
        items.append((i, item))
    return items


class _ItemContext(RuleContext):
    """Reports problems of ``specificItems[i].<field>`` with the item's own line."""

    def __init__(self, parent: RuleContext, index: int) -> None:
        super().__init__(
            doc=parent.doc,
            section=parent.section,
            index=parent.index,
            path=(*parent.path, parent.raw_keys.get("specificItems", "specificItems"), index),
            problems=parent.problems,
            rule_id=parent.rule_id,
        )
        self.prefix = f"specificItems[{index}]"

    def raw_key(self, field_name: str) -> str:
        return self.raw_keys.get(field_name, field_name)

    def field_label(self, field_name: str | None) -> str | None:
        return f"{self.prefix}.{field_name}" if field_name else self.prefix


def validate(
    rule: HotspotRule, ctx: RuleContext, *, param_index: int = 0, item_indices: list[int] | None = None
) -> None:
    """sentinel-golang ``hotspot.IsValidRule`` plus this project's parameter sources and kernel limits."""
    if not rule.resource:
        ctx.add("empty resource", "resource")
    if rule.threshold < 0:
        ctx.add("threshold must be >= 0", "threshold")
    if rule.metric_type is MetricType.QPS and rule.duration_in_sec <= 0:
        ctx.add("durationInSec must be > 0 for the QPS metric type", "durationInSec")
    if param_index != 0:
        ctx.add(
            "paramIndex is not supported: it names a Go function argument, and traffic has none; "
            "use paramKey: remote_ip, header:<Name> or query:<name>",
            "paramIndex",
        )
    if not rule.param_key:
        if param_index == 0:
            ctx.add("paramKey is required: remote_ip, header:<Name> or query:<name>", "paramKey")
    else:
        src = parse_param_key(rule.param_key)
        if src is None:
            ctx.add(
                f"invalid paramKey {rule.param_key!r}: use remote_ip, header:<Name> or query:<name> "
                f"(names up to {PARAM_NAME_MAX_BYTES} bytes)",
                "paramKey",
            )
        else:
            _check_item_values(rule, src, ctx, item_indices)
            if rule.ipv6_prefix_len and src.kind != "remote_ip":
                ctx.add(
                    f"ipv6PrefixLen applies to paramKey remote_ip only (this rule's is {rule.param_key!r}): "
                    "remove it",
                    "ipv6PrefixLen",
                )
    if rule.control_behavior is ControlBehavior.Reject and rule.burst_count < 0:
        ctx.add("burstCount must be >= 0", "burstCount")
    if rule.control_behavior is ControlBehavior.Throttling and rule.max_queueing_time_ms < 0:
        ctx.add("maxQueueingTimeMs must be >= 0", "maxQueueingTimeMs")
    if rule.threshold + max(rule.burst_count, 0) > U32_MAX:
        ctx.add("threshold + burstCount must fit in 32 bits", "burstCount")


def _check_item_values(
    rule: HotspotRule, src: ParamSource, ctx: RuleContext, item_indices: list[int] | None
) -> None:
    seen: set[str] = set()
    indices = item_indices if item_indices is not None else list(range(len(rule.specific_items)))
    for i, item in zip(indices, rule.specific_items, strict=True):
        sub = _ItemContext(ctx, i)
        key = item.key
        if len(key.encode()) > PARAM_VALUE_MAX_BYTES:
            sub.add(
                f"value is longer than {PARAM_VALUE_MAX_BYTES} bytes, the longest the kernel compares",
                "valStr",
            )
        if src.kind == "remote_ip":
            try:
                ipaddress.ip_address(key)
            except ValueError:
                sub.add(f"{item.val_str!r} is not an IP address (paramKey is remote_ip)", "valStr")
        if key in seen:
            sub.add(f"duplicate specific item {key!r}", "valStr")
        seen.add(key)
