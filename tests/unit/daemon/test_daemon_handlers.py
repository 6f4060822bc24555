"""The daemon's control requests and metric log, over a fake data plane (no kernel)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from daemon_fakes import FakeDataplane, rules

from sentinel_ebpf._types import ResStats
from sentinel_ebpf.daemon import Daemon, DaemonConfig
from sentinel_ebpf.daemon.collector import SecondCollector
from sentinel_ebpf.daemon.state import Attachment, State
from sentinel_ebpf.errors import BpfKeyError, SentinelError
from sentinel_ebpf.outputs.metric_log import MetricLogWriter, parse_line
from sentinel_ebpf.rules import RulesError
from sentinel_ebpf.stats import ResourceStats

TCP_AND_HTTP = """
resources:
  - {name: "GET:/api|v1", match: {protocol: http, port: 8000, path: /api, method: GET}}
  - {name: conns, match: {protocol: tcp, port: 9000}}
flowRules:
  - {resource: "GET:/api|v1", threshold: 5}
"""


class KernelLike(FakeDataplane):
    """Adds the statistics side: bucket snapshots and counters set by the test."""

    outbound_attached = False
    sockops_attached = False

    def attach_sockops(self, cgroup_root: str | None = None) -> None:
        self.sockops_attached = True

    def __init__(self) -> None:
        super().__init__()
        self.buckets: dict[int, ResStats] = {}

    def resource_stats(self) -> list[ResourceStats]:
        return [
            ResourceStats(r.name, passed=3, blocked=1, complete=3, rt_sum_ms=30.0)
            for r in self.compiled.resources
        ]

    def counters(self) -> dict[str, int]:
        return {"packets": 10}

    def port_counters(self, port: int) -> dict[str, int]:
        if port == 9000:
            raise BpfKeyError("map port_stats: lookup", 2)
        return {"tls": 1, "http2": 0}

    def raw_stats(self, resource_id: int) -> ResStats:
        return self.buckets.get(resource_id, ResStats())

    def raw_stats_bytes(self) -> dict[int, bytes]:
        return {r.id: bytes(self.raw_stats(r.id)) for r in self.compiled.resources}


def daemon(tmp_path: Path, text: str) -> tuple[Daemon, KernelLike]:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    d = Daemon(DaemonConfig(rules=str(path), state_dir=str(tmp_path / "state")))
    dp = KernelLike()
    d.dp = dp  # type: ignore[assignment]
    result = d.reload()
    assert result.accepted
    return d, dp


def test_stats_is_the_documented_shape_plus_data_plane_and_port_counters(tmp_path: Path) -> None:
    d, _ = daemon(tmp_path, TCP_AND_HTTP)
    doc = d.handle({"cmd": "stats"})
    assert doc["resources"]["conns"]["pass"] == 3 and doc["resources"]["conns"]["avg_rt_ms"] == 10.0
    assert set(doc["resources"]["GET:/api|v1"]["block_by_type"]) == {
        "flow", "isolation", "circuit_breaking", "system", "hotspot",
    }  # fmt: skip
    assert doc["dataplane"] == {"packets": 10}
    assert doc["ports"] == {"8000": {"tls": 1, "http2": 0}}  # 9000 has no entry yet: left out
    assert doc["loaded_at"] > 0


def test_rules_reports_what_is_in_force_not_what_is_on_disk(tmp_path: Path) -> None:
    d, _ = daemon(tmp_path, rules("5"))
    (tmp_path / "rules.yaml").write_text(rules("-1"))
    assert not d.reload().accepted
    doc = d.handle({"cmd": "rules"})
    assert doc["file"] == str(tmp_path / "rules.yaml") and doc["resources"] == ["api"]
    assert doc["document"]["flowRules"][0]["threshold"] == 5


def test_unknown_commands_are_refused(tmp_path: Path) -> None:
    d, _ = daemon(tmp_path, rules("5"))
    with pytest.raises(
        SentinelError, match=r"unknown command 'nope' \(stats, rules, reload, metrics, check, apply\)"
    ):
        d.handle({"cmd": "nope"})


def test_a_reload_request_waits_for_the_loop_and_reports_its_outcome(tmp_path: Path) -> None:
    d, dp = daemon(tmp_path, rules("5"))
    (tmp_path / "rules.yaml").write_text(rules("40"))
    replies: list[dict[str, Any]] = []
    asker = threading.Thread(target=lambda: replies.append(d.handle({"cmd": "reload"})))
    asker.start()
    deadline = time.monotonic() + 5
    while not d._reload_requested:  # the daemon's loop: reload when asked
        assert time.monotonic() < deadline, "the reload request never arrived"
        time.sleep(0.01)
    d.reload()
    asker.join(5)
    assert replies == [{"applied": True, "accepted": True, "problems": []}] and dp.threshold() == 40


def test_a_reload_request_nobody_serves_times_out(tmp_path: Path) -> None:
    d, _ = daemon(tmp_path, rules("5"))
    with pytest.raises(SentinelError, match=r"did not finish within 0\.05 s"):
        d.request_reload(timeout_s=0.05)


def _buckets(rows: list[tuple[int, int, int, int, int]]) -> ResStats:
    st = ResStats()
    for i, (start, passed, block, complete, rt) in enumerate(rows):
        b = st.buckets[i]
        b.start_ms, b.block, b.complete, b.rt_sum_ms = start, block, complete, rt
        setattr(b, "pass", passed)
    return st


def test_metric_log_has_one_line_per_active_resource_per_completed_second(tmp_path: Path) -> None:
    d, dp = daemon(tmp_path, TCP_AND_HTTP)
    api, conns = (d.dp.compiled.resource_id(n) for n in ("GET:/api|v1", "conns"))  # type: ignore[union-attr]
    dp.buckets[api] = _buckets([(5_000, 2, 3, 2, 40), (5_500, 3, 0, 2, 20), (6_000, 5, 0, 5, 5)])
    dp.buckets[conns] = _buckets([(5_500, 1, 0, 0, 0)])
    now = [5_100]
    seconds = SecondCollector(lambda: now[0])
    d.metric_log = MetricLogWriter(tmp_path / "log", "demo.app")
    try:
        now[0] = 6_400  # second 5 is complete, second 6 is not
        d._collect_seconds(seconds)
        d._collect_seconds(seconds)  # nothing new: nothing written twice
        path = d.metric_log.path
        lines = path.read_text().splitlines()
    finally:
        d.metric_log.close()
    assert path.name.startswith("demo-app-metrics.log.")
    parsed = {p.resource: p for p in map(parse_line, lines)}
    assert len(lines) == 2 and set(parsed) == {"GET:/api_v1", "conns"}  # '|' is the separator
    c = parsed["GET:/api_v1"].counts
    assert (c.pass_qps, c.block_qps, c.complete_qps, c.avg_rt_ms) == (5, 3, 4, 15)
    assert c.second_ms == seconds.epoch(5_000) and c.second_ms % 1000 == 0
    assert parsed["conns"].counts.pass_qps == 1
    assert parsed["GET:/api_v1"].classification == 1 and parsed["conns"].classification == 0


def test_metric_log_skips_only_resources_quiet_since_before_the_second(tmp_path: Path) -> None:
    """Counters unchanged since a snapshot taken before the second began: no line, no bucket arithmetic.
    Counters unchanged only since a snapshot taken inside the second: its line is still written."""
    d, dp = daemon(tmp_path, TCP_AND_HTTP)
    api = d.dp.compiled.resource_id("GET:/api|v1")  # type: ignore[union-attr]
    st = _buckets([(6_000, 4, 0, 4, 8)])
    st.total_pass = st.total_complete = 4  # the kernel's running totals (they moved during second 6)
    dp.buckets[api] = st
    now = [6_100]
    seconds = SecondCollector(lambda: now[0])
    d.metric_log = MetricLogWriter(tmp_path / "log", "demo.app")
    try:
        now[0] = 6_400  # snapshot inside second 6: totals already include its traffic
        d._collect_seconds(seconds)
        now[0] = 7_400  # second 6 completes: its line is written although totals did not move since 6,400
        d._collect_seconds(seconds)
        # a bucket for second 7 the totals do not account for: written only if the skip is not taken
        st.buckets[1].start_ms, st.buckets[1].complete = 7_000, 9
        setattr(st.buckets[1], "pass", 9)
        now[0] = 8_400  # second 7: quiet since a snapshot taken before it began: skipped
        d._collect_seconds(seconds)
        lines = d.metric_log.path.read_text().splitlines()
    finally:
        d.metric_log.close()
    assert [parse_line(ln).counts.pass_qps for ln in lines] == [4]
    assert parse_line(lines[0]).counts.second_ms == seconds.epoch(6_000)


def test_a_daemon_that_fails_to_start_leaves_the_state_file_alone(tmp_path: Path) -> None:
    """The record belongs to a running daemon or to a crashed one that `down` must still clean up."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(rules("-1"))
    State(os.getppid(), [Attachment("lo", 1, True)]).write(str(tmp_path / "state"))
    d = Daemon(
        DaemonConfig(rules=str(bad), state_dir=str(tmp_path / "state"), metrics_addr=None, log_dir=None)
    )
    with pytest.raises(RulesError):
        d.run()
    assert State.read(str(tmp_path / "state")) == State(os.getppid(), [Attachment("lo", 1, True)])
