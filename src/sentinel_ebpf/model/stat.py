"""Per-resource statistics (sentinel-golang ``BaseStatNode``) plus cumulative totals for ``stats``."""

from __future__ import annotations

from dataclasses import dataclass, field

from sentinel_ebpf.model.leap_array import (
    GLOBAL_BUCKET_LEN_MS,
    GLOBAL_INTERVAL_MS,
    GLOBAL_SAMPLE_COUNT,
    METRIC_INTERVAL_MS,
    METRIC_SAMPLE_COUNT,
    BucketLeapArray,
    MetricEvent,
    NonReusableError,
    SlidingWindowMetric,
    check_reuse,
)


@dataclass
class Totals:
    """Cumulative counters since the rule set was loaded."""

    passed: int = 0
    blocked: int = 0
    completed: int = 0
    errors: int = 0
    rt_sum_ms: int = 0
    block_by_type: dict[int, int] = field(default_factory=dict)


class ResourceStat:
    """A 20 x 500 ms array per resource; the default read view is its last 2 buckets (1 s)."""

    def __init__(self) -> None:
        self.array = BucketLeapArray(GLOBAL_SAMPLE_COUNT, GLOBAL_INTERVAL_MS)
        self.metric = SlidingWindowMetric(METRIC_SAMPLE_COUNT, METRIC_INTERVAL_MS, self.array)
        self.concurrency = 0
        self.totals = Totals()

    # writes (sentinel-golang stat slot)
    def on_pass(self, now_ms: int, batch: int) -> None:
        self.concurrency += 1
        self.array.update_concurrency(now_ms, self.concurrency)
        self.array.add_count(now_ms, MetricEvent.PASS, batch)
        self.totals.passed += batch

    def on_block(self, now_ms: int, batch: int, block_type: int) -> None:
        self.array.add_count(now_ms, MetricEvent.BLOCK, batch)
        self.totals.blocked += batch
        self.totals.block_by_type[block_type] = self.totals.block_by_type.get(block_type, 0) + batch

    def on_complete(self, now_ms: int, batch: int, rt_ms: int, error: bool) -> None:
        if error:
            self.array.add_count(now_ms, MetricEvent.ERROR, batch)
            self.totals.errors += batch
        self.array.add_count(now_ms, MetricEvent.RT, rt_ms)
        self.array.add_count(now_ms, MetricEvent.COMPLETE, batch)
        self.concurrency -= 1
        self.totals.completed += batch
        self.totals.rt_sum_ms += rt_ms

    # reads over the default 1 s view
    def qps(self, now_ms: int, event: MetricEvent) -> float:
        return self.metric.get_qps(now_ms, event)

    def sum(self, now_ms: int, event: MetricEvent) -> int:
        return self.metric.get_sum(now_ms, event)

    def avg_rt(self, now_ms: int) -> float:
        """Integer division, as sentinel-golang ``BaseStatNode.AvgRT``; 0 without completions."""
        complete = self.metric.get_sum(now_ms, MetricEvent.COMPLETE)
        if complete <= 0:
            return 0.0
        return float(self.metric.get_sum(now_ms, MetricEvent.RT) // complete)

    def min_rt(self, now_ms: int) -> float:
        return self.metric.min_rt(now_ms)

    def max_avg(self, now_ms: int, event: MetricEvent) -> float:
        """Largest single bucket, scaled to per second (``GetMaxAvg``)."""
        single = self.metric.max_of_single_bucket(now_ms, event)
        return single * self.metric.sample_count / self.metric.interval_ms * 1000.0


def window_for(interval_ms: int) -> tuple[int, int]:
    """(sampleCount, intervalMs) sentinel-golang uses for a flow rule's ``statIntervalInMs``."""
    if interval_ms > GLOBAL_INTERVAL_MS or interval_ms < GLOBAL_BUCKET_LEN_MS:
        return 1, interval_ms
    if interval_ms % GLOBAL_BUCKET_LEN_MS == 0:
        return interval_ms // GLOBAL_BUCKET_LEN_MS, interval_ms
    return 1, interval_ms


@dataclass
class RuleStat:
    """What a flow rule reads: a view of its resource's array, or a standalone array of its own."""

    metric: SlidingWindowMetric
    standalone: BucketLeapArray | None = None


def rule_stat(node: ResourceStat, stat_interval_ms: int) -> RuleStat:
    if stat_interval_ms in (0, METRIC_INTERVAL_MS):
        return RuleStat(node.metric)
    sample_count, interval = window_for(stat_interval_ms)
    try:
        check_reuse(sample_count, interval)
    except NonReusableError:
        own = BucketLeapArray(sample_count, interval)
        return RuleStat(SlidingWindowMetric(sample_count, interval, own), standalone=own)
    return RuleStat(SlidingWindowMetric(sample_count, interval, node.array))
