"""Sentinel metric log: the per-second line format and rolling files of Java/Go Sentinel.

A line (sentinel-golang ``MetricItem.ToFatString``)::

    <tsMs>|<yyyy-MM-dd HH:mm:ss>|<resource>|<pass>|<block>|<complete>|<error>|<avgRt>|<occupiedPass>|<concurrency>|<classification>

The date column is in the writer's local time zone (Go formats ``time.Unix(...)`` in ``time.Local``);
``tz`` overrides it. Files are ``<app, '.' -> '-'>-metrics.log.<yyyy-MM-dd>[.<n>]``, each with a binary
index ``<file>.idx`` of big-endian (int64 second, int64 byte offset) pairs: the offset of the first line of
each second, which the Sentinel dashboard's metric searcher seeks by. Differences from sentinel-golang are
listed in ``docs/metrics.md``.
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, tzinfo
from enum import IntEnum
from pathlib import Path
from typing import NamedTuple

from sentinel_ebpf._closing import Closing
from sentinel_ebpf.errors import SentinelError
from sentinel_ebpf.model.clock import Clock, SystemClock
from sentinel_ebpf.stats import SecondCounts

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
DATE_FORMAT = "%Y-%m-%d"
METRIC_FILE_SUFFIX = "metrics.log"
INDEX_SUFFIX = ".idx"
# The resource name sentinel-golang gives the sum of all inbound traffic (one extra line per second).
TOTAL_INBOUND_RESOURCE = "__total_inbound_traffic__"
# sentinel-golang defaults (core/config/constant.go).
DEFAULT_MAX_FILE_BYTES = 50 * 1024 * 1024
DEFAULT_MAX_FILES = 8

_INDEX_ENTRY = struct.Struct(">qq")  # Java DataOutputStream.writeLong twice
_DIGITS = re.compile(r"[0-9]+")
_FIELD_NAMES = (
    "tsMs",
    "timeStr",
    "resource",
    "passQps",
    "blockQps",
    "completeQps",
    "errorQps",
    "avgRt",
    "occupiedPassQps",
    "concurrency",
    "classification",
)
_MIN_FIELDS = 8  # lines written before occupiedPassQps/concurrency/classification existed
_MAX_FIELDS = len(_FIELD_NAMES)


class ResourceType(IntEnum):
    """The classification column: sentinel-golang's ``base.ResourceType`` (Java's ResourceTypeConstants)."""

    COMMON = 0
    WEB = 1
    RPC = 2
    API_GATEWAY = 3
    DB_SQL = 4
    CACHE = 5
    MQ = 6


def classification_of(protocol: str) -> ResourceType:
    """The classification sentinel-golang's adapters give a resource: HTTP is WEB, anything else COMMON."""
    return ResourceType.WEB if protocol == "http" else ResourceType.COMMON


class MetricItem(NamedTuple):
    """One resource's line for one second. ``classification`` takes a ``ResourceType`` or any int (a
    ``bool`` "inbound" flag formats as 1/0)."""

    resource: str
    counts: SecondCounts
    classification: int = ResourceType.COMMON


class MetricLineError(SentinelError, ValueError):
    """A metric log line cannot be parsed."""


@dataclass(frozen=True)
class MetricLine:
    """A parsed line; ``counts.second_ms`` is the tsMs column. The date column is not kept: it is only
    tsMs in the writer's time zone."""

    resource: str
    counts: SecondCounts
    classification: int


def metric_file_base_name(app_name: str, pid: int | None = None) -> str:
    """``foo.test`` -> ``foo-test-metrics.log`` (``...metrics.log.pid<pid>`` with a pid, as Go's LogUsePid)."""
    if not app_name or "/" in app_name or "\0" in app_name:
        raise ValueError(f"app name must be non-empty and contain no '/' or NUL, got {app_name!r}")
    name = f"{app_name.replace('.', '-')}-{METRIC_FILE_SUFFIX}"
    return f"{name}.pid{pid}" if pid is not None else name


def is_active(counts: SecondCounts) -> bool:
    """Whether a second deserves a line: any non-zero field (Go's ``isActiveMetricItem``, plus occupied)."""
    return not counts.is_zero() or bool(counts.avg_rt_ms or counts.occupied_pass_qps)


def format_line(item: MetricItem, tz: tzinfo | None = None) -> str:
    """The line for ``item``, without the trailing newline; ``tz`` None means the local time zone."""
    counts = item.counts
    values = (
        counts.pass_qps,
        counts.block_qps,
        counts.complete_qps,
        counts.error_qps,
        counts.avg_rt_ms,
        counts.occupied_pass_qps,
        counts.concurrency,
        int(item.classification),
    )
    for name, value in zip(_FIELD_NAMES[3:], values, strict=True):
        if value < 0:
            raise ValueError(
                f"metric item {item.resource!r} at {counts.second_ms}: {name} is negative ({value})"
            )
    if counts.second_ms <= 0:
        raise ValueError(f"metric item {item.resource!r}: timestamp must be positive, got {counts.second_ms}")
    time_str = datetime.fromtimestamp(counts.second_ms // 1000, tz).strftime(TIME_FORMAT)
    # '|' separates fields; a line break would split the line (Go replaces only '|').
    resource = item.resource.replace("|", "_").replace("\n", "_").replace("\r", "_")
    return "|".join((str(counts.second_ms), time_str, resource, *map(str, values)))


def parse_line(line: str) -> MetricLine:
    """Parse a line written by any Sentinel (8 to 11 fields; missing trailing fields are 0).

    Raises ``MetricLineError`` naming the field for a missing field, a non-numeric or negative number.
    """
    text = line.rstrip("\r\n")
    if not text:
        raise MetricLineError("invalid metric line: empty")
    parts = text.split("|")
    if not _MIN_FIELDS <= len(parts) <= _MAX_FIELDS:
        raise MetricLineError(
            f"invalid metric line: {len(parts)} '|'-separated fields, expected {_MIN_FIELDS} to {_MAX_FIELDS}: "
            f"{_clip(text)!r}"
        )
    numbers: list[int] = []
    for index, value in enumerate(parts):
        if index in (1, 2):  # time string, resource
            continue
        if not _DIGITS.fullmatch(value):
            raise MetricLineError(
                f"invalid metric line: field {index + 1} ({_FIELD_NAMES[index]}) must be a non-negative "
                f"integer, got {value!r}: {_clip(text)!r}"
            )
        numbers.append(int(value))
    numbers += [0] * (_MAX_FIELDS - 2 - len(numbers))
    ts, passed, blocked, complete, error, avg_rt, occupied, concurrency, classification = numbers
    counts = SecondCounts(
        second_ms=ts,
        pass_qps=passed,
        block_qps=blocked,
        complete_qps=complete,
        error_qps=error,
        avg_rt_ms=avg_rt,
        occupied_pass_qps=occupied,
        concurrency=concurrency,
    )
    return MetricLine(resource=parts[2], counts=counts, classification=classification)


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


class MetricLogWriter(Closing):
    """Appends metric lines to rolling files, as sentinel-golang's ``DefaultMetricLogWriter``.

    A new file is started when the writer opens (named by ``clock``'s date), when a written second falls
    on a later day than the current file's, and after a batch leaves the file at ``max_file_bytes`` or
    more. Before a file is started the oldest are deleted (with their index) so that at most ``max_files``
    remain. Each batch is one ``write(2)``; nothing is fsynced.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        app_name: str,
        *,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        max_files: int = DEFAULT_MAX_FILES,
        clock: Clock | None = None,
        tz: tzinfo | None = None,
        pid: int | None = None,
    ) -> None:
        if max_file_bytes <= 0 or max_files <= 0:
            raise ValueError(
                f"max_file_bytes and max_files must be positive, got {max_file_bytes}, {max_files}"
            )
        self.directory = Path(directory)
        self.base_name = metric_file_base_name(app_name, pid)
        self.max_file_bytes = max_file_bytes
        self.max_files = max_files
        self._tz = tz
        self._lock = threading.Lock()
        self._fd = -1
        self._idx_fd = -1
        self._size = 0
        self._path: Path | None = None
        self._file_date = ""
        self._latest_sec: int | None = None
        self._pattern = re.compile(
            re.escape(self.base_name) + r"\.([0-9]{4}-[0-9]{2}-[0-9]{2})(?:\.([0-9]+))?"
        )
        self.directory.mkdir(parents=True, exist_ok=True)
        self._roll((clock or SystemClock()).now_ms())

    @property
    def path(self) -> Path:
        """The file being written."""
        if self._path is None:
            raise ValueError("metric log writer is closed")
        return self._path

    def write(self, second_ms: int, items: Iterable[MetricItem | tuple[str, SecondCounts, int]]) -> int:
        """Write the lines of one completed second; returns how many lines were written.

        Items whose counts are all zero are skipped. A second earlier than one already written is ignored
        (returns 0), as in sentinel-golang. Every item's ``counts.second_ms`` must equal ``second_ms``.
        """
        if second_ms <= 0:
            raise ValueError(f"second_ms must be a positive epoch-milliseconds timestamp, got {second_ms}")
        lines: list[str] = []
        for raw in items:
            item = MetricItem(*raw)
            if item.counts.second_ms != second_ms:
                raise ValueError(
                    f"metric item {item.resource!r} is for second {item.counts.second_ms}, not {second_ms}"
                )
            if is_active(item.counts):
                lines.append(format_line(item, self._tz) + "\n")
        if not lines:
            return 0
        data = "".join(lines).encode()
        sec = second_ms // 1000
        with self._lock:
            if self._fd < 0:
                raise ValueError("metric log writer is closed")
            if self._latest_sec is not None and sec < self._latest_sec:
                return 0
            if self._latest_sec is None or sec > self._latest_sec:
                if self._date(second_ms) > self._file_date:
                    self._roll(second_ms)
                _write_all(self._idx_fd, _INDEX_ENTRY.pack(sec, self._size))
                self._latest_sec = sec
            _write_all(self._fd, data)
            self._size += len(data)
            if self._size >= self.max_file_bytes:
                self._roll(second_ms)
        return len(lines)

    def close(self) -> None:
        with self._lock:
            self._close_files()
            self._path = None

    def files(self) -> list[Path]:
        """This app's metric files in the directory, oldest first (index files excluded)."""
        return [path for _, _, path in self._listing()]

    def _listing(self) -> list[tuple[str, int, Path]]:
        """(date, number, path) of this app's metric files, sorted as sentinel-golang sorts them."""
        found: list[tuple[str, int, Path]] = []
        for entry in self.directory.iterdir():
            match = self._pattern.fullmatch(entry.name)
            if match and entry.is_file():
                found.append((match.group(1), int(match.group(2) or 0), entry))
        return sorted(found)

    def _date(self, ms: int) -> str:
        return datetime.fromtimestamp(ms // 1000, self._tz).strftime(DATE_FORMAT)

    def _roll(self, ms: int) -> None:
        date = self._date(ms)
        numbers = [n for day, n, path in self._listing() if day == date]
        name = f"{self.base_name}.{date}" + (f".{max(numbers) + 1}" if numbers else "")
        self._remove_oldest()
        self._close_files()
        path = self.directory / name
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC
        self._fd = os.open(path, flags, 0o644)
        self._idx_fd = os.open(str(path) + INDEX_SUFFIX, flags, 0o644)
        self._path = path
        self._size = 0
        self._file_date = date

    def _remove_oldest(self) -> None:
        files = self.files()
        for path in files[: max(0, len(files) - self.max_files + 1)]:
            for victim in (path, Path(str(path) + INDEX_SUFFIX)):
                with contextlib.suppress(FileNotFoundError):
                    victim.unlink()

    def _close_files(self) -> None:
        for fd in (self._fd, self._idx_fd):
            if fd >= 0:
                os.close(fd)
        self._fd = self._idx_fd = -1


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
