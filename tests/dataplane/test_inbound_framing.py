"""Requests framed the way a hostile client would frame them: each is judged, or held back until it can be.

The limit in these tests blocks every request to /api, so a request that is judged never goes on
unchanged; one that slipped past the judgment would.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sentinel_ebpf.enforce import InboundDataplane
from sentinel_ebpf.rules.target import normalize_target
from tests.support.inbound import BLOCK_API, CLIENT, SERVER, rules
from tests.support.packets import (
    ACK,
    FIN,
    PSH,
    RST,
    SYN,
    SYN_OPTIONS,
    TC_ACT_OK,
    TC_ACT_REDIRECT,
    TC_ACT_SHOT,
    parse_frame,
    tcp_frame,
)

pytestmark = pytest.mark.kernel("inbound")

TAIL = b" HTTP/1.1\r\nHost: svc\r\n\r\n"


def send(dp: InboundDataplane, payload: bytes, *, flags: int = PSH | ACK, sport: int = 40000,
         seq: int = 1000, dport: int = 8080, src: str = CLIENT, dst: str = SERVER) -> tuple[int, bytes, bytes]:  # fmt: skip
    frame = tcp_frame(src, dst, sport, dport, flags=flags, seq=seq, payload=payload,
                      options=SYN_OPTIONS if flags & SYN else b"")  # fmt: skip
    res = dp.obj.program("tc_ingress").test_run(frame)
    return res.retval, res.data_out, frame


def passed_unjudged(dp: InboundDataplane, payload: bytes, **kw: object) -> bool:
    retval, out, frame = send(dp, payload, **kw)  # type: ignore[arg-type]
    return retval == TC_ACT_OK and out == frame


@pytest.mark.parametrize(
    "payload",
    [
        b"GET /api" + TAIL,
        b"\r\nGET /api" + TAIL,  # empty lines before the request line (servers skip them)
        b"\r\n\r\n\n\nGET /api" + TAIL,
        b"GET  /api" + TAIL,  # runs of spaces after the method
        b"GET       /api/x" + TAIL,
        b"GET http://svc/api" + TAIL,  # absolute-form
        b"GET HTTP://svc:8080/api/orders" + TAIL,
        b"GET https://svc/api?x=1" + TAIL,
        b"GET ftp://svc/api" + TAIL,  # nginx takes the path whatever the scheme
        b"GET x://svc/api" + TAIL,
        b"GET h2c+x.y-z://svc/api" + TAIL,
        b"GET " + b"s" * 31 + b"://svc/api" + TAIL,  # the longest scheme read
        b"HEAD /api" + TAIL,  # HEAD counts against a GET resource
        # targets servers normalise before they match them
        b"GET /%61pi" + TAIL,
        b"GET //api" + TAIL,
        b"GET ///api//x" + TAIL,
        b"GET /./api" + TAIL,
        b"GET /x/../api" + TAIL,
        b"GET /x/y/../../api?q=1" + TAIL,
        b"GET /../../api" + TAIL,  # ".." at the root stays at the root
        b"GET /%2e%2e/%2E/api" + TAIL,
        b"GET /" + b"a" * 70 + b"/../api" + TAIL,  # the ".." is beyond the first 64 bytes
        b"GET http://svc//x/../api" + TAIL,
        b"GET /other%3F/../api" + TAIL,  # a decoded '?' is a path character to nginx: /api
        b"GET /api#/../other" + TAIL,  # '#' ends the target for nginx: /api
        # long targets: the whole path is normalised (a ".." anywhere can reach back), the query is not read
        b"GET " + b"/." * 150 + b"/api" + TAIL,
        b"GET /" + b"a" * 300 + b"/../api" + TAIL,
        b"GET " + b"/" * 900 + b"api" + TAIL,
        b"GET /" + b"%2F" * 300 + b"api" + TAIL,
        b"GET " + b"/x/.." * 150 + b"/api" + TAIL,
        b"GET /api?" + b"q" * 1500 + TAIL,
    ],
)
def test_each_framing_of_a_blocked_request_is_judged(dp: InboundDataplane, payload: bytes) -> None:
    dp.apply(dp.compile(rules(BLOCK_API)))
    assert not passed_unjudged(dp, payload)
    st = dp.resource_stats()[0]
    assert (st.passed, st.blocked) == (0, 1)


@pytest.mark.parametrize(
    "payload",
    [
        b"GET /other" + TAIL,
        b"GET http://svc/other" + TAIL,
        b"POST /api" + TAIL,
        b"\r\nGET /ap" + b"x" + TAIL,
        b"GET /api/../other" + TAIL,  # "/other" once normalised
        b"GET /%41PI" + TAIL,  # "/API": paths are case-sensitive
        b"GET /a%00pi" + TAIL,  # control characters stay encoded
        b"GET /x?q=/../api" + TAIL,  # the query is not a path
        b"GET /x#/../../api" + TAIL,  # nginx: /x
        b"GET /api%3F/../other" + TAIL,  # nginx: /other
    ],
)
def test_other_requests_still_pass(dp: InboundDataplane, payload: bytes) -> None:
    dp.apply(dp.compile(rules(BLOCK_API)))
    assert passed_unjudged(dp, payload)
    assert dp.resource_stats()[0].blocked == 0


ANY_METHOD_API = BLOCK_API.replace("method: GET, ", "")


@pytest.mark.parametrize(
    "payload",
    [
        b"PURGE /api" + TAIL,  # methods servers accept and pass on (nginx: upper case, '-', '_')
        b"MKCOL /api" + TAIL,
        b"X /api" + TAIL,
        b"ABCDEFG /api" + TAIL,  # 7 characters: the first word holds them and the space
        b"PROPFIND /api" + TAIL,  # 8: read on past the first word
        b"VERSION-CONTROL /api" + TAIL,  # 15: one run of leading()
        b"SIXTEEN-LETTERSX /api" + TAIL,  # 16 and more: read on
        b"A" * 47 + b" /api" + TAIL,  # the longest read
        b"_X /api" + TAIL,  # nginx's method characters include '_' and '-', also first
        b"-X /api" + TAIL,
        b"M_SEARCH  http://svc/api" + TAIL,
        b"\r\nPURGE /api" + TAIL,
        b"PRI /api" + TAIL,  # nginx serves it; only "PRI * HTTP/2.0" starts HTTP/2 (it was passed as that)
    ],
)
def test_an_unknown_method_is_judged_by_resources_of_any_method(dp: InboundDataplane, payload: bytes) -> None:
    dp.apply(dp.compile(rules(ANY_METHOD_API)))
    assert not passed_unjudged(dp, payload)
    st = dp.resource_stats()[0]
    assert (st.passed, st.blocked) == (0, 1)


@pytest.mark.parametrize(
    ("payload", "counter"),
    [
        (b"purge /api" + TAIL, "not_request_line"),  # lower case: not a method to nginx (Go differs)
        (b"GET ftp:/svc/api" + TAIL, "not_request_line"),  # not "scheme://": nginx answers 400
        (b"GET 1x://svc/api" + TAIL, "not_request_line"),  # a scheme starts with a letter
        (b"PUR GE /api" + TAIL, "not_request_line"),  # "PUR" and a target "GE"
        (b"PURGE" + b"\r\n" + TAIL, "not_request_line"),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "http2"),  # HTTP/2 with prior knowledge: not judged
    ],
)
def test_what_is_not_an_unknown_method_passes(dp: InboundDataplane, payload: bytes, counter: str) -> None:
    dp.apply(dp.compile(rules(ANY_METHOD_API)))
    assert passed_unjudged(dp, payload)
    assert dp.resource_stats()[0].blocked == 0
    assert dp.port_counters(8080)[counter] == 1


def test_an_unknown_method_is_not_a_named_one(dp: InboundDataplane) -> None:
    dp.apply(dp.compile(rules(BLOCK_API)))  # method: GET
    assert passed_unjudged(dp, b"PURGE /api" + TAIL)
    assert passed_unjudged(dp, b"GETX /api" + TAIL)
    assert dp.resource_stats()[0].blocked == 0


@pytest.mark.parametrize("first", [b"GET ft", b"GET ftp:", b"GET ftp:/"])
def test_an_absolute_form_target_split_in_its_scheme_is_held_back(dp: InboundDataplane, first: bytes) -> None:
    dp.apply(dp.compile(rules(BLOCK_API)))
    assert send(dp, first)[0] == TC_ACT_SHOT  # incomplete: the client sends it again with what follows
    assert not passed_unjudged(dp, b"GET ftp://svc/api" + TAIL)


def test_a_long_unknown_method_split_at_its_end_is_held_back(dp: InboundDataplane) -> None:
    dp.apply(dp.compile(rules(ANY_METHOD_API)))
    retval, _, _ = send(dp, b"PROPFIND")
    assert retval == TC_ACT_SHOT  # incomplete: the client sends it again with what follows
    assert not passed_unjudged(dp, b"PROPFIND /api" + TAIL)


def test_absolute_form_without_a_path_is_the_root(dp: InboundDataplane) -> None:
    dp.apply(dp.compile(rules(BLOCK_API.replace("path: /api", "path: /"))))
    assert not passed_unjudged(dp, b"GET http://svc" + TAIL)
    assert dp.resource_stats()[0].blocked == 1


def test_a_resource_naming_head_takes_head_requests(dp: InboundDataplane) -> None:
    dp.apply(
        dp.compile(
            rules("""
resources:
  - {name: api, match: {protocol: http, port: 8080, method: GET, path: /api}}
  - {name: head, match: {protocol: http, port: 8080, method: HEAD, path: /api}}
flowRules:
  - {resource: api, threshold: 0}
  - {resource: head, threshold: 100}
""")
        )
    )
    assert passed_unjudged(dp, b"HEAD /api" + TAIL)
    by_name = {s.name: s for s in dp.resource_stats()}
    assert (by_name["head"].passed, by_name["api"].blocked) == (1, 0)


@pytest.mark.parametrize(
    "payload",
    [
        b"GET /ap", b"GET ", b"GE", b"GET /api", b"GET http://svc", b"GET  ", b"\r\n" * 17 + b"GET /api" + TAIL,
        b"GET /" + b"a" * 100,  # a long path that goes on in the next segment (a "/../api" there reaches back)
        b"GET " + b"/." * 100,
    ],
)  # fmt: skip
def test_an_incomplete_request_line_is_dropped_to_come_again(dp: InboundDataplane, payload: bytes) -> None:
    dp.apply(dp.compile(rules(BLOCK_API)))
    retval, _, _ = send(dp, payload)
    assert retval == TC_ACT_SHOT
    assert dp.port_counters(8080)["incomplete"] == 1
    assert dp.resource_stats()[0].blocked == 0  # not judged yet: judged once, when it comes whole


UNREAD = {
    "too-long": b"GET " + b"/." * 600 + b"/api" + TAIL,  # a 1,204-byte path: past the 1,024 normalised
    "too-deep": b"GET "
    + b"/a" * 130
    + b"/.." * 130
    + b"/api"
    + TAIL,  # 130 segments: past the 128 remembered
    "long-method": b"M" * 48 + b" /api" + TAIL,  # past the 47 characters of a method read
    "long-scheme": b"GET " + b"s" * 32 + b"://svc/api" + TAIL,  # past the 31 of a scheme read
}


@pytest.mark.parametrize("payload", UNREAD.values(), ids=UNREAD.keys())
def test_a_path_that_cannot_be_normalised_whole_resets_the_connection(
    live: InboundDataplane, conn: tuple[socket.socket, socket.socket], payload: bytes
) -> None:
    """What nginx matches (/api) is not known without the whole path: judging the part read would pass
    the request (it was judged on "/" and served as /api); fail closed, counted."""
    at, nxt, sport = on_conn(live, conn)
    retval, out, _ = send(live, payload, seq=nxt, **at)
    assert retval == TC_ACT_OK and parse_frame(out).flags & RST, "passed: the server would serve /api"
    assert live.port_counters(sport)["target_unread"] == 1


@pytest.mark.parametrize("payload", UNREAD.values(), ids=UNREAD.keys())
def test_reject_incomplete_pass_lets_an_unread_path_through_counted(
    dp: InboundDataplane, payload: bytes
) -> None:
    dp.apply(dp.compile(rules(BLOCK_API + "reject: {incomplete: pass}\n")))
    assert passed_unjudged(dp, payload)
    assert dp.port_counters(8080)["target_unread"] == 1


def test_reject_incomplete_pass_lets_it_through_counted(dp: InboundDataplane) -> None:
    dp.apply(dp.compile(rules(BLOCK_API + "reject: {incomplete: pass}\n")))
    assert passed_unjudged(dp, b"GET /ap")
    assert dp.port_counters(8080)["incomplete_passed"] == 1


def test_a_segment_of_empty_lines_passes(dp: InboundDataplane) -> None:
    dp.apply(dp.compile(rules(BLOCK_API)))
    assert passed_unjudged(dp, b"\r\n")
    assert dp.port_counters(8080)["incomplete"] == 0


def test_a_request_on_a_fin_segment_is_judged(dp: InboundDataplane) -> None:
    dp.apply(dp.compile(rules(BLOCK_API)))
    assert not passed_unjudged(dp, b"GET /api" + TAIL, flags=FIN | PSH | ACK)
    assert dp.resource_stats()[0].blocked == 1


def test_a_request_in_a_syn_is_judged_and_refused_with_a_reset(dp: InboundDataplane) -> None:
    """TCP Fast Open: the request rides on the SYN; a blocked one resets the attempt."""
    dp.apply(dp.compile(rules(BLOCK_API)))
    payload = b"GET /api" + TAIL
    retval, out, _ = send(dp, payload, flags=SYN, seq=7000)
    assert retval == TC_ACT_REDIRECT
    reply = parse_frame(out)
    assert (reply.flags, reply.ack, reply.payload) == (RST | ACK, 7001 + len(payload), b"")
    assert dp.resource_stats()[0].blocked == 1


# --- the stream position, from the local TCP stack's own sockets ---------------------------------------

TCP_REPAIR, TCP_REPAIR_QUEUE, TCP_QUEUE_SEQ, TCP_RECV_QUEUE = 19, 20, 21, 1


@pytest.fixture(scope="module")
def live() -> Iterator[InboundDataplane]:
    """The programs as the daemon loads them: segments judged only at the local socket's rcv_nxt."""
    with InboundDataplane(test_clock=True) as d:
        yield d


@pytest.fixture
def conn() -> Iterator[tuple[socket.socket, socket.socket]]:
    """An established connection on 127.0.0.1 in this namespace: (client, server side)."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen()
    cli = socket.create_connection(lsock.getsockname())
    srv, _ = lsock.accept()
    lsock.close()
    try:
        yield cli, srv
    finally:
        cli.close()
        srv.close()


def rcv_nxt(srv: socket.socket) -> int:
    """The server socket's next expected sequence number (read in TCP repair mode, then left)."""
    srv.setsockopt(socket.SOL_TCP, TCP_REPAIR, 1)
    try:
        srv.setsockopt(socket.SOL_TCP, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)
        value: int = struct.unpack("I", srv.getsockopt(socket.SOL_TCP, TCP_QUEUE_SEQ, 4))[0]
        return value
    finally:
        srv.setsockopt(socket.SOL_TCP, TCP_REPAIR, 0)


def on_conn(
    live: InboundDataplane, conn: tuple[socket.socket, socket.socket]
) -> tuple[dict[str, Any], int, int]:
    """/api blocked on the connection's server port; (its client's frame fields, rcv_nxt, the port)."""
    cli, srv = conn
    (cip, cport), (sip, sport) = cli.getsockname(), srv.getsockname()
    live.clear()
    live.apply(live.compile(rules(BLOCK_API.replace("8080", str(sport)))))
    return {"src": cip, "dst": sip, "sport": cport, "dport": sport}, rcv_nxt(srv), sport


def test_only_the_next_bytes_of_a_real_connection_are_judged(
    live: InboundDataplane, conn: tuple[socket.socket, socket.socket]
) -> None:
    at, nxt, sport = on_conn(live, conn)
    req = b"GET /api" + TAIL

    # already received (a retransmission): not judged again
    assert passed_unjudged(live, req, seq=nxt - len(req), **at)
    # beyond a gap: dropped, judged when it comes in order
    assert send(live, req, seq=nxt + 100, **at)[0] == TC_ACT_SHOT
    # a connection this host does not have (spoofed): not judged, spends nobody's quota
    assert passed_unjudged(live, req, seq=nxt, **{**at, "sport": at["sport"] ^ 1})
    counters = live.port_counters(sport)
    assert (counters["retransmit"], counters["out_of_order"], counters["no_socket"]) == (1, 1, 1)
    assert live.resource_stats()[0].blocked == 0
    # at rcv_nxt: judged
    assert not passed_unjudged(live, req, seq=nxt, **at)
    assert live.resource_stats()[0].blocked == 1


def test_new_bytes_after_old_ones_in_one_segment_are_judged(
    live: InboundDataplane, conn: tuple[socket.socket, socket.socket]
) -> None:
    """A segment that repeats received bytes and carries a new request after them."""
    at, nxt, sport = on_conn(live, conn)
    retval, out, _ = send(live, b"older" + b"GET /api" + TAIL, seq=nxt - 5, **at)
    assert live.resource_stats()[0].blocked == 1
    # no reply can be placed in that stream: the connection is reset, the server's RST at its rcv_nxt
    rst = parse_frame(out)
    assert retval == TC_ACT_OK and rst.flags & RST and (rst.dport, rst.seq) == (sport, nxt)


def test_a_refused_request_is_answered_again_only_while_its_connection_exists(
    live: InboundDataplane, conn: tuple[socket.socket, socket.socket]
) -> None:
    """A copy of a request refused in its stream is answered again (its reply was lost), but once the
    connection is gone a segment that guesses its ports and place is a spoofed one: no reply goes out."""
    at, nxt, sport = on_conn(live, conn)
    cli, srv = conn
    srv.setsockopt(socket.SOL_TCP, TCP_REPAIR, 1)
    try:
        srv.setsockopt(socket.SOL_TCP, TCP_REPAIR_QUEUE, 2)  # TCP_SEND_QUEUE
        snd_nxt = struct.unpack("I", srv.getsockopt(socket.SOL_TCP, TCP_QUEUE_SEQ, 4))[0]
    finally:
        srv.setsockopt(socket.SOL_TCP, TCP_REPAIR, 0)
    req = b"GET /api" + TAIL
    frame = tcp_frame(
        at["src"], at["dst"], at["sport"], sport, flags=PSH | ACK, seq=nxt, ack=snd_nxt, payload=req
    )
    ingress = live.obj.program("tc_ingress")
    kept = live.counters()["reply_kept"]
    assert ingress.test_run(frame).retval == TC_ACT_SHOT  # refused in the stream, kept
    assert ingress.test_run(frame).retval == TC_ACT_SHOT  # sent again: answered again
    assert live.counters()["reply_kept"] == kept + 2
    cli.close()
    srv.close()
    res = ingress.test_run(frame)
    # not answered (the segment is not rewritten into a reply) and, its bytes being the refused
    # request's, not passed on either
    assert (res.retval, res.data_out) == (TC_ACT_SHOT, frame)
    assert live.port_counters(sport)["no_socket"] == 1
    assert live.counters()["reply_kept"] == kept + 2
    assert live.resource_stats()[0].blocked == 1


def test_an_incomplete_request_line_resets_the_connection_after_the_tries(
    live: InboundDataplane, conn: tuple[socket.socket, socket.socket]
) -> None:
    at, nxt, sport = on_conn(live, conn)
    verdicts = [send(live, b"GET /ap", seq=nxt, **at)[0] for _ in range(6)]
    assert verdicts == [TC_ACT_SHOT] * 6
    retval, out, _ = send(live, b"GET /ap", seq=nxt, **at)
    assert retval == TC_ACT_OK and parse_frame(out).flags & RST  # reset, both ways
    counters = live.port_counters(sport)
    assert (counters["incomplete"], counters["incomplete_reset"]) == (7, 1)


def received_unfollowed(conn: tuple[socket.socket, socket.socket], data: bytes) -> None:
    """The server's socket takes `data` without the programs seeing it: as if the connection's stream
    state had been evicted from the map, or the connection were older than the rules."""
    cli, srv = conn
    cli.sendall(data)
    got = b""
    while len(got) < len(data):
        got += srv.recv(len(data) - len(got))


HEAD_10 = b"POST /up HTTP/1.1\r\nHost: svc\r\nContent-Length: 10\r\n\r\n"


def followed_then_evicted(
    live: InboundDataplane, conn: tuple[socket.socket, socket.socket], at: dict[str, Any], head: bytes
) -> int:
    """`head` passes the programs (its stream followed) and reaches the server's socket; then its stream
    state is evicted, as 65,536 other connections sending data would do. The socket's rcv_nxt."""
    assert passed_unjudged(live, head, seq=rcv_nxt(conn[1]), **at)
    received_unfollowed(conn, head)  # (a test run does not deliver: the socket takes the bytes itself)
    live.maps.streams.clear()
    return rcv_nxt(conn[1])


@pytest.mark.parametrize(
    "payload",
    [b"0123456789GET /api" + TAIL, b"GET /ok HTTP/1.1\r\n\r\n" + b"GET /api" + TAIL],
    ids=["body-end-then-request", "body-end-that-looks-like-a-request"],
)
def test_a_followed_stream_evicted_from_the_map_is_reset_whatever_it_starts_with(
    live: InboundDataplane, conn: tuple[socket.socket, socket.socket], payload: bytes
) -> None:
    """A client evicts its own stream from the map in the middle of a 10-byte body, then sends the body's
    end and a request in one segment: nothing knows where that request starts (the body's end may even
    look like a request). The connection was followed, its socket has received bytes, and there is no
    state: it is reset (fail-closed), counted."""
    at, _, sport = on_conn(live, conn)
    nxt = followed_then_evicted(live, conn, at, HEAD_10)
    retval, out, _ = send(live, payload, seq=nxt, **at)
    assert retval == TC_ACT_OK and parse_frame(out).flags & RST, "passed: the server would serve /api"
    counters = live.port_counters(sport)
    assert (counters["stream_lost"], counters["lost_reset"]) == (1, 1)


def test_a_connection_older_than_the_rules_is_read_from_a_request_start(
    live: InboundDataplane, conn: tuple[socket.socket, socket.socket]
) -> None:
    """Never followed (made before the rules were applied: a fresh start, not a resume), its socket has
    received bytes: not reset, its next segment is read as a request's start."""
    at, _, sport = on_conn(live, conn)
    received_unfollowed(conn, b"GET /ok HTTP/1.1\r\n\r\n")
    assert not passed_unjudged(live, b"GET /api" + TAIL, seq=rcv_nxt(conn[1]), **at)
    counters = live.port_counters(sport)
    assert (counters["stream_lost"], counters["lost_reset"]) == (1, 0)
    assert live.resource_stats()[0].blocked == 1


def test_a_new_connection_has_no_state_and_is_not_reset(
    live: InboundDataplane, conn: tuple[socket.socket, socket.socket]
) -> None:
    at, nxt, sport = on_conn(live, conn)
    payload = b"0123456789GET /api" + TAIL  # its first bytes: no request line (the server answers 400)
    assert passed_unjudged(live, payload, seq=nxt, **at)
    assert live.port_counters(sport)["lost_reset"] == 0


def test_an_evicted_stream_is_read_from_a_request_start_when_incomplete_passes(
    live: InboundDataplane, conn: tuple[socket.socket, socket.socket]
) -> None:
    at, _, sport = on_conn(live, conn)
    live.apply(live.compile(rules(BLOCK_API.replace("8080", str(sport)) + "reject: {incomplete: pass}\n")))
    nxt = followed_then_evicted(live, conn, at, b"GET /ok HTTP/1.1\r\n\r\n")
    assert not passed_unjudged(live, b"GET /api" + TAIL, seq=nxt, **at)  # read as a start
    counters = live.port_counters(sport)
    assert (counters["stream_lost"], counters["lost_reset"]) == (1, 0)
    assert live.resource_stats()[0].blocked == 1


# --- the kernel's normal form against the Python one, on generated targets ----------------------------

_SEGMENT = st.one_of(
    st.sampled_from(
        [
            *(
                ".",
                "..",
                "",
                "a",
                "b",
                "%62",
                "a%2Fb",
                "%61",
                "%2e",
                "%2E%2e",
                "%2F",
                "%25",
                "%zz",
                "%0a",
                "b.c",
            ),
            *("%3F", "a%3Fb", "#", "a#b", "%23"),  # a decoded '?' is a path character; a '#' ends the target
        ]
    ),
    st.text(alphabet="ab.%/2eE", min_size=1, max_size=4),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(segments=st.lists(_SEGMENT, min_size=1, max_size=12), query=st.sampled_from(["", "?q=/../a", "?%61"]))
def test_the_kernel_normalises_targets_as_the_rules_do(
    dp: InboundDataplane, segments: list[str], query: str
) -> None:
    """A limit on /a/b: blocked exactly when the normal form of the target starts with it."""
    target = "/" + "/".join(segments) + query
    dp.clear()
    dp.apply(dp.compile(rules(BLOCK_API.replace("/api", "/a/b"))))
    expected = normalize_target(target).startswith("/a/b")
    assert passed_unjudged(dp, f"GET {target}".encode() + TAIL) is not expected, normalize_target(target)


# --- deferred accept -----------------------------------------------------------------------------------


def test_deferred_accept_drops_only_the_bare_ack_of_a_pending_handshake(live: InboundDataplane) -> None:
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen()
    port = lsock.getsockname()[1]
    try:
        live.clear()
        live.apply(
            live.compile(rules(BLOCK_API.replace("8080", str(port)) + f"reject: {{deferAccept: [{port}]}}\n"))
        )
        # only the listener has this tuple: the ACK would complete a handshake
        assert (
            send(live, b"", flags=ACK, src="127.0.0.1", dst="127.0.0.1", sport=45678, dport=port)[0]
            == TC_ACT_SHOT
        )
        assert live.port_counters(port)["deferred_ack"] == 1
        # a connection that exists: its ACKs pass
        cli = socket.create_connection(("127.0.0.1", port))
        srv, _ = lsock.accept()
        try:
            cport = cli.getsockname()[1]
            assert passed_unjudged(
                live, b"", flags=ACK, src="127.0.0.1", dst="127.0.0.1", sport=cport, dport=port
            )
            assert live.port_counters(port)["deferred_ack"] == 1
        finally:
            cli.close()
            srv.close()
    finally:
        lsock.close()


def test_defer_accept_names_ports_with_http_resources() -> None:
    from sentinel_ebpf.enforce import CompileError, compile_inbound

    with pytest.raises(CompileError, match=r"reject\.deferAccept: port 9999 has no inbound HTTP resource"):
        compile_inbound(rules(BLOCK_API + "reject: {deferAccept: [8080, 9999]}\n"))


# --- a refused request sent again keeps its verdict -------------------------------------------------------

ONE_PER_SECOND = """
resources:
  - {name: api, match: {protocol: http, port: 8080, path: /api}}
flowRules:
  - {resource: api, threshold: 1}
"""
T0_NS = 1_578_416_556_900 * 1_000_000
REQUEST = b"GET /api" + TAIL


def test_a_dropped_request_sent_again_is_dropped_again_not_judged(dp: InboundDataplane) -> None:
    """`{mode: drop}`: the client's TCP sends the dropped request again, by then in a window that would
    admit it; it keeps the verdict it was given (dropped, not counted again) until its connection ends."""
    dp.apply(dp.compile(rules(ONE_PER_SECOND + "reject: {http: {mode: drop}}\n")))
    dp.set_clock_ns(T0_NS)
    assert passed_unjudged(dp, REQUEST, sport=40001, seq=1000)
    assert send(dp, REQUEST, sport=40002, seq=5000)[0] == TC_ACT_SHOT
    dp.set_clock_ns(T0_NS + 1_500_000_000)  # a new window: one request may pass
    assert send(dp, REQUEST, sport=40002, seq=5000)[0] == TC_ACT_SHOT
    assert send(dp, REQUEST + b"GET /api" + TAIL, sport=40002, seq=5000)[0] == TC_ACT_SHOT  # merged
    st = dp.resource_stats()[0]
    assert (st.passed, st.blocked) == (1, 1)
    assert dp.port_counters(8080)["refused_again"] == 2
    assert passed_unjudged(dp, REQUEST, sport=40003, seq=1000), "the window was open for other requests"
    # the client closes (curl gave up): its stack still sends the refused bytes, which stay refused
    assert send(dp, b"", flags=FIN | ACK, sport=40002, seq=5000 + len(REQUEST))[0] == TC_ACT_OK
    dp.set_clock_ns(T0_NS + 3_000_000_000)
    assert send(dp, REQUEST, flags=FIN | PSH | ACK, sport=40002, seq=5000)[0] == TC_ACT_SHOT
    # a reset ends the connection: its place is forgotten (a new connection on the same ports is judged)
    assert send(dp, b"", flags=RST | ACK, sport=40002, seq=5000)[0] == TC_ACT_OK
    assert passed_unjudged(dp, REQUEST, sport=40002, seq=5000)
    st = dp.resource_stats()[0]
    assert (st.passed, st.blocked) == (3, 1)
    assert dp.port_counters(8080)["refused_again"] == 3


def gso_ctx(segs: int) -> bytes:
    """A struct __sk_buff for BPF_PROG_TEST_RUN with gso_segs (offset 164) set: a GRO-merged skb."""
    ctx = bytearray(192)
    struct.pack_into("<I", ctx, 164, segs)
    return bytes(ctx)


def test_a_refused_request_in_a_merged_skb_is_answered_when_it_comes_again(dp: InboundDataplane) -> None:
    """No reply is built from a GRO-merged skb: it is dropped, and its retransmission gets the refusal
    (here a reset) without being judged again, even in a window that would admit it."""
    dp.apply(dp.compile(rules(ONE_PER_SECOND + "reject: {http: {mode: rst}}\n")))
    dp.set_clock_ns(T0_NS)
    assert passed_unjudged(dp, REQUEST, sport=40011, seq=1000)
    ingress = dp.obj.program("tc_ingress")
    merged = tcp_frame(CLIENT, SERVER, 40012, 8080, flags=PSH | ACK, seq=5000, payload=REQUEST)
    assert ingress.test_run(merged, ctx=gso_ctx(2)).retval == TC_ACT_SHOT
    dp.set_clock_ns(T0_NS + 1_500_000_000)
    retval, out, _ = send(dp, REQUEST, sport=40012, seq=5000)
    assert retval == TC_ACT_OK
    rst = parse_frame(out)
    assert (rst.flags & RST, rst.sport, rst.seq) == (RST, 40012, 5000)  # the server gets a RST instead
    st = dp.resource_stats()[0]
    assert (st.passed, st.blocked) == (1, 1)
    assert dp.port_counters(8080)["refused_again"] == 1
