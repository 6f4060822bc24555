"""LeapArray: sentinel-golang's sliding window of time buckets (``core/stat/base``), exact math.

A window of ``interval_ms`` is split into ``sample_count`` buckets of ``bucket_len_ms``. The bucket for
``now`` is at ``(now // bucket_len) % sample_count`` and starts at ``now - now % bucket_len``. A slot whose
start is older than that is reset before use; a newer one means the clock went back (an error, except
with a single bucket). A bucket is deprecated, so ignored by reads, when ``now - start > interval_ms``,
or when it starts after ``now`` (Go's unsigned subtraction wraps around then).
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

B = TypeVar("B")

DEFAULT_STATISTIC_MAX_RT_MS = 60000
# Per-resource statistic (sentinel-golang config defaults).
GLOBAL_SAMPLE_COUNT = 20
GLOBAL_INTERVAL_MS = 10000
GLOBAL_BUCKET_LEN_MS = GLOBAL_INTERVAL_MS // GLOBAL_SAMPLE_COUNT
METRIC_SAMPLE_COUNT = 2
METRIC_INTERVAL_MS = 1000


class StatisticError(ValueError):
    """Invalid window parameters."""


class NonReusableError(StatisticError):
    """The window cannot be read out of the per-resource array; it needs its own."""


class ClockBackwardsError(RuntimeError):
    """The current bucket's slot holds a newer bucket: time went back."""


def check_statistic(sample_count: int, interval_ms: int) -> None:
    if interval_ms <= 0 or sample_count <= 0 or interval_ms % sample_count != 0:
        raise StatisticError(f"invalid window: sampleCount={sample_count}, intervalInMs={interval_ms}")


def check_reuse(
    sample_count: int,
    interval_ms: int,
    parent_sample_count: int = GLOBAL_SAMPLE_COUNT,
    parent_interval_ms: int = GLOBAL_INTERVAL_MS,
) -> None:
    """sentinel-golang ``CheckValidityForReuseStatistic``."""
    check_statistic(sample_count, interval_ms)
    check_statistic(parent_sample_count, parent_interval_ms)
    bucket_len = interval_ms // sample_count
    parent_bucket_len = parent_interval_ms // parent_sample_count
    if parent_interval_ms % interval_ms != 0 or bucket_len % parent_bucket_len != 0:
        raise NonReusableError(
            f"window ({sample_count}, {interval_ms}) cannot reuse "
            f"({parent_sample_count}, {parent_interval_ms})"
        )


class LeapArray(Generic[B]):
    def __init__(self, sample_count: int, interval_ms: int, new_bucket: Callable[[], B]) -> None:
        check_statistic(sample_count, interval_ms)
        self.sample_count = sample_count
        self.interval_ms = interval_ms
        self.bucket_len_ms = interval_ms // sample_count
        self._new_bucket = new_bucket
        self.starts: list[int | None] = [None] * sample_count  # None: never used
        self.buckets: list[B] = [new_bucket() for _ in range(sample_count)]

    def index_of(self, now_ms: int) -> int:
        return (now_ms // self.bucket_len_ms) % self.sample_count

    def bucket_start_of(self, now_ms: int) -> int:
        return now_ms - now_ms % self.bucket_len_ms

    def current_bucket(self, now_ms: int) -> B:
        """The bucket ``now_ms`` writes to, reset first if it still holds an old period."""
        idx = self.index_of(now_ms)
        start = self.bucket_start_of(now_ms)
        old = self.starts[idx]
        if old is None or start > old:
            self.starts[idx] = start
            self.buckets[idx] = self._new_bucket()
        elif start < old and self.sample_count != 1:
            raise ClockBackwardsError(f"time {now_ms} is behind bucket start {old}")
        return self.buckets[idx]

    def current_start(self, now_ms: int) -> int | None:
        return self.starts[self.index_of(now_ms)]

    def is_deprecated(self, now_ms: int, start: int) -> bool:
        return start > now_ms or now_ms - start > self.interval_ms

    def values(self, now_ms: int, predicate: Callable[[int], bool] | None = None) -> list[tuple[int, B]]:
        """``(start, bucket)`` of every live bucket (optionally filtered by start)."""
        out: list[tuple[int, B]] = []
        for start, bucket in zip(self.starts, self.buckets, strict=True):
            if start is None or self.is_deprecated(now_ms, start):
                continue
            if predicate is not None and not predicate(start):
                continue
            out.append((start, bucket))
        return out


class MetricEvent(enum.IntEnum):
    PASS = 0
    BLOCK = 1
    COMPLETE = 2
    ERROR = 3
    RT = 4


@dataclass
class MetricBucket:
    counts: list[int]
    min_rt: int = DEFAULT_STATISTIC_MAX_RT_MS
    max_concurrency: int = 0

    @classmethod
    def empty(cls) -> MetricBucket:
        return cls(counts=[0] * len(MetricEvent))

    def add(self, event: MetricEvent, count: int) -> None:
        self.counts[event] += count
        if event is MetricEvent.RT and count < self.min_rt:
            self.min_rt = count

    def get(self, event: MetricEvent) -> int:
        return self.counts[event]

    def update_concurrency(self, concurrency: int) -> None:
        if concurrency > self.max_concurrency:
            self.max_concurrency = concurrency


class BucketLeapArray:
    """A LeapArray of ``MetricBucket`` (what a resource writes its events to)."""

    def __init__(
        self, sample_count: int = GLOBAL_SAMPLE_COUNT, interval_ms: int = GLOBAL_INTERVAL_MS
    ) -> None:
        self.data: LeapArray[MetricBucket] = LeapArray(sample_count, interval_ms, MetricBucket.empty)

    @property
    def sample_count(self) -> int:
        return self.data.sample_count

    @property
    def interval_ms(self) -> int:
        return self.data.interval_ms

    @property
    def bucket_len_ms(self) -> int:
        return self.data.bucket_len_ms

    def add_count(self, now_ms: int, event: MetricEvent, count: int) -> None:
        # sentinel-golang logs and drops the event when the clock went back.
        with contextlib.suppress(ClockBackwardsError):
            self.data.current_bucket(now_ms).add(event, count)

    def update_concurrency(self, now_ms: int, concurrency: int) -> None:
        with contextlib.suppress(ClockBackwardsError):
            self.data.current_bucket(now_ms).update_concurrency(concurrency)

    def sum(self, now_ms: int, event: MetricEvent) -> int:
        return sum(b.get(event) for _, b in self.data.values(now_ms))


class SlidingWindowMetric:
    """A read-only view of ``sample_count`` buckets over ``interval_ms`` of a BucketLeapArray."""

    def __init__(self, sample_count: int, interval_ms: int, real: BucketLeapArray) -> None:
        check_reuse(sample_count, interval_ms, real.sample_count, real.interval_ms)
        self.sample_count = sample_count
        self.interval_ms = interval_ms
        self.bucket_len_ms = interval_ms // sample_count
        self.real = real

    def bucket_start_range(self, now_ms: int) -> tuple[int, int]:
        end = now_ms - now_ms % self.real.bucket_len_ms
        start = end - self.interval_ms + self.real.bucket_len_ms
        return start, end

    def satisfied_buckets(self, now_ms: int) -> list[MetricBucket]:
        start, end = self.bucket_start_range(now_ms)
        return [b for _, b in self.real.data.values(now_ms, lambda ws: start <= ws <= end)]

    def get_sum(self, now_ms: int, event: MetricEvent) -> int:
        return sum(b.get(event) for b in self.satisfied_buckets(now_ms))

    def get_qps(self, now_ms: int, event: MetricEvent) -> float:
        return self.get_sum(now_ms, event) / (self.interval_ms / 1000.0)

    def get_previous_qps(self, now_ms: int, event: MetricEvent) -> float:
        return self.get_qps(now_ms - self.bucket_len_ms, event)

    def max_of_single_bucket(self, now_ms: int, event: MetricEvent) -> int:
        return max((b.get(event) for b in self.satisfied_buckets(now_ms)), default=0)

    def min_rt(self, now_ms: int) -> float:
        value = min((b.min_rt for b in self.satisfied_buckets(now_ms)), default=DEFAULT_STATISTIC_MAX_RT_MS)
        value = min(value, DEFAULT_STATISTIC_MAX_RT_MS)
        return float(max(value, 1))

    def max_concurrency(self, now_ms: int) -> int:
        return max((b.max_concurrency for b in self.satisfied_buckets(now_ms)), default=0)
