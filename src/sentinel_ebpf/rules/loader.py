"""Load a rules document in any of the three accepted formats into a validated ``RuleSet``.

Formats (detected from the content):

- this project's rules file (YAML or JSON object): ``resources``, the five sentinel-golang rule arrays
  by name, and ``reject``; keys are exact, unknown keys are errors;
- a sentinel-golang JSON array of one rule kind, as its file/etcd/nacos datasources read it: keys are
  matched case-insensitively and unknown keys ignored, as Go's ``encoding/json`` does; the kind is
  inferred from the keys (or the file name, or given explicitly);
- Kubernetes CRD YAML (``apiVersion: datasource.sentinel.io/v1alpha1``, kinds ``FlowRules``,
  ``IsolationRules``, ``CircuitBreakerRules``, ``HotspotRules``, ``SystemRules``; several documents may
  be separated by ``---``): enums as names, ratio thresholds and Load/CpuUsage triggers in percent.

Every problem is collected; if there is any, ``RulesError`` is raised with all of them and nothing of
the document is returned.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sentinel_ebpf.rules import circuitbreaker, flow, hotspot, isolation, reject, resource, system
from sentinel_ebpf.rules._fields import KeyMode, RuleContext, type_name
from sentinel_ebpf.rules._source import Document, Path, SourceError, parse_documents
from sentinel_ebpf.rules.errors import Problem, RulesError, RulesFileError
from sentinel_ebpf.rules.reject import RejectConfig
from sentinel_ebpf.rules.resource import Resource
from sentinel_ebpf.rules.ruleset import SECTIONS, AnyRule, RuleSet

CRD_API_VERSION = "datasource.sentinel.io/v1alpha1"
CRD_KINDS = {
    "FlowRules": "flowRules",
    "IsolationRules": "isolationRules",
    "CircuitBreakerRules": "circuitBreakerRules",
    "HotspotRules": "hotSpotParamRules",
    "SystemRules": "systemRules",
}
PROJECT_KEYS = ("resources", *SECTIONS, "reject")

Parser = Callable[..., Any]
PARSERS: dict[str, Parser] = {
    "flowRules": flow.parse,
    "isolationRules": isolation.parse,
    "circuitBreakerRules": circuitbreaker.parse,
    "hotSpotParamRules": hotspot.parse,
    "systemRules": system.parse,
}

# Names accepted for an explicit kind (CLI ``--kind``).
KIND_ALIASES = {
    "flow": "flowRules",
    "isolation": "isolationRules",
    "circuitbreaker": "circuitBreakerRules",
    "circuit-breaker": "circuitBreakerRules",
    "hotspot": "hotSpotParamRules",
    "system": "systemRules",
    **{s.lower(): s for s in SECTIONS},
}


def normalize_kind(kind: str) -> str:
    try:
        return KIND_ALIASES[kind.lower()]
    except KeyError:
        raise ValueError(
            f"unknown rule kind {kind!r}; use one of {', '.join(sorted(set(KIND_ALIASES)))}"
        ) from None


# --- entry points ---------------------------------------------------------------------------------


def load_file(path: str | os.PathLike[str], *, kind: str | None = None) -> RuleSet:
    """Read and validate one file. Raises ``RulesFileError`` if unreadable, ``RulesError`` if invalid."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise RulesFileError([Problem(file=name, reason="no such file")]) from None
    except IsADirectoryError:
        raise RulesFileError([Problem(file=name, reason="is a directory, not a rules file")]) from None
    except PermissionError:
        raise RulesFileError([Problem(file=name, reason="permission denied")]) from None
    except OSError as exc:
        raise RulesFileError([Problem(file=name, reason=f"cannot read: {exc.strerror or exc}")]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RulesFileError([Problem(file=name, reason=f"not UTF-8 text (byte {exc.start})")]) from None
    return load_text(text, name, kind=kind)


def load_text(text: str, file: str = "<string>", *, kind: str | None = None) -> RuleSet:
    """Parse and validate ``text``; ``file`` is only used in problem reports."""
    try:
        docs = parse_documents(text, file)
    except SourceError as exc:
        raise RulesError(exc.problems) from None
    return load_documents(docs, kind=kind)


def load_data(data: Any, file: str = "<data>", *, kind: str | None = None) -> RuleSet:
    """Validate already-parsed data (no line numbers in problems)."""
    return load_documents([Document(file=file, data=data, fmt="data")], kind=kind)


def detect_format(data: Any) -> str:
    """``project``, ``sentinel-json`` or ``crd``."""
    if isinstance(data, list):
        return "sentinel-json"
    if isinstance(data, Mapping) and ("apiVersion" in data or ("kind" in data and "spec" in data)):
        return "crd"
    return "project"


def load_documents(docs: list[Document], *, kind: str | None = None) -> RuleSet:
    section = normalize_kind(kind) if kind else None
    b = _Builder()
    if not docs or all(d.data is None for d in docs):
        file = docs[0].file if docs else "<string>"
        raise RulesError([Problem(file=file, reason="the document is empty")])
    for doc in docs:
        if doc.data is None:
            continue  # an empty document between "---" separators
        fmt = detect_format(doc.data)
        if fmt not in b.formats:
            b.formats.append(fmt)
        if len(docs) > 1 and fmt != "crd":
            b.problem(doc, (), "only CRD documents may be combined with '---' in one file")
            continue
        if fmt == "project":
            _load_project(doc, b)
        elif fmt == "sentinel-json":
            _load_sentinel_array(doc, b, section)
        else:
            _load_crd(doc, b)
    b.check_ids()
    if b.problems:
        # Document order; problems without a line keep their place among their file's problems.
        order = {f: i for i, f in enumerate(dict.fromkeys(p.file for p in b.problems))}
        b.problems.sort(key=lambda p: (order[p.file], p.line if p.line is not None else 0))
        raise RulesError(b.problems)
    return b.build(tuple(dict.fromkeys(d.file for d in docs)))


# --- building -------------------------------------------------------------------------------------


@dataclass
class _Located:
    section: str
    index: int
    ctx: RuleContext
    rule: AnyRule


@dataclass
class _Builder:
    problems: list[Problem] = field(default_factory=list)
    resources: list[Resource] = field(default_factory=list)
    rules: list[_Located] = field(default_factory=list)
    reject: RejectConfig = field(default_factory=RejectConfig)
    bound: bool = False
    formats: list[str] = field(default_factory=list)

    def ctx(self, doc: Document, section: str, index: int | None, path: Path) -> RuleContext:
        return RuleContext(doc=doc, section=section, index=index, path=path, problems=self.problems)

    def problem(
        self, doc: Document, path: Path, reason: str, *, field: str | None = None, section: str | None = None
    ) -> None:
        """A problem of the document's own structure (outside any rule), at the line of ``path``."""
        self.problems.append(
            Problem(file=doc.file, section=section, field=field, line=doc.line(path), reason=reason)
        )

    def check_ids(self) -> None:
        seen: dict[str, _Located] = {}
        for loc in self.rules:
            rid = loc.rule.id
            if not rid:
                continue
            if rid in seen:
                first = seen[rid]
                loc.ctx.add(f"duplicate id {rid!r} (first used by {first.section}[{first.index}])", "id")
            else:
                seen[rid] = loc

    def build(self, sources: tuple[str, ...]) -> RuleSet:
        by: dict[str, list[Any]] = {s: [] for s in SECTIONS}
        for loc in self.rules:
            by[loc.section].append(loc.rule)
        return RuleSet(
            resources=tuple(self.resources),
            flow_rules=tuple(by["flowRules"]),
            isolation_rules=tuple(by["isolationRules"]),
            circuit_breaker_rules=tuple(by["circuitBreakerRules"]),
            hotspot_rules=tuple(by["hotSpotParamRules"]),
            system_rules=tuple(by["systemRules"]),
            reject=self.reject,
            sources=sources,
            bound=self.bound,
            format=self.formats[0] if self.formats else "project",
        )


def _parse_rules(
    doc: Document,
    b: _Builder,
    section: str,
    items: Any,
    base: Path,
    mode: KeyMode,
    *,
    enum_names: bool = True,
    enum_ints: bool = True,
    transform: Callable[[Any, RuleContext], Any] | None = None,
) -> None:
    if items is None:
        return
    if not isinstance(items, list):
        b.problem(doc, base, f"must be a list of rules, got {type_name(items)}", section=section)
        return
    for i, raw in enumerate(items):
        ctx = b.ctx(doc, section, i, (*base, i))
        if transform is not None:
            raw = transform(raw, ctx)
        rule = PARSERS[section](raw, ctx, mode, enum_names=enum_names, enum_ints=enum_ints)
        if rule is not None:
            b.rules.append(_Located(section, i, ctx, rule))


# --- this project's rules file ----------------------------------------------------------------------


def _load_project(doc: Document, b: _Builder) -> None:
    data = doc.data
    if not isinstance(data, Mapping):
        b.problem(doc, (), f"a rules file must be an object or a list, got {type_name(data)}")
        return
    folded = {k.lower(): k for k in PROJECT_KEYS}
    for key in data:
        if key not in PROJECT_KEYS:
            hint = f" (did you mean {folded[str(key).lower()]!r}?)" if str(key).lower() in folded else ""
            b.problem(
                doc,
                (key,),
                f"unknown top-level key {key!r}{hint}; expected {', '.join(PROJECT_KEYS)}",
                field=str(key),
            )
    b.bound = True
    raw_resources = data.get("resources")
    res_ctxs: list[RuleContext] = []
    invalid_names: set[str] = set()
    first_at: dict[str, int] = {}
    if raw_resources is not None and not isinstance(raw_resources, list):
        b.problem(
            doc,
            ("resources",),
            f"must be a list of resources, got {type_name(raw_resources)}",
            section="resources",
        )
    elif raw_resources:
        for i, raw in enumerate(raw_resources):
            ctx = b.ctx(doc, "resources", i, ("resources", i))
            res = resource.parse(raw, ctx)
            if ctx.rule_id:
                if ctx.rule_id in first_at:
                    ctx.add(
                        f"duplicate resource name {ctx.rule_id!r} (first at resources[{first_at[ctx.rule_id]}])",
                        "name",
                    )
                else:
                    first_at[ctx.rule_id] = i
            if res is not None:
                b.resources.append(res)
                res_ctxs.append(ctx)
            elif ctx.rule_id:
                invalid_names.add(ctx.rule_id)  # already reported; don't call it unknown too
    for section in SECTIONS:
        _parse_rules(doc, b, section, data.get(section), (section,), KeyMode.STRICT)
    b.reject = reject.parse(data.get("reject"), b.ctx(doc, "reject", None, ("reject",)))
    _check_resources(b, res_ctxs, invalid_names)


def _check_resources(b: _Builder, res_ctxs: list[RuleContext], invalid_names: set[str]) -> None:
    matches: dict[tuple[object, ...], Resource] = {}
    for res, ctx in zip(b.resources, res_ctxs, strict=True):
        key = res.match.key()
        if key in matches:
            ctx.add(
                f"match conflicts with resource {matches[key].name!r}: both match {res.match.describe()}",
                "match",
            )
        else:
            matches[key] = res
    declared = {r.name: r for r in b.resources}
    for loc in b.rules:
        rule = loc.rule
        if isinstance(rule, system.SystemRule):
            continue
        target = declared.get(rule.resource)
        if rule.resource and target is None and rule.resource not in invalid_names:
            loc.ctx.add(
                f"unknown resource {rule.resource!r}: declare it under resources with a match", "resource"
            )
        if target is not None and target.match.tls:
            loc.ctx.add(
                f"resource {rule.resource!r} is tls: its requests are observed (traced through "
                "OpenSSL), not governed; rules apply to resources the packet path can read",
                "resource",
            )
        associated = (
            isinstance(rule, flow.FlowRule)
            and rule.relation_strategy is flow.RelationStrategy.AssociatedResource
        )
        if (
            associated
            and isinstance(rule, flow.FlowRule)
            and rule.ref_resource
            and rule.ref_resource not in declared
            and rule.ref_resource not in invalid_names
        ):
            loc.ctx.add(
                f"unknown refResource {rule.ref_resource!r}: declare it under resources", "refResource"
            )
        if isinstance(rule, flow.FlowRule) and associated and rule.ref_resource:
            ref = declared.get(rule.ref_resource)
            if ref is not None and ref.match.tls:
                loc.ctx.add(
                    f"refResource {rule.ref_resource!r} is tls: the kernel has no statistics of it",
                    "refResource",
                )
        if (
            isinstance(rule, hotspot.HotspotRule)
            and target is not None
            and target.match.protocol != "http"
            and rule.param_key.startswith(("header:", "query:"))
        ):
            loc.ctx.add(
                f"{rule.param_key.split(':')[0]} parameters need an http resource; "
                f"{target.name!r} is tcp (use remote_ip)",
                "paramKey",
            )


# --- sentinel-golang JSON arrays ----------------------------------------------------------------------

_STRONG_HINTS: dict[str, frozenset[str]] = {
    "circuitBreakerRules": frozenset(
        {
            "strategy",
            "retrytimeoutms",
            "minrequestamount",
            "statintervalms",
            "statslidingwindowbucketcount",
            "maxallowedrtms",
            "probenum",
        }
    ),
    "hotSpotParamRules": frozenset(
        {"paramindex", "paramkey", "burstcount", "durationinsec", "paramsmaxcapacity", "specificitems"}
    ),
    "flowRules": frozenset(
        {
            "tokencalculatestrategy",
            "relationstrategy",
            "refresource",
            "warmupperiodsec",
            "warmupcoldfactor",
            "statintervalinms",
            "lowmemusagethreshold",
            "highmemusagethreshold",
            "memlowwatermarkbytes",
            "memhighwatermarkbytes",
            "controlbehavior",
            "maxqueueingtimems",
        }
    ),
}
_FILE_HINTS = (
    ("circuit", "circuitBreakerRules"),
    ("breaker", "circuitBreakerRules"),
    ("hotspot", "hotSpotParamRules"),
    ("param", "hotSpotParamRules"),
    ("isolation", "isolationRules"),
    ("system", "systemRules"),
    ("flow", "flowRules"),
)


def infer_kind(items: list[Any], file: str = "") -> tuple[str | None, str]:
    """Guess the rule kind of a sentinel-golang array. Returns (section or None, explanation)."""
    strong: set[str] = set()
    weak: set[str] = set()
    for raw in items:
        if not isinstance(raw, Mapping):
            continue
        keys = {str(k).lower() for k in raw}
        if "resource" not in keys or "triggercount" in keys:
            strong.add("systemRules")
            continue
        for section in ("circuitBreakerRules", "hotSpotParamRules", "flowRules"):
            if keys & _STRONG_HINTS[section]:
                strong.add(section)
                break
        else:
            weak.add("isolationRules" if "metrictype" in keys else "flowRules")
    if len(strong) > 1:
        return None, f"the array mixes rule kinds ({', '.join(sorted(strong))})"
    base = os.path.basename(file).lower()
    hint = next((sec for word, sec in _FILE_HINTS if word in base), None)
    if strong:
        return next(iter(strong)), "from its keys"
    if hint is not None:
        return hint, "from the file name"
    if len(weak) == 1:
        return next(iter(weak)), "from its keys"
    if not weak:
        return None, "the array is empty"
    return None, "the rules' keys fit several kinds"


def _load_sentinel_array(doc: Document, b: _Builder, section: str | None) -> None:
    items = doc.data
    assert isinstance(items, list)
    if section is None:
        section, why = infer_kind(items, doc.file)
        if section is None:
            if items:
                b.problem(
                    doc,
                    (),
                    f"cannot tell the rule kind: {why}; sentinel-golang arrays "
                    "hold one kind (give it with --kind)",
                )
            return
    _parse_rules(doc, b, section, items, (), KeyMode.GO_JSON)


# --- Kubernetes CRDs --------------------------------------------------------------------------------


def _load_crd(doc: Document, b: _Builder) -> None:
    data = doc.data
    assert isinstance(data, Mapping)
    api = data.get("apiVersion")
    if api != CRD_API_VERSION:
        b.problem(
            doc, ("apiVersion",), f"apiVersion must be {CRD_API_VERSION}, got {api!r}", field="apiVersion"
        )
        return
    kind = data.get("kind")
    if kind not in CRD_KINDS:
        b.problem(doc, ("kind",), f"kind must be one of {', '.join(CRD_KINDS)}, got {kind!r}", field="kind")
        return
    for key in data:
        if key not in ("apiVersion", "kind", "metadata", "spec", "status"):
            b.problem(doc, (key,), f"unknown top-level key {key!r} in a {kind} object", field=str(key))
    spec = data.get("spec")
    if not isinstance(spec, Mapping) or "rules" not in spec:
        b.problem(doc, ("spec",), "spec.rules is required", field="spec")
        return
    section = CRD_KINDS[kind]
    _parse_rules(
        doc,
        b,
        section,
        spec["rules"],
        ("spec", "rules"),
        KeyMode.STRICT,
        enum_ints=False,
        transform=_crd_transform(section),
    )


def _crd_transform(section: str) -> Callable[[Any, RuleContext], Any]:
    """CRD rules: empty enum strings mean the default; percent values become ratios."""

    def transform(raw: Any, ctx: RuleContext) -> Any:
        if not isinstance(raw, Mapping):
            return raw
        out = {k: v for k, v in raw.items() if not (v == "" and k != "resource" and k != "id")}
        # An absent enum is the default: SlowRequestRatio, Load (both percent values).
        if section == "circuitBreakerRules" and out.get("strategy", "SlowRequestRatio") in (
            "SlowRequestRatio",
            "ErrorRatio",
        ):
            _percent(out, "threshold", ctx)
        if section == "systemRules" and out.get("metricType", "Load") in ("Load", "CpuUsage"):
            _percent(out, "triggerCount", ctx)
        return out

    return transform


def _percent(out: dict[Any, Any], key: str, ctx: RuleContext) -> None:
    value = out.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        out[key] = value / 100
        ctx.notes[key] = f"the CRD value is in percent: {value}"
