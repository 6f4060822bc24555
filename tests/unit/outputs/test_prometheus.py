"""Prometheus collector: sentinel-golang names, labels and values, read back through the text parser."""

from __future__ import annotations

import os
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from sentinel_ebpf.outputs.prometheus import (
    MetricsSnapshot,
    SentinelCollector,
    default_const_labels,
    start_http_server,
)
from sentinel_ebpf.stats import BreakerSnapshot, BreakerTransition, ResourceStats

CONST = {"host": "h1", "app": "shop", "pid": "42"}

SNAPSHOT = MetricsSnapshot(
    resources=[
        ResourceStats(
            name="GET:/api/orders",
            passed=120,
            blocked=9,
            complete=118,
            error=2,
            concurrency=2,
            rt_sum_ms=590.0,
            block_by_type={"flow": 5, "isolation": 0, "circuit_breaking": 3, "system": 1, "hotspot": 0},
            circuit_breakers=(BreakerSnapshot("cb-1", "open"),),
            flow_threshold=100.0,
            flow_wait_total=7,
            abort=5,
        ),
        ResourceStats(name="payments-db", passed=3, blocked=4, block_by_type={"flow": 1}),
    ],
    state_changes={
        BreakerTransition("GET:/api/orders", "cb-1", "closed", "open"): 2,
        BreakerTransition("GET:/api/orders", "cb-2", "closed", "open"): 1,
        BreakerTransition("GET:/api/orders", "cb-1", "open", "half_open"): 1,
        BreakerTransition("GET:/api/orders", "cb-1", "half_open", "closed"): 1,
    },
    cpu_ratio=0.25,
    process_memory_bytes=123_456_789,
)


def scrape(collector: SentinelCollector) -> dict[str, list[Sample]]:
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def values(samples: list[Sample], *keys: str) -> dict[tuple[str, ...], float]:
    return {tuple(s.labels[k] for k in keys): s.value for s in samples}


def test_handled_total_per_result_and_block_type() -> None:
    families = scrape(SentinelCollector(lambda: SNAPSHOT, const_labels=CONST))
    samples = families["sentinel_go_handled"]
    assert {s.name for s in samples} == {"sentinel_go_handled_total"}
    assert all({k: s.labels[k] for k in CONST} == CONST for s in samples)
    got = values(samples, "resource", "result", "block_type")
    assert got == {
        ("GET:/api/orders", "pass", ""): 120,
        ("GET:/api/orders", "block", "BlockTypeFlowControl"): 5,
        ("GET:/api/orders", "block", "BlockTypeIsolation"): 0,
        ("GET:/api/orders", "block", "BlockTypeCircuitBreaking"): 3,
        ("GET:/api/orders", "block", "BlockTypeSystem"): 1,
        ("GET:/api/orders", "block", "BlockTypeHotSpotParamFlow"): 0,
        ("payments-db", "pass", ""): 3,
        ("payments-db", "block", "BlockTypeFlowControl"): 1,
        ("payments-db", "block", "BlockTypeIsolation"): 0,
        ("payments-db", "block", "BlockTypeCircuitBreaking"): 0,
        ("payments-db", "block", "BlockTypeSystem"): 0,
        ("payments-db", "block", "BlockTypeHotSpotParamFlow"): 0,
        # 4 blocked, 1 attributed: the rest is reported as sentinel-golang's unknown block type.
        ("payments-db", "block", "BlockTypeUnknown"): 3,
    }
    for res in SNAPSHOT.resources:
        blocks = sum(v for (r, result, _), v in got.items() if r == res.name and result == "block")
        assert blocks == res.blocked


def test_breaker_transitions_summed_over_breakers_with_go_state_names() -> None:
    families = scrape(SentinelCollector(lambda: SNAPSHOT, const_labels=CONST))
    samples = families["sentinel_go_circuit_breaker_state_changed"]
    assert {s.name for s in samples} == {"sentinel_go_circuit_breaker_state_changed_total"}
    assert values(samples, "resource", "from_state", "to_state") == {
        ("GET:/api/orders", "Closed", "Open"): 3,
        ("GET:/api/orders", "Open", "HalfOpen"): 1,
        ("GET:/api/orders", "HalfOpen", "Closed"): 1,
    }


def test_threshold_wait_and_process_gauges() -> None:
    families = scrape(SentinelCollector(lambda: SNAPSHOT, const_labels=CONST))
    assert values(families["sentinel_go_resource_flow_threshold"], "resource") == {
        ("GET:/api/orders",): 100.0
    }
    assert values(families["sentinel_go_flow_wait"], "resource") == {
        ("GET:/api/orders",): 7,
        ("payments-db",): 0,
    }
    assert [s.name for s in families["sentinel_go_flow_wait"]] == ["sentinel_go_flow_wait_total"] * 2
    assert values(families["sentinel_go_abort"], "resource") == {("GET:/api/orders",): 5, ("payments-db",): 0}
    assert [(s.value, s.labels) for s in families["sentinel_go_cpu_ratio"]] == [(0.25, CONST)]
    assert [s.value for s in families["sentinel_go_process_memory_bytes"]] == [123_456_789]


def test_process_gauges_absent_when_unknown_and_namespace_configurable() -> None:
    snap = MetricsSnapshot(resources=[ResourceStats(name="r", passed=1)])
    families = scrape(SentinelCollector(lambda: snap, namespace="edge", const_labels={}))
    assert set(families) == {
        "edge_handled",
        "edge_circuit_breaker_state_changed",
        "edge_resource_flow_threshold",
        "edge_flow_wait",
        "edge_abort",
    }
    assert families["edge_handled"][0].labels == {"resource": "r", "result": "pass", "block_type": ""}
    assert families["edge_circuit_breaker_state_changed"] == []


def test_snapshot_read_on_every_scrape_and_not_on_register() -> None:
    calls = []

    def snapshot() -> MetricsSnapshot:
        calls.append(1)
        return MetricsSnapshot(resources=[ResourceStats(name="r", passed=len(calls))])

    collector = SentinelCollector(snapshot, const_labels={})
    registry = CollectorRegistry(auto_describe=True)
    registry.register(collector)
    assert calls == []
    first = text_string_to_metric_families(generate_latest(registry).decode())
    second = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    assert len(calls) == 2
    assert next(f for f in first if f.name == "sentinel_go_handled").samples[0].value == 1
    assert second["sentinel_go_handled"].samples[0].value == 2


def test_default_const_labels_are_host_app_pid() -> None:
    labels = default_const_labels("shop")
    assert set(labels) == {"host", "app", "pid"}
    assert labels["app"] == "shop"
    assert labels["pid"] == str(os.getpid())
    assert labels["host"]


def test_const_label_clashing_with_metric_label_rejected() -> None:
    with pytest.raises(ValueError, match="resource"):
        SentinelCollector(MetricsSnapshot, const_labels={"resource": "x"})


def test_http_server_serves_on_loopback_and_closes() -> None:
    collector = SentinelCollector(lambda: SNAPSHOT, const_labels=CONST)
    with start_http_server(collector, port=0) as server:
        assert server.host == "127.0.0.1"
        assert server.port > 0
        with urllib.request.urlopen(server.url, timeout=5) as response:
            body = response.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(body)}
    assert "sentinel_go_handled" in families
    assert "python_gc_objects_collected" not in families  # only our collector, not the default registry
    server.close()  # second close is a no-op
    with pytest.raises(OSError):
        urllib.request.urlopen(server.url, timeout=2)
