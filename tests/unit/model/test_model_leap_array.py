"""LeapArray and sliding windows: sentinel-golang's cases, and properties against brute-force counting."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sentinel_ebpf.model.leap_array import (
    BucketLeapArray,
    ClockBackwardsError,
    LeapArray,
    MetricBucket,
    MetricEvent,
    NonReusableError,
    SlidingWindowMetric,
    StatisticError,
    check_reuse,
)
from sentinel_ebpf.model.stat import ResourceStat, rule_stat, window_for


def test_index_and_bucket_start() -> None:
    la: LeapArray[MetricBucket] = LeapArray(20, 10000, MetricBucket.empty)
    t = 1576296044907
    assert la.index_of(t) == 9
    assert la.bucket_start_of(t) == 1576296044500


def test_deprecated_bucket() -> None:
    la: LeapArray[MetricBucket] = LeapArray(20, 10000, MetricBucket.empty)
    t = 1576296044907
    assert la.is_deprecated(t, 1576296004907)  # 40 s old
    assert not la.is_deprecated(t, t - 10000)  # exactly the interval: still live (strict >)
    assert la.is_deprecated(t, t - 10001)
    assert la.is_deprecated(t, t + 500)  # future start: Go's unsigned subtraction wraps


@pytest.mark.parametrize(
    ("sample_count", "interval", "ok"),
    [(20, 10000, True), (30, 10000, False), (0, 10000, False), (1, 0, False)],
)
def test_new_leap_array_validity(sample_count: int, interval: int, ok: bool) -> None:
    if ok:
        LeapArray(sample_count, interval, MetricBucket.empty)
    else:
        with pytest.raises(StatisticError):
            LeapArray(sample_count, interval, MetricBucket.empty)


def test_bucket_start_check() -> None:
    # sentinel-golang Test_leapArray_BucketStartCheck_normal
    now = 1596199310000
    la: LeapArray[MetricBucket] = LeapArray(20, 10000, MetricBucket.empty)
    la.current_bucket(now)
    bucket = la.current_bucket(now + 801)
    assert la.current_start(now + 801) == now + 500
    assert bucket is la.buckets[1]


def test_clock_backwards() -> None:
    la: LeapArray[MetricBucket] = LeapArray(20, 10000, MetricBucket.empty)
    la.current_bucket(20_000)
    with pytest.raises(ClockBackwardsError):
        la.current_bucket(10_000)  # same slot, older period
    single: LeapArray[MetricBucket] = LeapArray(1, 1000, MetricBucket.empty)
    b = single.current_bucket(5_000)
    assert single.current_bucket(4_000) is b  # a single bucket tolerates it, as in Go


@pytest.mark.parametrize(
    ("sample_count", "interval", "parent", "start", "end"),
    [
        (4, 2000, (20, 10000), 1578416555000, 1578416556500),
        (2, 1000, (20, 10000), 1578416556000, 1578416556500),
        (1, 2000, (10, 10000), 1578416555000, 1578416556000),
    ],
)
def test_read_view_ranges(
    sample_count: int, interval: int, parent: tuple[int, int], start: int, end: int
) -> None:
    m = SlidingWindowMetric(sample_count, interval, BucketLeapArray(*parent))
    assert m.bucket_start_range(1578416556900) == (start, end)


@pytest.mark.parametrize(("sample_count", "interval"), [(0, 0), (4, 2001), (2, 2002), (4, 200000)])
def test_invalid_views(sample_count: int, interval: int) -> None:
    with pytest.raises(StatisticError):
        SlidingWindowMetric(sample_count, interval, BucketLeapArray())


def test_sum_ignores_future_buckets() -> None:
    # sentinel-golang TestSlidingWindowMetric_GetIntervalSumWithTime: 500 events written 1 s in the future
    real = BucketLeapArray()
    now = 1_700_000_000_123
    for i in range(500):
        real.add_count(now + i + 1000, MetricEvent.PASS, 1)
    for _ in range(2000):
        real.add_count(now, MetricEvent.PASS, 1)
    assert SlidingWindowMetric(2, 2000, real).get_sum(now, MetricEvent.PASS) == 2000


def test_bucket_details() -> None:
    node = ResourceStat()
    now = 1_700_000_000_000
    assert node.min_rt(now) == 60000.0
    node.on_pass(now, 1)
    node.on_pass(now, 1)
    node.on_pass(now, 1)
    node.on_complete(now, 1, 7, error=False)
    node.on_complete(now, 1, 10, error=True)
    assert node.metric.max_concurrency(now) == 3
    assert node.min_rt(now) == 7.0
    assert node.avg_rt(now) == 8.0  # (7 + 10) // 2: integer division as in Go
    assert node.sum(now, MetricEvent.ERROR) == 1
    assert node.concurrency == 1
    assert node.max_avg(now, MetricEvent.COMPLETE) == 4.0  # 2 in one 500 ms bucket -> 4/s


@pytest.mark.parametrize(
    ("interval", "window", "standalone"),
    [
        (500, (1, 500), False),
        (2000, (4, 2000), False),
        (2500, (5, 2500), False),
        (5000, (10, 5000), False),
        (10000, (20, 10000), False),
        (300, (1, 300), True),
        (1500, (3, 1500), True),
        (3000, (6, 3000), True),
        (20000, (1, 20000), True),
        (50000, (1, 50000), True),
    ],
)
def test_rule_windows(interval: int, window: tuple[int, int], standalone: bool) -> None:
    # sentinel-golang generateStatFor: reuse the resource's array when possible, else a standalone one
    assert window_for(interval) == window
    rs = rule_stat(ResourceStat(), interval)
    assert (rs.standalone is not None) == standalone
    with pytest.raises(NonReusableError) if standalone else contextlib.nullcontext():
        check_reuse(*window)


def test_default_rule_stat_is_the_resource_view() -> None:
    node = ResourceStat()
    assert rule_stat(node, 0).metric is node.metric
    assert rule_stat(node, 1000).metric is node.metric


# --- properties -------------------------------------------------------------------------------------

START = 1_700_000_000_000
events = st.lists(st.tuples(st.integers(0, 30_000), st.integers(1, 5)), max_size=60)


@settings(max_examples=300, deadline=None)
@given(
    events=events,
    query_gap=st.integers(0, 12_000),
    shape=st.sampled_from([(20, 10000), (2, 1000), (10, 1000), (1, 700), (5, 2500), (3, 300)]),
)
def test_leap_array_sum_matches_brute_force(
    events: list[tuple[int, int]], query_gap: int, shape: tuple[int, int]
) -> None:
    sample_count, interval = shape
    bucket_len = interval // sample_count
    arr = BucketLeapArray(sample_count, interval)
    times = sorted(START + t for t, _ in events)
    counted = [(t, n) for t, (_, n) in zip(times, events, strict=True)]
    for t, n in counted:
        arr.add_count(t, MetricEvent.PASS, n)
    q = (times[-1] if times else START) + query_gap

    def ws(t: int) -> int:
        return t - t % bucket_len

    # Brute force: events whose bucket is within the interval; a bucket exactly one interval old is live
    # unless the current period already reused its slot.
    reused = any(ws(t) == ws(q) for t in times) and ws(q) == q
    expected = sum(
        n for t, n in counted if q - interval < ws(t) <= q or (ws(t) == q - interval and not reused)
    )
    assert arr.sum(q, MetricEvent.PASS) == expected


@settings(max_examples=300, deadline=None)
@given(events=events, query_gap=st.integers(0, 3000))
def test_default_view_counts_last_two_buckets(events: list[tuple[int, int]], query_gap: int) -> None:
    node = ResourceStat()
    times = sorted(START + t for t, _ in events)
    for t, (_, n) in zip(times, events, strict=True):
        node.array.add_count(t, MetricEvent.PASS, n)
    q = (times[-1] if times else START) + query_gap
    end = q - q % 500
    expected = sum(n for t, (_, n) in zip(times, events, strict=True) if end - 500 <= t <= q)
    assert node.sum(q, MetricEvent.PASS) == expected
    assert node.qps(q, MetricEvent.PASS) == expected
