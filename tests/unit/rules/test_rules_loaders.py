"""Loaders: the three formats, round trips, Go-style key matching, CRD conversions, line numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from sentinel_ebpf.rules import RulesError, RulesFileError, detect_format, load_file, load_text
from sentinel_ebpf.rules.circuitbreaker import Strategy
from sentinel_ebpf.rules.dump import to_crd, to_project, to_sentinel_json
from sentinel_ebpf.rules.flow import ControlBehavior, RelationStrategy, TokenCalculateStrategy
from sentinel_ebpf.rules.loader import infer_kind
from sentinel_ebpf.rules.ruleset import SECTIONS
from sentinel_ebpf.rules.system import AdaptiveStrategy, MetricType
from tests.support.rule_problems import assert_reported, text_problems

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def test_project_example_loads() -> None:
    rs = load_file(EXAMPLES / "rules.yaml")
    assert rs.bound and rs.format == "project"
    assert [len(rs.rules(s)) for s in SECTIONS] == [3, 5, 1, 3, 3]
    api = rs.resource("api")
    assert api is not None and api.match.path == "/api" and api.match.method is None
    db = rs.resource("payments-db")
    assert db is not None and str(db.match.host) == "10.0.0.5/32" and not db.match.inbound
    web = rs.resource("web-conns")
    assert web is not None and web.match.direction == "inbound"
    post = rs.flow_rules[1]
    assert post.control_behavior is ControlBehavior.Throttling and post.max_queueing_time_ms == 500
    assert rs.reject.http.headers == (("Retry-After", "1"),)


def test_project_round_trip_yaml_and_json(tmp_path: Path) -> None:
    rs = load_file(EXAMPLES / "rules.yaml")
    y = tmp_path / "out.yaml"
    y.write_text(yaml.safe_dump(to_project(rs), sort_keys=False))
    j = tmp_path / "out.json"
    j.write_text(json.dumps(to_project(rs, defaults=True), indent=2))
    for path in (y, j):
        again = load_file(path)
        assert again.resources == rs.resources
        for section in SECTIONS:
            assert again.rules(section) == rs.rules(section)
        assert again.reject == rs.reject


@pytest.mark.parametrize(
    "name",
    [
        "flow-rules.json",
        "isolation-rules.json",
        "circuit-breaker-rules.json",
        "hotspot-rules.json",
        "system-rules.json",
    ],
)
def test_sentinel_json_examples_round_trip(name: str, tmp_path: Path) -> None:
    rs = load_file(EXAMPLES / "sentinel-golang" / name)
    assert rs.format == "sentinel-json" and not rs.bound
    (section,) = [s for s in SECTIONS if rs.rules(s)]
    out = tmp_path / name
    out.write_text(json.dumps(to_sentinel_json(rs, section)))
    again = load_file(out)
    assert again.rules(section) == rs.rules(section)


def test_sentinel_json_go_key_rules() -> None:
    # sentinel-golang's own testdata uses capitalised keys; unknown keys are ignored as in Go.
    rs = load_text('[{"Resource": "abc", "MetricType": 0, "Threshold": 100, "extra": {"x": 1}}]', "iso.json")
    assert rs.isolation_rules[0].threshold == 100
    rs = load_text('[{"id": "0", "metricType": 0, "adaptiveStrategy": 0}]', "SystemRule.json")
    assert rs.system_rules[0].metric_type is MetricType.Load and rs.system_rules[0].trigger_count == 0
    # later keys win when several fold to one field, as Go's encoding/json does
    rs = load_text('[{"resource": "a", "threshold": 1, "THRESHOLD": 2}]', "flow.json")
    assert rs.flow_rules[0].threshold == 2


def test_sentinel_json_enum_values_and_defaults() -> None:
    rs = load_file(EXAMPLES / "sentinel-golang" / "flow-rules.json")
    r = rs.flow_rules[1]
    assert r.relation_strategy is RelationStrategy.AssociatedResource and r.ref_resource == "refDefault"
    assert rs.flow_rules[2].token_calculate_strategy is TokenCalculateStrategy.WarmUp
    cb = load_file(EXAMPLES / "sentinel-golang" / "circuit-breaker-rules.json")
    assert [r.strategy for r in cb.circuit_breaker_rules] == list(Strategy)
    sysr = load_file(EXAMPLES / "sentinel-golang" / "system-rules.json").system_rules
    assert sysr[0].strategy is AdaptiveStrategy.BBR and sysr[4].strategy is AdaptiveStrategy.NoAdaptive


@pytest.mark.parametrize(
    ("items", "file", "kind"),
    [
        ([{"metricType": 0, "triggerCount": 1}], "x.json", "systemRules"),
        ([{"resource": "a", "strategy": 1, "retryTimeoutMs": 1}], "x.json", "circuitBreakerRules"),
        ([{"resource": "a", "paramKey": "remote_ip"}], "x.json", "hotSpotParamRules"),
        ([{"resource": "a", "threshold": 1, "controlBehavior": 1}], "x.json", "flowRules"),
        ([{"resource": "a", "threshold": 1}], "x.json", "flowRules"),
        ([{"resource": "a", "metricType": 0, "threshold": 1}], "x.json", "isolationRules"),
        ([{"resource": "a", "threshold": 1}], "IsolationRule.json", "isolationRules"),
        (
            [{"resource": "a", "threshold": 1}, {"resource": "a", "metricType": 0, "threshold": 1}],
            "x.json",
            None,
        ),
        ([], "x.json", None),
    ],
)
def test_infer_kind(items: list[dict[str, object]], file: str, kind: str | None) -> None:
    assert infer_kind(items, file)[0] == kind


def test_explicit_kind_and_mixed_arrays() -> None:
    text = '[{"resource": "a", "threshold": 3}]'
    assert load_text(text, "x.json", kind="isolation").isolation_rules[0].threshold == 3
    with pytest.raises(RulesError, match="mixes rule kinds"):
        load_file(EXAMPLES / "invalid" / "mixed-kinds.json")
    with pytest.raises(ValueError, match="unknown rule kind"):
        load_text(text, "x.json", kind="bogus")


def test_crd_example_conversions() -> None:
    rs = load_file(EXAMPLES / "crd" / "sentinel-rules.yaml")
    assert rs.format == "crd"
    assert [len(rs.rules(s)) for s in SECTIONS] == [3, 3, 2, 2, 3]
    cbs = rs.circuit_breaker_rules
    assert [c.threshold for c in cbs] == [0.1, 0.2, 20.0]  # ratios from percent, count unchanged
    assert rs.flow_rules[1].control_behavior is ControlBehavior.Throttling
    assert rs.flow_rules[0].control_behavior is ControlBehavior.Reject  # absent -> default
    cpu = rs.system_rules[2]
    assert cpu.metric_type is MetricType.CpuUsage and cpu.trigger_count == 0.8 and cpu.is_bbr
    assert rs.system_rules[0].trigger_count == 123  # AvgRT is not a percent
    assert rs.hotspot_rules[1].specific_items[0].val_str == "ximu1"


def test_crd_round_trip(tmp_path: Path) -> None:
    rs = load_file(EXAMPLES / "crd" / "sentinel-rules.yaml")
    docs = [to_crd(rs, s, name=f"n{i}") for i, s in enumerate(SECTIONS) if rs.rules(s)]
    out = tmp_path / "crd.yaml"
    out.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    again = load_file(out)
    for section in SECTIONS:
        assert again.rules(section) == rs.rules(section)


def test_crd_rejects_integer_enums_and_reports_percent() -> None:
    with pytest.raises(RulesError) as info:
        load_file(EXAMPLES / "invalid" / "crd-bad.yaml")
    reasons = [str(p) for p in info.value.problems]
    assert any("the CRD value is in percent: 150" in r for r in reasons)
    assert any("strategy: must be a name" in r for r in reasons)
    assert any(":26: systemRules[0]: triggerCount: invalid CPU usage" in r for r in reasons)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("apiVersion: v1\nkind: FlowRules\nspec: {rules: []}\n", "apiVersion must be"),
        (
            "apiVersion: datasource.sentinel.io/v1alpha1\nkind: Flow\nspec: {rules: []}\n",
            "kind must be one of",
        ),
        (
            "apiVersion: datasource.sentinel.io/v1alpha1\nkind: FlowRules\nspec: {}\n",
            "spec.rules is required",
        ),
        (
            "apiVersion: datasource.sentinel.io/v1alpha1\nkind: FlowRules\nspec: {rules: [{resource: a, threshold: 1,"
            " bogus: 2}]}\n",
            "unknown key 'bogus'",
        ),
        ("resources: []\n---\nresources: []\n", "only CRD documents"),
    ],
)
def test_crd_document_problems(text: str, reason: str) -> None:
    assert_reported(text, "c.yaml", reason)


def test_json_line_numbers_with_tabs_and_escapes() -> None:
    text = '[\n\t{"resource": "a\\/b", "threshold": 1},\n\t{"resource": "c",\n\t "threshold": -4}\n]'
    (p,) = text_problems(text, "f.json", kind="flow")
    assert (p.line, p.index, p.field) == (4, 1, "threshold")


def test_json_duplicate_keys_and_syntax_errors() -> None:
    with pytest.raises(RulesError, match="duplicate key 'threshold'"):
        load_text('[{"resource": "a", "threshold": 1, "threshold": 2}]', "f.json")
    with pytest.raises(RulesError) as info:
        load_file(EXAMPLES / "invalid" / "syntax-error.json")
    assert info.value.problems[0].line == 3
    with pytest.raises(RulesError) as info:
        load_file(EXAMPLES / "invalid" / "syntax-error.yaml")
    assert info.value.problems[0].line == 4


def test_yaml_json_style_flow_mapping_is_yaml() -> None:
    rs = load_text("{resources: [{name: a, match: {protocol: tcp, port: 1}}]}", "x.yaml")
    assert rs.resources[0].name == "a"


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(RulesFileError, match="no such file"):
        load_file(tmp_path / "missing.yaml")
    with pytest.raises(RulesFileError, match="is a directory"):
        load_file(tmp_path)
    bad = tmp_path / "bin.yaml"
    bad.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(RulesFileError, match="not UTF-8"):
        load_file(bad)


def test_detect_format() -> None:
    assert detect_format([]) == "sentinel-json"
    assert detect_format({"apiVersion": "x"}) == "crd"
    assert detect_format({"resources": []}) == "project"


def test_problem_dict_and_summary() -> None:
    problems = text_problems("resources:\n  - {name: a, match: {protocol: tcp, port: 0}}\n", "p.yaml")
    assert problems[0].as_dict() == {
        "file": "p.yaml",
        "line": 2,
        "section": "resources",
        "index": 0,
        "id": "a",
        "field": "match.port",
        "reason": "port must be in 1..65535, got 0",
    }
    s = load_file(EXAMPLES / "sentinel-golang" / "isolation-rules.json").summary()
    assert s["counts"]["isolationRules"] == 2 and s["resources"][0] == {
        "name": "abc",
        "match": None,
        "rules": {"isolationRules": 1},
    }
