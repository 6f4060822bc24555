"""Completed seconds of every resource, from the kernel's 500 ms buckets, for the metric log and the
history (``SecondsReport``)."""

from __future__ import annotations

import ctypes
import logging
import struct
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from sentinel_ebpf._types import BlockType, ResStats, StatBucket
from sentinel_ebpf.daemon.history import History, ObservedDeltas, Point, delta
from sentinel_ebpf.outputs.metric_log import MetricItem, MetricLogWriter, classification_of
from sentinel_ebpf.stats import ResourceStats, SecondCounts

if TYPE_CHECKING:
    from sentinel_ebpf.enforce.compile import KResource

log = logging.getLogger("sentinel_ebpf.daemon")

SECOND_MS = 1000
HISTORY_MS = 9000  # the kernel keeps 10 s of buckets


# The buckets of struct res_stats as one flat tuple: (start_ms, pass, block, complete, error, rt_sum_ms,
# min_rt_ms) per bucket. One C-level unpack instead of a ctypes attribute read per field: the daemon
# does this for every resource every second (the metric log), so it is most of its idle CPU.
_FIELDS = len(StatBucket._fields_)
_BUCKETS = struct.Struct(f"<{ResStats.buckets.size // 8}Q")
assert ResStats.buckets.size == _FIELDS * 8 * (ResStats.buckets.size // ctypes.sizeof(StatBucket))


def second_counts(st: ResStats, second_ms: int, concurrency: int, epoch_ms: int) -> SecondCounts:
    """The counts of buckets starting in [second_ms, second_ms + 1000) (data-plane clock)."""
    passed = blocked = complete = error = rt = 0
    flat = _BUCKETS.unpack_from(st, ResStats.buckets.offset)
    end = second_ms + SECOND_MS
    for i in range(0, len(flat), _FIELDS):
        if second_ms <= flat[i] < end:
            passed += flat[i + 1]
            blocked += flat[i + 2]
            complete += flat[i + 3]
            error += flat[i + 4]
            rt += flat[i + 5]
    return SecondCounts(
        second_ms=epoch_ms, pass_qps=passed, block_qps=blocked, complete_qps=complete, error_qps=error,
        avg_rt_ms=rt // complete if complete else 0, concurrency=concurrency,
    )  # fmt: skip


_BLOCKS = struct.Struct(f"<{int(BlockType.BLOCK_TYPE_MAX)}Q")
_BLOCK_NAMES = {
    int(t): t.name.removeprefix("BLOCK_").lower()
    for t in BlockType
    if t not in (BlockType.BLOCK_NONE, BlockType.BLOCK_TYPE_MAX)
}


def block_counts(raw: bytes) -> dict[str, int]:
    """Cumulative blocks by rule kind (``flow``, ``isolation``...) from a raw ``struct res_stats``."""
    counts = _BLOCKS.unpack_from(raw, ResStats.block_by_type.offset)
    return {name: counts[code] for code, name in _BLOCK_NAMES.items()}


class BlockDeltas:
    """Blocks by rule kind gained since the previous call, per resource id. The kernel counts blocks by
    kind cumulatively (not per bucket), so a second gets what was added since the previous sample. Only
    resources whose block total moved are read again."""

    def __init__(self) -> None:
        self._seen: dict[int, tuple[int, dict[str, int]]] = {}  # id -> (block total, by kind)

    def step(self, raw: dict[int, bytes], block_totals: dict[int, int]) -> dict[int, dict[str, int]]:
        out = {}
        for rid in self._seen.keys() - block_totals.keys():
            del self._seen[rid]  # removed by a reload
        for rid, blocked in block_totals.items():
            last = self._seen.get(rid)
            if last is not None and last[0] == blocked:
                continue
            counts = block_counts(raw[rid])
            if last is not None:  # the first sight of a resource is the baseline
                out[rid] = delta(counts, last[1])
            self._seen[rid] = (blocked, counts)
        return out


class SecondCollector:
    """Yields each completed second once. Data-plane seconds are CLOCK_MONOTONIC; each is labelled with
    the wall-clock second it fell in (the offset is measured once, at start)."""

    def __init__(self, now_ms: Callable[[], int]) -> None:
        self.now_ms = now_ms
        self.offset_ms = round(time.time() * 1000) - now_ms()
        cur = now_ms()
        self.next_second = cur - cur % SECOND_MS  # the second in progress is the first to report

    def completed(self) -> list[int]:
        """Seconds (data-plane clock) that ended since the last call, oldest first, each once."""
        cur = self.now_ms()
        cur_second = cur - cur % SECOND_MS
        start = max(self.next_second, cur_second - HISTORY_MS)
        self.next_second = max(self.next_second, cur_second)
        return list(range(start, cur_second, SECOND_MS))

    def epoch(self, second_ms: int) -> int:
        wall = second_ms + self.offset_ms
        return wall - wall % SECOND_MS


# concurrency, total_pass, total_block, total_complete, total_error: contiguous in struct res_stats
_TOTALS = struct.Struct("<qQQQQ")
_TOTALS_AT = ResStats.concurrency.offset
assert ResStats.total_error.offset == _TOTALS_AT + 32


class SecondsReport:
    """Each completed second of every resource: the history's points and the metric log's lines."""

    def __init__(self, history: History) -> None:
        self.history = history
        # (data-plane ms, {resource id: (concurrency, pass, block, complete, error)}) of recent seconds
        self._totals_seen: list[tuple[int, dict[int, tuple[int, ...]]]] = []
        self._block_deltas = BlockDeltas()
        self._tls_deltas = ObservedDeltas()

    def collect(
        self,
        seconds: SecondCollector,
        raw: dict[int, bytes],
        resources: Sequence[KResource],
        protocols: dict[str, str],
        tls: list[ResourceStats],
        metric_log: MetricLogWriter | None,
    ) -> None:
        """``raw``: each resource's ``struct res_stats`` read now; ``tls``: the tls resources' counts."""
        completed = seconds.completed()
        taken_ms = seconds.now_ms()
        totals: dict[int, tuple[int, ...]] = {
            rid: _TOTALS.unpack_from(b, _TOTALS_AT) for rid, b in raw.items()
        }
        # A resource whose counters have not moved since before the first of these seconds began, and
        # that has nothing in flight, has no line to write (the writer drops all-zero items, as Go does):
        # skip the bucket arithmetic for it. With 1,000 idle resources this is most of the daemon's work.
        first = completed[0] if completed else taken_ms
        before = next((t for at, t in reversed(self._totals_seen) if at <= first), {})
        self._totals_seen.append((taken_ms, totals))
        del self._totals_seen[:-3]
        blocks = self._block_deltas.step(raw, {rid: t[2] for rid, t in totals.items()})
        for s in completed:
            items = []
            last = s == completed[-1]  # blocks by kind and tls counts are known since the last sample
            points = self._tls_deltas.step(seconds.epoch(s), tls) if last else {}
            for r in resources:
                now = totals[r.id]
                if not now[0] and before.get(r.id) == now:
                    continue
                st = ResStats.from_buffer_copy(raw[r.id])
                counts = second_counts(st, s, max(0, int(st.concurrency)), seconds.epoch(s))
                items.append(MetricItem(r.name, counts, classification_of(protocols.get(r.name, "tcp"))))
                points[r.name] = Point(counts, blocks.get(r.id, {}) if last else {})
            self.history.record(seconds.epoch(s), points)
            if metric_log is None:
                continue
            try:
                metric_log.write(seconds.epoch(s), items)
            except OSError as exc:  # a full disk must not stop enforcement
                log.error("metric log in %s: %s", metric_log.directory, exc)
