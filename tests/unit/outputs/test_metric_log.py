"""Metric log: line format, parser, file names and rolling (sentinel-golang core/base, core/log/metric)."""

from __future__ import annotations

import os
import struct
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from sentinel_ebpf.model.clock import ManualClock
from sentinel_ebpf.outputs.metric_log import (
    MetricItem,
    MetricLineError,
    MetricLogWriter,
    ResourceType,
    classification_of,
    format_line,
    metric_file_base_name,
    parse_line,
)
from sentinel_ebpf.stats import SecondCounts

CST = timezone(timedelta(hours=8))  # the SENTINEL.md example line was written in UTC+8
EXAMPLE = "1564382218000|2019-07-29 14:36:58|/foo/*|4|9|3|0|25|0|2|1"
# 2024-03-10 00:00:00 UTC
DAY_MS = 1_710_028_800_000


def counts(second_ms: int, passed: int = 1, **kw: int) -> SecondCounts:
    fields = {"block_qps": 0, "complete_qps": 0, "error_qps": 0, "avg_rt_ms": 0} | kw
    return SecondCounts(second_ms=second_ms, pass_qps=passed, **fields)


def read_index(path: Path) -> list[tuple[int, int]]:
    data = Path(str(path) + ".idx").read_bytes()
    return [struct.unpack(">qq", data[i : i + 16]) for i in range(0, len(data), 16)]


# --- line format ----------------------------------------------------------------------------------


def test_sentinel_md_example_line_parses() -> None:
    line = parse_line(EXAMPLE)
    assert line.resource == "/foo/*"
    assert line.classification == 1
    assert line.counts == SecondCounts(
        second_ms=1564382218000,
        pass_qps=4,
        block_qps=9,
        complete_qps=3,
        error_qps=0,
        avg_rt_ms=25,
        occupied_pass_qps=0,
        concurrency=2,
    )


def test_example_line_formats_back_exactly() -> None:
    line = parse_line(EXAMPLE)
    assert format_line(MetricItem(line.resource, line.counts, line.classification), CST) == EXAMPLE


def test_every_field_in_its_column() -> None:
    c = SecondCounts(
        second_ms=1_700_000_001_000,
        pass_qps=11,
        block_qps=12,
        complete_qps=13,
        error_qps=14,
        avg_rt_ms=15,
        occupied_pass_qps=16,
        concurrency=17,
    )
    text = format_line(MetricItem("res", c, ResourceType.RPC), timezone.utc)
    assert text.split("|") == [
        "1700000001000",
        "2023-11-14 22:13:21",
        "res",
        "11",
        "12",
        "13",
        "14",
        "15",
        "16",
        "17",
        "2",
    ]
    assert "\n" not in text


def test_date_column_defaults_to_local_time() -> None:
    ms = 1_700_000_001_000
    expected = datetime.fromtimestamp(ms // 1000).strftime("%Y-%m-%d %H:%M:%S")
    assert format_line(MetricItem("r", counts(ms))).split("|")[1] == expected


def test_pipe_and_line_breaks_in_resource_become_underscores() -> None:
    text = format_line(MetricItem("GET|/a\nb\r", counts(1_700_000_000_000)), timezone.utc)
    assert text.split("|")[2] == "GET_/a_b_"
    assert len(text.split("|")) == 11


def test_bool_inbound_flag_formats_as_one_or_zero() -> None:
    c = counts(1_700_000_000_000)
    assert format_line(MetricItem("r", c, True), timezone.utc).endswith("|1")
    assert format_line(MetricItem("r", c, False), timezone.utc).endswith("|0")


def test_classification_follows_sentinel_golang_resource_types() -> None:
    assert classification_of("http") is ResourceType.WEB
    assert classification_of("tcp") is ResourceType.COMMON
    assert (int(ResourceType.COMMON), int(ResourceType.WEB), int(ResourceType.MQ)) == (0, 1, 6)


def test_format_rejects_negative_count_and_bad_timestamp() -> None:
    with pytest.raises(ValueError, match="blockQps is negative"):
        format_line(MetricItem("r", counts(1_700_000_000_000, block_qps=-1)))
    with pytest.raises(ValueError, match="timestamp"):
        format_line(MetricItem("r", counts(0)))


# --- parser ---------------------------------------------------------------------------------------


def test_parser_accepts_old_eight_field_lines_and_trailing_newline() -> None:
    line = parse_line("1564382218000|2019-07-29 14:36:58|res|1|2|3|4|5\n")
    assert (line.counts.pass_qps, line.counts.avg_rt_ms) == (1, 5)
    assert (line.counts.occupied_pass_qps, line.counts.concurrency, line.classification) == (0, 0, 0)


@pytest.mark.parametrize("index", [0, 3, 4, 5, 6, 7, 8, 9, 10])
@pytest.mark.parametrize("bad", ["x", "-1", "1.5", "+1", " 1", "", "1e3", "٣"])
def test_parser_rejects_non_numeric_or_negative_field(index: int, bad: str) -> None:
    parts = EXAMPLE.split("|")
    parts[index] = bad
    with pytest.raises(MetricLineError, match=rf"field {index + 1} \(\w+\)") as err:
        parse_line("|".join(parts))
    assert repr(bad) in str(err.value)
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("", "empty"),
        ("\n", "empty"),
        ("1564382218000|2019-07-29 14:36:58|res|1|2|3|4", "7 '|'-separated fields"),
        (EXAMPLE + "|9", "12 '|'-separated fields"),
    ],
)
def test_parser_rejects_wrong_shape(line: str, message: str) -> None:
    with pytest.raises(MetricLineError, match=message):
        parse_line(line)


# --- file names -----------------------------------------------------------------------------------


def test_file_name_from_app_name() -> None:
    assert metric_file_base_name("foo.test") == "foo-test-metrics.log"
    assert metric_file_base_name("foo.test", pid=42) == "foo-test-metrics.log.pid42"
    for bad in ("", "a/b", "a\0b"):
        with pytest.raises(ValueError, match="app name"):
            metric_file_base_name(bad)


def test_writer_opens_file_named_by_clock_date(tmp_path: Path) -> None:
    with MetricLogWriter(tmp_path, "foo.test", clock=ManualClock(DAY_MS + 5000), tz=timezone.utc) as w:
        assert w.path == tmp_path / "foo-test-metrics.log.2024-03-10"
        assert w.path.exists()
        assert Path(str(w.path) + ".idx").exists()


# --- writer ---------------------------------------------------------------------------------------


def make_writer(tmp_path: Path, start_ms: int = DAY_MS, **kw: int) -> MetricLogWriter:
    return MetricLogWriter(tmp_path, "app", clock=ManualClock(start_ms), tz=timezone.utc, **kw)


def test_write_lines_skips_zero_items_and_indexes_seconds(tmp_path: Path) -> None:
    w = make_writer(tmp_path)
    s1, s2 = DAY_MS + 1000, DAY_MS + 2000
    assert w.write(s1, [("a", counts(s1, 3), 1), ("idle", counts(s1, 0), 0)]) == 1
    first_len = w.path.stat().st_size
    assert w.write(s2, [MetricItem("a", counts(s2, 0, avg_rt_ms=7)), MetricItem("b", counts(s2, 2))]) == 2
    assert w.write(s2, [MetricItem("c", counts(s2, 1))]) == 1  # same second again: no new index entry
    w.close()
    lines = [parse_line(x) for x in (tmp_path / "app-metrics.log.2024-03-10").read_text().splitlines()]
    assert [(x.resource, x.counts.second_ms) for x in lines] == [("a", s1), ("a", s2), ("b", s2), ("c", s2)]
    assert lines[0].classification == 1
    assert read_index(tmp_path / "app-metrics.log.2024-03-10") == [(s1 // 1000, 0), (s2 // 1000, first_len)]


def test_all_zero_batch_writes_nothing(tmp_path: Path) -> None:
    w = make_writer(tmp_path)
    assert w.write(DAY_MS + 1000, [("a", counts(DAY_MS + 1000, 0), 0)]) == 0
    assert w.write(DAY_MS + 1000, []) == 0
    assert w.path.stat().st_size == 0
    assert read_index(w.path) == []


def test_earlier_second_is_ignored(tmp_path: Path) -> None:
    w = make_writer(tmp_path)
    w.write(DAY_MS + 2000, [("a", counts(DAY_MS + 2000), 0)])
    assert w.write(DAY_MS + 1000, [("a", counts(DAY_MS + 1000), 0)]) == 0
    assert len(w.path.read_text().splitlines()) == 1


def test_item_for_another_second_is_an_error(tmp_path: Path) -> None:
    w = make_writer(tmp_path)
    with pytest.raises(ValueError, match="is for second"):
        w.write(DAY_MS + 2000, [("a", counts(DAY_MS + 1000), 0)])
    with pytest.raises(ValueError, match="positive"):
        w.write(0, [])


def test_batch_is_one_write_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w = make_writer(tmp_path)
    calls: list[int] = []
    real_write = os.write

    def spy(fd: int, data: bytes | memoryview) -> int:
        calls.append(len(data))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", spy)
    s = DAY_MS + 1000
    w.write(s, [(f"r{i}", counts(s, i + 1), 0) for i in range(50)])
    assert calls == [16, w.path.stat().st_size]  # the index entry, then all 50 lines at once


def test_rolls_by_size(tmp_path: Path) -> None:
    w = make_writer(tmp_path, max_file_bytes=100, max_files=10)
    names = []
    for i in range(1, 5):
        s = DAY_MS + i * 1000
        names.append(w.path.name)
        w.write(s, [("resource", counts(s), 0), ("another-resource", counts(s), 0)])  # > 100 bytes
    assert names == [
        "app-metrics.log.2024-03-10",
        "app-metrics.log.2024-03-10.1",
        "app-metrics.log.2024-03-10.2",
        "app-metrics.log.2024-03-10.3",
    ]
    assert w.path.name == "app-metrics.log.2024-03-10.4"  # rolled after the last batch too
    for i, name in enumerate(names, start=1):
        assert [parse_line(x).counts.second_ms for x in (tmp_path / name).read_text().splitlines()] == [
            DAY_MS + i * 1000
        ] * 2
        assert read_index(tmp_path / name) == [(DAY_MS // 1000 + i, 0)]


def test_small_batches_share_a_file_until_the_size_is_reached(tmp_path: Path) -> None:
    line_bytes = len(format_line(MetricItem("r", counts(DAY_MS + 1000)), timezone.utc)) + 1
    w = make_writer(tmp_path, max_file_bytes=3 * line_bytes)
    for i in range(1, 4):
        w.write(DAY_MS + i * 1000, [("r", counts(DAY_MS + i * 1000), 0)])
    first = tmp_path / "app-metrics.log.2024-03-10"
    assert len(first.read_text().splitlines()) == 3
    assert w.path.name == "app-metrics.log.2024-03-10.1"


def test_rolls_by_day_in_the_writer_time_zone(tmp_path: Path) -> None:
    # 2019-07-29 23:59:59 in UTC+8, then the next second.
    before, after = 1564415999000, 1564416000000
    w = MetricLogWriter(tmp_path, "app", clock=ManualClock(before), tz=CST)
    w.write(before, [("r", counts(before), 0)])
    assert w.path.name == "app-metrics.log.2019-07-29"
    w.write(after, [("r", counts(after), 0)])
    assert w.path.name == "app-metrics.log.2019-07-30"
    old = parse_line((tmp_path / "app-metrics.log.2019-07-29").read_text())
    new_text = (tmp_path / "app-metrics.log.2019-07-30").read_text()
    assert old.counts.second_ms == before
    assert new_text.split("|")[1] == "2019-07-30 00:00:00"
    # The first second of the new day is indexed in the new file, at offset 0.
    assert read_index(tmp_path / "app-metrics.log.2019-07-29") == [(before // 1000, 0)]
    assert read_index(tmp_path / "app-metrics.log.2019-07-30") == [(after // 1000, 0)]


def test_late_second_of_previous_day_goes_to_current_file(tmp_path: Path) -> None:
    # Opened just after midnight, then the last second of yesterday arrives: no roll backwards.
    w = make_writer(tmp_path, start_ms=DAY_MS + 500)
    late = DAY_MS - 1000
    assert w.write(late, [("r", counts(late), 0)]) == 1
    assert w.path.name == "app-metrics.log.2024-03-10"
    assert w.files() == [tmp_path / "app-metrics.log.2024-03-10"]


def test_bounded_file_count_deletes_oldest_with_index(tmp_path: Path) -> None:
    (tmp_path / "other-metrics.log.2024-03-01").write_text("not ours\n")
    (tmp_path / "app-metrics.log.pid7.2024-03-01").write_text("another process\n")
    w = make_writer(tmp_path, max_file_bytes=1, max_files=3)
    for day in range(5):
        s = DAY_MS + day * 86_400_000 + 1000
        w.write(s, [("r", counts(s), 0)])
    names = [p.name for p in w.files()]
    # Every batch fills a file: each day gets <day> (the batch) and <day>.1 (empty, current).
    assert names == [
        "app-metrics.log.2024-03-13.1",
        "app-metrics.log.2024-03-14",
        "app-metrics.log.2024-03-14.1",
    ]
    assert names[-1] == w.path.name
    idx = sorted(p.name for p in tmp_path.glob("app-metrics.log.2*.idx"))
    assert idx == sorted(n + ".idx" for n in names)
    assert (tmp_path / "other-metrics.log.2024-03-01").exists()
    assert (tmp_path / "app-metrics.log.pid7.2024-03-01").exists()


def test_new_writer_starts_a_new_file_after_existing_ones(tmp_path: Path) -> None:
    make_writer(tmp_path).close()
    w = make_writer(tmp_path)
    assert w.path.name == "app-metrics.log.2024-03-10.1"
    w.close()
    (tmp_path / "app-metrics.log.2024-03-10.9").touch()
    assert make_writer(tmp_path).path.name == "app-metrics.log.2024-03-10.10"


def test_files_sorted_by_date_then_number(tmp_path: Path) -> None:
    w = make_writer(tmp_path, start_ms=DAY_MS + 86_400_000)
    for name in (
        "app-metrics.log.2024-03-10.10",
        "app-metrics.log.2024-03-10.2",
        "app-metrics.log.2024-03-10",
    ):
        (tmp_path / name).touch()
    assert [p.name for p in w.files()] == [
        "app-metrics.log.2024-03-10",
        "app-metrics.log.2024-03-10.2",
        "app-metrics.log.2024-03-10.10",
        "app-metrics.log.2024-03-11",
    ]


def test_close_is_idempotent_and_final(tmp_path: Path) -> None:
    w = make_writer(tmp_path)
    w.close()
    w.close()
    with pytest.raises(ValueError, match="closed"):
        w.write(DAY_MS + 1000, [("r", counts(DAY_MS + 1000), 0)])


def test_invalid_limits_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        make_writer(tmp_path, max_files=0)
    with pytest.raises(ValueError, match="must be positive"):
        make_writer(tmp_path, max_file_bytes=0)
