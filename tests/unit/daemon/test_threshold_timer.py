"""The threshold timer: ticks on the monotonic clock's grid, and WarmUp seconds caught up after a stall."""

from __future__ import annotations

import itertools
import math
import threading
import time

from sentinel_ebpf._types import ResStats
from sentinel_ebpf.daemon.ticker import TICK_NS, TICK_OFFSET_NS, Ticker, next_tick_ns
from sentinel_ebpf.enforce.adaptive import BUCKET_MS, AdaptiveThresholds, _KernelWindow
from sentinel_ebpf.enforce.compile import compile_inbound
from sentinel_ebpf.model.flow import WarmUpCalculator
from sentinel_ebpf.rules import load_text

WARM_UP = """
resources:
  - {name: api, match: {protocol: http, port: 8000, path: /}}
flowRules:
  - {resource: api, threshold: 100, tokenCalculateStrategy: 1, warmUpPeriodSec: 8, warmUpColdFactor: 3}
"""
S0_MS = 500_000  # a second boundary of the monotonic clock
NBUCKETS = len(ResStats().buckets)


class KernelBuckets:
    """A resource's LeapArray as the kernel keeps it: 20 slots of 500 ms, reused as time goes on."""

    def __init__(self) -> None:
        self.st = ResStats()

    def add(self, at_ms: int, passed: int = 0, blocked: int = 0) -> None:
        start = at_ms - at_ms % BUCKET_MS
        b = self.st.buckets[(at_ms // BUCKET_MS) % NBUCKETS]
        if b.start_ms != start:
            b.start_ms, b.block, b.complete, b.error, b.rt_sum_ms = start, 0, 0, 0, 0
            setattr(b, "pass", 0)
        setattr(b, "pass", getattr(b, "pass") + passed)
        b.block += blocked


class NoMemory:
    def memory_bytes(self) -> int | None:
        return None


def _setup(kernel: KernelBuckets) -> tuple[AdaptiveThresholds, WarmUpCalculator, tuple[int, int]]:
    """The daemon's thresholds, and Sentinel's calculator reading the same buckets."""
    rs = load_text(WARM_UP, "warmup.yaml")
    adaptive = AdaptiveThresholds(compile_inbound(rs), lambda rid: kernel.st, NoMemory())
    reference = WarmUpCalculator(rs.flow_rules[0], _KernelWindow(lambda: kernel.st, 1000))  # type: ignore[arg-type]
    (slot,) = adaptive.slots.values()
    return adaptive, reference, slot


def _milli(allowed: float) -> int:
    return math.floor(allowed * 1000 + 1e-6)


def test_a_late_tick_syncs_every_second_it_missed_where_sentinel_would() -> None:
    kernel = KernelBuckets()
    adaptive, reference, slot = _setup(kernel)
    # (ms into the second of its first request, or None for a second without requests)
    first_request: list[int | None] = [0, 0, 0, 650, None, 0, 300, 0]
    in_force = adaptive.thresholds(S0_MS)[slot]
    assert in_force == _milli(reference.allowed(S0_MS)) == 33_333  # cold from the start
    for k, offset in enumerate(first_request):
        at = S0_MS + k * 1000
        if offset is None:
            continue
        kernel.add(at + offset, blocked=1)
        reference.allowed(at + offset)  # Sentinel syncs at the second's first request
        if k < 2:  # the daemon runs: a tick right after the request
            in_force = adaptive.thresholds(at + offset + 1)[slot]
            assert in_force == _milli(reference.allowed(at + offset + 1))
        kernel.add(at + max(offset, 600), passed=in_force // 1000)  # the kernel admits at what is in force
    # the daemon was stalled from second 2 on; the kernel kept the last threshold written
    late = S0_MS + 7 * 1000 + 700
    after = adaptive.thresholds(late)[slot]
    assert after == _milli(reference.allowed(late))
    assert after != in_force and reference.last_filled_ms == S0_MS + 7000


def test_no_sync_before_a_seconds_first_request_and_an_idle_gap_cools_down() -> None:
    kernel = KernelBuckets()
    adaptive, _, slot = _setup(kernel)
    for k in range(9):  # warm it up: 100 a second, as if overloaded past the warm-up
        kernel.add(S0_MS + k * 1000, blocked=1)
        adaptive.thresholds(S0_MS + k * 1000 + 1)
        kernel.add(S0_MS + k * 1000 + 100, passed=100)
    warm = adaptive.thresholds(S0_MS + 9001)[slot]
    assert warm > 33_333
    # idle since: no request, no sync (Sentinel syncs only when a request comes)
    assert adaptive.thresholds(S0_MS + 39_001)[slot] == warm
    # the first request after 30 s idle: back to the cold rate threshold / coldFactor
    kernel.add(S0_MS + 39_010, blocked=1)
    assert adaptive.thresholds(S0_MS + 39_101)[slot] == 33_333


def test_next_tick_is_on_the_grid() -> None:
    assert next_tick_ns(0) == TICK_OFFSET_NS
    assert next_tick_ns(TICK_OFFSET_NS) == TICK_NS + TICK_OFFSET_NS
    assert next_tick_ns(5 * TICK_NS + TICK_OFFSET_NS - 1) == 5 * TICK_NS + TICK_OFFSET_NS
    assert next_tick_ns(7 * TICK_NS + 2 * TICK_OFFSET_NS) == 8 * TICK_NS + TICK_OFFSET_NS


def test_ticks_land_on_the_grid_and_a_slow_one_skips_ahead() -> None:
    period_ns, offset_ns = 50_000_000, 1_000_000
    at: list[int] = []

    def tick() -> None:
        at.append(time.monotonic_ns())
        if len(at) == 3:
            time.sleep(0.175)  # a tick held up for 3.5 periods
        if len(at) == 4:
            raise RuntimeError("a failing tick is logged, the next ones still run")

    t = Ticker(tick, threading.Lock(), period_ns=period_ns, offset_ns=offset_ns).start()
    try:
        deadline = time.monotonic() + 10
        while len(at) < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        t.stop()
    assert len(at) >= 10 and t.failures == 1
    phases = sorted((a - offset_ns) % period_ns for a in at)
    assert phases[len(phases) // 2] < 15_000_000, phases  # on the grid, not drifting from it
    gaps = [b - a for a, b in itertools.pairwise(at)]
    assert gaps[2] >= 3 * period_ns, gaps  # after the slow one: the next grid instant...
    # ...not a burst of the missed ones (one short gap: a late tick followed by an on-grid one, under load)
    assert sum(g < period_ns // 5 for g in gaps) <= 1, gaps


def test_a_held_lock_delays_the_tick() -> None:
    lock = threading.Lock()
    ran = threading.Event()
    with lock:
        t = Ticker(ran.set, lock, period_ns=10_000_000, offset_ns=0).start()
        assert not ran.wait(0.05)  # a reload holds the data plane
    try:
        assert ran.wait(2)
    finally:
        t.stop()
