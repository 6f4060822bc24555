"""tls resources: validation, left out of the kernel's maps, and counted from traced exchanges."""

from __future__ import annotations

import pytest

from sentinel_ebpf.daemon.tls_observer import TlsMatcher, TlsObserver
from sentinel_ebpf.enforce.compile import compile_inbound
from sentinel_ebpf.rules import load_text
from sentinel_ebpf.stats import ResourceStats
from sentinel_ebpf.tracing.http import HttpRecord
from tests.support.rule_problems import text_problems

DOC = """
resources:
  - {name: api, match: {protocol: http, port: 8443, path: /api, tls: true}}
  - {name: api-orders, match: {protocol: http, port: 8443, path: /api/orders, method: POST, tls: true}}
  - {name: pay, match: {direction: outbound, protocol: http, port: 443, host: 10.9.0.0/16, tls: true}}
  - {name: plain, match: {protocol: http, port: 8080, path: /}}
"""


def rec(direction: str = "server", method: str = "GET", path: str = "/api/x", status: int = 200,
        local: str = "10.0.0.2:8443", remote: str = "10.0.0.1:50000", tls: bool = True,
        latency_ms: float = 4.0) -> HttpRecord:  # fmt: skip
    return HttpRecord(0.0, 1, "srv", direction, method, path, status, latency_ms, 10, 20, tls, local, remote)


def test_tls_resources_load_and_stay_out_of_the_kernel() -> None:
    rules = load_text(DOC)
    assert [r.name for r in rules.resources if r.match.tls] == ["api", "api-orders", "pay"]
    compiled = compile_inbound(rules)
    assert [r.name for r in compiled.resources] == ["plain"]


@pytest.mark.parametrize(
    ("doc", "field", "text"),
    [
        (
            "resources: [{name: t, match: {protocol: tcp, port: 1, tls: true}}]",
            "match.tls",
            "http resources only",
        ),
        (
            "resources: [{name: t, match: {protocol: http, port: 1, tls: yes please}}]",
            "match.tls",
            "true or false",
        ),
        (DOC + "flowRules: [{resource: api, threshold: 1}]", "resource", "'api' is tls"),
        (
            DOC + "circuitBreakerRules: [{resource: pay, strategy: 2, threshold: 1, minRequestAmount: 1, "
            "statIntervalMs: 1000, retryTimeoutMs: 1000}]",
            "resource",
            "'pay' is tls",
        ),
        (
            DOC + "flowRules: [{resource: plain, threshold: 1, relationStrategy: 1, refResource: api}]",
            "refResource",
            "'api' is tls",
        ),
    ],
)
def test_tls_misuse_is_rejected_with_the_field(doc: str, field: str, text: str) -> None:
    found = text_problems(doc)
    assert any((p.field or "").endswith(field) and text in p.reason for p in found), found


def test_matcher_picks_the_longest_prefix_method_and_direction() -> None:
    m = TlsMatcher([r for r in load_text(DOC).resources if r.match.tls])
    assert m.ports == (443, 8443)
    pick = m.match
    assert pick(rec()).name == "api"  # type: ignore[union-attr]
    assert pick(rec(method="POST", path="/api/orders/7")).name == "api-orders"  # type: ignore[union-attr]
    assert pick(rec(method="GET", path="/api/orders/7")).name == "api"  # type: ignore[union-attr]
    assert pick(rec(path="/other")) is None
    assert pick(rec(tls=False)) is None  # plain traffic on the port is the packet path's business
    assert pick(rec(direction="client")) is None  # 8443 is an inbound resource's port
    out = rec(direction="client", local="10.0.0.1:40000", remote="10.9.3.4:443")
    assert pick(out).name == "pay"  # type: ignore[union-attr]
    assert pick(rec(direction="client", local="10.0.0.1:40000", remote="10.8.3.4:443")) is None


def test_observer_counts_pass_complete_error_and_rt() -> None:
    obs = TlsObserver([r for r in load_text(DOC).resources if r.match.tls])
    for r in (rec(latency_ms=2.0), rec(status=503, latency_ms=6.0), rec(status=0, latency_ms=0.0),
              rec(path="/nope")):  # fmt: skip
        obs.record(r)
    stats = {s.name: s for s in obs.stats()}
    api = stats["api"]
    assert (api.passed, api.complete, api.error, api.avg_rt_ms, api.source) == (3, 2, 2, 4.0, "tls_trace")
    assert stats["pay"] == ResourceStats("pay", source="tls_trace")


def test_observer_without_tls_resources_starts_no_tracer() -> None:
    def factory(_filters: object) -> object:
        raise AssertionError("no tracer for a rule set without tls resources")

    obs = TlsObserver([], tracer_factory=factory).start()  # type: ignore[arg-type]
    assert obs.stats() == [] and obs.error is None
    obs.stop()
