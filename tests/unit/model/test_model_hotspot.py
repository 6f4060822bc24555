"""Hotspot parameter flow control: sentinel-golang's cases, LRU, specific items, token bucket properties."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from sentinel_ebpf.model import BlockType, ManualClock, Sentinel
from sentinel_ebpf.model.hotspot import LRU, HotspotController
from sentinel_ebpf.rules import RuleSet
from sentinel_ebpf.rules.hotspot import (
    ControlBehavior,
    HotspotRule,
    MetricType,
    ParamKind,
    SpecificItem,
    canonical_value,
)

MakeRuleSet = Callable[..., RuleSet]  # the make_ruleset fixture (conftest.py)

NOW = 1_700_000_000_000


def rule(**kw: Any) -> HotspotRule:
    params: dict[str, Any] = {
        "resource": "res_a",
        "param_key": "query:a",
        "threshold": 100,
        "metric_type": MetricType.QPS,
        "duration_in_sec": 1,
    }
    params.update(kw)
    return HotspotRule(**params)


def test_concurrency_check() -> None:
    c = HotspotController(rule(metric_type=MetricType.Concurrency))
    assert not c.check(NOW, 666688, 1).blocked  # first sight passes
    c.concurrency.get("666688").count = 50  # type: ignore[union-attr]
    assert not c.check(NOW, 666688, 1).blocked
    c.concurrency.get("666688").count = 101  # type: ignore[union-attr]
    assert c.check(NOW, 666688, 1).blocked
    c.specific["666688"] = 20
    c.concurrency.get("666688").count = 19  # type: ignore[union-attr]
    assert not c.check(NOW, 666688, 1).blocked
    c.concurrency.get("666688").count = 20  # type: ignore[union-attr]
    assert c.check(NOW, 666688, 1).blocked


def test_reject_batch_over_max_and_first_sight() -> None:
    c = HotspotController(rule(burst_count=10))
    assert c.check(NOW, 10110, 130).blocked  # 130 > 100 + 10
    assert not c.check(NOW, 10110, 20).blocked
    assert c.tokens.get("10110").tokens == 90  # type: ignore[union-attr]


def test_reject_sub_token_within_duration() -> None:
    c = HotspotController(rule(burst_count=10, duration_in_sec=10))
    assert not c.check(NOW - 1000, 10110, 60).blocked  # first sight: 110 - 60 = 50 left
    assert not c.check(NOW, 10110, 20).blocked  # 1 s later, inside the 10 s window: no refill
    assert c.tokens.get("10110").tokens == 30  # type: ignore[union-attr]


def test_reject_refill_after_duration() -> None:
    c = HotspotController(rule(burst_count=10))
    c.check(NOW - 1001, 10110, 60)  # 50 left
    assert not c.check(NOW + 10, 10110, 20).blocked
    state = c.tokens.get("10110")
    assert state is not None and state.last_add_token_ms == NOW + 10
    # 1011 ms * 100 / 1000 = 101 added, capped at max 110, minus 20
    assert state.tokens == 90


def test_reject_threshold_zero_blocks() -> None:
    c = HotspotController(rule(threshold=0))
    assert c.check(NOW, "x", 1).blocked


def test_throttling() -> None:
    c = HotspotController(rule(control_behavior=ControlBehavior.Throttling, max_queueing_time_ms=10))
    c.check(NOW - 201, 10110, 1)  # seen 201 ms ago
    assert not c.check(NOW, 10110, 20).blocked  # cost 200 ms: expected = now - 1, passes
    # cost of each request: 1 * 1000 / 100 = 10 ms
    c2 = HotspotController(rule(control_behavior=ControlBehavior.Throttling, max_queueing_time_ms=25))
    results = [c2.check(NOW, "v", 1) for _ in range(5)]
    assert [(r.blocked, r.wait_ns // 1_000_000) for r in results] == [
        (False, 0),
        (False, 10),
        (False, 20),
        (True, 0),
        (True, 0),
    ]


def test_specific_items_by_value_text() -> None:
    r = rule(
        specific_items=(
            SpecificItem(ParamKind.KindInt, "007", 1),
            SpecificItem(ParamKind.KindBool, "T", 2),
            SpecificItem(ParamKind.KindFloat64, "1.123456", 3),
            SpecificItem(ParamKind.KindString, "ximu", 4),
        )
    )
    c = HotspotController(r)
    assert c.limit_for(canonical_value(7)) == 1
    assert c.limit_for(canonical_value("7")) == 1
    assert c.limit_for(canonical_value(True)) == 2
    assert c.limit_for(canonical_value(1.12346)) == 3
    assert c.limit_for(canonical_value("ximu")) == 4
    assert c.limit_for("other") == 100


def test_remote_ip_items_are_normalised() -> None:
    r = rule(param_key="remote_ip", specific_items=(SpecificItem(ParamKind.KindString, "2001:DB8::1", 1),))
    c = HotspotController(r)
    assert not c.check(NOW, "2001:db8:0::1", 1).blocked
    assert c.check(NOW, "2001:db8::1", 1).blocked  # same address, limit 1, tokens used


def test_lru_capacity_and_order() -> None:
    lru: LRU[int] = LRU(3)
    for k in "abc":
        assert lru.add_if_absent(k, 1) is None
    assert lru.get("a") == 1  # refresh a
    lru.add_if_absent("d", 1)  # evicts b, the least recently used
    assert lru.keys() == ["c", "a", "d"]
    assert lru.add_if_absent("c", 9) == 1  # present: prior value, refreshed
    assert lru.keys() == ["a", "d", "c"]
    c = HotspotController(rule(metric_type=MetricType.Concurrency))
    for i in range(10000):
        c.check(NOW, i, 1)
    assert len(c.concurrency) == 4000
    c = HotspotController(rule(duration_in_sec=0, params_max_capacity=0))
    assert c.tokens.capacity == 20000


def test_through_sentinel(make_ruleset: MakeRuleSet) -> None:
    clock = ManualClock(NOW)
    s = Sentinel(
        make_ruleset(
            hotSpotParamRules=[
                {
                    "resource": "api",
                    "paramKey": "header:X-User",
                    "metricType": "QPS",
                    "threshold": 2,
                    "durationInSec": 1,
                },
                {"resource": "api", "paramKey": "remote_ip", "metricType": "Concurrency", "threshold": 1},
            ]
        ),
        clock=clock,
    )
    p = {"X-USER": "bob", "remote_ip": "10.0.0.1"}
    first = s.entry("api", param=p)
    second = s.entry("api", param={"header:x-user": "bob", "remote_ip": "10.0.0.1"})
    assert first.passed and second.block_type is BlockType.BLOCK_HOTSPOT  # concurrency 1 in flight
    first.exit()
    assert s.entry("api", param={"header:X-User": "bob", "remote_ip": "10.0.0.1"}).passed
    assert not s.entry("api", param={"header:X-User": "bob", "remote_ip": "10.0.0.2"}).passed  # 3rd for bob
    assert s.entry("api", param={"header:X-User": "eve"}).passed
    assert s.entry("api").passed  # no parameter: hotspot rules do not apply


# --- properties ---------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    reqs=st.lists(st.tuples(st.integers(0, 3000), st.integers(1, 12)), min_size=1, max_size=60),
    threshold=st.integers(1, 20),
    burst=st.integers(0, 10),
    duration=st.integers(1, 3),
)
def test_reject_token_bucket_against_brute_force(
    reqs: list[tuple[int, int]], threshold: int, burst: int, duration: int
) -> None:
    """Replay against an independent per-request bucket simulation, and check token conservation."""
    c = HotspotController(rule(threshold=threshold, burst_count=burst, duration_in_sec=duration))
    max_count = threshold + burst
    window = duration * 1000
    now = NOW
    tokens: int | None = None
    last_fill = 0
    passed_total = 0
    for gap, batch in reqs:
        now += gap
        got = not c.check(now, "k", batch).blocked
        # brute force, written from SENTINEL.md's description
        if batch > max_count:
            want = False
        elif tokens is None:
            tokens, last_fill, want = max_count - batch, now, True
        elif now - last_fill > window:
            refill = min(tokens + (now - last_fill) * threshold // window, max_count)
            want = refill - batch >= 0
            if want:
                tokens, last_fill = refill - batch, now
        else:
            want = tokens - batch >= 0
            if want:
                tokens -= batch
        assert got == want
        passed_total += batch if got else 0
    assert passed_total <= max_count + (now - NOW) * threshold // window


@settings(max_examples=200, deadline=None)
@given(
    gaps=st.lists(st.integers(0, 300), min_size=1, max_size=60),
    threshold=st.integers(1, 50),
    queue=st.integers(0, 500),
)
def test_throttling_spacing(gaps: list[int], threshold: int, queue: int) -> None:
    """Admitted requests at their virtual times are spaced by the per-request cost."""
    c = HotspotController(
        rule(threshold=threshold, control_behavior=ControlBehavior.Throttling, max_queueing_time_ms=queue)
    )
    cost_ns = -(-1_000_000_000 // threshold)  # rounded up: never more than the threshold
    now = NOW
    virtual: list[int] = []
    for gap in gaps:
        now += gap
        r = c.check(now, "k", 1)
        if not r.blocked:
            assert r.wait_ns < max(queue, 1) * 1_000_000
            virtual.append(now * 1_000_000 + r.wait_ns)
    assert all(b - a >= cost_ns for a, b in itertools.pairwise(virtual))
