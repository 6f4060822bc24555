"""`stats`, `top` and `down` over a control socket / state dir served by the test (no kernel)."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from sentinel_ebpf.cli import _register, app
from sentinel_ebpf.daemon.control import ControlServer
from sentinel_ebpf.daemon.sampling import CpuSampler, process_memory_bytes
from sentinel_ebpf.daemon.state import Attachment, State, down
from sentinel_ebpf.errors import SentinelError
from sentinel_ebpf.outputs.stats_json import stats_document
from sentinel_ebpf.outputs.stats_table import per_second, sparkline
from sentinel_ebpf.stats import BreakerSnapshot, ResourceStats

_register()
runner = CliRunner()


class FakeDaemon:
    """Answers `stats` with counters that grow by 10 passes and 4 blocks per request."""

    def __init__(self) -> None:
        self.asked = 0

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        assert request["cmd"] == "stats"
        self.asked += 1
        n = self.asked
        doc = stats_document([
            ResourceStats("GET:/api", passed=10 * n, blocked=4 * n, complete=10 * n, rt_sum_ms=20.0 * n,
                          block_by_type={"flow": 4 * n, "isolation": 0, "circuit_breaking": 0, "system": 0,
                                         "hotspot": 0}),
            ResourceStats("db", circuit_breakers=(BreakerSnapshot("cb-1", "open"),)),
        ])  # fmt: skip
        doc["dataplane"] = {"packets": n}
        return doc


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, FakeDaemon]]:
    fake = FakeDaemon()
    server = ControlServer(str(tmp_path / "control.sock"), fake.handle)
    try:
        yield str(server.path), fake
    finally:
        server.close()


def test_stats_json_is_the_daemons_document(served: tuple[str, FakeDaemon]) -> None:
    sock, _ = served
    result = runner.invoke(app, ["stats", "--json", "--control-socket", sock])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert "ok" not in doc and doc["dataplane"] == {"packets": 1}
    assert doc["resources"]["GET:/api"] == {
        "pass": 10, "block": 4, "complete": 10, "error": 0, "abort": 0, "concurrency": 0, "avg_rt_ms": 2.0,
        "block_by_type": {"flow": 4, "isolation": 0, "circuit_breaking": 0, "system": 0, "hotspot": 0},
        "circuit_breakers": [], "source": "kernel",
    }  # fmt: skip
    assert doc["resources"]["db"]["circuit_breakers"] == [{"id": "cb-1", "state": "open"}]


def test_stats_table_lists_every_resource(served: tuple[str, FakeDaemon]) -> None:
    sock, _ = served
    result = runner.invoke(app, ["stats", "--control-socket", sock], env={"COLUMNS": "150"})
    assert result.exit_code == 0, result.output
    assert "GET:/api" in result.output and "db" in result.output and "open" in result.output


def test_top_refreshes_count_times_with_rates(served: tuple[str, FakeDaemon]) -> None:
    sock, fake = served
    result = runner.invoke(
        app, ["top", "--control-socket", sock, "--interval", "0.1", "--count", "2"], env={"COLUMNS": "150"}
    )
    assert result.exit_code == 0, result.output
    assert fake.asked == 3  # the first read, then one per refresh
    assert "per second" in result.output
    row = next(ln for ln in result.output.splitlines() if "GET:/api" in ln)
    cells = [c.strip() for c in re.split(r"[│|┃]", row) if c.strip()]
    pass_qps, block_qps, complete_qps, error_qps, avg_rt_ms = (float(c) for c in cells[1:6])
    # 10 passes and 4 blocks per refresh of at least 0.1 s (at most 100/s; above 10/s unless one
    # refresh took over a second); RT 2 ms each
    assert 10.0 < pass_qps <= 100.0, row
    assert block_qps == pytest.approx(0.4 * pass_qps, abs=0.1) and complete_qps == pass_qps, row
    assert (error_qps, avg_rt_ms) == (0.0, 2.0), row


def test_without_a_daemon_stats_says_how_to_start_one(tmp_path: Path) -> None:
    result = runner.invoke(app, ["stats", "--control-socket", str(tmp_path / "none.sock")])
    assert result.exit_code == 1 and "start one with `sentinel-ebpf run`" in result.output


def test_down_refuses_while_the_recorded_daemon_runs(tmp_path: Path) -> None:
    State(os.getppid(), [Attachment("lo", 1, True)]).write(str(tmp_path))  # a live process, not us
    with pytest.raises(SentinelError, match=rf"a daemon \(pid {os.getppid()}\) is running"):
        down(str(tmp_path))
    assert (tmp_path / "state.json").exists()


def test_cpu_ratio_between_two_reads(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 100 800 0 0 0 0 0 0\n")
    cpu = CpuSampler(stat)
    assert cpu.sample() is None  # one read is no ratio
    stat.write_text("cpu  150 0 150 900 0 0 0 0 0 0\n")  # 100 busy of 200
    assert cpu.sample() == pytest.approx(0.5)
    assert CpuSampler(tmp_path / "missing").sample() is None


def test_process_memory_is_rss_in_bytes(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmRSS:\t  2048 kB\n")
    assert process_memory_bytes(status) == 2048 * 1024
    assert process_memory_bytes(tmp_path / "missing") is None
    assert (process_memory_bytes() or 0) > 0  # this process, for real


def test_top_shows_the_last_seconds_from_the_daemons_memory(tmp_path: Path) -> None:
    def handle(request: dict[str, Any]) -> dict[str, Any]:
        if request["cmd"] == "metrics":
            to_ms = (int(time.time()) + 1) * 1000
            assert to_ms - 32_000 <= request["since"] <= to_ms - 30_000
            # pass 8 in the newest second, 4 the one before, nothing earlier
            return {"to_ms": to_ms, "resources": {"GET:/api": [{"t": to_ms - 2000, "pass": 4},
                                                               {"t": to_ms - 1000, "pass": 8}]}}  # fmt: skip
        return stats_document([ResourceStats("GET:/api", passed=1), ResourceStats("idle")])

    server = ControlServer(str(tmp_path / "control.sock"), handle)
    try:
        result = runner.invoke(app, ["top", "--control-socket", str(server.path), "--interval", "0.1",
                                     "--count", "1"], env={"COLUMNS": "250"})  # fmt: skip
    finally:
        server.close()
    assert result.exit_code == 0, result.output
    assert "Pass/s, last 30 s" in result.output
    assert "▁" * 28 + "▅█" in result.output  # 4 of 8 is half height
    assert "│ " + "▁" * 30 + " │" in result.output  # the idle resource


def test_sparklines_scale_to_the_largest_value() -> None:
    assert sparkline([0, 1, 2, 4]) == "▁▄▅█"
    assert sparkline([0, 0]) == "▁▁" and sparkline([]) == ""
    assert per_second({"to_ms": 5000, "resources": {"a": [{"t": 3000, "pass": 7}]}}, "pass", 3) == {
        "a": [0, 7, 0]
    }
