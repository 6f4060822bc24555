"""The threshold timer: WarmUp and MemoryAdaptive thresholds recomputed on a fixed grid of the monotonic
clock, on a thread of their own.

A tick runs ``TICK_OFFSET_NS`` after every ``TICK_NS`` boundary of CLOCK_MONOTONIC (the clock of
``bpf_ktime_get_ns``, so the kernel's buckets and seconds start on the same grid): the tick that switches a
WarmUp threshold lands 1 ms after the second starts, not up to a period later, and never drifts. Its own
thread keeps it away from the daemon's other work (reloads, the metric log's disk writes, control
requests), which could hold the loop for a long time on a busy host. A tick that wakes late runs once
and the grid goes on from the next boundary; the data plane's tick catches up the seconds it missed
(``enforce.adaptive.catch_up``). Late ticks are counted and logged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sentinel_ebpf._worker import Worker

log = logging.getLogger("sentinel_ebpf.daemon")
TICK_NS = 100_000_000
TICK_OFFSET_NS = 1_000_000  # after the boundary: a bucket that ends there is complete
LATE_NS = 50_000_000  # a tick this late is counted
LOG_LATE_NS = 500_000_000  # one this late (a bucket) is logged, at most every LOG_EVERY_NS
LOG_EVERY_NS = 10_000_000_000


def next_tick_ns(now_ns: int, period_ns: int = TICK_NS, offset_ns: int = TICK_OFFSET_NS) -> int:
    """The first grid instant (k * period + offset) strictly after ``now_ns``."""
    k = (now_ns - offset_ns) // period_ns + 1
    return k * period_ns + offset_ns


class Ticker:
    """``Ticker(tick, lock).start()`` ... ``stop()``: ``tick()`` under ``lock`` at each grid instant."""

    def __init__(self, tick: Callable[[], None], lock: threading.Lock, period_ns: int = TICK_NS,
                 offset_ns: int = TICK_OFFSET_NS, clock_ns: Callable[[], int] = time.monotonic_ns) -> None:  # fmt: skip
        self._tick = tick
        self._lock = lock
        self.period_ns = period_ns
        self.offset_ns = offset_ns
        self._clock_ns = clock_ns
        self._worker = Worker("thresholds", join_timeout_s=10)
        self.ticks = 0
        self.late = 0  # ticks that ran LATE_NS or more after their instant
        self.max_late_ns = 0
        self.failures = 0
        self._logged_ns = -LOG_EVERY_NS

    def start(self) -> Ticker:
        self._worker.start(self._run)
        return self

    def stop(self) -> None:
        self._worker.stop()

    def _run(self) -> None:
        due = next_tick_ns(self._clock_ns(), self.period_ns, self.offset_ns)
        while not self._worker.stopping.wait(max(0, due - self._clock_ns()) / 1e9):
            now = self._clock_ns()
            if now < due:
                continue  # woke early (Event.wait rounds): wait the rest
            with self._lock:
                try:
                    self._tick()
                except Exception:  # a failed tick must not stop the next ones
                    self.failures += 1
                    log.exception("recomputing WarmUp/MemoryAdaptive thresholds failed")
            self.ticks += 1
            self._note_lateness(now - due, now)
            due = next_tick_ns(self._clock_ns(), self.period_ns, self.offset_ns)

    def _note_lateness(self, late_ns: int, now_ns: int) -> None:
        self.max_late_ns = max(self.max_late_ns, late_ns)
        if late_ns < LATE_NS:
            return
        self.late += 1
        if late_ns >= LOG_LATE_NS and now_ns - self._logged_ns >= LOG_EVERY_NS:
            self._logged_ns = now_ns
            log.warning("threshold tick ran %d ms late (%d ticks late by %d ms or more so far): the host is "
                        "starving the daemon; WarmUp seconds it missed are caught up from the kernel's buckets",
                        late_ns // 1_000_000, self.late, LATE_NS // 1_000_000)  # fmt: skip
