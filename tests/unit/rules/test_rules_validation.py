"""Every validation rule, valid and invalid, through the project rules file loader."""

from __future__ import annotations

from typing import Any

import pytest

from sentinel_ebpf.rules import RulesError, load_data, load_text
from sentinel_ebpf.rules.circuitbreaker import effective_bucket_count
from sentinel_ebpf.rules.hotspot import MetricType, lru_capacity
from tests.support.rule_problems import assert_reported

RES = [
    {"name": "web", "match": {"protocol": "http", "port": 8080, "path": "/"}},
    {"name": "conns", "match": {"protocol": "tcp", "port": 9090}},
    {"name": "ref", "match": {"protocol": "tcp", "port": 9091}},
]


def doc(section: str, rule: dict[str, Any]) -> dict[str, Any]:
    return {"resources": RES, section: [rule]}


def problems(data: dict[str, Any]) -> list[tuple[str | None, str]]:
    with pytest.raises(RulesError) as info:
        load_data(data, "t.yaml")
    return [(p.field, p.reason) for p in info.value.problems]


def assert_invalid(section: str, rule: dict[str, Any], field: str, reason_part: str) -> None:
    found = problems(doc(section, rule))
    assert any(f == field and reason_part in r for f, r in found), found


def assert_valid(section: str, rule: dict[str, Any]) -> None:
    rs = load_data(doc(section, rule), "t.yaml")
    assert len(rs.rules(section)) == 1


# --- flow ------------------------------------------------------------------------------------------

VALID_FLOW = [
    {"resource": "web", "threshold": 0},  # threshold 0 is valid and blocks everything
    {"resource": "web", "threshold": 10.5, "statIntervalInMs": 2000},
    {
        "resource": "web",
        "threshold": 10,
        "tokenCalculateStrategy": 1,
        "controlBehavior": 1,
        "warmUpPeriodSec": 10,
        "maxQueueingTimeMs": 10,
        "statIntervalInMs": 1000,
    },
    {
        "resource": "web",
        "threshold": 10,
        "tokenCalculateStrategy": "WarmUp",
        "warmUpPeriodSec": 10,
        "warmUpColdFactor": 0,
    },
    {"resource": "web", "threshold": 10, "relationStrategy": "AssociatedResource", "refResource": "ref"},
    {
        "resource": "web",
        "tokenCalculateStrategy": "MemoryAdaptive",
        "lowMemUsageThreshold": 2,
        "highMemUsageThreshold": 1,
        "memLowWaterMarkBytes": 1,
        "memHighWaterMarkBytes": 2,
    },
]


@pytest.mark.parametrize("rule", VALID_FLOW)
def test_flow_valid(rule: dict[str, Any]) -> None:
    assert_valid("flowRules", rule)


@pytest.mark.parametrize(
    ("rule", "field", "reason"),
    [
        ({"resource": "", "threshold": 1}, "resource", "empty resource"),
        ({"resource": "web", "threshold": -1.9}, "threshold", ">= 0"),
        ({"resource": "web", "threshold": 2**32}, "threshold", "<= 4294967295"),
        (
            {"resource": "web", "threshold": 1, "tokenCalculateStrategy": -1},
            "tokenCalculateStrategy",
            "invalid value",
        ),
        ({"resource": "web", "threshold": 1, "controlBehavior": -1}, "controlBehavior", "invalid value"),
        ({"resource": "web", "threshold": 1, "controlBehavior": "Queue"}, "controlBehavior", "unknown value"),
        ({"resource": "web", "threshold": 1, "relationStrategy": 2}, "relationStrategy", "invalid value"),
        ({"resource": "web", "threshold": 1, "relationStrategy": 1}, "refResource", "non empty"),
        (
            {"resource": "web", "threshold": 5, "tokenCalculateStrategy": 1},
            "warmUpPeriodSec",
            "greater than 0",
        ),
        (
            {
                "resource": "web",
                "threshold": 5,
                "tokenCalculateStrategy": 1,
                "warmUpPeriodSec": 1,
                "warmUpColdFactor": 1,
            },
            "warmUpColdFactor",
            "greater than 1",
        ),
        (
            {
                "resource": "web",
                "tokenCalculateStrategy": 2,
                "lowMemUsageThreshold": 0,
                "highMemUsageThreshold": 1,
                "memLowWaterMarkBytes": 1,
                "memHighWaterMarkBytes": 2,
            },
            "lowMemUsageThreshold",
            "> 0",
        ),
        (
            {
                "resource": "web",
                "tokenCalculateStrategy": 2,
                "lowMemUsageThreshold": 2,
                "highMemUsageThreshold": 0,
                "memLowWaterMarkBytes": 1,
                "memHighWaterMarkBytes": 2,
            },
            "highMemUsageThreshold",
            "> 0",
        ),
        (
            {
                "resource": "web",
                "tokenCalculateStrategy": 2,
                "lowMemUsageThreshold": 9,
                "highMemUsageThreshold": 9,
                "memLowWaterMarkBytes": 1,
                "memHighWaterMarkBytes": 2,
            },
            "highMemUsageThreshold",
            "< lowMemUsageThreshold",
        ),
        (
            {
                "resource": "web",
                "tokenCalculateStrategy": 2,
                "lowMemUsageThreshold": 2,
                "highMemUsageThreshold": 1,
                "memLowWaterMarkBytes": 0,
                "memHighWaterMarkBytes": 2,
            },
            "memLowWaterMarkBytes",
            "> 0",
        ),
        (
            {
                "resource": "web",
                "tokenCalculateStrategy": 2,
                "lowMemUsageThreshold": 2,
                "highMemUsageThreshold": 1,
                "memLowWaterMarkBytes": 1,
                "memHighWaterMarkBytes": 0,
            },
            "memHighWaterMarkBytes",
            "> 0",
        ),
        (
            {
                "resource": "web",
                "tokenCalculateStrategy": 2,
                "lowMemUsageThreshold": 2,
                "highMemUsageThreshold": 1,
                "memLowWaterMarkBytes": 100,
                "memHighWaterMarkBytes": 30,
            },
            "memLowWaterMarkBytes",
            "< memHighWaterMarkBytes",
        ),
        ({"resource": "web", "threshold": 1, "regex": True}, "regex", "not supported"),
        ({"resource": "web", "threshold": 1, "maxQueueingTimeMs": -1}, "maxQueueingTimeMs", ">= 0"),
        ({"resource": "web", "threshold": "ten"}, "threshold", "must be a number"),
        ({"resource": "web", "threshold": 1, "statIntervalInMs": 1.5}, "statIntervalInMs", "integer"),
        ({"resource": "web", "threshold": 1, "thershold": 2}, "thershold", "unknown key"),
        ({"resource": "nowhere", "threshold": 1}, "resource", "unknown resource"),
        (
            {"resource": "web", "threshold": 1, "relationStrategy": 1, "refResource": "nowhere"},
            "refResource",
            "unknown refResource",
        ),
    ],
)
def test_flow_invalid(rule: dict[str, Any], field: str, reason: str) -> None:
    assert_invalid("flowRules", rule, field, reason)


# --- isolation ---------------------------------------------------------------------------------------


def test_isolation_valid() -> None:
    assert_valid("isolationRules", {"resource": "web", "threshold": 10, "metricType": 0})


@pytest.mark.parametrize(
    ("rule", "field", "reason"),
    [
        ({"resource": "", "threshold": 1}, "resource", "empty resource"),
        ({"resource": "web", "threshold": 0}, "threshold", "> 0"),
        ({"resource": "web", "threshold": -1}, "threshold", ">= 0"),
        ({"resource": "web", "threshold": 1.5}, "threshold", "integer"),
        ({"resource": "web", "threshold": 1, "metricType": 1}, "metricType", "invalid value"),
        ({"resource": "web", "threshold": 1, "regex": True}, "regex", "not supported"),
    ],
)
def test_isolation_invalid(rule: dict[str, Any], field: str, reason: str) -> None:
    assert_invalid("isolationRules", rule, field, reason)


# --- circuit breaker -----------------------------------------------------------------------------------

CB = {"resource": "web", "retryTimeoutMs": 1000, "minRequestAmount": 5, "statIntervalMs": 1000}


@pytest.mark.parametrize(
    "extra",
    [
        {"strategy": 0, "maxAllowedRtMs": 20, "threshold": 0.1},
        {"strategy": "ErrorRatio", "threshold": 0.3},
        {"strategy": "ErrorRatio", "threshold": 1.0},
        {"strategy": 2, "threshold": 10.0, "probeNum": 3, "statSlidingWindowBucketCount": 10},
    ],
)
def test_circuit_breaker_valid(extra: dict[str, Any]) -> None:
    assert_valid("circuitBreakerRules", {**CB, **extra})


@pytest.mark.parametrize(
    ("extra", "field", "reason"),
    [
        ({"resource": "", "strategy": 1, "threshold": 0.0}, "resource", "empty resource"),
        ({"strategy": 0, "maxAllowedRtMs": 5, "threshold": -1.0}, "threshold", ">= 0"),
        ({"strategy": 1, "threshold": -0.3}, "threshold", ">= 0"),
        ({"strategy": 0, "threshold": 1.5}, "threshold", "valid range: [0.0, 1.0]"),
        ({"strategy": 1, "threshold": 1.01}, "threshold", "valid range: [0.0, 1.0]"),
        ({"strategy": 2, "threshold": 2.5}, "threshold", "whole count"),
        ({"strategy": 1, "threshold": 0.5, "statIntervalMs": 0}, "statIntervalMs", "> 0"),
        ({"strategy": 1, "threshold": 0.5, "retryTimeoutMs": 0}, "retryTimeoutMs", "> 0"),
        ({"strategy": 3, "threshold": 0.5}, "strategy", "invalid value"),
        (
            {"strategy": 1, "threshold": 0.5, "statSlidingWindowBucketCount": 200},
            "statSlidingWindowBucketCount",
            "<= 100",
        ),
        ({"strategy": 1, "threshold": 0.5, "probeNum": -1}, "probeNum", ">= 0"),
    ],
)
def test_circuit_breaker_invalid(extra: dict[str, Any], field: str, reason: str) -> None:
    assert_invalid("circuitBreakerRules", {**CB, **extra}, field, reason)


@pytest.mark.parametrize(
    ("interval", "count", "expected"),
    [(10000, 0, 1), (1000, 1, 1), (1000, 10, 10), (1000, 30, 1), (100, 100, 100), (100, 200, 1)],
)
def test_circuit_breaker_bucket_count(interval: int, count: int, expected: int) -> None:
    # sentinel-golang TestGetRuleStatSlidingWindowBucketCount
    assert effective_bucket_count(interval, count) == expected


# --- hotspot ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rule",
    [
        {"resource": "web", "paramKey": "remote_ip", "threshold": 110, "burstCount": 10, "durationInSec": 1},
        {
            "resource": "web",
            "paramKey": "header:X-User",
            "threshold": 10,
            "metricType": "QPS",
            "durationInSec": 1,
            "controlBehavior": "Throttling",
            "maxQueueingTimeMs": 0,
        },
        {"resource": "web", "paramKey": "query:uid", "paramIndex": 0, "threshold": 0},
        {
            "resource": "conns",
            "paramKey": "remote_ip",
            "threshold": 5,
            "specificItems": [
                {"valKind": "KindString", "valStr": "10.0.0.1", "threshold": 100},
                {"valKind": 1, "valStr": "::1", "threshold": 0},
            ],
        },
        {
            "resource": "web",
            "paramKey": "query:n",
            "threshold": 5,
            "specificItems": [
                {"valKind": 0, "valStr": "100", "threshold": 100},
                {"valKind": 1, "valStr": "100x", "threshold": 1},
                {"valKind": 2, "valStr": "T", "threshold": 3},
                {"valKind": 3, "valStr": "1.123456", "threshold": 4},
            ],
        },
    ],
)
def test_hotspot_valid(rule: dict[str, Any]) -> None:
    assert_valid("hotSpotParamRules", rule)


@pytest.mark.parametrize(
    ("rule", "field", "reason"),
    [
        ({"resource": "", "paramKey": "remote_ip", "threshold": 1}, "resource", "empty resource"),
        ({"resource": "web", "paramKey": "remote_ip", "threshold": -1}, "threshold", ">= 0"),
        (
            {"resource": "web", "paramKey": "remote_ip", "threshold": 1, "metricType": -1},
            "metricType",
            "invalid",
        ),
        (
            {"resource": "web", "paramKey": "remote_ip", "threshold": 1, "controlBehavior": -1},
            "controlBehavior",
            "invalid",
        ),
        (
            {"resource": "web", "paramKey": "remote_ip", "threshold": 1, "metricType": 1},
            "durationInSec",
            "> 0",
        ),
        (
            {
                "resource": "web",
                "paramKey": "remote_ip",
                "threshold": 1,
                "metricType": 1,
                "durationInSec": -1,
            },
            "durationInSec",
            "> 0",
        ),
        (
            {"resource": "web", "paramKey": "remote_ip", "paramIndex": 1, "threshold": 1},
            "paramIndex",
            "not supported",
        ),
        ({"resource": "web", "paramIndex": 2, "threshold": 1}, "paramIndex", "not supported"),
        ({"resource": "web", "threshold": 1}, "paramKey", "required"),
        ({"resource": "web", "paramKey": "cookie:x", "threshold": 1}, "paramKey", "invalid paramKey"),
        ({"resource": "web", "paramKey": "header:Bad Name", "threshold": 1}, "paramKey", "invalid paramKey"),
        (
            {"resource": "web", "paramKey": "header:" + "x" * 65, "threshold": 1},
            "paramKey",
            "invalid paramKey",
        ),
        (
            {"resource": "conns", "paramKey": "header:X-User", "threshold": 1},
            "paramKey",
            "need an http resource",
        ),
        (
            {"resource": "web", "paramKey": "remote_ip", "threshold": 1, "burstCount": -1},
            "burstCount",
            ">= 0",
        ),
        (
            {
                "resource": "web",
                "paramKey": "remote_ip",
                "threshold": 1,
                "controlBehavior": 1,
                "maxQueueingTimeMs": -1,
            },
            "maxQueueingTimeMs",
            ">= 0",
        ),
        (
            {"resource": "web", "paramKey": "remote_ip", "threshold": 1, "paramsMaxCapacity": 2**21},
            "paramsMaxCapacity",
            "<=",
        ),
        (
            {
                "resource": "web",
                "paramKey": "remote_ip",
                "threshold": 1,
                "specificItems": [{"valKind": 1, "valStr": "not-an-ip", "threshold": 1}],
            },
            "specificItems[0].valStr",
            "not an IP address",
        ),
        (
            {
                "resource": "web",
                "paramKey": "query:n",
                "threshold": 1,
                "specificItems": [{"valKind": 0, "valStr": "1.5", "threshold": 1}],
            },
            "specificItems[0].valStr",
            "not an integer",
        ),
        (
            {
                "resource": "web",
                "paramKey": "query:n",
                "threshold": 1,
                "specificItems": [{"valKind": 2, "valStr": "yes", "threshold": 1}],
            },
            "specificItems[0].valStr",
            "not a boolean",
        ),
        (
            {
                "resource": "web",
                "paramKey": "query:n",
                "threshold": 1,
                "specificItems": [{"valKind": 9, "valStr": "x", "threshold": 1}],
            },
            "specificItems[0].valKind",
            "invalid value",
        ),
        (
            {
                "resource": "web",
                "paramKey": "query:n",
                "threshold": 1,
                "specificItems": [{"valKind": 1, "valStr": "x", "threshold": -5}],
            },
            "specificItems[0].threshold",
            ">= 0",
        ),
        (
            {
                "resource": "web",
                "paramKey": "query:n",
                "threshold": 1,
                "specificItems": [
                    {"valKind": 0, "valStr": "7", "threshold": 1},
                    {"valKind": 0, "valStr": "07", "threshold": 2},
                ],
            },
            "specificItems[1].valStr",
            "duplicate",
        ),
        (
            {
                "resource": "web",
                "paramKey": "query:n",
                "threshold": 1,
                "specificItems": [{"valKind": 1, "valStr": "v" * 65, "threshold": 1}],
            },
            "specificItems[0].valStr",
            "longer than 64 bytes",
        ),
        (
            {"resource": "web", "paramKey": "query:n", "threshold": 1, "specificItems": {"a": 1}},
            "specificItems",
            "must be a list",
        ),
    ],
)
def test_hotspot_invalid(rule: dict[str, Any], field: str, reason: str) -> None:
    assert_invalid("hotSpotParamRules", rule, field, reason)


def test_hotspot_lru_capacity_defaults() -> None:
    assert lru_capacity(MetricType.Concurrency, 0, 0) == 4000
    assert lru_capacity(MetricType.Concurrency, 100, 0) == 100
    assert lru_capacity(MetricType.QPS, 0, 0) == 20000
    assert lru_capacity(MetricType.QPS, 0, 1) == 4000
    assert lru_capacity(MetricType.QPS, 0, 10) == 20000


# --- system -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rule",
    [
        {"metricType": 0, "triggerCount": 12, "strategy": 1},
        {"metricType": "CpuUsage", "triggerCount": 1.0, "strategy": "BBR"},
        {"metricType": 2, "triggerCount": 0.5, "strategy": -1},
        {"metricType": 3, "triggerCount": 100, "strategy": 0},
    ],
)
def test_system_valid(rule: dict[str, Any]) -> None:
    assert_valid("systemRules", rule)


@pytest.mark.parametrize(
    ("rule", "field", "reason"),
    [
        ({"metricType": 3, "triggerCount": -1}, "triggerCount", "negative threshold"),
        ({"metricType": 5}, "metricType", "invalid value"),
        (
            {"metricType": 4, "triggerCount": 75},
            "triggerCount",
            "invalid CPU usage, valid range is [0.0, 1.0]",
        ),
        ({"metricType": 0, "triggerCount": 1, "strategy": 2}, "strategy", "invalid value"),
    ],
)
def test_system_invalid(rule: dict[str, Any], field: str, reason: str) -> None:
    assert_invalid("systemRules", rule, field, reason)


# --- resources ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "match",
    [
        {"protocol": "tcp", "port": 1},
        {"protocol": "tcp", "port": 65535, "direction": "inbound"},
        {"protocol": "http", "port": 80, "method": "PATCH", "path": "/" + "a" * 63},
        {
            "direction": "outbound",
            "protocol": "tcp",
            "port": 5432,
            "host": "10.0.0.0/8",
            "cgroup": "/system.slice",
        },
        {"direction": "outbound", "protocol": "http", "port": 443, "host": "2001:db8::/32", "path": "/x"},
        {"direction": "outbound", "protocol": "tcp", "port": 53},
    ],
)
def test_resource_valid(match: dict[str, Any]) -> None:
    rs = load_data({"resources": [{"name": "r", "match": match}]}, "t.yaml")
    assert rs.resources[0].match.port == match["port"]


@pytest.mark.parametrize(
    ("match", "field", "reason"),
    [
        ({"protocol": "tcp", "port": 0}, "match.port", "1..65535"),
        ({"protocol": "tcp", "port": 65536}, "match.port", "1..65535"),
        ({"protocol": "tcp"}, "match.port", "required"),
        ({"protocol": "tcp", "port": "80"}, "match.port", "integer"),
        ({"protocol": "udp", "port": 80}, "match.protocol", "tcp or http"),
        ({"port": 80}, "match.protocol", "required"),
        ({"protocol": "tcp", "port": 80, "direction": "in"}, "match.direction", "inbound or outbound"),
        ({"protocol": "tcp", "port": 80, "method": "GET"}, "match.method", "http resources only"),
        ({"protocol": "http", "port": 80, "method": "FETCH"}, "match.method", "must be one of"),
        ({"protocol": "http", "port": 80, "method": "get"}, "match.method", "must be one of"),
        ({"protocol": "tcp", "port": 80, "path": "/x"}, "match.path", "http resources only"),
        ({"protocol": "http", "port": 80, "path": "x"}, "match.path", "starting with '/'"),
        ({"protocol": "http", "port": 80, "path": "/" + "a" * 64}, "match.path", "at most 64"),
        ({"protocol": "http", "port": 80, "path": "/a b"}, "match.path", "spaces"),
        ({"protocol": "tcp", "port": 80, "host": "10.0.0.1"}, "match.host", "outbound resources only"),
        (
            {"direction": "outbound", "protocol": "tcp", "port": 80, "host": "10.0.0.1/8"},
            "match.host",
            "CIDR",
        ),
        (
            {"direction": "outbound", "protocol": "tcp", "port": 80, "host": "example.com"},
            "match.host",
            "CIDR",
        ),
        ({"protocol": "tcp", "port": 80, "cgroup": "a"}, "match.cgroup", "absolute"),
        ({"protocol": "http", "port": 443, "tls": True, "cgroup": "/a"}, "match.cgroup", "tls"),
        ({"direction": "outbound", "protocol": "tcp", "port": 80, "cgroup": "a"}, "match.cgroup", "absolute"),
        ({"protocol": "tcp", "port": 80, "ports": 1}, "match.ports", "unknown key"),
        (
            {"direction": "outbound", "protocol": "tcp", "port": 80, "address": "10.0.0.1"},
            "match.address",
            "inbound resources only",
        ),
        ({"protocol": "tcp", "port": 80, "address": "10.0.0.1/8"}, "match.address", "host bits set"),
        ({"protocol": "tcp", "port": 80, "address": "pod-a"}, "match.address", "IP address or CIDR"),
        ({"protocol": "tcp", "port": 80, "address": 167772161}, "match.address", "got an integer"),
        ({"protocol": "http", "port": 443, "tls": True, "address": "10.0.0.1"}, "match.address", "tls"),
    ],
)
def test_resource_invalid(match: dict[str, Any], field: str, reason: str) -> None:
    found = problems({"resources": [{"name": "r", "match": match}]})
    assert any(f == field and reason in r for f, r in found), found


def test_resource_duplicates_and_conflicts() -> None:
    found = problems(
        {
            "resources": [
                {"name": "a", "match": {"protocol": "tcp", "port": 80}},
                {"name": "a", "match": {"protocol": "tcp", "port": 81}},
                {"name": "b", "match": {"protocol": "tcp", "port": 80, "direction": "inbound"}},
                {"name": "c", "match": {"protocol": "http", "port": 80}},  # http and tcp on one port: fine
                {"name": "", "match": {"protocol": "tcp", "port": 82}},
                {"name": "d"},
            ]
        }
    )
    assert ("name", "duplicate resource name 'a' (first at resources[0])") in found
    assert any(f == "match" and "conflicts with resource 'a'" in r for f, r in found)
    assert any(f == "name" and "non-empty" in r for f, r in found)
    assert any(f == "match" and "required" in r for f, r in found)
    assert len(found) == 4


def test_resources_on_one_port_conflict_only_within_one_address_scope() -> None:
    tcp = {"protocol": "tcp", "port": 80}
    found = problems(
        {
            "resources": [
                {"name": "a", "match": {**tcp, "address": "10.0.0.1"}},
                {"name": "b", "match": {**tcp, "address": "10.0.0.2"}},
                {"name": "c", "match": tcp},
                {"name": "d", "match": {**tcp, "address": "10.0.0.1/32"}},
            ]
        }
    )
    assert len(found) == 1 and "conflicts with resource 'a'" in found[0][1], found
    assert "address 10.0.0.1/32 port 80" in found[0][1]


def test_duplicate_ids_across_kinds() -> None:
    found = problems(
        {
            "resources": RES,
            "flowRules": [{"id": "x", "resource": "web", "threshold": 1}],
            "systemRules": [{"id": "x", "metricType": 3, "triggerCount": 1}],
        }
    )
    assert found == [("id", "duplicate id 'x' (first used by systemRules[0])")] or found == [
        ("id", "duplicate id 'x' (first used by flowRules[0])")
    ]


# --- reject -------------------------------------------------------------------------------------------


def test_reject_defaults_and_response_bytes() -> None:
    rs = load_data(
        {
            "resources": RES,
            "reject": {
                "http": {"status": 503, "body": "busy\n", "headers": {"Retry-After": 2}},
                "tcp": "drop",
            },
        }
    )
    assert rs.reject.tcp == "drop"
    assert rs.reject.http.response_bytes() == (
        b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 2\r\nContent-Length: 5\r\nConnection: close\r\n\r\n"
        b"busy\n"
    )
    assert rs.reject.http.response_bytes(keep_alive=True) == (
        b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 2\r\nContent-Length: 5\r\n\r\nbusy\n"
    ), "the reply that keeps the connection says nothing of closing it"
    assert load_data({"resources": RES}).reject.http.status == 429
    assert load_data({"resources": RES, "reject": {"http": {"mode": "rst"}}}).reject.http.mode == "rst"
    assert load_data({"resources": RES, "reject": {"http": "drop"}}).reject.http.mode == "drop"


@pytest.mark.parametrize(
    ("reject", "field", "reason"),
    [
        ({"tcp": "reset"}, "tcp", "rst or drop"),
        ({"http": {"status": 200}}, "http.status", "400..599"),
        ({"http": {"mode": "close"}}, "http.mode", "response, rst or drop"),
        ({"http": {"mode": "rst", "status": 429}}, "http.status", "no effect"),
        ({"http": {"headers": {"Bad Name": "x"}}}, "http.headers.Bad Name", "invalid header name"),
        ({"http": {"headers": {"X-A": "a\r\nb"}}}, "http.headers.X-A", "CR, LF"),
        (
            {"http": {"headers": {"connection": "keep-alive"}}},
            "http.headers.connection",
            "set by sentinel-ebpf",
        ),
        ({"http": {"body": "x" * 500}}, "http", "at most 512"),
        ({"http": {"body": 5}}, "http.body", "must be a string"),
        ({"other": 1}, "other", "unknown key"),
    ],
)
def test_reject_invalid(reject: dict[str, Any], field: str, reason: str) -> None:
    found = problems({"resources": RES, "reject": reject})
    assert any(f == field and reason in r for f, r in found), found


# --- documents ----------------------------------------------------------------------------------------


def test_every_problem_reported_and_document_rejected_whole() -> None:
    text = """resources:
  - {name: web, match: {protocol: http, port: 8080}}
flowRules:
  - {resource: web, threshold: 10}
  - {resource: web, threshold: -1}
isolationRules:
  - {resource: web, threshold: 0}
systemRules:
  - {metricType: 4, triggerCount: 2}
"""
    with pytest.raises(RulesError) as info:
        load_text(text, "r.yaml")
    got = [(p.section, p.index, p.field, p.line) for p in info.value.problems]
    assert got == [
        ("flowRules", 1, "threshold", 5),
        ("isolationRules", 0, "threshold", 7),
        ("systemRules", 0, "triggerCount", 9),
    ]
    assert "r.yaml:5: flowRules[1]: threshold: must be >= 0, got -1" in str(info.value)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("[1, 2", "not valid YAML"),  # not .json: after the JSON reader fails, YAML has its say
        ("a: [1\n", "not valid YAML"),
        ("flowRules: {resource: x}\n", "must be a list"),
        ("flowrules: []\n", "did you mean 'flowRules'"),
        ("flowRules:\n  - 5\n", "must be an object"),
        ("resources: 3\n", "must be a list"),
        ("42\n", "must be an object or a list"),
        ("a: 1\na: 2\n", "duplicate key 'a'"),
    ],
)
def test_document_level_problems(text: str, reason: str) -> None:
    assert_reported(text, "d.yaml", reason)


# --- flow: clusterMode / clusterConfig ----------------------------------------------------------------


def test_flow_cluster_fields_and_defaults() -> None:
    from sentinel_ebpf.rules.flow import ClusterThresholdType

    rs = load_data(doc("flowRules", {"resource": "web", "threshold": 100, "clusterMode": True}), "t.yaml")
    rule = rs.rules("flowRules")[0]
    # Sentinel's defaults: threshold per node (AvgLocal), fall back to local enforcement
    assert rule.cluster_mode is True
    assert rule.cluster_config.threshold_type is ClusterThresholdType.AvgLocal
    assert rule.cluster_config.fallback_to_local_when_fail is True
    rs = load_data(doc("flowRules", {"resource": "web", "threshold": 100, "clusterMode": True,
                                     "clusterConfig": {"thresholdType": 1, "fallbackToLocalWhenFail": False}}),
                   "t.yaml")  # fmt: skip
    cfg = rs.rules("flowRules")[0].cluster_config
    assert (cfg.threshold_type, cfg.fallback_to_local_when_fail) == (ClusterThresholdType.Global, False)


def test_flow_cluster_round_trips() -> None:
    from sentinel_ebpf.rules.dump import to_project, to_sentinel_json

    rule = {"resource": "web", "threshold": 100, "clusterMode": True,
            "clusterConfig": {"thresholdType": "Global", "fallbackToLocalWhenFail": False}}  # fmt: skip
    rs = load_data(doc("flowRules", rule), "t.yaml")
    out = to_project(rs)["flowRules"][0]
    assert out["clusterMode"] is True
    assert out["clusterConfig"] == {"thresholdType": "Global", "fallbackToLocalWhenFail": False}
    assert to_sentinel_json(rs, "flowRules")[0]["clusterConfig"]["thresholdType"] == 1
    assert load_data({"resources": RES, "flowRules": [out]}, "t.yaml") == rs


@pytest.mark.parametrize(
    ("rule", "field", "reason"),
    [
        ({"clusterMode": 1}, "clusterMode", "true or false"),
        ({"clusterMode": True, "clusterConfig": 5}, "clusterConfig", "must be an object"),
        ({"clusterMode": True, "clusterConfig": {"thresholdType": 2}}, "clusterConfig.thresholdType",
         "invalid value 2"),
        ({"clusterMode": True, "clusterConfig": {"thresholdType": "Everywhere"}}, "clusterConfig.thresholdType",
         "unknown value"),
        ({"clusterMode": True, "clusterConfig": {"fallbackToLocalWhenFail": "yes"}},
         "clusterConfig.fallbackToLocalWhenFail", "true or false"),
        ({"clusterMode": True, "clusterConfig": {"flowId": 7}}, "clusterConfig", "unknown key 'flowId'"),
        ({"clusterMode": True, "controlBehavior": 1}, "clusterMode", "controlBehavior Reject"),
        ({"clusterMode": True, "tokenCalculateStrategy": 1, "warmUpPeriodSec": 5}, "clusterMode",
         "tokenCalculateStrategy Direct"),
        ({"clusterMode": True, "relationStrategy": 1, "refResource": "ref"}, "clusterMode",
         "relationStrategy CurrentResource"),
    ],
)  # fmt: skip
def test_flow_cluster_invalid(rule: dict[str, Any], field: str, reason: str) -> None:
    assert_invalid("flowRules", {"resource": "web", "threshold": 10, **rule}, field, reason)


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (
            "{resource: api, paramKey: 'header:X-Id', threshold: 1, ipv6PrefixLen: 64}",
            "ipv6PrefixLen applies to paramKey remote_ip only",
        ),
        (
            "{resource: api, paramKey: remote_ip, threshold: 1, ipv6PrefixLen: 129}",
            "ipv6PrefixLen: must be <= 128",
        ),
    ],
)
def test_ipv6_prefix_len_is_validated(rule: str, message: str) -> None:
    text = f"resources:\n  - {{name: api, match: {{protocol: http, port: 8080, path: /}}}}\nhotSpotParamRules:\n  - {rule}\n"
    with pytest.raises(RulesError, match=message):
        load_text(text, "hot.yaml")
