"""``sentinel-ebpf rules check``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sentinel_ebpf.cli import _register, app

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
VALID = [
    EXAMPLES / "rules.yaml",
    *sorted((EXAMPLES / "sentinel-golang").glob("*.json")),
    *sorted((EXAMPLES / "crd").glob("*.yaml")),
]
INVALID = sorted((EXAMPLES / "invalid").iterdir())

_register()
runner = CliRunner()


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_examples_exit_0(path: Path) -> None:
    result = runner.invoke(app, ["rules", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"ok {path}")


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_examples_exit_1(path: Path) -> None:
    result = runner.invoke(app, ["rules", "check", str(path)])
    assert result.exit_code == 1, result.output
    assert f"invalid {path}" in result.output


def test_summary_of_the_combined_example() -> None:
    result = runner.invoke(app, ["rules", "check", str(EXAMPLES / "rules.yaml")])
    assert "6 resources" in result.output
    assert "payments-db: outbound tcp 10.0.0.5/32 5432; 1 isolationRules" in result.output
    assert "reject: http 429 response, tcp rst" in result.output


def test_problems_listed_with_lines() -> None:
    result = runner.invoke(app, ["rules", "check", str(EXAMPLES / "invalid" / "bad-values.yaml")])
    assert "bad-values.yaml:12: flowRules[0]: id='f1': threshold: must be >= 0, got -1" in result.output
    assert "26 problems" in result.output


def test_json_output() -> None:
    result = runner.invoke(
        app,
        [
            "rules",
            "check",
            "--json",
            str(EXAMPLES / "rules.yaml"),
            str(EXAMPLES / "invalid" / "flow-rules.json"),
        ],
    )
    assert result.exit_code == 1
    out = json.loads(result.output)
    assert out["ok"] is False
    ok, bad = out["files"]
    assert ok["ok"] and ok["summary"]["counts"]["flowRules"] == 5
    assert not bad["ok"] and bad["problems"][0] == {
        "file": str(EXAMPLES / "invalid" / "flow-rules.json"),
        "line": 2,
        "section": "flowRules",
        "index": 0,
        "id": None,
        "field": "resource",
        "reason": "empty resource",
    }


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["rules", "check", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "cannot read: no such file" in result.output
    result = runner.invoke(app, ["rules", "check", "--json", str(tmp_path / "nope.yaml")])
    assert (
        result.exit_code == 2
        and json.loads(result.output)["files"][0]["problems"][0]["reason"] == "no such file"
    )


def test_kind_option() -> None:
    result = runner.invoke(
        app,
        ["rules", "check", "--kind", "isolation", str(EXAMPLES / "sentinel-golang" / "isolation-rules.json")],
    )
    assert result.exit_code == 0
    result = runner.invoke(app, ["rules", "check", "--kind", "nope", str(EXAMPLES / "rules.yaml")])
    assert result.exit_code == 2 and "unknown rule kind" in result.output


def test_kind_is_refused_for_etcd_urls() -> None:
    # a daemon reads an etcd key without --kind: checking it with one would not say what the daemon does
    res = runner.invoke(app, ["rules", "check", "--kind", "flow", "etcd://127.0.0.1:1/k"])
    assert res.exit_code == 2 and "applies to files only" in res.output


def test_the_scope_of_each_resource_is_shown(tmp_path: Path) -> None:
    doc = tmp_path / "scopes.yaml"
    doc.write_text("""
resources:
  - {name: pod-a, match: {protocol: http, port: 8080, address: 10.244.1.7, path: /api}}
  - {name: batch, match: {protocol: tcp, port: 8080, cgroup: /kubepods/batch}}
  - {name: others, match: {protocol: http, port: 8080}}
""")
    result = runner.invoke(app, ["rules", "check", str(doc)])
    assert result.exit_code == 0, result.output
    assert "  pod-a: inbound http 8080 /api address 10.244.1.7/32; no rules" in result.output
    assert "  batch: inbound tcp 8080 cgroup /kubepods/batch; no rules" in result.output
    assert "  others: inbound http 8080; no rules" in result.output


def test_the_normal_form_of_each_path_is_shown_where_it_differs(tmp_path: Path) -> None:
    doc = tmp_path / "paths.yaml"
    doc.write_text("""
resources:
  - {name: odd, match: {protocol: http, port: 8080, path: "/%61pi//x/./y"}}
  - {name: plain, match: {protocol: http, port: 8080, path: /api}}
""")
    result = runner.invoke(app, ["rules", "check", str(doc)])
    assert result.exit_code == 0, result.output
    assert "  odd: inbound http 8080 /%61pi//x/./y (normalised: /api/x/y); no rules" in result.output
    assert "  plain: inbound http 8080 /api; no rules" in result.output
    doc_json = json.loads(runner.invoke(app, ["rules", "check", "--json", str(doc)]).output)
    paths = {r["name"]: r["normalized_path"] for r in doc_json["files"][0]["summary"]["resources"]}
    assert paths == {"odd": "/api/x/y", "plain": "/api"}
