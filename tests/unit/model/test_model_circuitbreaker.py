"""Circuit breakers: sentinel-golang's cases, the three strategies, probes, rollback, listeners."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sentinel_ebpf.model import BlockType, ManualClock, Sentinel, State, StateChange
from sentinel_ebpf.model.circuitbreaker import CircuitBreaker
from sentinel_ebpf.rules import RuleSet
from sentinel_ebpf.rules.circuitbreaker import CircuitBreakerRule, Strategy

MakeRuleSet = Callable[..., RuleSet]  # the make_ruleset fixture (conftest.py)

NOW = 1_700_000_000_000


def breaker(
    strategy: Strategy = Strategy.SlowRequestRatio, **kw: Any
) -> tuple[CircuitBreaker, list[StateChange]]:
    changes: list[StateChange] = []
    params: dict[str, Any] = {
        "resource": "abc",
        "strategy": strategy,
        "retry_timeout_ms": 3000,
        "min_request_amount": 10,
        "stat_interval_ms": 10000,
        "max_allowed_rt_ms": 50,
        "threshold": 0.5 if strategy is not Strategy.ErrorCount else 1.0,
    }
    params.update(kw)
    return CircuitBreaker(CircuitBreakerRule(**params), changes.append), changes


def no_hook(_: object) -> None:
    return None


def test_cas() -> None:
    b, _ = breaker()
    assert b.state is State.Closed
    assert b._cas(State.Closed, State.Open)
    assert not b._cas(State.Closed, State.Open)
    b.state = State.HalfOpen
    assert b._cas(State.HalfOpen, State.Open)


def test_closed_passes_and_open_probe() -> None:
    for strategy in Strategy:
        b, changes = breaker(strategy)
        assert b.try_pass(NOW, no_hook)
        b.state = State.Open  # nextRetry 0: the retry timeout has arrived
        assert b.try_pass(NOW, no_hook)
        assert b.state is State.HalfOpen
        assert [(c.from_state, c.to_state) for c in changes] == [(State.Open, State.HalfOpen)]


def test_probe_num_needs_that_many_successes() -> None:
    for strategy in Strategy:
        b, _ = breaker(strategy, probe_num=10)
        b.state = State.Open
        for _ in range(10):
            assert b.try_pass(NOW, no_hook)
            assert b.state is State.HalfOpen
            b.on_request_complete(NOW, 1, False)
        assert b.state is State.Closed


def test_slow_rt_on_request_complete() -> None:
    b, _ = breaker()
    b.on_request_complete(NOW, NOW, False)  # fewer than minRequestAmount: stays closed
    assert b.state is State.Closed
    b.state = State.HalfOpen
    b.on_request_complete(NOW, NOW, False)  # slow probe
    assert b.state is State.Open
    b.state = State.HalfOpen
    b.on_request_complete(NOW, 10, False)  # fast probe
    assert b.state is State.Closed
    b.probe_number = 2
    b.state = State.HalfOpen
    b.on_request_complete(NOW, 10, False)
    assert b.state is State.HalfOpen and b.cur_probe_number == 1
    b.on_request_complete(NOW, NOW, False)
    assert b.state is State.Open and b.cur_probe_number == 0


def test_error_strategies_on_request_complete() -> None:
    for strategy in (Strategy.ErrorRatio, Strategy.ErrorCount):
        b, _ = breaker(strategy)
        b.on_request_complete(NOW, 0, False)
        assert b.state is State.Closed
        b.state = State.HalfOpen
        b.on_request_complete(NOW, 0, False)
        assert b.state is State.Closed
        b.state = State.HalfOpen
        b.on_request_complete(NOW, 0, True)
        assert b.state is State.Open
        b.probe_number = 2
        b.state = State.HalfOpen
        b.on_request_complete(NOW, 0, False)
        assert b.state is State.HalfOpen and b.cur_probe_number == 1
        b.on_request_complete(NOW, 0, True)
        assert b.state is State.Open and b.cur_probe_number == 0
        assert b.next_retry_ms == NOW + 3000


def test_trip_thresholds() -> None:
    # ratio >= threshold trips once total >= minRequestAmount
    b, changes = breaker(Strategy.ErrorRatio, min_request_amount=4, threshold=0.5)
    for err in (True, False, True):
        b.on_request_complete(NOW, 0, err)
    assert b.state is State.Closed  # 3 < minRequestAmount
    b.on_request_complete(NOW, 0, False)
    assert b.state is State.Open and changes[-1].snapshot == 0.5
    # ErrorCount: errors >= threshold
    b, _ = breaker(Strategy.ErrorCount, min_request_amount=1, threshold=3)
    b.on_request_complete(NOW, 0, True)
    b.on_request_complete(NOW, 0, True)
    assert b.state is State.Closed
    b.on_request_complete(NOW, 0, True)
    assert b.state is State.Open
    # slow ratio: rt > maxAllowedRt counts as slow (equal is not slow)
    b, _ = breaker(min_request_amount=2, threshold=1.0, max_allowed_rt_ms=50)
    b.on_request_complete(NOW, 50, False)
    b.on_request_complete(NOW, 51, False)
    assert b.state is State.Closed
    b.on_request_complete(NOW, 60, False)
    assert b.state is State.Closed  # 2/3 < 1.0


def test_window_slides() -> None:
    b, _ = breaker(
        Strategy.ErrorCount,
        min_request_amount=1,
        threshold=2,
        stat_interval_ms=1000,
        stat_sliding_window_bucket_count=2,
    )
    b.on_request_complete(NOW, 0, True)
    b.on_request_complete(NOW + 1501, 0, True)  # the first error has left the 1 s window
    assert b.state is State.Closed
    b.on_request_complete(NOW + 1600, 0, True)
    assert b.state is State.Open


def cb_rules(**extra: Any) -> dict[str, Any]:
    return {
        "resource": "svc",
        "strategy": 1,
        "retryTimeoutMs": 1000,
        "minRequestAmount": 2,
        "statIntervalMs": 1000,
        "threshold": 0.5,
        **extra,
    }


def test_full_cycle_through_sentinel(make_ruleset: MakeRuleSet) -> None:
    clock = ManualClock(NOW)
    s = Sentinel(make_ruleset(circuitBreakerRules=[cb_rules(id="cb")]), clock=clock)
    for _ in range(2):
        s.entry("svc").exit(rt_ms=1, error="boom")
    blocked = s.entry("svc")
    assert blocked.block_type is BlockType.BLOCK_CIRCUIT_BREAKING
    assert s.stats("svc").circuit_breakers == [{"id": "cb", "state": "open"}]
    clock.advance(1000)
    probe = s.entry("svc")
    assert probe.passed
    assert not s.entry("svc").passed  # HalfOpen with probeNum 0 blocks everything else
    probe.exit(rt_ms=1)
    assert s.stats("svc").circuit_breakers[0]["state"] == "closed"
    assert [(c.from_state.name, c.to_state.name) for c in s.state_changes] == [
        ("Closed", "Open"),
        ("Open", "HalfOpen"),
        ("HalfOpen", "Closed"),
    ]


def test_half_open_rollback_when_probe_blocked_by_later_rule(make_ruleset: MakeRuleSet) -> None:
    clock = ManualClock(NOW)
    s = Sentinel(make_ruleset(circuitBreakerRules=[cb_rules(id="a"), cb_rules(id="b")]), clock=clock)
    a, b = s.breakers["svc"]
    a.state, b.state = State.Open, State.Open
    a.next_retry_ms = NOW
    b.next_retry_ms = NOW + 5000
    e = s.entry("svc")
    assert e.blocked and e.block is not None and e.block.rule.id == "b"
    assert a.state is State.Open and a.next_retry_ms == NOW  # rolled back, nextRetry unchanged
    assert [(c.rule.id, c.from_state.name, c.to_state.name) for c in s.state_changes] == [
        ("a", "Open", "HalfOpen"),
        ("a", "HalfOpen", "Open"),
    ]


class Listener:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def on_transform_to_closed(self, prev: State, rule: CircuitBreakerRule) -> None:
        self.calls.append(f"{prev.name}->Closed")

    def on_transform_to_open(self, prev: State, rule: CircuitBreakerRule, snapshot: object) -> None:
        self.calls.append(f"{prev.name}->Open({snapshot})")

    def on_transform_to_half_open(self, prev: State, rule: CircuitBreakerRule) -> None:
        self.calls.append(f"{prev.name}->HalfOpen")


def test_listeners(make_ruleset: MakeRuleSet) -> None:
    clock = ManualClock(NOW)
    s = Sentinel(
        make_ruleset(circuitBreakerRules=[cb_rules(strategy=2, threshold=1, minRequestAmount=1)]), clock=clock
    )
    listener = Listener()
    s.add_state_change_listener(listener)
    s.entry("svc").exit(error=True)
    clock.advance(1000)
    s.entry("svc").exit(error=True)
    assert listener.calls == ["Closed->Open(1)", "Open->HalfOpen", "HalfOpen->Open(1.0)"]
