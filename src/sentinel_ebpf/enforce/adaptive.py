"""Thresholds that change while rules are in force: WarmUp and MemoryAdaptive flow rules.

The kernel enforces a threshold; this control-plane part recomputes it, with the reference model's
calculators (so the arithmetic is Sentinel's, truncations included) reading the kernel's LeapArray
buckets. ``InboundDataplane.tick()`` runs it; the daemon calls that every 100 ms, 1 ms after each 100 ms
boundary of the monotonic clock (the kernel's). Sentinel syncs a WarmUp rule's tokens at the first
request of each second, from a window read at that instant; here the kernel's buckets (found by start
time) say in which half of a second its first request came, which fixes the window Sentinel read, so the
sync is the same whenever the tick runs: a tick that comes late (a daemon starved of CPU or blocked)
syncs every second it missed, in order, while the kernel still holds their buckets (``CATCH_UP_MS``).
Until the tick after a second's first request, the kernel judges with the threshold synced before.
MemoryAdaptive reads the host's used memory (MemTotal - MemAvailable), not one process's.
Cluster flow rules (``clusterMode``) take their threshold from an outside source, the daemon's lease
from Redis (``sentinel_ebpf.cluster``); without one they are local rules with their own threshold.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from sentinel_ebpf._types import ResStats, SentinelLimits
from sentinel_ebpf.enforce.compile import CompiledInbound, KFlowRule
from sentinel_ebpf.model.flow import MemoryAdaptiveCalculator, MemoryReader, WarmUpCalculator
from sentinel_ebpf.model.leap_array import MetricEvent
from sentinel_ebpf.rules.flow import TokenCalculateStrategy

BUCKET_MS = int(SentinelLimits.SE_BUCKET_MS)
SECOND_MS = 1000
# The kernel keeps SE_BUCKETS x SE_BUCKET_MS (10 s) of buckets; a second is synced from the one before
# it, whose buckets must still be there. Seconds missed beyond this are synced as one idle gap (colder).
CATCH_UP_MS = int(SentinelLimits.SE_BUCKETS) * BUCKET_MS - 2 * SECOND_MS


class HostMemory:
    """Used memory of the host from /proc/meminfo; None when it cannot be read."""

    def __init__(self, meminfo: Path = Path("/proc/meminfo")) -> None:
        self.meminfo = meminfo

    def memory_bytes(self) -> int | None:
        try:
            fields = dict(line.split(":", 1) for line in self.meminfo.read_text().splitlines() if ":" in line)
            total = int(fields["MemTotal"].split()[0]) * 1024
            available = int(fields["MemAvailable"].split()[0]) * 1024
        except (OSError, KeyError, ValueError):
            return None
        return total - available


def window_sum(st: ResStats, now_ms: int, interval_ms: int, field: str = "pass") -> int:
    """Sum of a bucket field over the window the kernel uses (stat.bpf.h ``in_window``)."""
    cur = now_ms - now_ms % BUCKET_MS
    lo = max(cur + BUCKET_MS - interval_ms, 0)
    return sum(int(getattr(b, field)) for b in st.buckets if lo <= b.start_ms <= cur)


class _KernelWindow:
    """The part of the model's RuleStat that WarmUpCalculator reads, backed by kernel buckets."""

    def __init__(self, read: Callable[[], ResStats], interval_ms: int) -> None:
        self.read = read
        self.interval_ms = interval_ms
        self.metric = self

    def get_previous_qps(self, now_ms: int, event: MetricEvent) -> float:
        assert event is MetricEvent.PASS
        return window_sum(self.read(), now_ms - BUCKET_MS, self.interval_ms) / (self.interval_ms / 1000.0)


class ThresholdSource(Protocol):
    def allowed(self, now_ms: int) -> float: ...


# (resource name, index among the resource's flow rules, the rule, a reader of its statistics) -> source
ExternalThresholds = Callable[[str, int, KFlowRule, Callable[[], ResStats]], ThresholdSource]


class FixedThreshold:
    """A cluster rule where no cluster is configured: the rule's own threshold, as a local rule."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    def allowed(self, now_ms: int) -> float:
        return self.threshold


Calculator = WarmUpCalculator | MemoryAdaptiveCalculator | ThresholdSource
SlotKey = tuple[tuple[str, tuple[object, ...]], int, KFlowRule]


class AdaptiveThresholds:
    """One calculator per dynamic flow rule; unchanged rules keep their calculator (and warm-up state)."""

    def __init__(self, compiled: CompiledInbound, read_stats: Callable[[int], ResStats], memory: MemoryReader,
                 previous: AdaptiveThresholds | None = None, external: ExternalThresholds | None = None,
                 ) -> None:  # fmt: skip
        self.read_stats = read_stats
        self.calculators: dict[SlotKey, Calculator] = {}
        self.slots: dict[SlotKey, tuple[int, int]] = {}  # -> (resource id, rule index)
        old = previous.calculators if previous else {}
        for r in compiled.resources:
            for i, f in enumerate(r.flow):
                if not f.dynamic or f.source is None:
                    continue
                key: SlotKey = (r.key, i, f)
                calc = old.get(key)
                if calc is None:
                    if f.source.cluster_mode:

                        def read(sid: int = f.stat_resource) -> ResStats:
                            return read_stats(sid)

                        calc = (
                            external(r.name, i, f, read) if external else FixedThreshold(f.source.threshold)
                        )
                    elif f.source.token_calculate_strategy is TokenCalculateStrategy.WarmUp:
                        stat_id = f.stat_resource
                        window = _KernelWindow(lambda sid=stat_id: read_stats(sid), f.interval_ms)  # type: ignore[misc]
                        calc = WarmUpCalculator(f.source, window)  # type: ignore[arg-type]
                    else:
                        calc = MemoryAdaptiveCalculator(f.source, memory)
                self.calculators[key] = calc
                self.slots[key] = (r.id, i)

    def thresholds(self, now_ms: int) -> dict[tuple[int, int], int]:
        """(resource id, rule index) -> threshold x 1000 in force at ``now_ms``."""
        out = {}
        for key, calc in self.calculators.items():
            if isinstance(calc, WarmUpCalculator):
                catch_up(calc, now_ms, self.read_stats(self.slots[key][0]))
                allowed = calc.allowed(calc.last_filled_ms)  # no new sync: the threshold as synced
            else:
                allowed = calc.allowed(now_ms)
            out[self.slots[key]] = 0 if allowed <= 0 else min(math.floor(allowed * 1000 + 1e-6), 2**63 - 1)
        return out


def requests_in(st: ResStats, bucket_start_ms: int) -> bool:
    """Whether the bucket starting at ``bucket_start_ms`` saw a request (passed or blocked)."""
    return any(
        b.start_ms == bucket_start_ms and (int(getattr(b, "pass")) or int(b.block)) for b in st.buckets
    )


def catch_up(calc: WarmUpCalculator, now_ms: int, own: ResStats) -> int:
    """Sync ``calc`` for every second up to ``now_ms`` it has not synced, in order, where Sentinel would
    have: at the second's first request (``own``: the buckets of the rule's resource say which half of
    the second it came in). One in the first 500 ms reads the passes of the second before; one in the
    second half reads the 1,000 ms ending then (the last 500 ms of the second before); a second without
    requests is not synced (its successor cools down over the gap), nor is the current one before its
    first request. Returns how many seconds were synced. A new calculator is synced at once: cold from
    its first request whatever the window holds."""
    current = now_ms - now_ms % SECOND_MS
    if not calc.last_filled_ms:
        calc.allowed(current)
        return 1
    synced = 0
    for second in range(max(calc.last_filled_ms + SECOND_MS, current - CATCH_UP_MS), current + 1, SECOND_MS):
        if requests_in(own, second):
            calc.allowed(second)
        elif now_ms >= second + BUCKET_MS and requests_in(own, second + BUCKET_MS):
            calc.allowed(second + BUCKET_MS)
        else:
            continue
        synced += 1
    return synced
