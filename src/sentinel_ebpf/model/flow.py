"""Flow control (sentinel-golang ``core/flow``): calculators give the allowed count, checkers decide.

Throttling cannot make a kernel program sleep, so its queue is virtual: a request whose wait would be
at most ``maxQueueingTimeMs`` is admitted at once and reserves its slot; the result carries the wait it
would have had in Sentinel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from sentinel_ebpf.model.leap_array import MetricEvent
from sentinel_ebpf.model.stat import ResourceStat, RuleStat, rule_stat
from sentinel_ebpf.rules.flow import ControlBehavior, FlowRule, TokenCalculateStrategy

NS_PER_MS = 1_000_000


@dataclass(frozen=True)
class FlowResult:
    blocked: bool = False
    wait_ns: int = 0
    message: str = ""
    snapshot: float | None = None


PASS = FlowResult()


class MemoryReader(Protocol):
    def memory_bytes(self) -> int | None: ...


class DirectCalculator:
    def __init__(self, rule: FlowRule) -> None:
        self.threshold = rule.threshold

    def allowed(self, now_ms: int) -> float:
        return self.threshold


class WarmUpCalculator:
    """Guava-style warm up, sentinel-golang ``WarmUpTrafficShapingCalculator`` (integer truncations kept)."""

    def __init__(self, rule: FlowRule, stat: RuleStat) -> None:
        self.stat = stat
        self.threshold = rule.threshold
        self.cold_factor = rule.effective_cold_factor
        period = rule.warm_up_period_sec
        c = self.cold_factor
        self.warning_token = int(period * self.threshold / (c - 1))
        self.max_token = self.warning_token + int(2 * period * self.threshold / (1.0 + c))
        span = self.max_token - self.warning_token
        self.slope = (c - 1.0) / self.threshold / span if self.threshold > 0 and span > 0 else math.inf
        self.stored_tokens = 0
        self.last_filled_ms = 0

    def allowed(self, now_ms: int) -> float:
        previous_qps = self.stat.metric.get_previous_qps(now_ms, MetricEvent.PASS)
        self._sync(now_ms, previous_qps)
        rest = max(self.stored_tokens, 0)
        if rest >= self.warning_token:
            above = rest - self.warning_token
            if self.threshold <= 0:
                return 0.0
            return math.nextafter(1.0 / (above * self.slope + 1.0 / self.threshold), math.inf)
        return self.threshold

    def _sync(self, now_ms: int, pass_qps: float) -> None:
        current = now_ms - now_ms % 1000
        if current <= self.last_filled_ms:
            return
        self.stored_tokens = self._cool_down(current, pass_qps)
        self.stored_tokens += int(-pass_qps)  # Go: int64(-passQps) truncates toward zero
        if self.stored_tokens < 0:
            self.stored_tokens = 0
        self.last_filled_ms = current

    def _cool_down(self, current_ms: int, pass_qps: float) -> int:
        old = self.stored_tokens
        new = old
        elapsed = current_ms - self.last_filled_ms
        if old < self.warning_token:
            new = int(old + elapsed * self.threshold / 1000.0)
        elif old > self.warning_token and pass_qps < float(int(self.threshold) // self.cold_factor):
            # Go: float64(uint32(threshold) / coldFactor), an integer division.
            new = int(old + elapsed * self.threshold / 1000.0)
        return min(new, self.max_token)


class MemoryAdaptiveCalculator:
    def __init__(self, rule: FlowRule, memory: MemoryReader) -> None:
        self.rule = rule
        self.memory = memory

    def allowed(self, now_ms: int) -> float:
        r = self.rule
        mem = self.memory.memory_bytes()
        if mem is None:
            return float(r.low_mem_usage_threshold)
        if mem <= r.mem_low_water_mark_bytes:
            return float(r.low_mem_usage_threshold)
        if mem >= r.mem_high_water_mark_bytes:
            return float(r.high_mem_usage_threshold)
        slope = (r.high_mem_usage_threshold - r.low_mem_usage_threshold) / (
            r.mem_high_water_mark_bytes - r.mem_low_water_mark_bytes
        )
        return slope * (mem - r.mem_low_water_mark_bytes) + r.low_mem_usage_threshold


class RejectChecker:
    def __init__(self, stat: RuleStat | None) -> None:
        self.stat = stat

    def check(self, now_ns: int, batch: int, threshold: float) -> FlowResult:
        if self.stat is None:
            return PASS
        cur = float(self.stat.metric.get_sum(now_ns // NS_PER_MS, MetricEvent.PASS))
        if cur + batch > threshold:
            return FlowResult(blocked=True, message="flow reject check blocked", snapshot=cur)
        return PASS


class ThrottlingChecker:
    """Leaky bucket in nanoseconds (sentinel-golang ``ThrottlingChecker``), state: ``last_passed_ns``."""

    def __init__(self, max_queueing_time_ms: int, stat_interval_ms: int) -> None:
        self.max_queueing_ns = max_queueing_time_ms * NS_PER_MS
        self.stat_interval_ns = (stat_interval_ms or 1000) * NS_PER_MS
        self.last_passed_ns = 0

    def check(self, now_ns: int, batch: int, threshold: float) -> FlowResult:
        if batch <= 0:
            return PASS
        if threshold <= 0.0:
            return FlowResult(blocked=True, message="flow throttling check blocked, threshold is <= 0.0")
        if batch > threshold:
            return FlowResult(blocked=True, message="flow throttling check blocked, batch exceeds threshold")
        interval_ns = math.ceil(batch / threshold * self.stat_interval_ns)
        expected = self.last_passed_ns + interval_ns
        if expected <= now_ns:
            self.last_passed_ns = now_ns
            return PASS
        wait = self.last_passed_ns + interval_ns - now_ns
        if wait > self.max_queueing_ns:
            return FlowResult(
                blocked=True,
                message="flow throttling check blocked, estimated queueing time exceeds max queueing time",
            )
        self.last_passed_ns += interval_ns
        return FlowResult(wait_ns=max(self.last_passed_ns - now_ns, 0))


Calculator = DirectCalculator | WarmUpCalculator | MemoryAdaptiveCalculator
Checker = RejectChecker | ThrottlingChecker


class FlowController:
    """One flow rule's traffic shaping controller (calculator + checker + bound statistic)."""

    def __init__(self, rule: FlowRule, stat_node: ResourceStat, memory: MemoryReader) -> None:
        self.rule = rule
        self.stat: RuleStat | None = (
            rule_stat(stat_node, rule.stat_interval_in_ms) if rule.needs_statistic() else None
        )
        self.calculator: Calculator
        if rule.token_calculate_strategy is TokenCalculateStrategy.WarmUp:
            assert self.stat is not None
            self.calculator = WarmUpCalculator(rule, self.stat)
        elif rule.token_calculate_strategy is TokenCalculateStrategy.MemoryAdaptive:
            self.calculator = MemoryAdaptiveCalculator(rule, memory)
        else:
            self.calculator = DirectCalculator(rule)
        self.checker: Checker
        if rule.control_behavior is ControlBehavior.Throttling:
            self.checker = ThrottlingChecker(rule.max_queueing_time_ms, rule.stat_interval_in_ms)
        else:
            self.checker = RejectChecker(self.stat)
        self.last_allowed: float = 0.0  # resource_flow_threshold gauge

    def check(self, now_ns: int, batch: int) -> FlowResult:
        allowed = self.calculator.allowed(now_ns // NS_PER_MS)
        self.last_allowed = allowed
        return self.checker.check(now_ns, batch, allowed)

    def on_stat_resource_pass(self, now_ms: int, batch: int) -> None:
        """Passes of the statistic resource, for rules with a window of their own."""
        if self.stat is not None and self.stat.standalone is not None:
            self.stat.standalone.add_count(now_ms, MetricEvent.PASS, batch)
