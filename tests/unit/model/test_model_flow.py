"""Flow control: Reject, Throttling (virtual queue), WarmUp, MemoryAdaptive, AssociatedResource."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sentinel_ebpf.model import BlockType, ManualClock, Sentinel, SystemMetrics
from sentinel_ebpf.model.flow import NS_PER_MS, ThrottlingChecker, WarmUpCalculator
from sentinel_ebpf.model.stat import ResourceStat, rule_stat
from sentinel_ebpf.rules import RuleSet
from sentinel_ebpf.rules.flow import FlowRule, TokenCalculateStrategy

MakeRuleSet = Callable[..., RuleSet]  # the make_ruleset fixture (conftest.py)

T0_NS = 1_700_000_000_000 * NS_PER_MS


# --- Throttling (sentinel-golang tc_throttling_test.go) ---------------------------------------------


def test_throttling_no_queueing() -> None:
    interval_ms, threshold = 10000, 50.0
    tc = ThrottlingChecker(0, interval_ms)
    now = T0_NS
    assert tc.check(now, 51, threshold).blocked
    assert not tc.check(now, 50, threshold).blocked
    for _ in range(10):
        assert tc.check(now, 1, threshold).blocked
    now += (interval_ms // int(threshold) * 10 + 10) * NS_PER_MS  # 2010 ms later
    first = tc.check(now, 1, threshold)
    assert not first.blocked and first.wait_ns == 0
    assert tc.check(now, 1, threshold).blocked


def test_throttling_queueing_waits() -> None:
    tc = ThrottlingChecker(2000, 10000)
    now = T0_NS
    assert not tc.check(now, 51, 50.0).wait_ns and tc.check(now, 51, 50.0).blocked
    assert not tc.check(now, 50, 50.0).blocked
    results = [tc.check(now, 1, 50.0) for _ in range(20)]
    # one request per 200 ms: the first 10 wait 200, 400, ... 2000 ms, the rest would wait too long
    assert [r.wait_ns // NS_PER_MS for r in results[:10]] == [200 * (i + 1) for i in range(10)]
    assert all(not r.blocked for r in results[:10])
    assert all(r.blocked for r in results[10:])


def test_throttling_single_pass_at_one_instant() -> None:
    # sentinel-golang TestThrottlingChecker_DoCheckParallelPass: many requests at one instant, queue 0
    tc = ThrottlingChecker(0, 10000)
    assert sum(not tc.check(T0_NS, 1, 50.0).blocked for _ in range(512)) == 1


def test_throttling_zero_threshold_and_batch_over_threshold() -> None:
    tc = ThrottlingChecker(1000, 1000)
    assert tc.check(T0_NS, 1, 0.0).blocked
    assert tc.check(T0_NS, 3, 2.0).blocked
    assert not tc.check(T0_NS, 0, 2.0).blocked


@settings(max_examples=200, deadline=None)
@given(
    gaps=st.lists(st.integers(0, 400), min_size=1, max_size=80),
    threshold=st.integers(1, 100),
    queue_ms=st.integers(0, 1000),
)
def test_throttling_virtual_queue_spacing(gaps: list[int], threshold: int, queue_ms: int) -> None:
    """Admitted requests, at their virtual times (arrival + wait), are spaced by the interval,
    and no wait exceeds maxQueueingTimeMs. Brute force: replay and compare."""
    tc = ThrottlingChecker(queue_ms, 1000)
    interval_ns = math.ceil(1 / threshold * 1000 * NS_PER_MS)
    now = T0_NS
    admitted: list[int] = []
    for gap in gaps:
        now += gap * NS_PER_MS
        r = tc.check(now, 1, float(threshold))
        if not r.blocked:
            assert r.wait_ns <= queue_ms * NS_PER_MS
            admitted.append(now + r.wait_ns)
    assert admitted == sorted(admitted)
    assert all(b - a >= interval_ns for a, b in itertools.pairwise(admitted))
    # liveness: a request arriving one interval after the last virtual slot always passes
    last = admitted[-1] if admitted else now
    assert not tc.check(max(now, last + interval_ns), 1, float(threshold)).blocked


# --- Reject ------------------------------------------------------------------------------------------


def test_reject_threshold_per_second(make_ruleset: MakeRuleSet) -> None:
    clock = ManualClock()
    s = Sentinel(make_ruleset(flowRules=[{"resource": "r", "threshold": 10}]), clock=clock)
    results = [s.entry("r") for _ in range(12)]
    assert [e.passed for e in results] == [True] * 10 + [False] * 2
    assert results[-1].block_type is BlockType.BLOCK_FLOW and results[-1].block is not None
    assert results[-1].block.snapshot == 10.0
    clock.advance(1000)
    assert s.entry("r").passed
    assert not s.entry("r", batch=10).passed  # 1 + 10 > 10


def test_reject_threshold_zero_blocks_everything(make_ruleset: MakeRuleSet) -> None:
    s = Sentinel(make_ruleset(flowRules=[{"resource": "r", "threshold": 0}]))
    assert not s.entry("r").passed


def test_standalone_window_counts_passes(make_ruleset: MakeRuleSet) -> None:
    # sentinel-golang Test_FlowSlot_StandaloneStat: a 20 s window of its own
    s = Sentinel(make_ruleset(flowRules=[{"resource": "abc", "threshold": 100, "statIntervalInMs": 20000}]))
    for _ in range(50):
        assert s.entry("abc").passed
    (fc,) = s.flow["abc"]
    assert fc.stat is not None and fc.stat.standalone is not None
    assert fc.stat.metric.get_sum(s.clock.now_ms(), 0) == 50


def test_several_rules_first_block_wins(make_ruleset: MakeRuleSet) -> None:
    s = Sentinel(
        make_ruleset(
            flowRules=[
                {"id": "wide", "resource": "r", "threshold": 5},
                {"id": "narrow", "resource": "r", "threshold": 3},
            ]
        )
    )
    entries = [s.entry("r") for _ in range(6)]
    assert [e.passed for e in entries] == [True] * 3 + [False] * 3
    assert entries[3].block is not None and isinstance(entries[3].block.rule, FlowRule)
    assert entries[3].block.rule.id == "narrow"


# --- WarmUp ------------------------------------------------------------------------------------------


def warm_rule(t: float = 100, period: int = 10, cold: int = 3) -> FlowRule:
    return FlowRule(
        resource="r",
        threshold=t,
        token_calculate_strategy=TokenCalculateStrategy.WarmUp,
        warm_up_period_sec=period,
        warm_up_cold_factor=cold,
    )


def test_warm_up_constants() -> None:
    calc = WarmUpCalculator(warm_rule(), rule_stat(ResourceStat(), 0))
    assert (calc.warning_token, calc.max_token) == (500, 1000)
    assert calc.slope == pytest.approx(2 / 100 / 500)
    now = 1_700_000_000_000
    assert calc.allowed(now) == pytest.approx(100 / 3)  # cold start at maxToken
    calc.stored_tokens = 750
    assert calc._cool_down(calc.last_filled_ms, 0) == 750
    calc.last_filled_ms = now  # no refill in this second
    assert calc.allowed(now) == pytest.approx(50.0)
    calc.stored_tokens = 500
    assert calc.allowed(now) == pytest.approx(100.0)  # at warningToken: still the slope formula, = t
    calc.stored_tokens = 499
    assert calc.allowed(now) == 100.0
    assert warm_rule(cold=0).effective_cold_factor == 3 and warm_rule(cold=1).effective_cold_factor == 3


def test_warm_up_ramps_to_threshold(make_ruleset: MakeRuleSet) -> None:
    clock = ManualClock(1_700_000_000_000)
    s = Sentinel(
        make_ruleset(
            flowRules=[
                {
                    "resource": "r",
                    "threshold": 100,
                    "tokenCalculateStrategy": 1,
                    "warmUpPeriodSec": 10,
                    "warmUpColdFactor": 3,
                }
            ]
        ),
        clock=clock,
    )
    passed_first = sum(s.entry("r").passed for _ in range(200))
    assert passed_first == 33  # cold: 100/3 QPS
    per_second = []
    for _ in range(30):
        clock.advance(1000)
        per_second.append(sum(s.entry("r").passed for _ in range(200)))
    assert per_second == sorted(per_second)  # never colder as it is used
    assert per_second[-1] == 100


# --- MemoryAdaptive ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mem", "allowed"), [(None, 1000), (100, 1000), (1024, 1000), (1536, 550), (2048, 100), (3072, 100)]
)
def test_memory_adaptive(make_ruleset: MakeRuleSet, mem: int | None, allowed: float) -> None:
    metrics = SystemMetrics(memory=mem)
    s = Sentinel(
        make_ruleset(
            flowRules=[
                {
                    "resource": "r",
                    "tokenCalculateStrategy": 2,
                    "lowMemUsageThreshold": 1000,
                    "highMemUsageThreshold": 100,
                    "memLowWaterMarkBytes": 1024,
                    "memHighWaterMarkBytes": 2048,
                }
            ]
        ),
        system_metrics=metrics,
    )
    (fc,) = s.flow["r"]
    assert fc.calculator.allowed(0) == pytest.approx(allowed)


# --- AssociatedResource -----------------------------------------------------------------------------


def test_associated_resource_uses_ref_statistics(make_ruleset: MakeRuleSet) -> None:
    clock = ManualClock()
    s = Sentinel(
        make_ruleset(
            flowRules=[{"resource": "write", "threshold": 3, "relationStrategy": 1, "refResource": "read"}]
        ),
        clock=clock,
    )
    assert all(s.entry("write").passed for _ in range(10))  # "read" is idle
    for _ in range(3):
        s.entry("read")
    assert not s.entry("write").passed
    clock.advance(1000)
    assert s.entry("write").passed


def test_associated_resource_standalone_window(make_ruleset: MakeRuleSet) -> None:
    s = Sentinel(
        make_ruleset(
            flowRules=[
                {
                    "resource": "write",
                    "threshold": 2,
                    "statIntervalInMs": 3000,
                    "relationStrategy": 1,
                    "refResource": "read",
                }
            ]
        )
    )
    s.entry("read")
    s.entry("read")
    assert not s.entry("write").passed


def test_throttling_entry_reports_virtual_wait(make_ruleset: MakeRuleSet) -> None:
    s = Sentinel(
        make_ruleset(
            flowRules=[{"resource": "r", "threshold": 10, "controlBehavior": 1, "maxQueueingTimeMs": 250}]
        )
    )
    waits = [s.entry("r") for _ in range(5)]
    # one per 100 ms: waits 0, 100, 200; the next would wait 300 > 250
    assert [e.passed for e in waits] == [True, True, True, False, False]
    assert [e.wait_ms for e in waits[:3]] == [0, 100, 200]
