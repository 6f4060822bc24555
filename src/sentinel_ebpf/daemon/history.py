"""The last minutes of per-second points, kept in memory for the control socket's ``metrics`` command
(the dashboard and ``top`` chart history without Prometheus).

Points are sparse: a resource has a point for a second only when something happened in it (a count or a
request in flight), so idle resources cost nothing; a second inside ``[from_ms, to_ms)`` without a point
is a second of zeros. Circuit breaker transitions are kept beside the points, stamped when the daemon saw
them (within 100 ms of the kernel's transition).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from sentinel_ebpf.stats import BLOCK_TYPES, BreakerTransition, ResourceStats, SecondCounts


def delta(now: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    """What cumulative counters gained; counters that went down restarted from zero (a reload)."""
    if any(v < before.get(k, 0) for k, v in now.items()):
        return dict(now)
    return {k: v - before.get(k, 0) for k, v in now.items()}


HISTORY_SECONDS = 300
STEP_MS = 1000
MAX_TRANSITIONS = 2000  # a flapping breaker must not grow memory without bound


@dataclass(frozen=True)
class Point:
    """One resource's second: the metric log's counts plus the blocks of that second by rule kind."""

    counts: SecondCounts
    block_by_type: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        c = self.counts
        return {
            "t": c.second_ms, "pass": c.pass_qps, "block": c.block_qps, "complete": c.complete_qps,
            "error": c.error_qps, "avg_rt_ms": c.avg_rt_ms, "concurrency": c.concurrency,
            "block_by_type": {k: self.block_by_type.get(k, 0) for k in BLOCK_TYPES},
        }  # fmt: skip


class History:
    """A ring of ``seconds`` completed seconds. ``record`` is called by the daemon's loop, ``since`` by
    the control socket's threads."""

    def __init__(self, seconds: int = HISTORY_SECONDS) -> None:
        if seconds < 1:
            raise ValueError(f"history seconds must be at least 1, got {seconds}")
        self.seconds = seconds
        self._lock = threading.Lock()
        self._points: deque[tuple[int, dict[str, Point]]] = deque(maxlen=seconds)
        self._transitions: deque[tuple[int, BreakerTransition]] = deque(maxlen=MAX_TRANSITIONS)
        self._next_ms = 0  # the second after the last one recorded

    def record(self, second_ms: int, points: dict[str, Point]) -> None:
        """The points of one completed second (epoch ms, a multiple of 1000), seconds in order. A second
        recorded again or out of order is ignored (the clock offset is fixed, so it does not happen)."""
        if second_ms % STEP_MS:
            raise ValueError(f"second_ms must be a whole second, got {second_ms}")
        with self._lock:
            if second_ms < self._next_ms:
                return
            self._points.append((second_ms, {n: p for n, p in points.items() if not _empty(p)}))
            self._next_ms = second_ms + STEP_MS

    def transition(self, at_ms: int, change: BreakerTransition) -> None:
        with self._lock:
            self._transitions.append((at_ms, change))

    def since(self, since_ms: int = 0) -> dict[str, Any]:
        """Points of seconds starting at or after ``since_ms`` (epoch ms) and transitions from then on.

        ``from_ms``/``to_ms`` bound the seconds covered: ask again with ``since = to_ms`` for what is new.
        """
        with self._lock:
            oldest = self._points[0][0] if self._points else self._next_ms
            start = max(since_ms, oldest)
            resources: dict[str, list[dict[str, Any]]] = {}
            for t, points in self._points:
                if t < start:
                    continue
                for name, p in points.items():
                    resources.setdefault(name, []).append(p.as_dict())
            horizon = self._next_ms - self.seconds * STEP_MS
            transitions = [
                {
                    "t": at,
                    "resource": c.resource,
                    "breaker": c.breaker_id,
                    "from": c.from_state,
                    "to": c.to_state,
                }
                for at, c in self._transitions
                if at >= max(since_ms, horizon)
            ]
            return {
                "step_ms": STEP_MS,
                "from_ms": min(start, self._next_ms),
                "to_ms": self._next_ms,
                "resources": resources,
                "transitions": transitions,
            }


def _empty(p: Point) -> bool:
    return p.counts.is_zero() and not any(p.block_by_type.values())


class ObservedDeltas:
    """Per-second points of resources known only by cumulative counters (``tls: true`` resources,
    counted from traced OpenSSL calls): what each gained since the previous sample."""

    def __init__(self) -> None:
        self._seen: dict[str, dict[str, int]] = {}

    def step(self, second_ms: int, resources: list[ResourceStats]) -> dict[str, Point]:
        out = {}
        for r in resources:
            now = {"pass": r.passed, "complete": r.complete, "error": r.error, "rt": int(r.rt_sum_ms)}
            before = self._seen.get(r.name, now)  # the first sight is the baseline
            self._seen[r.name] = now
            d = delta(now, before)
            out[r.name] = Point(SecondCounts(
                second_ms=second_ms, pass_qps=d["pass"], block_qps=0, complete_qps=d["complete"],
                error_qps=d["error"], avg_rt_ms=d["rt"] // d["complete"] if d["complete"] else 0,
                concurrency=r.concurrency,
            ))  # fmt: skip
        return out
