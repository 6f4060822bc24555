"""Tracer output: the original plugin's line format, JSON fields, event decoding (TCP and HTTP) and filter
validation."""

from __future__ import annotations

import ctypes
import json
import socket
from datetime import datetime

import pytest

from sentinel_ebpf._types import (
    ConnDirection,
    ConnEvent,
    ConnOutcome,
    HttpDataDir,
    HttpDataSource,
    HttpEvent,
    HttpEventKind,
)
from sentinel_ebpf.tracing.base import Clock
from sentinel_ebpf.tracing.http import HttpRecord, HttpTracer
from sentinel_ebpf.tracing.tcp import HEADER, Connection, TraceFilter, decode
from tests.support.trace_format import CONNECTION_JSON_KEYS, ORIGINAL_HEADER


def _conn(**kw: object) -> Connection:
    base: dict[str, object] = dict(
        timestamp=datetime(2022, 10, 31, 16, 27, 54).timestamp(),
        pid=42,
        tid=43,
        uid=0,
        comm="curl",
        family=4,
        saddr="10.182.0.2",
        sport=55146,
        daddr="74.125.137.95",
        dport=443,
        direction="connect",
        outcome="established",
    )
    base.update(kw)
    return Connection(**base)  # type: ignore[arg-type]


def test_header_is_the_original_plugins() -> None:
    assert HEADER == ORIGINAL_HEADER


def test_line_matches_original_columns() -> None:
    line = _conn().line()
    assert line == "2022/10/31 16:27:54 curl             10.182.0.2      55146  -> 74.125.137.95   443"
    header_line = "2022/10/31 16:27:45 " + HEADER
    # every column starts where the header's column starts
    for title, value in (
        ("Src addr", "10.182.0.2"),
        ("Port", "55146"),
        ("->", "->"),
        ("Dest addr", "74.125"),
    ):
        assert line.index(value) == header_line.index(title), title


def test_fifteen_char_comm_keeps_columns_aligned() -> None:
    line = _conn(comm="google_guest_ag").line()
    assert line.index("10.182.0.2") == ("2022/10/31 16:27:45 " + HEADER).index("Src addr")


def test_json_dict_has_the_documented_fields() -> None:
    d = json.loads(json.dumps(_conn().json_dict()))
    assert set(d) == CONNECTION_JSON_KEYS
    assert (d["pid"], d["sport"], d["dport"]) == (42, 55146, 443)


def _event(family: int, saddr: bytes, daddr: bytes, **kw: int) -> bytes:
    ev = ConnEvent()
    ev.ts_ns = kw.get("ts_ns", 5_000_000_000)
    ev.pid, ev.tid, ev.uid = 100, 101, 1000
    ev.family = family
    ev.sport, ev.dport = 40000, 8080
    ev.direction = kw.get("direction", ConnDirection.CONN_CONNECT)
    ev.outcome = kw.get("outcome", ConnOutcome.CONN_OUTCOME_FAILED)
    ctypes.memmove(ev.saddr, saddr, len(saddr))
    ctypes.memmove(ev.daddr, daddr, len(daddr))
    ev.comm = b"wrk"
    return bytes(ev)


def test_decode_ipv4_event() -> None:
    raw = _event(socket.AF_INET, socket.inet_aton("10.200.1.2"), socket.inet_aton("10.200.1.1"))
    conn = decode(raw, Clock(offset=1000.0))
    assert conn.timestamp == pytest.approx(1005.0)
    assert (conn.family, conn.saddr, conn.daddr) == (4, "10.200.1.2", "10.200.1.1")
    assert (conn.sport, conn.dport, conn.pid, conn.tid, conn.uid) == (40000, 8080, 100, 101, 1000)
    assert (conn.comm, conn.direction, conn.outcome) == ("wrk", "connect", "failed")


def test_decode_ipv6_accept_event() -> None:
    raw = _event(
        socket.AF_INET6,
        socket.inet_pton(socket.AF_INET6, "fd00::2"),
        socket.inet_pton(socket.AF_INET6, "fd00::1"),
        direction=ConnDirection.CONN_ACCEPT,
        outcome=ConnOutcome.CONN_OUTCOME_ESTABLISHED,
    )
    conn = decode(raw, Clock(offset=0.0))
    assert (conn.family, conn.saddr, conn.daddr) == (6, "fd00::2", "fd00::1")
    assert (conn.direction, conn.outcome) == ("accept", "established")


def test_decode_reports_ipv4_mapped_peers_as_ipv4() -> None:
    mapped = socket.inet_pton(socket.AF_INET6, "::ffff:10.200.1.2")
    raw = _event(socket.AF_INET6, mapped, socket.inet_pton(socket.AF_INET6, "::ffff:10.200.1.1"))
    conn = decode(raw, Clock(offset=0.0))
    assert (conn.family, conn.saddr, conn.daddr) == (4, "10.200.1.2", "10.200.1.1")


def test_decode_rejects_short_records() -> None:
    with pytest.raises(ValueError, match="short conn_event"):
        decode(b"\0" * 10)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pid": -1}, "pid must be >= 0"),
        ({"ports": (0,)}, "port 0 out of range"),
        ({"ports": (70000,)}, "port 70000 out of range"),
        ({"ports": tuple(range(1, 10))}, "at most 8 ports"),
        ({"comm": ""}, "comm must be 1..15 bytes"),
        ({"comm": "a" * 16}, "comm must be 1..15 bytes"),
    ],
)
def test_filter_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TraceFilter(**kwargs)  # type: ignore[arg-type]


def test_filter_accepts_the_limits() -> None:
    f = TraceFilter(pid=1, ports=tuple(range(1, 9)), comm="a" * 15, accept=True)
    assert len(f.ports) == 8


def _http_event(kind: int, direction: int, data: bytes = b"", ts_ns: int = 1_000_000_000) -> bytes:
    ev = HttpEvent(ts_ns=ts_ns, conn_id=7, pid=42, tid=43, len=len(data), copied=len(data),
                   family=socket.AF_INET, sport=8080, dport=55146, kind=kind, dir=direction,
                   source=HttpDataSource.HTTP_SRC_SYSCALL, comm=b"server")  # fmt: skip
    ev.saddr[:4] = socket.inet_aton("10.0.0.1")
    ev.daddr[:4] = socket.inet_aton("10.0.0.2")
    return bytes(ev) + data


def test_http_events_are_decoded_with_the_generated_layout() -> None:
    """A request read and a response written on one connection make one server-side record."""
    tracer = HttpTracer()
    tracer._clock = Clock(offset=0.0)
    records: list[HttpRecord] = []
    tracer._callback = records.append
    recv, send = int(HttpDataDir.HTTP_DIR_RECV), int(HttpDataDir.HTTP_DIR_SEND)
    data = int(HttpEventKind.HTTP_EV_DATA)
    tracer._on_event(_http_event(data, recv, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"))
    tracer._on_event(_http_event(data, send, b"HTTP/1.1 204 No Content\r\n\r\n", ts_ns=1_002_000_000))
    tracer._on_event(_http_event(int(HttpEventKind.HTTP_EV_CLOSE), recv, ts_ns=1_003_000_000))
    assert [
        (r.direction, r.method, r.path, r.status, r.latency_ms, r.comm, r.local, r.remote) for r in records
    ] == [("server", "GET", "/x", 204, 2.0, "server", "10.0.0.1:8080", "10.0.0.2:55146")]
    assert tracer.events == 3 and not tracer._conns
