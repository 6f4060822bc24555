"""Hotspot parameter flow control (sentinel-golang ``core/hotspot``), per-value state in an LRU."""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

from sentinel_ebpf.model.clock import NS_PER_MS
from sentinel_ebpf.rules.hotspot import ControlBehavior, HotspotRule, MetricType, canonical_value

V = TypeVar("V")


class LRU(Generic[V]):
    """sentinel-golang's LRU: both ``add_if_absent`` and ``get`` refresh the entry."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def add_if_absent(self, key: str, value: V) -> V | None:
        """The prior value if present (refreshed), else store ``value`` and return None."""
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        self._items[key] = value
        if len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return None

    def get(self, key: str) -> V | None:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        return None

    def keys(self) -> list[str]:
        return list(self._items)


@dataclass
class TokenState:
    last_add_token_ms: int
    tokens: int = 0


@dataclass
class ConcurrencyState:
    count: int = 0


@dataclass
class ThrottleState:
    last_pass_ns: int


@dataclass(frozen=True)
class HotspotResult:
    blocked: bool = False
    wait_ns: int = 0
    message: str = ""


PASS = HotspotResult()


def value_key(rule: HotspotRule, value: object) -> str:
    """The state key of a value: an IPv6 client by its rule's prefix, a header value without OWS."""
    text = canonical_value(value)
    if rule.param_key == "remote_ip":
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            return text
        if addr.version == 6:
            return str(ipaddress.ip_network(f"{addr}/{rule.ipv6_prefix}", strict=False))
        return str(addr)
    if rule.param_key.startswith("header:"):
        return text.strip(" \t")
    return text


class HotspotController:
    def __init__(self, rule: HotspotRule) -> None:
        self.rule = rule
        self.specific = {value_key(rule, k): v for k, v in rule.specific_thresholds().items()}
        cap = rule.capacity
        self.concurrency: LRU[ConcurrencyState] = LRU(cap)
        self.tokens: LRU[TokenState] = LRU(cap)
        self.throttle: LRU[ThrottleState] = LRU(cap)

    def limit_for(self, key: str) -> int:
        return self.specific.get(key, self.rule.threshold)

    def check(self, now_ms: int, value: object, batch: int, *, now_ns: int | None = None) -> HotspotResult:
        key = value_key(self.rule, value)
        if self.rule.metric_type is MetricType.Concurrency:
            return self._check_concurrency(key)
        if self.rule.control_behavior is ControlBehavior.Throttling:
            return self._check_throttling(now_ms * NS_PER_MS if now_ns is None else now_ns, key, batch)
        return self._check_reject(now_ms, key, batch)

    def _check_concurrency(self, key: str) -> HotspotResult:
        state = self.concurrency.add_if_absent(key, ConcurrencyState())
        if state is None:
            return PASS  # first sight passes
        if state.count + 1 <= self.limit_for(key):
            return PASS
        return HotspotResult(blocked=True, message=f"hotspot concurrency check blocked, arg: {key}")

    def _check_reject(self, now_ms: int, key: str, batch: int) -> HotspotResult:
        token_count = self.limit_for(key)
        if token_count <= 0:
            return HotspotResult(
                blocked=True, message=f"hotspot reject check blocked, threshold is <= 0, arg: {key}"
            )
        max_count = token_count + self.rule.burst_count
        if batch > max_count:
            return HotspotResult(
                blocked=True,
                message="hotspot reject check blocked, request batch count "
                f"is more than max token count, arg: {key}",
            )
        state = self.tokens.add_if_absent(key, TokenState(last_add_token_ms=now_ms, tokens=max_count - batch))
        if state is None:
            return PASS
        duration_ms = self.rule.duration_in_sec * 1000
        pass_time = now_ms - state.last_add_token_ms
        if pass_time > duration_ms:
            to_add = pass_time * token_count // duration_ms
            new = max_count - batch if to_add + state.tokens > max_count else to_add + state.tokens - batch
            if new < 0:
                return HotspotResult(
                    blocked=True,
                    message="hotspot reject check blocked, request batch count "
                    f"is more than available token count, arg: {key}",
                )
            state.tokens = new
            state.last_add_token_ms = now_ms
            return PASS
        if state.tokens - batch >= 0:
            state.tokens -= batch
            return PASS
        return HotspotResult(
            blocked=True,
            message="hotspot reject check blocked, request batch count is "
            f"more than available token count, arg: {key}",
        )

    def _check_throttling(self, now_ns: int, key: str, batch: int) -> HotspotResult:
        """sentinel-golang's throttling checker in nanoseconds (it rounds the cost to milliseconds, which
        admits 1,000/s for a limit of 600/s and does not limit at all above 2,000/s); the cost is rounded
        up, so never more than the limit passes."""
        token_count = self.limit_for(key)
        if token_count <= 0:
            return HotspotResult(
                blocked=True, message=f"hotspot throttling check blocked, threshold is <= 0, arg: {key}"
            )
        duration_ns = self.rule.duration_in_sec * 1000 * NS_PER_MS
        cost = -(-batch * duration_ns // token_count)
        fresh = ThrottleState(last_pass_ns=now_ns)
        prior = self.throttle.add_if_absent(key, fresh)
        state = prior if prior is not None else fresh
        if prior is None or state.last_pass_ns < now_ns - duration_ns:
            expected = now_ns - duration_ns + cost
        else:
            expected = state.last_pass_ns + cost
        if expected <= now_ns or expected - now_ns < self.rule.max_queueing_time_ms * NS_PER_MS:
            state.last_pass_ns = now_ns
            wait = expected - now_ns
            if wait > 0:
                state.last_pass_ns = expected
                return HotspotResult(wait_ns=wait)
            return PASS
        return HotspotResult(
            blocked=True,
            message=f"hotspot throttling check blocked, wait time exceedes max queueing time, arg: {key}",
        )

    # concurrency statistic slot
    def on_pass(self, value: object) -> None:
        if self.rule.metric_type is MetricType.Concurrency:
            state = self.concurrency.get(value_key(self.rule, value))
            if state is not None:
                state.count += 1

    def on_complete(self, value: object) -> None:
        if self.rule.metric_type is MetricType.Concurrency:
            state = self.concurrency.get(value_key(self.rule, value))
            if state is not None:
                state.count -= 1
