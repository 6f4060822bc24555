"""Typed reading of one rule object: field specs, key matching, type checks, problem reporting."""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sentinel_ebpf.rules._source import Document, Path
from sentinel_ebpf.rules.errors import Problem

U32_MAX = 2**32 - 1
I64_MAX = 2**63 - 1
I64_MIN = -(2**63)


class KeyMode(enum.Enum):
    """How object keys are matched.

    STRICT: exact key names, unknown keys are problems (this project's rules file, the CRD YAML).
    GO_JSON: as Go's ``encoding/json``: exact match first, else case-insensitive; unknown keys ignored.
    """

    STRICT = "strict"
    GO_JSON = "go-json"


@dataclass(frozen=True)
class FieldSpec:
    """One rule field: its JSON key, the dataclass attribute, type and bounds."""

    key: str
    attr: str
    kind: str  # "int", "float", "str", "bool", "enum", "any"
    default: Any
    enum: type[enum.IntEnum] | None = None
    min: float | None = None
    max: float | None = None


@dataclass
class RuleContext:
    """Where a rule sits in its document; collects the rule's problems."""

    doc: Document
    section: str
    index: int | None
    path: Path
    problems: list[Problem]
    rule_id: str | None = None
    # attr/key -> the key as written in the document (case may differ in GO_JSON mode)
    raw_keys: dict[str, str] = field(default_factory=dict)
    # field -> text appended to its problems (e.g. the CRD's percent value before conversion)
    notes: dict[str, str] = field(default_factory=dict)

    def add(self, reason: str, field_name: str | None = None, subpath: Path = ()) -> None:
        path: Path = self.path
        if field_name is not None:
            path = (*path, self.raw_key(field_name))
        path = (*path, *subpath)
        if field_name in self.notes:
            reason = f"{reason} ({self.notes[field_name]})"
        self.problems.append(
            Problem(
                file=self.doc.file,
                reason=reason,
                section=self.section,
                index=self.index,
                rule_id=self.rule_id or None,
                field=self.field_label(field_name),
                line=self.doc.line(path),
            )
        )

    def raw_key(self, field_name: str) -> str:
        """The key of ``field_name`` in the document; a dotted field (``clusterConfig.x``) by its head."""
        return self.raw_keys.get(field_name, field_name.split(".")[0])

    def field_label(self, field_name: str | None) -> str | None:
        """The field a problem names; a context for a nested object prefixes its position."""
        return field_name


# First match wins: bool before int (a bool is an int), str before Sequence (a str is a sequence).
_TYPE_NAMES: tuple[tuple[type[Any], str], ...] = (
    (type(None), "null"),
    (bool, "a boolean"),
    (int, "an integer"),
    (float, "a number"),
    (str, "a string"),
    (Mapping, "an object"),
    (Sequence, "a list"),
)


def type_name(value: Any) -> str:
    """How a problem names the type of a value found where another was wanted (JSON's words)."""
    for kind, name in _TYPE_NAMES:
        if isinstance(value, kind):
            return name
    return type(value).__name__


def match_keys(
    raw: Mapping[Any, Any], known: Sequence[str], mode: KeyMode
) -> tuple[dict[str, str], list[str]]:
    """Map each known key to the key used in ``raw``; also return the unknown keys.

    In GO_JSON mode later keys win, as in Go, when several keys fold to the same field.
    """
    found: dict[str, str] = {}
    unknown: list[str] = []
    folded = {k.lower(): k for k in known}
    for key in raw:
        skey = str(key)
        if skey in known:
            found[skey] = skey
        elif mode is KeyMode.GO_JSON and skey.lower() in folded:
            found[folded[skey.lower()]] = skey
        else:
            unknown.append(skey)
    return found, unknown


def read_fields(
    raw: Any,
    specs: Sequence[FieldSpec],
    ctx: RuleContext,
    mode: KeyMode,
    enum_names: bool = True,
    enum_ints: bool = True,
    extra_known: Sequence[str] = (),
) -> dict[str, Any] | None:
    """Read ``raw`` (a mapping) into ``{attr: value}`` using defaults for absent keys.

    Problems go to ``ctx``; a field with a problem keeps its default so that checks of other fields
    still run. Returns None when ``raw`` is not a mapping at all.
    """
    if not isinstance(raw, Mapping):
        ctx.add(f"a rule must be an object, got {type_name(raw)}")
        return None
    keys = [s.key for s in specs] + list(extra_known)
    found, unknown = match_keys(raw, keys, mode)
    ctx.raw_keys.update(found)
    if "id" in found and isinstance(raw[found["id"]], str) and raw[found["id"]]:
        ctx.rule_id = raw[found["id"]]
    if mode is KeyMode.STRICT:
        folded = {k.lower(): k for k in keys}
        for key in unknown:
            hint = f" (did you mean {folded[key.lower()]!r}?)" if key.lower() in folded else ""
            ctx.add(f"unknown key {key!r}{hint}", field_name=key)
    out: dict[str, Any] = {}
    for spec in specs:
        out[spec.attr] = spec.default
        if spec.key not in found:
            continue
        value = raw[found[spec.key]]
        if value is None:
            continue  # null reads as absent, as in Go
        converted = convert(value, spec, ctx, enum_names=enum_names, enum_ints=enum_ints)
        if converted is not _BAD:
            out[spec.attr] = converted
    return out


@dataclass(frozen=True)
class ReadOptions:
    """How a rule's document is read, passed on to the reading of its nested objects."""

    mode: KeyMode
    enum_names: bool = True
    enum_ints: bool = True


R = TypeVar("R")
# (the rule's fields as read, its context, the reading's options) -> the rule, validated
RuleBuilder = Callable[[dict[str, Any], RuleContext, ReadOptions], R]


class RuleParser(Generic[R]):
    """``parse(raw, ctx, mode, *, enum_names, enum_ints)`` of one kind of rule: reads ``specs`` (from then
    on problems name the rule by its id), then ``build`` makes and validates the rule. None when ``raw``
    is not an object."""

    def __init__(self, specs: Sequence[FieldSpec], build: RuleBuilder[R]) -> None:
        self.specs = specs
        self.build = build

    def __call__(
        self, raw: Any, ctx: RuleContext, mode: KeyMode, *, enum_names: bool = True, enum_ints: bool = True
    ) -> R | None:
        values = read_fields(raw, self.specs, ctx, mode, enum_names=enum_names, enum_ints=enum_ints)
        if values is None:
            return None
        ctx.rule_id = values["id"] or None
        return self.build(values, ctx, ReadOptions(mode, enum_names, enum_ints))


def plain_rule(cls: Callable[..., R], validate: Callable[[R, RuleContext], None]) -> RuleBuilder[R]:
    """The builder of a rule made of its fields as they are read, then validated."""

    def build(values: dict[str, Any], ctx: RuleContext, _options: ReadOptions) -> R:
        rule = cls(**values)
        validate(rule, ctx)
        return rule

    return build


class _Bad:
    pass


_BAD: Any = _Bad()


def convert(
    value: Any, spec: FieldSpec, ctx: RuleContext, *, enum_names: bool = True, enum_ints: bool = True
) -> Any:
    key = spec.key
    if spec.kind == "any":
        return value
    if spec.kind == "str":
        if not isinstance(value, str):
            ctx.add(f"must be a string, got {type_name(value)}", key)
            return _BAD
        return value
    if spec.kind == "bool":
        if not isinstance(value, bool):
            ctx.add(f"must be true or false, got {type_name(value)}", key)
            return _BAD
        return value
    if spec.kind == "enum":
        assert spec.enum is not None
        return _convert_enum(value, spec.enum, key, ctx, enum_names, enum_ints)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        ctx.add(f"must be a number, got {type_name(value)}", key)
        return _BAD
    if isinstance(value, float) and not math.isfinite(value):
        ctx.add("must be a finite number", key)
        return _BAD
    if spec.kind == "int":
        if isinstance(value, float):
            if not value.is_integer():
                ctx.add(f"must be an integer, got {value!r}", key)
                return _BAD
            value = int(value)
    elif spec.kind == "float":
        value = float(value)
    if spec.min is not None and value < spec.min:
        ctx.add(f"must be >= {_num(spec.min)}, got {_num(value)}", key)
        return _BAD
    if spec.max is not None and value > spec.max:
        ctx.add(f"must be <= {_num(spec.max)}, got {_num(value)}", key)
        return _BAD
    return value


def _num(v: float) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _convert_enum(
    value: Any, enum_type: type[enum.IntEnum], key: str, ctx: RuleContext, enum_names: bool, enum_ints: bool
) -> Any:
    allowed = ", ".join(f"{m.value} ({m.name})" for m in enum_type)
    if isinstance(value, str) and enum_names:
        for member in enum_type:
            if member.name == value:
                return member
        ctx.add(f"unknown value {value!r}; allowed: {allowed}", key)
        return _BAD
    if isinstance(value, int) and not isinstance(value, bool) and enum_ints:
        try:
            return enum_type(value)
        except ValueError:
            ctx.add(f"invalid value {value}; allowed: {allowed}", key)
            return _BAD
    if isinstance(value, float) and value.is_integer() and enum_ints:
        return _convert_enum(int(value), enum_type, key, ctx, enum_names, enum_ints)
    want = "a name" if not enum_ints else ("an integer" if not enum_names else "an integer or a name")
    ctx.add(f"must be {want}, got {type_name(value)}; allowed: {allowed}", key)
    return _BAD


def check_resource_name(resource: str, ctx: RuleContext, *, regex: bool = False) -> None:
    """The checks every rule kind with a ``resource`` shares: not empty, and no regex resources."""
    if not resource:
        ctx.add("empty resource", "resource")
    if regex:
        ctx.add(
            "regex resource names are not supported: resources here are bound to traffic matches; "
            "write one rule per resource",
            "regex",
        )
