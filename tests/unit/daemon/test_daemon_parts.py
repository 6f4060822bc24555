"""Daemon parts that need no kernel: per-second counts, the control protocol, the state file."""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest

from sentinel_ebpf._types import ResStats
from sentinel_ebpf.daemon.collector import SecondCollector, second_counts
from sentinel_ebpf.daemon.control import ControlError, ControlServer, request
from sentinel_ebpf.daemon.resume import resume
from sentinel_ebpf.daemon.state import Attachment, State
from sentinel_ebpf.errors import SentinelError


def _stats(buckets: list[tuple[int, int, int, int, int, int]]) -> ResStats:
    st = ResStats()
    for i, (start, passed, block, complete, error, rt) in enumerate(buckets):
        b = st.buckets[i]
        b.start_ms, b.block, b.complete, b.error, b.rt_sum_ms = start, block, complete, error, rt
        setattr(b, "pass", passed)
    return st


def test_second_counts_sum_the_two_buckets_of_the_second() -> None:
    st = _stats([(10_000, 3, 1, 2, 1, 30), (10_500, 4, 0, 2, 0, 10), (11_000, 100, 100, 100, 100, 100)])
    c = second_counts(st, 10_000, concurrency=2, epoch_ms=1_700_000_000_000)
    assert (c.pass_qps, c.block_qps, c.complete_qps, c.error_qps, c.avg_rt_ms) == (7, 1, 4, 1, 10)
    assert (c.second_ms, c.concurrency) == (1_700_000_000_000, 2)


def test_collector_reports_each_completed_second_once() -> None:
    now = [5_300]
    col = SecondCollector(lambda: now[0])
    assert col.completed() == []
    now[0] = 7_100
    assert col.completed() == [5_000, 6_000]
    assert col.completed() == []
    now[0] = 60_000  # a long stall: only what the kernel still holds (9 s)
    assert col.completed() == list(range(51_000, 60_000, 1000))
    assert col.epoch(5_000) % 1000 == 0


@pytest.fixture
def server(tmp_path: Path) -> Any:
    def handler(req: dict[str, Any]) -> dict[str, Any]:
        if req["cmd"] == "stats":
            return {"resources": {}}
        raise SentinelError(f"unknown command {req['cmd']!r}")

    srv = ControlServer(str(tmp_path / "c.sock"), handler)
    yield srv
    srv.close()


def test_control_socket_answers_and_is_root_only(server: ControlServer) -> None:
    assert stat.S_IMODE(os.stat(server.path).st_mode) == 0o600
    assert request(str(server.path), "stats") == {"ok": True, "resources": {}}
    with pytest.raises(ControlError, match=r"the daemon refused .nope.: unknown command .nope."):
        request(str(server.path), "nope")


def test_control_socket_rejects_garbage(server: ControlServer) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(server.path))
        s.sendall(b"[1, 2]\n")
        reply = json.loads(s.makefile().readline())
    assert reply == {"ok": False, "error": "a request is an object with a string 'cmd'"}


def test_no_daemon_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ControlError, match=r"no daemon at .* \(start one with `sentinel-ebpf run`\)"):
        request(str(tmp_path / "missing.sock"), "stats")


def test_state_file_round_trip(tmp_path: Path) -> None:
    State(42, [Attachment("lo", 1, True), Attachment("eth0", 2, False)]).write(str(tmp_path))
    back = State.read(str(tmp_path))
    assert back is not None and back.pid == 42 and back.attachments[0] == Attachment("lo", 1, True)
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(SentinelError, match="unreadable state file"):
        State.read(str(tmp_path))
    assert State.read(str(tmp_path / "nowhere")) is None


def test_state_file_keeps_the_record_of_the_rules_in_force(tmp_path: Path) -> None:
    record = {"rules": "resources: []\n", "ids": {"a": 1}, "last_id": 3, "fingerprint": "x"}
    State(7, [], record).write(str(tmp_path))
    back = State.read(str(tmp_path))
    assert back is not None and back.inbound == record
    (tmp_path / "state.json").write_text('{"pid": 7, "inbound": [1]}')
    with pytest.raises(SentinelError, match="unreadable state file"):
        State.read(str(tmp_path))


RESUMED = "resources:\n  - {name: web, match: {protocol: http, port: 8080, path: /}}\n"


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (None, "does not record the rules in force"),
        ({"rules": RESUMED, "ids": {"web": 1}}, "record of the rules in force is unreadable"),
        ({"rules": "resources: 7\n", "ids": {}, "last_id": 1, "gen": 0, "fingerprint": ""}, "unreadable"),
        (
            {"rules": RESUMED, "ids": {"web": 2}, "last_id": 2, "gen": 0, "fingerprint": ""},
            "do not compile to what was",
        ),
        (
            {"rules": RESUMED, "ids": {"web": 1}, "last_id": 1, "gen": 0, "fingerprint": "0" * 64},
            "do not compile",
        ),
    ],
)
def test_resume_refuses_a_record_it_cannot_trust(record: dict[str, object] | None, reason: str) -> None:
    """Checked before any map is touched: the daemon then starts with fresh statistics."""
    with pytest.raises(SentinelError, match=reason):
        resume(State(1, [Attachment("lo", 1, False)], record), None)


def test_a_live_control_socket_is_not_taken_over(server: ControlServer) -> None:
    with pytest.raises(ControlError, match="another daemon listens at"):
        ControlServer(str(server.path), lambda req: {})
    assert request(str(server.path), "stats")["ok"]  # the first one still answers


def test_a_stale_control_socket_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))  # bound, never listening: what a killed daemon leaves
    srv = ControlServer(str(path), lambda req: {"resources": {}})
    try:
        assert request(str(path), "stats") == {"ok": True, "resources": {}}
    finally:
        srv.close()
