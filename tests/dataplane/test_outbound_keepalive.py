"""A blocked outbound HTTP request answered in the local caller's stream, its connection kept: the caller's
socket gets the kernel's 503 (no FIN, no Connection: close) in the dependency's place, the dependency never
sees the request (the request's skb goes on as a bare ACK in its numbering: dropped, it would fail the
caller's transmission), and from then on both directions of that connection are translated. Crafted
segments through BPF_PROG_TEST_RUN: the caller's at TC egress, the dependency's at TC ingress; the test
run's device is lo, so the reply the program sends is read there (AF_PACKET).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from test_inbound_keepalive import TS, dp_count

from sentinel_ebpf.enforce import InboundDataplane
from sentinel_ebpf.enforce.writer import OUT_REJECT
from tests.support.inbound import rules
from tests.support.packets import (
    ACK,
    FIN,
    PSH,
    RST,
    SYN,
    TC_ACT_OK,
    TC_ACT_SHOT,
    Parsed,
    parse_frame,
    tcp_frame,
)

pytestmark = pytest.mark.kernel("inbound")

LOCAL, REMOTE, SPORT = "10.9.9.1", "10.9.9.9", 45000
C_ISN, S_ISN = 5000, 9000
RULES = """
resources:
  - {name: limited, match: {direction: outbound, protocol: http, host: 10.9.9.9/32, port: 8000, path: /limited}}
  - {name: counted, match: {direction: outbound, protocol: http, host: 10.9.9.9/32, port: 8000, path: /counted}}
flowRules:
  - {resource: limited, threshold: 0}
"""
REPLY = OUT_REJECT.response_bytes(keep_alive=True)
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: dep\r\n\r\n".encode()


def caller(
    dp: InboundDataplane, payload: bytes, seq: int, ack: int, flags: int = PSH | ACK
) -> tuple[int, bytes]:
    frame = tcp_frame(LOCAL, REMOTE, SPORT, 8000, flags=flags, seq=seq, ack=ack, payload=payload, options=TS)
    res = dp.obj.program("tc_egress").test_run(frame)
    return res.retval, res.data_out


def dependency(
    dp: InboundDataplane, payload: bytes, seq: int, ack: int, flags: int = PSH | ACK
) -> tuple[int, bytes]:
    frame = tcp_frame(REMOTE, LOCAL, 8000, SPORT, flags=flags, seq=seq, ack=ack, payload=payload, options=TS)
    res = dp.obj.program("tc_ingress").test_run(frame)
    return res.retval, res.data_out


PACKET_OUTGOING = 4


@pytest.fixture
def lo_sent() -> Iterator[socket.socket]:
    """What goes out of lo (AF_PACKET): the replies the program sends while it runs on lo."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    s.bind(("lo", 0))
    s.setblocking(False)
    try:
        yield s
    finally:
        s.close()


def replies(sock: socket.socket) -> list[Parsed]:
    """The frames sent out of lo to the caller from the dependency since the last call."""
    out = []
    while True:
        try:
            frame, addr = sock.recvfrom(65535)
        except BlockingIOError:
            return out
        if addr[2] == PACKET_OUTGOING and frame[12:14] == b"\x08\x00":
            seg = parse_frame(frame)
            if (seg.src, seg.sport, seg.dport) == (REMOTE, 8000, SPORT):
                out.append(seg)


def refuse(dp: InboundDataplane, sock: socket.socket, seq: int, ack: int, s_seq: int, s_ack: int) -> None:
    """The caller's blocked request at `seq` (acknowledging `ack`) is answered in its stream (acking it
    whole); its skb goes on as a bare ACK at the dependency's `s_seq`, acknowledging `s_ack`."""
    replies(sock)
    retval, out = caller(dp, get("/limited"), seq, ack)
    bare = parse_frame(out)
    assert retval == TC_ACT_OK and (bare.src, bare.dst, bare.sport, bare.dport) == (
        LOCAL,
        REMOTE,
        SPORT,
        8000,
    )
    assert (bare.flags, bare.seq, bare.ack, bare.payload) == (ACK, s_seq, s_ack, b""), (
        "the dependency must not see the request"
    )
    assert bare.ip_csum_ok and bare.tcp_csum_ok
    (reply,) = replies(sock)
    assert reply.dst == LOCAL
    assert (reply.flags, reply.seq, reply.ack) == (PSH | ACK, ack, seq + len(get("/limited"))), "no FIN"
    assert reply.payload == REPLY and b"Connection: close" not in reply.payload
    assert reply.ip_csum_ok and reply.tcp_csum_ok


def test_a_blocked_request_gets_its_503_in_the_stream_and_the_connection_goes_on(
    dp: InboundDataplane, lo_sent: socket.socket
) -> None:
    dp.apply(dp.compile(rules(RULES)))
    first = get("/first")
    assert caller(dp, first, C_ISN, S_ISN)[0] == TC_ACT_OK
    assert dependency(dp, OK, S_ISN, C_ISN + len(first))[0] == TC_ACT_OK
    c, s = C_ISN + len(first), S_ISN + len(OK)  # the caller's numbering
    refuse(dp, lo_sent, c, s, c, s)
    assert (dp_count(dp, "reply_kept"), dp_count(dp, "rst_sent")) == (1, 0)
    dropped, put_in = len(get("/limited")), len(REPLY)
    # the caller's next request, after the 503, reaches the dependency in its numbering
    nxt = get("/next")
    retval, out = caller(dp, nxt, c + dropped, s + put_in)
    seg = parse_frame(out)
    assert retval == TC_ACT_OK and (seg.seq, seg.ack, seg.payload) == (c, s, nxt)
    assert seg.tcp_csum_ok
    # a bare ACK of the caller's, in the dependency's place
    seg = parse_frame(caller(dp, b"", c + dropped + len(nxt), s + put_in, flags=ACK)[1])
    assert (seg.seq, seg.ack) == (c + len(nxt), s)
    # the dependency's answer reaches the caller in its numbering
    retval, out = dependency(dp, OK, s, c + len(nxt))
    seg = parse_frame(out)
    assert retval == TC_ACT_OK and (seg.seq, seg.ack, seg.payload) == (s + put_in, c + dropped + len(nxt), OK)
    assert seg.tcp_csum_ok
    # a second refusal on the same connection adds up
    c2, s2 = c + dropped + len(nxt), s + put_in + len(OK)
    refuse(dp, lo_sent, c2, s2, c + len(nxt), s + len(OK))
    retval, out = caller(dp, nxt, c2 + dropped, s2 + put_in)
    seg = parse_frame(out)
    assert (seg.seq, seg.ack) == (c + len(nxt), s + len(OK))
    assert dp_count(dp, "reply_kept") == 2
    st = {r.name: (r.passed, r.blocked) for r in dp.resource_stats()}
    assert st["limited"] == (0, 2)


def test_a_lost_reply_is_delivered_again(dp: InboundDataplane, lo_sent: socket.socket) -> None:
    dp.apply(dp.compile(rules(RULES)))
    refuse(dp, lo_sent, C_ISN, S_ISN, C_ISN, S_ISN)
    # the caller sends the request again: it lacks the 503, which comes again; the copy goes nowhere
    retval, _ = caller(dp, get("/limited"), C_ISN, S_ISN)
    (reply,) = replies(lo_sent)
    assert retval == TC_ACT_SHOT
    assert (reply.seq, reply.ack, reply.payload) == (S_ISN, C_ISN + len(get("/limited")), REPLY)
    retval, _ = caller(dp, get("/limited"), C_ISN, S_ISN + len(REPLY))  # a stale copy: it has the 503
    assert retval == TC_ACT_SHOT and replies(lo_sent) == []
    st = {r.name: (r.passed, r.blocked) for r in dp.resource_stats()}
    assert st["limited"] == (0, 1), "the copies are not judged again"


def test_a_new_connection_on_the_same_ports_is_not_translated(
    dp: InboundDataplane, lo_sent: socket.socket
) -> None:
    dp.apply(dp.compile(rules(RULES)))
    refuse(dp, lo_sent, C_ISN, S_ISN, C_ISN, S_ISN)
    # the new connection's numbers lie past the old one's corrections: translated, they would move
    isn = C_ISN + 100_000
    syn = tcp_frame(LOCAL, REMOTE, SPORT, 8000, flags=SYN, seq=isn, ack=0)
    assert dp.obj.program("tc_egress").test_run(syn).data_out == syn
    frame = tcp_frame(
        LOCAL,
        REMOTE,
        SPORT,
        8000,
        flags=PSH | ACK,
        seq=isn + 1,
        ack=S_ISN + 100_000,
        payload=get("/x"),
        options=TS,
    )
    assert dp.obj.program("tc_egress").test_run(frame).data_out == frame


@pytest.mark.parametrize(
    "case",
    ["body goes on", "pipelined behind", "asks to close", "owed a response"],
)
def test_a_reply_that_keeps_the_connection_is_only_for_a_whole_request_with_nothing_owed(
    dp: InboundDataplane, case: str
) -> None:
    """Else the closing way, as before: the 503 with Connection: close to the caller, a RST to the
    dependency (its rest would reach the dependency as a request of its own; a response it owes would
    come after the 503)."""
    dp.apply(dp.compile(rules(RULES)))
    seq = C_ISN
    payload = {
        "body goes on": b"POST /limited HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc",
        "pipelined behind": get("/limited") + get("/next"),
        "asks to close": b"GET /limited HTTP/1.1\r\nConnection: close\r\n\r\n",
        "owed a response": get("/limited"),
    }[case]
    if case == "owed a response":
        counted = get("/counted")
        assert caller(dp, counted, C_ISN, S_ISN)[0] == TC_ACT_OK  # in flight: its response is owed
        seq += len(counted)
    retval, out = caller(dp, payload, seq, S_ISN)
    assert retval == TC_ACT_OK and parse_frame(out).flags & RST, "the dependency gets a reset"
    assert (dp_count(dp, "reply_kept"), dp_count(dp, "reply_closed"), dp_count(dp, "reply_sent")) == (0, 1, 1)
    # nothing translated afterwards
    frame = tcp_frame(REMOTE, LOCAL, 8000, SPORT, flags=ACK | FIN, seq=S_ISN, ack=seq, options=TS)
    assert dp.obj.program("tc_ingress").test_run(frame).data_out == frame


def test_a_closing_refusal_after_a_kept_one_resets_the_dependency_in_its_numbering(
    dp: InboundDataplane, lo_sent: socket.socket
) -> None:
    dp.apply(dp.compile(rules(RULES)))
    refuse(dp, lo_sent, C_ISN, S_ISN, C_ISN, S_ISN)
    c, s = C_ISN + len(get("/limited")), S_ISN + len(REPLY)  # the caller's numbering, after the 503
    retval, out = caller(dp, get("/limited") + get("/next"), c, s)  # pipelined: the closing way
    rst = parse_frame(out)
    assert retval == TC_ACT_OK and (rst.src, rst.dst) == (LOCAL, REMOTE)
    assert (rst.flags & RST, rst.seq, rst.ack) == (RST, C_ISN, S_ISN), "the dependency's own numbering"
    assert rst.tcp_csum_ok
    (reply,) = replies(lo_sent)
    assert (reply.seq, reply.ack, reply.flags & FIN) == (s, c + len(get("/limited") + get("/next")), FIN)
    assert b"Connection: close" in reply.payload
