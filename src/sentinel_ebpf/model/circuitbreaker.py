"""Circuit breakers (sentinel-golang ``core/circuitbreaker``): state machine, probes, rollback.

States change only by compare-and-swap (``_cas``), so the kernel implementation, which must use atomic
CAS on a map value, can be compared transition by transition. Every change is reported to listeners.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from sentinel_ebpf.model.leap_array import ClockBackwardsError, LeapArray
from sentinel_ebpf.rules.circuitbreaker import CircuitBreakerRule, Strategy


class State(enum.IntEnum):
    Closed = 0
    HalfOpen = 1
    Open = 2


class StateChangeListener(Protocol):
    def on_transform_to_closed(self, prev: State, rule: CircuitBreakerRule) -> None: ...

    def on_transform_to_open(self, prev: State, rule: CircuitBreakerRule, snapshot: object) -> None: ...

    def on_transform_to_half_open(self, prev: State, rule: CircuitBreakerRule) -> None: ...


@dataclass(frozen=True)
class StateChange:
    resource: str
    rule: CircuitBreakerRule
    from_state: State
    to_state: State
    now_ms: int
    snapshot: object = None


@dataclass
class _Counter:
    bad: int = 0  # slow requests or errors
    total: int = 0


ExitHook = Callable[[bool], None]  # called with "the entry was blocked"


class CircuitBreaker:
    def __init__(self, rule: CircuitBreakerRule, notify: Callable[[StateChange], None]) -> None:
        self.rule = rule
        self._notify = notify
        self.state = State.Closed
        self.next_retry_ms = 0
        self.probe_number = rule.probe_num
        self.cur_probe_number = 0
        self.window: LeapArray[_Counter] = LeapArray(rule.bucket_count, rule.stat_interval_ms, _Counter)

    # --- transitions ---------------------------------------------------------------------------------

    def _cas(self, expect: State, update: State) -> bool:
        if self.state is not expect:
            return False
        self.state = update
        return True

    def _emit(self, now_ms: int, prev: State, to: State, snapshot: object = None) -> None:
        self._notify(StateChange(self.rule.resource, self.rule, prev, to, now_ms, snapshot))

    def from_closed_to_open(self, now_ms: int, snapshot: object) -> bool:
        if self._cas(State.Closed, State.Open):
            self.next_retry_ms = now_ms + self.rule.retry_timeout_ms
            self._emit(now_ms, State.Closed, State.Open, snapshot)
            return True
        return False

    def from_open_to_half_open(self, now_ms: int, on_exit: Callable[[ExitHook], None]) -> bool:
        if self._cas(State.Open, State.HalfOpen):
            self._emit(now_ms, State.Open, State.HalfOpen)

            def rollback(blocked: bool) -> None:
                # The probe was blocked by a later rule: back to Open, nextRetry unchanged.
                if blocked and self._cas(State.HalfOpen, State.Open):
                    self._emit(now_ms, State.HalfOpen, State.Open, 1.0)

            on_exit(rollback)
            return True
        return False

    def from_half_open_to_open(self, now_ms: int, snapshot: object) -> bool:
        if self._cas(State.HalfOpen, State.Open):
            self.cur_probe_number = 0
            self.next_retry_ms = now_ms + self.rule.retry_timeout_ms
            self._emit(now_ms, State.HalfOpen, State.Open, snapshot)
            return True
        return False

    def from_half_open_to_closed(self, now_ms: int) -> bool:
        if self._cas(State.HalfOpen, State.Closed):
            self.cur_probe_number = 0
            self._emit(now_ms, State.HalfOpen, State.Closed)
            return True
        return False

    # --- hot path ------------------------------------------------------------------------------------

    def try_pass(self, now_ms: int, on_exit: Callable[[ExitHook], None]) -> bool:
        if self.state is State.Closed:
            return True
        if self.state is State.Open:
            return now_ms >= self.next_retry_ms and self.from_open_to_half_open(now_ms, on_exit)
        return self.probe_number > 0  # HalfOpen

    def _is_bad(self, rt_ms: int, error: bool) -> bool:
        if self.rule.strategy is Strategy.SlowRequestRatio:
            return rt_ms > self.rule.max_allowed_rt_ms
        return error

    def on_request_complete(self, now_ms: int, rt_ms: int, error: bool) -> None:
        try:
            counter = self.window.current_bucket(now_ms)
        except ClockBackwardsError:
            return
        bad = self._is_bad(rt_ms, error)
        if bad:
            counter.bad += 1
        counter.total += 1
        live = [c for _, c in self.window.values(now_ms)]
        bad_count = sum(c.bad for c in live)
        total = sum(c.total for c in live)

        if self.state is State.Open:
            return
        if self.state is State.HalfOpen:
            if bad:
                self.from_half_open_to_open(now_ms, 1.0)
            else:
                self.cur_probe_number += 1
                if self.probe_number == 0 or self.cur_probe_number >= self.probe_number:
                    self.from_half_open_to_closed(now_ms)
                    self.reset_window(now_ms)
            return
        if total < self.rule.min_request_amount:
            return
        if self.rule.strategy is Strategy.ErrorCount:
            if bad_count >= int(self.rule.threshold):
                self.from_closed_to_open(now_ms, bad_count)
            return
        ratio = bad_count / total
        if ratio > self.rule.threshold or _float_equals(ratio, self.rule.threshold):
            self.from_closed_to_open(now_ms, ratio)

    def reset_window(self, now_ms: int) -> None:
        for _, c in self.window.values(now_ms):
            c.bad = 0
            c.total = 0


def _float_equals(a: float, b: float) -> bool:
    # sentinel-golang util.Float64Equals
    return abs(a - b) < 1e-8
