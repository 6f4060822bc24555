"""A refused request answered in its connection's stream, the connection kept: the client gets the reply
(no FIN, no Connection: close), the server never sees the request, and from then on both directions of
the connection are translated (sequence numbers, acknowledgments, SACK blocks). Crafted segments, each
taken as the stream's next bytes (no socket lookup: the server is taken to owe nothing unless its
responses say otherwise).
"""

from __future__ import annotations

import struct

import pytest

from sentinel_ebpf.enforce import InboundDataplane
from tests.support.inbound import API, BLOCK_API, CLIENT, OTHER, SERVER, rules
from tests.support.packets import (
    ACK,
    FIN,
    PSH,
    RST,
    SYN,
    SYN_OPTIONS,
    TC_ACT_OK,
    TC_ACT_SHOT,
    parse_frame,
    tcp_frame,
)

pytestmark = pytest.mark.kernel("inbound")

REPLY = b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 18\r\n\r\nToo Many Requests\n"
C_ISN, S_ISN = 1000, 2000
TS = bytes.fromhex("0101080a") + struct.pack("!II", 7, 9)  # NOP NOP TS (what stacks send on data)


def sack(*edges: int) -> bytes:
    """NOP NOP SACK with the given edges, after the timestamps."""
    return (
        TS
        + bytes.fromhex("0101")
        + bytes([5, 2 + 4 * len(edges)])
        + b"".join(struct.pack("!I", e) for e in edges)
    )


def client(dp: InboundDataplane, payload: bytes, seq: int, ack: int, flags: int = PSH | ACK, options: bytes = TS,
           sport: int = 40000) -> tuple[int, bytes]:  # fmt: skip
    frame = tcp_frame(
        CLIENT, SERVER, sport, 8080, flags=flags, seq=seq, ack=ack, payload=payload, options=options
    )
    res = dp.obj.program("tc_ingress").test_run(frame)
    return res.retval, res.data_out


def server(dp: InboundDataplane, payload: bytes, seq: int, ack: int, options: bytes = TS,
           sport: int = 40000) -> tuple[int, bytes]:  # fmt: skip
    frame = tcp_frame(
        SERVER, CLIENT, 8080, sport, flags=PSH | ACK, seq=seq, ack=ack, payload=payload, options=options
    )
    res = dp.obj.program("tc_egress").test_run(frame)
    return res.retval, res.data_out


def dp_count(dp: InboundDataplane, name: str) -> int:
    return dp.counters()[name]


def refuse_first(dp: InboundDataplane, sport: int = 40000) -> None:
    """The connection's first request is refused in its stream."""
    kept = dp_count(dp, "reply_kept")
    retval, out = client(dp, API, C_ISN, S_ISN, sport=sport)
    assert retval == TC_ACT_SHOT, "the request must not reach the server"
    reply = parse_frame(out)
    assert (reply.src, reply.dst, reply.sport, reply.dport) == (SERVER, CLIENT, 8080, sport)
    assert (reply.flags, reply.seq, reply.ack) == (PSH | ACK, S_ISN, C_ISN + len(API)), (
        "no FIN: the connection stays"
    )
    assert reply.payload == REPLY
    assert reply.ip_csum_ok and reply.tcp_csum_ok
    assert dp_count(dp, "reply_kept") == kept + 1


def test_a_refused_request_is_answered_in_the_stream_and_the_connection_translated(
    dp: InboundDataplane,
) -> None:
    dp.apply(dp.compile(rules(BLOCK_API)))
    refuse_first(dp)
    # the client's next request, acknowledging the reply: the server counts neither
    retval, out = client(dp, OTHER, C_ISN + len(API), S_ISN + len(REPLY))
    assert retval == TC_ACT_OK
    seg = parse_frame(out)
    assert (seg.seq, seg.ack, seg.payload) == (C_ISN, S_ISN, OTHER)
    assert seg.ip_csum_ok and seg.tcp_csum_ok
    # the server's response, acknowledging the request: the client counts both
    retval, out = server(dp, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", S_ISN, C_ISN + len(OTHER))
    assert retval == TC_ACT_OK
    seg = parse_frame(out)
    assert (seg.seq, seg.ack) == (S_ISN + len(REPLY), C_ISN + len(API) + len(OTHER))
    assert seg.tcp_csum_ok
    st = dp.resource_stats()[0]
    assert (st.passed, st.blocked) == (0, 1)


def test_a_second_refusal_waits_for_the_first_reply_to_be_acknowledged(dp: InboundDataplane) -> None:
    dp.apply(dp.compile(rules(BLOCK_API)))
    refuse_first(dp)
    second = C_ISN + len(API)
    retval, out = client(dp, API, second, S_ISN + 10)  # the client has only part of the first reply
    assert retval == TC_ACT_OK and parse_frame(out).flags & RST, "reset: a reply now would overlap the first"
    assert dp_count(dp, "reply_owed") == 1
    refuse_first(dp, sport=40001)
    retval, out = client(dp, API, second, S_ISN + len(REPLY), sport=40001)
    assert retval == TC_ACT_SHOT
    reply = parse_frame(out)
    assert (reply.flags, reply.seq, reply.ack) == (PSH | ACK, S_ISN + len(REPLY), second + len(API))
    retval, out = client(dp, OTHER, second + len(API), S_ISN + 2 * len(REPLY), sport=40001)
    seg = parse_frame(out)
    assert (seg.seq, seg.ack) == (C_ISN, S_ISN), "both refusals are taken out of the server's view"


def test_sack_blocks_are_translated_both_ways(dp: InboundDataplane) -> None:
    dp.apply(dp.compile(rules(BLOCK_API)))
    refuse_first(dp)
    base = S_ISN + len(REPLY)  # the client's numbering of the server's bytes after the reply
    retval, out = client(dp, b"", C_ISN + len(API), base, flags=ACK, options=sack(base + 100, base + 200))
    assert retval == TC_ACT_OK
    seg = parse_frame(out)
    assert seg.tcp_csum_ok
    edges = struct.unpack("!II", out[-8:])
    assert (seg.ack, edges) == (S_ISN, (S_ISN + 100, S_ISN + 200))
    retval, out = server(dp, b"", S_ISN, C_ISN + 10, options=sack(C_ISN + 50, C_ISN + 60))
    edges = struct.unpack("!II", out[-8:])
    assert edges == (C_ISN + len(API) + 50, C_ISN + len(API) + 60)
    assert parse_frame(out).tcp_csum_ok


def test_a_lost_reply_is_sent_again_and_refused_bytes_never_reach_the_server(dp: InboundDataplane) -> None:
    dp.apply(dp.compile(rules(BLOCK_API)))
    refuse_first(dp)
    retval, out = client(
        dp, API, C_ISN, S_ISN
    )  # the client did not get the reply: it sends the request again
    assert retval == TC_ACT_SHOT
    reply = parse_frame(out)
    assert (reply.seq, reply.ack, reply.payload) == (S_ISN, C_ISN + len(API), REPLY)
    assert dp_count(dp, "reply_kept") == 2
    assert dp.resource_stats()[0].blocked == 1, "answered again, not judged again"
    assert client(dp, API[5:], C_ISN + 5, S_ISN)[0] == TC_ACT_SHOT  # a part of it: dropped


@pytest.mark.parametrize(
    "request_",
    [
        b"GET /api HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n",
        b"GET /api HTTP/1.1\r\nconnection: keep-alive, Close\r\n\r\n",
        b"GET /api HTTP/1.0\r\nHost: svc\r\n\r\n",
    ],
)
def test_a_client_that_closes_gets_the_reply_that_closes(dp: InboundDataplane, request_: bytes) -> None:
    dp.apply(dp.compile(rules(BLOCK_API)))
    retval, out = client(dp, request_, C_ISN, S_ISN)
    assert retval == TC_ACT_OK  # the server gets a reset in the request's place
    assert parse_frame(out).flags & RST
    assert (dp_count(dp, "reply_kept"), dp_count(dp, "reply_closed"), dp_count(dp, "reply_sent")) == (0, 1, 1)


@pytest.mark.parametrize("expect", [b"100-continue", b" 100-Continue ", b"100-continued", b"200-continue"])
def test_a_refused_head_that_waits_for_100_continue_is_answered_at_once(
    dp: InboundDataplane, expect: bytes
) -> None:
    """The client sends its body only after the server's 100 (or, curl, after 1 s): a refused request
    that says so is answered now, the closing way, not swallowed until its body comes."""
    dp.apply(dp.compile(rules(BLOCK_API)))
    head = b"GET /api HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\nExpect:" + expect + b"\r\n\r\n"
    retval, out = client(dp, head, C_ISN, S_ISN)
    if expect.strip().lower() == b"100-continue":
        assert retval == TC_ACT_OK and parse_frame(out).flags & RST  # the server gets a reset
        assert (dp_count(dp, "reply_closed"), dp_count(dp, "reply_sent")) == (1, 1)
    else:  # not the token: swallowed (acknowledged in the server's place), answered where the body ends
        assert retval == TC_ACT_SHOT and not parse_frame(out).payload
        assert dp_count(dp, "reply_sent") == 0


@pytest.mark.parametrize(
    "parts",
    [
        [b"GET /api HTT", b"P/1.1\r\nHo", b"st: svc\r\n\r\n"],  # a head over three segments
        [b"GET /api HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123", b"456789"],  # a body that goes on
        [b"GET /api HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nab", b"cd\r\n0\r\n\r\n"],
    ],
)
def test_a_refused_request_that_goes_on_is_swallowed_and_answered_where_it_ends(
    dp: InboundDataplane, parts: list[bytes]
) -> None:
    """Each part but the last is acknowledged in the server's place (a client held to a small congestion
    window sends the rest only then); the reply comes where the request ends; the server gets none of it,
    and the connection's next request reaches it in its own numbering."""
    dp.apply(dp.compile(rules(BLOCK_API)))
    seq = C_ISN
    for part in parts[:-1]:
        retval, out = client(dp, part, seq, S_ISN)
        assert retval == TC_ACT_SHOT, "no byte of a refused request reaches the server"
        ack = parse_frame(out)
        assert (ack.src, ack.dst, ack.flags, ack.seq, ack.ack, ack.payload) == (
            SERVER,
            CLIENT,
            ACK,
            S_ISN,
            seq + len(part),
            b"",
        )
        assert ack.ip_csum_ok and ack.tcp_csum_ok
        # the acknowledgment was lost: the part comes again and is acknowledged again, not judged again
        retval, out = client(dp, part, seq, S_ISN)
        assert retval == TC_ACT_SHOT and parse_frame(out).ack == seq + len(part)
        seq += len(part)
    assert dp.port_counters(8080)["swallowed"] == 2 * (len(parts) - 1)
    retval, out = client(dp, parts[-1], seq, S_ISN)
    assert retval == TC_ACT_SHOT
    reply = parse_frame(out)
    end = seq + len(parts[-1])
    assert (reply.flags, reply.seq, reply.ack, reply.payload) == (PSH | ACK, S_ISN, end, REPLY)
    assert reply.tcp_csum_ok
    assert (dp_count(dp, "reply_kept"), dp_count(dp, "reply_closed")) == (1, 0)
    assert dp.resource_stats()[0].blocked == 1, "judged once, at its start"
    # the reply was lost: a copy of the last part gets it again
    retval, out = client(dp, parts[-1], seq, S_ISN)
    assert retval == TC_ACT_SHOT and parse_frame(out).payload == REPLY
    # the next request reaches the server in its numbering: none of the refused bytes, none of the reply
    retval, out = client(dp, OTHER, end, S_ISN + len(REPLY))
    assert retval == TC_ACT_OK
    seg = parse_frame(out)
    assert (seg.seq, seg.ack, seg.payload) == (C_ISN, S_ISN, OTHER)
    assert seg.tcp_csum_ok


def test_a_request_behind_a_swallowed_one_is_cut_off_and_judged_when_it_comes_again(
    dp: InboundDataplane,
) -> None:
    dp.apply(dp.compile(rules(BLOCK_API)))
    first, rest = b"GET /api HTTP/1.1\r\nHo", b"st: svc\r\n\r\n"
    assert client(dp, first, C_ISN, S_ISN)[0] == TC_ACT_SHOT
    seq = C_ISN + len(first)
    retval, out = client(dp, rest + OTHER, seq, S_ISN)
    assert retval == TC_ACT_SHOT
    reply = parse_frame(out)
    assert (reply.seq, reply.ack, reply.payload) == (S_ISN, seq + len(rest), REPLY), "acknowledged to its end"
    retval, out = client(dp, OTHER, seq + len(rest), S_ISN + len(REPLY))
    assert retval == TC_ACT_OK and parse_frame(out).seq == C_ISN
    assert dp.resource_stats()[0].blocked == 1


def test_a_swallowed_request_that_asks_to_close_gets_the_reply_that_closes(dp: InboundDataplane) -> None:
    dp.apply(dp.compile(rules(BLOCK_API)))
    first = b"GET /api HTTP/1.1\r\nHo"
    assert client(dp, first, C_ISN, S_ISN)[0] == TC_ACT_SHOT
    retval, out = client(dp, b"st: svc\r\nConnection: close\r\n\r\n", C_ISN + len(first), S_ISN)
    assert retval == TC_ACT_OK  # the server gets a reset where the request would have started
    rst = parse_frame(out)
    assert rst.flags & RST and rst.seq == C_ISN and rst.tcp_csum_ok
    assert (dp_count(dp, "reply_kept"), dp_count(dp, "reply_closed"), dp_count(dp, "reply_sent")) == (0, 1, 1)


def test_a_refusal_waits_for_the_responses_the_server_owes(dp: InboundDataplane) -> None:
    """Pipelining: the server has not begun its response to an earlier request, so any reply now would
    come before it (the client would take it for that response): the connection is reset instead, no
    reply. Once the response began, a refusal keeps the connection."""
    dp.apply(dp.compile(rules(BLOCK_API)))
    assert client(dp, OTHER, C_ISN, S_ISN)[0] == TC_ACT_OK
    retval, out = client(dp, API, C_ISN + len(OTHER), S_ISN)
    assert retval == TC_ACT_OK and parse_frame(out).flags & RST
    assert (dp_count(dp, "reply_owed"), dp_count(dp, "reply_sent"), dp_count(dp, "rst_sent")) == (1, 0, 1)
    dp.clear()
    dp.apply(dp.compile(rules(BLOCK_API)))
    assert client(dp, OTHER, C_ISN, S_ISN)[0] == TC_ACT_OK
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    assert server(dp, response, S_ISN, C_ISN + len(OTHER))[0] == TC_ACT_OK
    assert server(dp, response, S_ISN, C_ISN + len(OTHER))[0] == TC_ACT_OK  # a retransmission: not counted
    retval, _ = client(dp, API, C_ISN + len(OTHER), S_ISN + len(response))
    assert retval == TC_ACT_SHOT
    assert dp_count(dp, "reply_kept") == 1


OK_EMPTY = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
OK_BODY = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
OK_CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


@pytest.mark.parametrize(
    ("responses", "kept"),
    [
        ([OK_BODY, OK_CHUNKED, OK_EMPTY], True),
        ([OK_EMPTY, CONTINUE, OK_BODY, OK_EMPTY], True),  # an interim response is not one of the three
        ([OK_BODY, OK_EMPTY], False),  # one owed still: reset
        # a HEAD request's response: its Content-Length has no body, so where the next begins is not
        # known and it is not counted (fail closed: reset)
        ([b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", OK_EMPTY, OK_EMPTY], False),
    ],
    ids=["three", "interim", "one-short", "head"],
)
def test_responses_to_pipelined_requests_in_one_server_segment_are_each_counted(
    dp: InboundDataplane, responses: list[bytes], kept: bool
) -> None:
    """Three requests pipelined in one segment (passed together), the server's responses to them in one
    segment: each counted (followed by its framing), so the refusal after them keeps the connection; a
    response the count cannot see leaves one owed, and the refusal resets."""
    dp.apply(dp.compile(rules(BLOCK_API)))
    three = OTHER * 3
    retval, out = client(dp, three, C_ISN, S_ISN)
    assert retval == TC_ACT_OK and parse_frame(out).payload == three
    batch = b"".join(responses)
    assert server(dp, batch, S_ISN, C_ISN + len(three))[0] == TC_ACT_OK
    retval, out = client(dp, API, C_ISN + len(three), S_ISN + len(batch))
    if kept:
        assert retval == TC_ACT_SHOT and parse_frame(out).payload == REPLY
        assert (dp_count(dp, "reply_kept"), dp_count(dp, "reply_owed")) == (1, 0)
    else:
        assert parse_frame(out).flags & RST
        assert (dp_count(dp, "reply_kept"), dp_count(dp, "reply_owed")) == (0, 1)


def test_a_duplicate_before_the_stack_took_the_original_owes_no_second_response(dp: InboundDataplane) -> None:
    """A lossy link's duplicate, queued behind its original while the server held the socket (the stack
    has not taken either: both look new), is one request the server answers once. Counted twice, the
    server seemed to owe a response for good, and the next refusal reset the connection (CI: the lossy
    link test)."""
    dp.apply(dp.compile(rules(BLOCK_API)))
    assert client(dp, OTHER, C_ISN, S_ISN)[0] == TC_ACT_OK
    assert client(dp, OTHER, C_ISN, S_ISN)[0] == TC_ACT_OK
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    assert server(dp, response, S_ISN, C_ISN + len(OTHER))[0] == TC_ACT_OK
    retval, out = client(dp, API, C_ISN + len(OTHER), S_ISN + len(response))
    assert retval == TC_ACT_SHOT and parse_frame(out).payload == REPLY
    assert (dp_count(dp, "reply_kept"), dp_count(dp, "reply_owed"), dp_count(dp, "rst_sent")) == (1, 0, 0)


def test_a_new_connection_on_the_same_ports_is_not_translated(dp: InboundDataplane) -> None:
    dp.apply(dp.compile(rules(BLOCK_API)))
    refuse_first(dp)
    assert client(dp, b"", 90000, 0, flags=SYN, options=SYN_OPTIONS)[0] == TC_ACT_OK
    retval, out = client(dp, OTHER, 90001, 5000)
    assert retval == TC_ACT_OK and out[-len(OTHER) :] == OTHER
    seg = parse_frame(out)
    assert (seg.seq, seg.ack) == (90001, 5000)


def test_a_refused_request_on_the_clients_fin_closes(dp: InboundDataplane) -> None:
    """The client half-closed: nothing more comes on the connection, so it is not kept."""
    dp.apply(dp.compile(rules(BLOCK_API)))
    retval, out = client(dp, API, C_ISN, S_ISN, flags=FIN | PSH | ACK)
    assert retval == TC_ACT_OK and parse_frame(out).flags & RST
    assert (dp_count(dp, "reply_kept"), dp_count(dp, "reply_closed")) == (0, 1)


def test_packets_of_other_connections_are_never_translated(dp: InboundDataplane) -> None:
    """On loopback every packet passes both programs: a client's segment seen at egress, or a packet no
    rule concerns, right after a translated connection's packet, goes on untouched."""
    dp.apply(dp.compile(rules(BLOCK_API)))
    refuse_first(dp)
    egress, ingress = dp.obj.program("tc_egress"), dp.obj.program("tc_ingress")
    assert server(dp, b"HTTP/1.1 200 OK\r\n\r\n", S_ISN, C_ISN)[0] == TC_ACT_OK  # translated
    for prog in (egress, ingress):
        for frame in (
            tcp_frame(
                CLIENT, SERVER, 40000, 8080, flags=PSH | ACK, seq=C_ISN + 99, ack=S_ISN + 99, payload=OTHER
            ),
            tcp_frame(CLIENT, SERVER, 40000, 9999, flags=PSH | ACK, seq=5, ack=6, payload=OTHER),
        ):
            if prog is ingress and frame[36:38] == b"\x1f\x90":
                continue  # (that one is the connection's own, translated at ingress)
            res = prog.test_run(frame)
            assert (res.retval, res.data_out) == (TC_ACT_OK, frame)
        assert client(dp, OTHER, C_ISN + len(API), S_ISN + len(REPLY))[0] == TC_ACT_OK  # translated
