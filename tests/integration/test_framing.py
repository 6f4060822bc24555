"""A limit on GET /api holds however a client frames the request: nginx behind the daemon, raw clients.

Each blocked framing must get the kernel's 429 and never reach nginx (its access log); each allowed one
must be served. Split request lines are dropped until the client's stack sends them again merged.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sentinel_ebpf.enforce.loader import TC_HANDLE, TC_PRIORITY
from sentinel_ebpf.libbpf import TcAttachPoint, TcHook, program_maps
from sentinel_ebpf.libbpf.maps import Map
from sentinel_ebpf.netns import entered
from tests.support.curl import curl_argv
from tests.support.daemon_helpers import Daemon
from tests.support.netns import NetnsPair, Server
from tests.support.nginx import hello_nginx

pytestmark = pytest.mark.kernel
CLIENT = Path(__file__).with_name("framingclient.py")
RULES = """
resources:
  - {name: api, match: {protocol: http, port: 8080, method: GET, path: /api}}
  - {name: any, match: {protocol: http, port: 8080, path: /any}}
flowRules:
  - {resource: api, threshold: 0}
  - {resource: any, threshold: 0}
"""
TAIL = b" HTTP/1.1\r\nHost: svc\r\n\r\n"


@pytest.fixture(scope="module")
def guarded() -> Iterator[tuple[NetnsPair, Server, Daemon]]:
    with NetnsPair("fr") as pair:
        nginx = hello_nginx(pair, 8080)
        with Daemon(pair, RULES) as daemon:
            yield pair, nginx, daemon


def request(
    pair: NetnsPair,
    *pieces: bytes | tuple[str, bytes],
    delay_ms: float = 50,
    nodelay: bool = True,
    responses: int = 1,
) -> dict[str, object]:
    res = pair.run(pair.client, sys.executable, str(CLIENT), pair.server_ip, "8080", str(delay_ms),
                   "1" if nodelay else "0", str(responses), *map(repr, pieces), timeout=30)  # fmt: skip
    assert res.returncode == 0, res.stderr
    out: dict[str, object] = json.loads(res.stdout)
    return out


def served(nginx: Server) -> list[str]:
    log = nginx.workdir / "access.log"
    return log.read_text().splitlines() if log.exists() else []


@pytest.mark.parametrize(
    "pieces",
    [
        (b"GET /api" + TAIL,),
        (b"GET /a", b"pi" + TAIL),  # the request line split over two segments
        (b"GE", b"T /a", b"pi" + TAIL),  # and over three
        (b"\r\nGET /api" + TAIL,),  # an empty line first
        (b"GET  /api" + TAIL,),  # two spaces after the method
        (b"GET http://svc/api" + TAIL,),  # absolute-form
        (b"HEAD /api" + TAIL,),
        (b"GET /api HTTP/1.1\r\nHost: s", b"vc\r\n\r\n"),  # the head split after the request line
        (b"GET " + b"/." * 150 + b"/api" + TAIL,),  # long targets nginx reads as /api
        (b"GET /" + b"a" * 300 + b"/../api" + TAIL,),
        (b"GET /" + b"a" * 300, b"/../api" + TAIL),  # ... with the ".." in the next segment
        (b"GET ftp://svc/api" + TAIL,),  # absolute-form with any scheme: nginx serves the path
        (b"GET ft", b"p://svc/api" + TAIL),  # ... split inside the scheme
    ],
    ids=[
        "plain",
        "split2",
        "split3",
        "crlf",
        "spaces",
        "absolute",
        "head",
        "split-head",
        "long-dots",
        "long-dotdot",
        "long-split",
        "other-scheme",
        "split-scheme",
    ],
)
def test_a_blocked_request_is_refused_however_it_is_framed(
    guarded: tuple[NetnsPair, Server, Daemon], pieces: tuple[bytes, ...]
) -> None:
    assert_refused_once(guarded, "api", pieces)


def assert_refused_once(
    guarded: tuple[NetnsPair, Server, Daemon], resource: str, pieces: tuple[bytes, ...]
) -> None:
    """The kernel's 429, nginx never saw the request, and it was judged (blocked) exactly once."""
    pair, nginx, daemon = guarded
    before = len(served(nginx))
    blocked_before = daemon.stats()["resources"][resource]["block"]
    answer = request(pair, *pieces)
    assert answer["status"] == 429, answer
    assert len(served(nginx)) == before, "nginx saw the request"
    assert daemon.stats()["resources"][resource]["block"] == blocked_before + 1


def test_a_path_too_long_to_normalise_resets_the_connection(
    guarded: tuple[NetnsPair, Server, Daemon],
) -> None:
    """1,204 bytes of "/." then "/api": nginx serves /api, and what it matches cannot be told from the
    1,024 bytes read; the connection is reset, nginx never sees the request."""
    pair, nginx, daemon = guarded
    before, unread = len(served(nginx)), daemon.stats()["ports"]["8080"]["target_unread"]
    answer = request(pair, b"GET " + b"/." * 600 + b"/api" + TAIL)
    assert answer["status"] == 0 and answer["line"] == "", answer  # no answer: the connection was reset
    assert len(served(nginx)) == before, "nginx saw the request"
    assert daemon.stats()["ports"]["8080"]["target_unread"] == unread + 1


@pytest.mark.parametrize(
    "pieces",
    [
        (b"PURGE /any" + TAIL,),
        (b"PROPF", b"IND /any" + TAIL),
        (b"VERSION-CONTROL /any" + TAIL,),
        (b"PRI /any" + TAIL,),  # was passed as HTTP/2's preface; nginx serves it as a request
        (b"ABCDEFGHIJKLMNOP /any" + TAIL,),  # 16 letters and more: nginx has no limit
        (b"_X /any" + TAIL,),  # a method may start with '_' or '-'
    ],
    ids=["purge", "propfind-split", "15-letters", "pri", "16-letters", "underscore"],
)
def test_a_request_with_a_method_nginx_accepts_is_judged(
    guarded: tuple[NetnsPair, Server, Daemon], pieces: tuple[bytes, ...]
) -> None:
    """nginx takes any method of upper-case letters, '-' and '_' (and a proxy passes it on): a resource
    that names no method limits them all."""
    assert_refused_once(guarded, "any", pieces)


@pytest.mark.parametrize("nodelay", [True, False], ids=["nodelay", "nagle"])
def test_a_split_allowed_request_is_served_once(
    guarded: tuple[NetnsPair, Server, Daemon], nodelay: bool
) -> None:
    pair, nginx, daemon = guarded
    before = len(served(nginx))
    answer = request(pair, b"GET /o", b"k" + TAIL, nodelay=nodelay)
    assert answer["status"] == 200, answer
    assert len(served(nginx)) == before + 1
    assert daemon.stats()["ports"]["8080"]["incomplete"] >= 1


OK = b"GET /ok" + TAIL
API = b"GET /api" + TAIL


@pytest.mark.parametrize(
    "first",
    [
        OK,  # pipelined behind an allowed request
        b"POST /ok HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\n\r\nhello",  # after a body
        b"POST /ok HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        # a bare LF after a chunk's data, which nginx takes: read as CRLF, the next size line was misread
        b"POST /ok HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\n1a\r\n"
        + b"x" * 12
        + b"fffffff\r\n"
        + b"y" * 5
        + b"\r\n0\r\n\r\n",
        b"_X /ok HTTP/1.1\r\nHost: svc\r\n\r\n",  # behind a method starting with '_'
    ],
    ids=["pipelined", "after-length-body", "after-chunked-body", "after-bare-lf-chunk", "after-underscore"],
)
def test_a_request_behind_another_in_one_segment_is_judged(
    guarded: tuple[NetnsPair, Server, Daemon], first: bytes
) -> None:
    """Both requests in one send() (one segment): the blocked one is judged where it starts and the
    segment cut before it; nginx serves the first; the client's stack sends the rest again, and the
    blocked request gets the 429 (judged once)."""
    pair, nginx, daemon = guarded
    before = len(served(nginx))
    blocked_before = daemon.stats()["resources"]["api"]["block"]
    cut_before = daemon.stats()["ports"]["8080"]["cut"]
    answer = request(pair, first + API, responses=2)
    assert answer["statuses"] == [200, 429], answer
    assert [line.split('"')[1].split()[1] for line in served(nginx)[before:]] == ["/ok"], "nginx saw /api"
    assert daemon.stats()["resources"]["api"]["block"] == blocked_before + 1
    assert daemon.stats()["ports"]["8080"]["cut"] == cut_before + 1


def test_admitted_requests_pipelined_in_one_segment_pass_together(
    guarded: tuple[NetnsPair, Server, Daemon],
) -> None:
    """Nine requests in one send() (the first and SE_PIPELINED_MAX more): each judged where it starts in
    the segment, which passes whole (no cut, no retransmission per request); nginx serves all nine. Two
    more come again in a segment of their own."""
    pair, nginx, daemon = guarded
    before = len(served(nginx))
    port_before = daemon.stats()["ports"]["8080"]
    answer = request(pair, OK * 9, responses=9)
    assert answer["statuses"] == [200] * 9, answer
    assert len(served(nginx)) == before + 9
    port = daemon.stats()["ports"]["8080"]
    assert port["pipelined"] - port_before["pipelined"] == 8
    assert (port["cut"], port["incomplete"]) == (port_before["cut"], port_before["incomplete"])
    answer = request(pair, OK * 11, responses=11)
    assert answer["statuses"] == [200] * 11, answer
    assert len(served(nginx)) == before + 20
    assert daemon.stats()["ports"]["8080"]["cut"] == port["cut"] + 1


def test_a_refused_request_among_pipelined_ones_gets_its_429_in_order(
    guarded: tuple[NetnsPair, Server, Daemon],
) -> None:
    """Admitted, refused, admitted in one segment: cut before the refused one, which comes again at a
    segment's start and gets its 429 in the connection's stream after the responses before it; the
    request behind it is then served on the same connection."""
    pair, nginx, daemon = guarded
    before = len(served(nginx))
    blocked_before = daemon.stats()["resources"]["api"]["block"]
    answer = request(pair, OK + OK + API + OK, responses=4)
    assert answer["statuses"] == [200, 200, 429, 200], answer
    assert [line.split('"')[1].split()[1] for line in served(nginx)[before:]] == ["/ok"] * 3
    assert daemon.stats()["resources"]["api"]["block"] == blocked_before + 1, "judged once"


def test_a_refused_upload_that_waits_for_100_continue_is_answered_at_once(
    guarded: tuple[NetnsPair, Server, Daemon],
) -> None:
    """curl sends `Expect: 100-continue` and holds the body back until the server's 100 (here up to 20 s):
    the refusal is answered at once (the closing way), not when the body comes."""
    pair, nginx, daemon = guarded
    before = len(served(nginx))
    closed_before = daemon.stats()["dataplane"].get("reply_closed", 0)
    res = pair.run(pair.client, *curl_argv("-o", "/dev/null", "-w", "%{http_code} %{time_total}",
                                           "--expect100-timeout", "20", "-H", "Expect: 100-continue",
                                           "--data-binary", "x" * 100, f"http://{pair.server_ip}:8080/any",
                                           max_time_s=30), timeout=40)  # fmt: skip
    status, seconds = res.stdout.split()
    assert status == "429", res.stdout + res.stderr
    assert float(seconds) < 10, "answered only when the body came"
    assert len(served(nginx)) == before
    assert daemon.stats()["dataplane"]["reply_closed"] == closed_before + 1


def test_a_body_that_looks_like_a_request_is_not_judged(guarded: tuple[NetnsPair, Server, Daemon]) -> None:
    pair, nginx, daemon = guarded
    before = len(served(nginx))
    blocked_before = daemon.stats()["resources"]["api"]["block"]
    head = b"POST /ok HTTP/1.1\r\nHost: svc\r\nContent-Length: %d\r\n\r\n" % len(API)
    answer = request(pair, head, API, responses=1)
    assert answer["statuses"] == [200], answer
    assert len(served(nginx)) == before + 1
    assert daemon.stats()["resources"]["api"]["block"] == blocked_before


@pytest.mark.parametrize(
    "pieces, responses",
    [
        ((b"GET /a", ("oob", b"X"), b"pi" + TAIL), 1),  # the stack would give nginx GET /api
        ((b"POST /ok HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\n\r\nhello", ("oob", b"X"), API), 2),
    ],
    ids=["in-the-target", "after-a-body"],
)
def test_a_byte_marked_urgent_reaches_nginx_as_judged(
    guarded: tuple[NetnsPair, Server, Daemon], pieces: tuple[bytes | tuple[str, bytes], ...], responses: int
) -> None:
    """A receiving stack takes a byte marked urgent (MSG_OOB) out of what the application reads: nginx
    would read `GET /api` where the data plane read `GET /aXpi` (or, after a body, `XGET /api`) and serve
    the blocked resource. The program clears the urgent pointer, so nginx reads the bytes as sent."""
    pair, nginx, daemon = guarded
    before = len(served(nginx))
    urgent_before = daemon.stats()["ports"]["8080"]["urgent"]
    answer = request(pair, *pieces, responses=responses)
    requests = [line.split('"')[1] for line in served(nginx)[before:]]
    assert requests and not [r for r in requests if r.startswith("GET /api ")], requests
    assert answer["statuses"] == [200] * responses, answer
    assert daemon.stats()["ports"]["8080"]["urgent"] > urgent_before


def evict_streams(pair: NetnsPair) -> None:
    """Empty the daemon's `streams` map, as 65,536 other connections sending data would (LRU eviction)."""
    ifindex = int(pair.run(pair.server, "cat", f"/sys/class/net/{pair.server_if}/ifindex", check=True).stdout)
    prog_id = TcHook(ifindex, pair.server).filter_prog_id(TcAttachPoint.INGRESS, TC_HANDLE, TC_PRIORITY)
    assert prog_id is not None
    fds = program_maps(prog_id)
    try:
        Map.of_fd(fds["streams"]).clear()
    finally:
        for fd in fds.values():
            os.close(fd)


def test_a_stream_evicted_in_the_middle_of_a_body_is_reset(fresh_netns_pair: NetnsPair) -> None:
    """A client evicts its own stream from the map in the middle of a 10-byte body; its next segment ends
    the body and carries a request for /api. Where that request starts is not known, so the connection
    is reset rather than passed (nginx would serve /api: the bytes are not a request line where they
    start)."""
    pair = fresh_netns_pair
    nginx = hello_nginx(pair, 8080)
    with Daemon(pair, RULES) as daemon:
        with entered(pair.client):
            conn = socket.create_connection((pair.server_ip, 8080), timeout=10)
        with conn:
            conn.sendall(b"POST /up HTTP/1.1\r\nHost: svc\r\nContent-Length: 10\r\n\r\n")
            assert conn.recv(4096).startswith(b"HTTP/1.1 200"), "nginx answers before the body"
            evict_streams(pair)
            conn.sendall(b"0123456789" + API)
            answers = b""
            try:
                while chunk := conn.recv(4096):
                    answers += chunk
            except (ConnectionResetError, TimeoutError):
                pass
            assert not [line for line in served(nginx) if '"GET /api ' in line], served(nginx)
            assert answers.count(b"HTTP/1.1 ") == 0, answers
            assert daemon.stats()["ports"]["8080"]["lost_reset"] == 1
