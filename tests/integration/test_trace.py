"""Integration tests of ``sentinel-ebpf trace`` and ``sentinel_ebpf.tracing.tcp.ConnTracer``.

Real clients (curl, a Python client) in a client namespace connect to real servers (python -m http.server,
nginx) in a server namespace. The tracer is host-wide, so every check looks only at events from this
test's pids or its own 10.200.<n>.x / fd00:200:<n>:: addresses. Nothing sleeps to synchronise: the
tracer's readiness line, the clients' exit and a final "marker" connection (events leave the ring buffer
in order, so once the marker's line is out every earlier attempt's line is too) are the signals.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest

from tests.support.background import LineProcess, sentinel_cli
from tests.support.bpf_ids import BPFTOOL, bpf_fd_ids, bpftool_ids, left_after_exit
from tests.support.curl import curl_argv
from tests.support.netns import NetnsPair, Server
from tests.support.trace_format import CONNECTION_JSON_KEYS, ORIGINAL_HEADER

from .conftest import TCPCLIENT

pytestmark = pytest.mark.kernel("tcptrace")

READY = "sentinel-ebpf: tracing TCP connections"
TIME_RE = re.compile(r"^\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2}$")
REFUSED = 9  # nothing listens there in the server namespace: the SYN gets a RST
MARKER = 10  # refused too; used only as the last connection of a test


def ephemeral_range() -> range:
    lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    return range(int(lo), int(hi) + 1)


def unmapped(addr: str) -> str:
    """An IPv4-mapped IPv6 address (a dual-stack socket's view of an IPv4 peer) as IPv4, else as is."""
    ip = ip_address(addr)
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped or ip)


def same_ip(a: str, b: str) -> bool:
    return ip_address(a) == ip_address(b)


LINE_RE = re.compile(
    r"^(?P<time>\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2}) (?P<comm>.{16}) (?P<saddr>\S+) +"
    r"(?P<sport>\d+) +-> (?P<daddr>\S+) +(?P<dport>\d+)$"
)


def parse_line(line: str) -> tuple[str, str, str, int, str, int]:
    """time, comm, saddr, sport, daddr, dport of a text line (comm is a fixed 16-column field)."""
    m = LINE_RE.match(line)
    assert m, f"not a trace line: {line!r}"
    return (m["time"], m["comm"].rstrip(), m["saddr"], int(m["sport"]), m["daddr"], int(m["dport"]))


# ---------------------------------------------------------------------------------------------- the CLI
@dataclass
class Trace:
    """A running ``sentinel-ebpf trace``."""

    lp: LineProcess
    pair: NetnsPair
    json: bool
    started: float

    @property
    def pid(self) -> int:
        return self.lp.pid

    def ours(self, saddr: str, daddr: str) -> bool:
        mine = {self.pair.client_ip, self.pair.server_ip, self.pair.client_ip6, self.pair.server_ip6}
        return unmapped(saddr) in mine or unmapped(daddr) in mine

    def events(self) -> list[dict[str, Any]]:
        """JSON events of this test's addresses (every stdout line must be a JSON object)."""
        out = []
        for line in list(self.lp.stdout):
            event = json.loads(line)
            assert set(event) == CONNECTION_JSON_KEYS, line
            if self.ours(event["saddr"], event["daddr"]):
                out.append(event)
        return out

    def lines(self) -> list[str]:
        """Text lines (after the header) of this test's addresses."""
        out = []
        for line in list(self.lp.stdout)[1:]:
            _, _, saddr, _, daddr, _ = parse_line(line)
            if self.ours(saddr, daddr):
                out.append(line)
        return out

    def wait_event(
        self, match: Callable[[dict[str, Any]], bool], what: str, timeout: float = 15
    ) -> dict[str, Any]:
        return self.lp.wait_until(lambda: next((e for e in self.events() if match(e)), None), timeout, what)

    def wait_line(self, match: Callable[[str], bool], what: str, timeout: float = 15) -> str:
        return self.lp.wait_until(lambda: next((ln for ln in self.lines() if match(ln)), None), timeout, what)

    def wait_marker(self, marker: Curl) -> None:
        """Wait for the marker connection's output: everything resolved before it has been printed too."""
        if self.json:
            self.wait_event(lambda e: e["pid"] == marker.pid, f"marker event (curl pid {marker.pid})")
        else:
            self.wait_line(
                lambda ln: parse_line(ln)[1] == "curl" and parse_line(ln)[5] == MARKER, "marker line"
            )


@pytest.fixture
def trace(netns_pair: NetnsPair, background: Callable[..., LineProcess]) -> Callable[..., Trace]:
    def start(*args: str, wait_ready: bool = True) -> Trace:
        started = time.monotonic()
        lp = background([*sentinel_cli(), "trace", *args])
        t = Trace(lp, netns_pair, "--json" in args, started)
        if wait_ready:
            lp.wait_stderr(READY, timeout=30)
        return t

    return start


# ------------------------------------------------------------------------------------------- the clients
@dataclass
class Curl:
    pid: int
    exit: int
    local_ip: str
    local_port: int
    http_code: str
    t_start: float
    t_end: float
    stderr: str


def in_client(pair: NetnsPair, *argv: str) -> tuple[subprocess.Popen[str], str, str]:
    """``argv`` run to its end in the client namespace: the process (its pid is the one the tracer sees:
    ``ip netns exec`` execs it), its stdout and its stderr."""
    proc = pair.popen(
        pair.client,
        *argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=30)
    return proc, out, err


def curl(pair: NetnsPair, host: str, port: int, expect_exit: int | None = 0) -> Curl:
    """One curl from the client namespace; pid is curl's own (``ip netns exec`` execs it)."""
    url = f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"
    t_start = time.time()
    proc, out, err = in_client(
        pair, *curl_argv("-o", "/dev/null", "-w", "%{local_ip}|%{local_port}|%{http_code}", url)
    )
    t_end = time.time()
    local_ip, local_port, code = out.strip().split("|")
    result = Curl(proc.pid, proc.returncode, local_ip, int(local_port or 0), code, t_start, t_end, err)
    if expect_exit is not None:
        assert result.exit == expect_exit, f"curl {url}: {result}"
    return result


def client(
    pair: NetnsPair, host: str, port: int, bind: str | None = None, timeout: float | None = None
) -> dict[str, Any]:
    """One connect() by tcpclient.py in the client namespace, and what its socket reported."""
    argv = [
        sys.executable,
        str(TCPCLIENT),
        host,
        str(port),
        *(["--bind", bind] if bind else []),
        *(["--timeout", str(timeout)] if timeout else []),
    ]
    proc, out, err = in_client(pair, *argv)
    assert proc.returncode == 0, err
    result: dict[str, Any] = json.loads(out)
    assert result["pid"] == proc.pid
    return result


class InteractiveClient:
    """tcpclient.py --serve: a pid known before it connects (for -p filters)."""

    def __init__(self, pair: NetnsPair) -> None:
        self.proc = pair.popen(
            pair.client,
            sys.executable,
            str(TCPCLIENT),
            "--serve",
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        ready = json.loads(self._line())
        assert ready["pid"] == self.proc.pid
        self.pid: int = ready["pid"]
        self.comm: str = ready["comm"]

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # the client answers at once; connect() has a 10 s timeout
        if not line:
            raise AssertionError(f"tcpclient.py ended: {self.proc.stderr.read() if self.proc.stderr else ''}")
        return line

    def connect(self, host: str, port: int) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{host} {port}\n")
        self.proc.stdin.flush()
        result: dict[str, Any] = json.loads(self._line())
        return result


def check_timestamp(ts: float, t_start: float, t_end: float, slack: float = 1.0) -> None:
    assert t_start - slack <= ts <= t_end + slack, (ts, t_start, t_end)


def text_time(line: str) -> float:
    return datetime.strptime(line[:19], "%Y/%m/%d %H:%M:%S").timestamp()


# ------------------------------------------------------------------------------------------------ tests
def test_curl_connections_text_and_json(
    netns_pair: NetnsPair, http_server: Server, nginx_server: Server, trace: Callable[..., Trace]
) -> None:
    """curl to http.server, nginx and a refused port (IPv4 and IPv6): one line each, right fields."""
    pair = netns_pair
    text, js = trace(), trace("--json")
    header = text.lp.wait_until(lambda: text.lp.stdout[0] if text.lp.stdout else None, 10, "header")
    assert TIME_RE.match(header[:19]) and header[19:] == " " + ORIGINAL_HEADER, header

    targets: list[tuple[str, int, int]] = [
        (pair.server_ip, 8000, 0),
        (pair.server_ip, 8080, 0),
        (pair.server_ip, REFUSED, 7),
    ]
    targets += [(pair.server_ip6, 8000, 0), (pair.server_ip6, 8080, 0), (pair.server_ip6, REFUSED, 7)]
    runs = [(host, port, curl(pair, host, port, expect_exit=code)) for host, port, code in targets]
    marker = curl(pair, pair.server_ip, MARKER, expect_exit=7)
    js.wait_marker(marker)
    text.wait_marker(marker)

    events, lines = js.events(), text.lines()
    for host, port, c in runs:
        src = pair.client_ip6 if ":" in host else pair.client_ip
        failed = port == REFUSED
        if not failed:
            assert c.http_code == "200" and same_ip(c.local_ip, src), c
        mine = [e for e in events if e["pid"] == c.pid]
        assert len(mine) == 1, (host, port, c, events)
        e = mine[0]
        assert e["comm"] == "curl" and e["tid"] == c.pid and e["uid"] == 0, e
        assert e["family"] == (6 if ":" in host else 4), e
        assert (e["saddr"], e["daddr"], e["dport"]) == (src, host, port), e
        assert e["direction"] == "connect", e
        assert e["outcome"] == ("failed" if failed else "established"), e
        if failed:  # curl does not say which port a refused attempt used
            assert e["sport"] in ephemeral_range(), e
        else:
            assert e["sport"] == c.local_port, (e, c)
        check_timestamp(e["timestamp"], c.t_start, c.t_end)

        # the same connection, once, in the text format (fixed columns, the time connect() ran)
        expected = f"{'curl':<16} {src:<15} {e['sport']:<6} -> {host:<15} {port}"
        same = [ln for ln in lines if ln[20:] == expected]
        assert len(same) == 1, (expected, lines)
        assert TIME_RE.match(same[0][:19]), same[0]
        check_timestamp(text_time(same[0]), math.floor(c.t_start), c.t_end)

    # nothing else from this test's addresses: one event per attempt plus the marker
    assert len(events) == len(runs) + 1, events
    assert len(lines) == len(runs) + 1, lines


@pytest.mark.parametrize("flavor", ["btf", "raw"])
def test_events_match_client_sockets(netns_pair: NetnsPair, http_server: Server, flavor: str) -> None:
    """ConnTracer (both hook flavours) against what a Python client's sockets report, IPv4 and IPv6."""
    from sentinel_ebpf.tracing.tcp import Connection, ConnTracer, TraceFilter

    pair = netns_pair
    families = [(4, pair.server_ip, pair.client_ip), (6, pair.server_ip6, pair.client_ip6)]

    got: list[Connection] = []
    results: list[dict[str, Any]] = []
    with ConnTracer(TraceFilter(ports=(8000, REFUSED)), flavor=flavor) as tracer:
        assert tracer.flavor == flavor
        for _, server, src in families:
            results += [
                client(pair, server, 8000),
                client(pair, server, REFUSED),
                client(pair, server, REFUSED, bind=src),
                client(pair, server, 8000, bind=src),
            ]
        pids = {r["pid"] for r in results}
        deadline = time.monotonic() + 15
        while {c.pid for c in got} & pids != pids:
            assert time.monotonic() < deadline, f"events missing: {results} {got}"
            tracer.poll(got.append, 100)
        tracer.drain(got.append)
        assert tracer.new_lost() == 0

    for r in results:
        mine = [c for c in got if c.pid == r["pid"]]
        assert len(mine) == 1, (r, mine)
        c = mine[0]
        family = r["family"]
        server, src = (pair.server_ip6, pair.client_ip6) if family == 6 else (pair.server_ip, pair.client_ip)
        assert (c.tid, c.uid, c.comm, c.family) == (r["tid"], r["uid"], r["comm"], family), (c, r)
        assert c.direction == "connect"
        assert c.outcome == ("established" if r["ok"] else "failed"), (c, r)
        assert r["ok"] == (r["port"] == 8000), r
        # the source port is exactly the one the socket had
        assert c.sport == r["sockname"][1] != 0, (c, r)
        # source address: what getsockname() says; after a failed connect() Linux resets an unbound
        # socket's address to the wildcard, then the attempt's address is the route's source
        sock_addr = r["sockname"][0]
        if ip_address(sock_addr).is_unspecified:
            assert not r["ok"], r
            assert same_ip(c.saddr, r["route_src"]) and same_ip(c.saddr, src), (c, r)
        else:
            assert same_ip(c.saddr, sock_addr) and same_ip(c.saddr, src), (c, r)
        if r["ok"]:
            assert same_ip(c.daddr, r["peername"][0]) and c.dport == r["peername"][1], (c, r)
        assert same_ip(c.daddr, server) and c.dport == r["port"], (c, r)
        check_timestamp(c.timestamp, r["t_start"], r["t_end"], slack=0.5)
        # the line format of the same event
        assert c.line()[20:] == f"{c.comm:<16} {c.saddr:<15} {c.sport:<6} -> {c.daddr:<15} {c.dport}"


def test_attempt_closed_before_established(netns_pair: NetnsPair, trace: Callable[..., Trace]) -> None:
    """A connect() that times out (no host answers) and is closed in SYN_SENT: one "failed" event."""
    pair = netns_pair
    silent = f"10.200.{pair.subnet}.3"  # on the veth's subnet, nobody has it: ARP gets no answer
    t = trace("--json", "-P", "8000")
    r = client(pair, silent, 8000, timeout=0.3)
    assert not r["ok"] and "timed out" in r["error"], r
    e = t.wait_event(lambda e: e["pid"] == r["pid"], "the timed-out attempt")
    assert (e["outcome"], e["saddr"], e["sport"], e["daddr"], e["dport"]) == (
        "failed",
        pair.client_ip,
        r["sockname"][1],
        silent,
        8000,
    ), (e, r)
    assert r["sockname"][0] == pair.client_ip  # read while the socket was still in SYN_SENT
    check_timestamp(e["timestamp"], r["t_start"], r["t_end"], slack=0.5)


def test_port_filter(
    netns_pair: NetnsPair, http_server: Server, nginx_server: Server, trace: Callable[..., Trace]
) -> None:
    pair = netns_pair
    t = trace("--json", "-P", "8080", "-P", str(REFUSED))
    skipped = curl(pair, pair.server_ip, 8000)
    refused = curl(pair, pair.server_ip, REFUSED, expect_exit=7)
    last = curl(pair, pair.server_ip, 8080)
    t.wait_event(lambda e: e["pid"] == last.pid, "the port 8080 connection")
    got = {e["pid"]: e["dport"] for e in t.events()}
    assert got == {refused.pid: REFUSED, last.pid: 8080}, (skipped.pid, t.events())


def test_pid_filter(netns_pair: NetnsPair, http_server: Server, trace: Callable[..., Trace]) -> None:
    pair = netns_pair
    cl = InteractiveClient(pair)
    t = trace("--json", "-p", str(cl.pid))
    other = curl(pair, pair.server_ip, 8000)
    ok = cl.connect(pair.server_ip, 8000)
    refused = cl.connect(pair.server_ip, REFUSED)
    assert ok["ok"] and not refused["ok"]
    t.wait_event(lambda e: e["dport"] == REFUSED, "the client's refused connection")
    events = t.events()
    assert all(e["pid"] == cl.pid for e in events), (other.pid, events)
    assert [(e["dport"], e["sport"], e["outcome"]) for e in events] == [
        (8000, ok["sockname"][1], "established"),
        (REFUSED, refused["sockname"][1], "failed"),
    ]


def test_comm_filter(netns_pair: NetnsPair, http_server: Server, trace: Callable[..., Trace]) -> None:
    pair = netns_pair
    t = trace("--comm", "curl")
    py = client(pair, pair.server_ip, 8000)
    c = curl(pair, pair.server_ip, 8000)
    t.wait_line(lambda ln: parse_line(ln)[3] == c.local_port, "the curl line")
    lines = t.lines()
    assert [parse_line(ln)[1:4] for ln in lines] == [("curl", pair.client_ip, c.local_port)], (py, lines)


def test_count_exits_after_n_lines(
    netns_pair: NetnsPair, http_server: Server, trace: Callable[..., Trace]
) -> None:
    pair = netns_pair
    cl = InteractiveClient(pair)  # -p keeps other traffic on the machine out of the count
    t = trace("-c", "2", "-p", str(cl.pid))
    first = cl.connect(pair.server_ip, 8000)
    t.wait_line(lambda ln: parse_line(ln)[3] == first["sockname"][1], "the first line")
    assert t.lp.proc.poll() is None, "exited after 1 line with -c 2"
    second = cl.connect(pair.server_ip, REFUSED)
    assert t.lp.wait_exit(15) == 0, t.lp.describe()
    assert len(t.lp.stdout) == 3 and t.lp.stdout[0].endswith(ORIGINAL_HEADER), t.lp.describe()
    assert [parse_line(ln)[3] for ln in t.lp.stdout[1:]] == [first["sockname"][1], second["sockname"][1]]


def test_accept_shows_server_side(
    netns_pair: NetnsPair, http_server: Server, nginx_server: Server, trace: Callable[..., Trace]
) -> None:
    """--accept: the server's accept(), with the server's pid; -P filters accepts on the local port."""
    pair = netns_pair
    t = trace("--json", "--accept", "-P", "8000")
    server_comm = Path(f"/proc/{http_server.pid}/comm").read_text().strip()
    hosts = [(pair.server_ip, pair.client_ip, 4), (pair.server_ip6, pair.client_ip6, 6)]
    for server, src, family in hosts:
        excluded = curl(pair, server, 8080)  # nginx: port not selected, neither side shows
        c = curl(pair, server, 8000)
        acc = t.wait_event(
            lambda e, c=c: e["direction"] == "accept" and e["dport"] == c.local_port,
            f"accept of curl port {c.local_port}",
        )
        assert acc["pid"] == http_server.pid and acc["tid"] == http_server.pid, acc
        assert acc["comm"] == server_comm and acc["uid"] == 0, acc
        # http.server listens on [::] (dual stack): an IPv4 client's accepted socket is AF_INET6 with
        # IPv4-mapped addresses, which the tracer reports as the IPv4 addresses they stand for
        assert acc["family"] == family, acc
        assert acc["saddr"] == server and acc["daddr"] == src, acc
        assert (unmapped(acc["saddr"]), acc["sport"], unmapped(acc["daddr"])) == (server, 8000, src), acc
        assert acc["outcome"] == "established", acc
        conn = [e for e in t.events() if e["direction"] == "connect" and e["pid"] == c.pid]
        assert len(conn) == 1 and conn[0]["sport"] == c.local_port, t.events()
        assert not [e for e in t.events() if excluded.local_port in (e["sport"], e["dport"])], t.events()


def test_accept_with_pid_filter_nginx(
    netns_pair: NetnsPair, nginx_server: Server, trace: Callable[..., Trace]
) -> None:
    pair = netns_pair
    t = trace("--json", "--accept", "-p", str(nginx_server.pid))
    c = curl(pair, pair.server_ip, 8080)
    acc = t.wait_event(lambda e: e["dport"] == c.local_port, "nginx's accept")
    assert (acc["direction"], acc["pid"], acc["comm"]) == ("accept", nginx_server.pid, "nginx"), acc
    assert (acc["saddr"], acc["sport"], acc["daddr"]) == (pair.server_ip, 8080, pair.client_ip), acc
    # curl's connect preceded the accept in the ring buffer: had the filter let it through, it'd be here
    assert t.events() == [acc]


# ------------------------------------------------------------------------------------ nothing left behind
@pytest.fixture
def _bpftool() -> None:
    if not os.access(BPFTOOL, os.X_OK):
        pytest.skip(f"{BPFTOOL} not installed")


@pytest.mark.usefixtures("_bpftool")
@pytest.mark.parametrize("how", ["count", "sigint", "sigterm", "duration"])
def test_nothing_left_attached_after_exit(
    netns_pair: NetnsPair, http_server: Server, trace: Callable[..., Trace], how: str
) -> None:
    pair = netns_pair
    before = bpftool_ids()
    # --accept loads every program; -p keeps other traffic on the machine out of the count
    # -d counts from the start, before loading: long enough to look at the process once it is ready
    args = {"count": ["-c", "1", "-p", str(http_server.pid)], "duration": ["-d", "4"]}.get(how, [])
    t = trace("--accept", "--json", *args)
    owned = bpf_fd_ids(t.pid)
    assert len(owned["prog"]) >= 3 and len(owned["link"]) >= 3, owned  # state change, sys_enter, sys_exit
    during = bpftool_ids()
    for kind in owned:
        assert owned[kind] <= during[kind] - before[kind], (kind, owned, before, during)

    if how == "count":
        curl(pair, pair.server_ip, 8000)
    elif how in ("sigint", "sigterm"):
        t.lp.signal(signal.SIGINT if how == "sigint" else signal.SIGTERM)
    assert t.lp.wait_exit(20) == 0, t.lp.describe()
    assert not any("Traceback" in ln for ln in t.lp.stderr), t.lp.describe()
    if how == "duration":  # it exited by itself, on time
        assert 4 <= time.monotonic() - t.started < 4 + 15, time.monotonic() - t.started
    if how == "count":
        assert len(t.lp.stdout) == 1 and json.loads(t.lp.stdout[0])["direction"] == "accept", t.lp.describe()

    left = left_after_exit(owned)
    assert not any(left.values()), f"still loaded after trace exited ({how}): {left}"
