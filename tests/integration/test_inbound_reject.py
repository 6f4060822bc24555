"""Blocked HTTP requests and connections, end to end: real curl in one namespace, a real server in
another behind the inbound TC programs attached to the server's veth."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.guarded import KEEPALIVE_CLIENT, Guarded
from tests.support.netns import NetnsPair

pytestmark = pytest.mark.kernel
PORT = 8080

RULES = """
resources:
  - {name: ok, match: {protocol: http, port: 8080, path: /ok}}
  - {name: limited, match: {protocol: http, port: 8080, path: /limited}}
flowRules:
  - {resource: limited, threshold: 0}
reject:
  http: {status: 429, body: "Too Many Requests\\n", headers: {Retry-After: "1"}}
"""


@pytest.fixture
def guarded(fresh_netns_pair: NetnsPair) -> Iterator[Guarded]:
    g = Guarded(fresh_netns_pair, RULES)
    try:
        yield g
    finally:
        g.stop()


def curl(pair: NetnsPair, *urls: str, v6: bool = False) -> subprocess.CompletedProcess[str]:
    host = f"[{pair.server_ip6}]" if v6 else pair.server_ip
    args = ["curl", "-sS", "--max-time", "5", "-i"]
    for url in urls:
        args.append(f"http://{host}:{PORT}{url}")
    return pair.run(pair.client, *args, timeout=15)


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_blocked_request_gets_429_and_server_never_sees_it(guarded: Guarded, v6: bool) -> None:
    pair = guarded.pair
    ok = curl(pair, "/ok", v6=v6)
    assert ok.returncode == 0 and "200 OK" in ok.stdout and "served GET /ok" in ok.stdout
    blocked = curl(pair, "/limited", v6=v6)
    assert blocked.returncode == 0, blocked.stderr
    head, _, body = blocked.stdout.partition("\n\n")  # text mode: CRLF reads as LF
    assert head.startswith("HTTP/1.1 429 Too Many Requests")
    assert "Retry-After: 1" in head and "Connection: close" not in head, "the connection is kept"
    assert body == "Too Many Requests\n", repr(blocked.stdout)
    events = guarded.stop(connections=2)
    conns = [e for e in events if isinstance(e, dict) and "requests" in e]
    assert {"requests": ["GET /ok HTTP/1.1"], "reset": False} in conns
    assert {"requests": [], "reset": False} in conns, "the server never sees the request, nor a reset"
    final = next(e for e in events if isinstance(e, dict) and "counters" in e)
    counters = final["counters"]
    assert (counters["reply_sent"], counters["reply_kept"], counters["reply_failed"]) == (1, 1, 0)
    assert final["stats"] == {"ok": [1, 0], "limited": [0, 1]}


def test_keep_alive_connection_gets_200_then_429(guarded: Guarded) -> None:
    """A refusal keeps the keep-alive connection: curl's three requests go on one connection, the
    server serves the two allowed ones on it and never sees the refused one, nor a reset."""
    res = curl(guarded.pair, "/ok", "/limited", "/ok")
    assert res.returncode == 0, res.stderr
    statuses = [line.split(" ", 2)[1] for line in res.stdout.splitlines() if line.startswith("HTTP/1.1 ")]
    assert statuses == ["200", "429", "200"], res.stdout
    events = guarded.stop(connections=1)
    conns = [e for e in events if isinstance(e, dict) and "requests" in e]
    assert conns == [{"requests": ["GET /ok HTTP/1.1", "GET /ok HTTP/1.1"], "reset": False}]


def test_many_blocked_requests_leave_no_stuck_sockets(guarded: Guarded) -> None:
    pair = guarded.pair
    for _ in range(30):
        res = curl(pair, "/limited")
        assert res.returncode == 0 and " 429 " in res.stdout.split("\n", 1)[0], res.stdout + res.stderr
    ss = pair.run(pair.server, "ss", "-tanH", f"sport = :{PORT}").stdout
    assert "ESTAB" not in ss and "CLOSE-WAIT" not in ss, ss
    final = next(e for e in guarded.stop() if isinstance(e, dict) and "counters" in e)
    assert (final["counters"]["reply_sent"], final["counters"]["reply_kept"]) == (30, 30)


def test_http_rst_mode(fresh_netns_pair: NetnsPair) -> None:
    pair = fresh_netns_pair
    rst_rules = RULES.replace(
        'http: {status: 429, body: "Too Many Requests\\n", headers: {Retry-After: "1"}}', "http: {mode: rst}"
    )
    assert "mode: rst" in rst_rules
    g = Guarded(pair, rst_rules)
    try:
        res = curl(pair, "/limited")
        assert res.returncode == 56, (res.returncode, res.stderr)  # connection reset by peer
        assert curl(pair, "/ok").returncode == 0
    finally:
        events = g.stop()
    final = next(e for e in events if isinstance(e, dict) and "counters" in e)
    assert final["counters"]["rst_sent"] == 1


def test_tcp_rule_refuses_connections(fresh_netns_pair: NetnsPair) -> None:
    pair = fresh_netns_pair
    g = Guarded(
        pair,
        """
resources:
  - {name: conns, match: {protocol: tcp, port: 8080}}
flowRules:
  - {resource: conns, threshold: 2}
""",
    )
    try:
        codes = [curl(pair, "/").returncode for _ in range(5)]
    finally:
        events = g.stop()
    assert codes[:2] == [0, 0] and codes[2:] == [7, 7, 7], codes  # 7: connection refused (RST to SYN)
    final = next(e for e in events if isinstance(e, dict) and "counters" in e)
    assert final["stats"] == {"conns": [2, 3]}


def kept_connection_run(pair: NetnsPair, script: str, loopback: bool = False) -> tuple[Any, dict[str, int]]:
    """Run a client script (argv[1]: the server's address) against the guarded server, which serves
    GET /ok and has /limited refused; the server must have served three GET /ok on one connection and seen
    no reset. The script's JSON output and the data plane's final counters."""
    guarded = Guarded(pair, RULES, iface="lo" if loopback else None)
    ns, host = (pair.server, "127.0.0.1") if loopback else (pair.client, pair.server_ip)
    try:
        res = pair.run(ns, sys.executable, "-c", script, host, timeout=60)
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout)
        events = guarded.stop(connections=1)
    finally:
        guarded.stop()
    conns = [e for e in events if isinstance(e, dict) and "requests" in e]
    assert conns == [{"requests": ["GET /ok HTTP/1.1"] * 3, "reset": False}]
    final = next(e for e in events if isinstance(e, dict) and "counters" in e)
    return out, final["counters"]


@pytest.mark.parametrize("loopback", [False, True], ids=["veth", "lo"])
def test_python_http_client_keeps_its_connection_through_refusals(
    fresh_netns_pair: NetnsPair, loopback: bool
) -> None:
    """Python's http.client on one keep-alive connection: each refused request gets the 429 and the
    same connection (the same local port) carries the next request; the server serves the allowed ones
    on that one connection and never sees a refused one, nor a reset. On loopback too, where every
    packet passes both programs (egress, then ingress)."""
    answers, counters = kept_connection_run(fresh_netns_pair, KEEPALIVE_CLIENT, loopback)
    assert [status for status, _, _ in answers] == [200, 429, 200, 429, 429, 200]
    assert len({port for _, port, _ in answers}) == 1, f"the client reconnected: {answers}"
    assert all(length == len("Too Many Requests\n") for status, _, length in answers if status == 429)
    assert (counters["reply_kept"], counters["reply_closed"]) == (3, 0)


REQUESTS_CLIENT = """
import json, sys
import requests
session = requests.Session()
out = []
for path in ["/ok", "/limited", "/ok", "/limited", "/limited", "/ok"]:
    resp = session.get(f"http://{sys.argv[1]}:8080{path}", timeout=5)
    out.append([resp.status_code, len(resp.content)])
pools = session.get_adapter("http://").poolmanager.pools
print(json.dumps({"answers": out, "connections": sum(pools[key].num_connections for key in pools.keys())}))
"""


def test_python_requests_keeps_its_connection_through_refusals(fresh_netns_pair: NetnsPair) -> None:
    """A requests Session (urllib3's pool) on a keep-alive connection: every refused request gets the
    429, the pool never opens a second connection, and the server serves the allowed ones on one."""
    doc, _ = kept_connection_run(fresh_netns_pair, REQUESTS_CLIENT)
    assert [status for status, _ in doc["answers"]] == [200, 429, 200, 429, 429, 200]
    assert all(length == len("Too Many Requests\n") for status, length in doc["answers"] if status == 429)
    assert doc["connections"] == 1, f"the client reconnected: {doc}"


UPLOAD_CLIENT = """
import json, sys
import requests
session = requests.Session()
out = []
for method, path, data in [("GET", "/ok", None), ("POST", "/limited", b"u" * 262144), ("GET", "/ok", None),
                           ("POST", "/limited", iter([b"c" * 70000] * 3)), ("GET", "/ok", None)]:
    resp = session.request(method, f"http://{sys.argv[1]}:8080{path}", data=data, timeout=10)
    out.append(resp.status_code)
pools = session.get_adapter("http://").poolmanager.pools
print(json.dumps({"answers": out, "connections": sum(pools[key].num_connections for key in pools.keys())}))
"""


@pytest.mark.parametrize("loopback", [False, True], ids=["veth", "lo"])
def test_a_refused_upload_is_taken_in_and_answered_on_the_kept_connection(
    fresh_netns_pair: NetnsPair, loopback: bool
) -> None:
    """A refused POST whose body goes on over many segments (256 KiB with Content-Length, then 210 KB
    chunked; TSO skbs of 64 KiB on the veth, 64 KiB segments on lo): the kernel acknowledges its segments
    in the server's place and puts the 429 in where it ends; the client's next request goes on on the
    same connection and the server never sees the uploads nor a reset."""
    doc, counters = kept_connection_run(fresh_netns_pair, UPLOAD_CLIENT, loopback)
    assert doc["answers"] == [200, 429, 200, 429, 200]
    assert doc["connections"] == 1, f"the client reconnected: {doc}"
    assert (counters["reply_kept"], counters["reply_closed"]) == (2, 0)
