"""Requests found where they start in the client's stream: after a head and its body (Content-Length,
chunked), pipelined behind another, or after a body in the same segment. A request that starts inside a
segment is not passed there: the segment is cut before it, and the client's TCP sends it again at the
start of a segment, where it is judged. Segments are crafted: each is taken as the stream's next bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sentinel_ebpf._types import SentinelLimits
from sentinel_ebpf.enforce import InboundDataplane
from tests.support.inbound import API, BLOCK_API, CLIENT, OTHER, SERVER, limit_api, rules
from tests.support.packets import ACK, FIN, PSH, RST, TC_ACT_OK, TC_ACT_SHOT, URG, parse_frame, tcp_frame

pytestmark = pytest.mark.kernel("inbound")

COUNT_ALL = """
resources:
  - {name: api, match: {protocol: http, port: 8080, method: GET, path: /api}}
  - {name: other, match: {protocol: http, port: 8080, method: GET, path: /other}}
  - {name: up, match: {protocol: http, port: 8080, method: POST, path: /up}}
flowRules:
  - {resource: api, threshold: 1000000}
  - {resource: other, threshold: 1000000}
  - {resource: up, threshold: 1000000}
"""
ONE_API = limit_api(1)


@dataclass
class Client:
    """One client connection's stream, sent as crafted segments; `seq` advances by what the server's stack
    takes (what the program passed, cut or whole)."""

    dp: InboundDataplane
    sport: int = 40000
    seq: int = 1000
    delivered: bytearray = field(default_factory=bytearray)

    def send(self, payload: bytes, flags: int = PSH | ACK) -> tuple[int, bytes | None]:
        """(retval, the payload the server's stack gets, None when nothing)."""
        frame = tcp_frame(CLIENT, SERVER, self.sport, 8080, flags=flags, seq=self.seq, payload=payload)
        res = self.dp.obj.program("tc_ingress").test_run(frame)
        if res.retval != TC_ACT_OK:
            return res.retval, None
        if res.data_out == frame:
            kept = payload
        else:
            out = parse_frame(res.data_out)
            if out.flags & RST:
                return res.retval, None  # refused: the server gets a reset in the segment's place
            assert out.ip_csum_ok and out.tcp_csum_ok, "a cut segment's checksums must hold"
            assert (out.seq, out.sport, out.dport) == (self.seq, self.sport, 8080)
            assert payload.startswith(out.payload) and 0 < len(out.payload) < len(payload)
            assert not out.flags & FIN, "a FIN goes with the bytes cut off"
            kept = out.payload
        self.seq += len(kept)
        self.delivered += kept
        return res.retval, kept


def stats(dp: InboundDataplane) -> dict[str, tuple[int, int]]:
    return {s.name: (s.passed, s.blocked) for s in dp.resource_stats()}


def test_a_refused_request_pipelined_behind_another_is_judged_there_and_cut_off(
    dp: InboundDataplane,
) -> None:
    dp.apply(dp.compile(rules(BLOCK_API)))
    c = Client(dp)
    assert c.send(OTHER + API) == (TC_ACT_OK, OTHER)  # judged where it starts: refused, cut off
    assert stats(dp)["api"] == (0, 1)
    assert dp.port_counters(8080)["cut"] == 1
    # the client sends the rest again, now at a segment's start: the same verdict, not judged again
    assert c.send(API)[1] is None, "the blocked request must not reach the server"
    assert stats(dp)["api"] == (0, 1)
    assert dp.port_counters(8080)["refused_again"] == 1


def test_requests_pipelined_in_one_segment_are_each_judged_and_pass_together(dp: InboundDataplane) -> None:
    """A client that pipelines (or a GRO-merged skb) gets its segment through whole when every request in
    it is admitted: no cut, no retransmission timer per request."""
    dp.apply(dp.compile(rules(COUNT_ALL)))
    c = Client(dp)
    post = b"POST /up HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
    segment = OTHER + API + post + b"\r\n" + API + OTHER
    assert c.send(segment) == (TC_ACT_OK, segment)
    assert stats(dp) == {"api": (2, 0), "other": (2, 0), "up": (1, 0)}
    counters = dp.port_counters(8080)
    assert (counters["pipelined"], counters["cut"]) == (4, 0)


def test_at_most_so_many_requests_are_judged_in_one_segment_the_rest_come_again(dp: InboundDataplane) -> None:
    dp.apply(dp.compile(rules(COUNT_ALL)))
    limit = int(SentinelLimits.SE_PIPELINED_MAX)
    c = Client(dp)
    assert c.send(API * (limit + 3)) == (TC_ACT_OK, API * (limit + 1))
    assert stats(dp)["api"] == (limit + 1, 0)
    assert c.send(API * 2) == (TC_ACT_OK, API * 2)
    assert stats(dp)["api"] == (limit + 3, 0), "each judged once"
    assert dp.port_counters(8080)["cut"] == 1


def test_a_pipelined_request_whose_line_goes_on_is_cut_off_and_judged_whole(dp: InboundDataplane) -> None:
    dp.apply(dp.compile(rules(BLOCK_API)))
    c = Client(dp)
    assert c.send(OTHER + API[:6]) == (TC_ACT_OK, OTHER)
    assert stats(dp)["api"] == (0, 0)
    assert c.send(API)[1] is None
    assert stats(dp)["api"] == (0, 1)


def test_a_cut_on_a_fin_segment_takes_the_fin_off(dp: InboundDataplane) -> None:
    dp.apply(dp.compile(rules(BLOCK_API)))
    c = Client(dp)
    assert c.send(OTHER + API, flags=FIN | PSH | ACK) == (TC_ACT_OK, OTHER)


@pytest.mark.parametrize("odd", [0, 1, 2, 3])
def test_a_cut_at_any_byte_keeps_the_checksums(dp: InboundDataplane, odd: int) -> None:
    dp.apply(dp.compile(rules(BLOCK_API)))
    first = b"GET /other HTTP/1.1\r\nHost: svc" + b"x" * odd + b"\r\n\r\n"
    assert Client(dp).send(first + API) == (TC_ACT_OK, first)


def test_a_cut_takes_off_more_than_a_segment_of_bytes(dp: InboundDataplane) -> None:
    """A GRO-merged skb holds many segments: the checksum is fixed over all the bytes taken off."""
    dp.apply(dp.compile(rules(BLOCK_API)))
    rest = b"GET /api HTTP/1.1\r\nX-Pad: " + b"p" * 2500 + b"\r\n\r\n"
    assert Client(dp).send(OTHER + rest) == (TC_ACT_OK, OTHER)


def test_a_request_after_a_body_in_the_same_segment_is_cut_off(dp: InboundDataplane) -> None:
    dp.apply(dp.compile(rules(BLOCK_API)))
    post = b"POST /up HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
    c = Client(dp)
    assert c.send(post + API) == (TC_ACT_OK, post)
    assert c.send(API)[1] is None
    assert stats(dp)["api"] == (0, 1)


def test_body_bytes_are_not_judged_and_the_request_after_them_is(dp: InboundDataplane) -> None:
    """A body that looks like a request is a body: not judged; the request after the body is."""
    dp.apply(dp.compile(rules(BLOCK_API)))
    c = Client(dp)
    head = b"POST /up HTTP/1.1\r\ncontent-length:  %d \r\n\r\n" % (len(API) + 3)
    assert c.send(head) == (TC_ACT_OK, head)
    assert c.send(API) == (TC_ACT_OK, API)  # body bytes at a segment's start
    assert c.send(b"xyz" + API) == (TC_ACT_OK, b"xyz")  # the body's end, then a request: refused
    assert stats(dp)["api"] == (0, 1)
    assert c.send(API)[1] is None
    assert stats(dp)["api"] == (0, 1)
    assert dp.port_counters(8080)["body"] == 2


def test_a_chunked_body_is_followed_to_its_last_chunk_and_trailers(dp: InboundDataplane) -> None:
    dp.apply(dp.compile(rules(BLOCK_API)))
    c = Client(dp)
    head = b"POST /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"%x\r\n" % len(API) + API + b"\r\n"  # a chunk whose data looks like a request
    last = b"0\r\nX-Trailer: 1\r\n\r\n"
    assert c.send(head + chunk[:10]) == (TC_ACT_OK, head + chunk[:10])
    # a chunk-size line is read whole: its first digit is carried to the next segment
    assert c.send(chunk[10:] + b"1") == (TC_ACT_OK, chunk[10:] + b"1")
    assert c.send(b"1;ext=1\r\n" + b"z" * 17 + b"\r\n" + last + API) == (
        TC_ACT_OK,
        b"1;ext=1\r\n" + b"z" * 17 + b"\r\n" + last,
    )
    assert stats(dp)["api"] == (0, 1), "the request after the trailers, not the chunk's data"
    assert c.send(API)[1] is None
    assert stats(dp)["api"] == (0, 1)


@pytest.mark.parametrize("end", [b"\r\n", b"\n"], ids=["crlf", "bare-lf"])
def test_a_chunks_data_ends_at_crlf_or_a_bare_lf(dp: InboundDataplane, end: bytes) -> None:
    """nginx takes a bare LF after a chunk's data too. Read as two bytes whatever they were, the "1" of
    the next size line was eaten, "a" read as the size, and the request behind the body passed."""
    dp.apply(dp.compile(rules(BLOCK_API)))
    c = Client(dp)
    body = (b"POST /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello" + end + b"1a\r\n"
            + b"x" * 12 + b"fffffff\r\n" + b"y" * 5 + b"\r\n0\r\n\r\n")  # fmt: skip
    assert c.send(body + API) == (TC_ACT_OK, body)  # cut where the next request starts
    assert c.send(API)[1] is None
    assert stats(dp)["api"] == (0, 1)


def test_a_chunks_line_end_split_after_its_cr_is_followed(dp: InboundDataplane) -> None:
    dp.apply(dp.compile(rules(BLOCK_API)))
    c = Client(dp)
    first = b"POST /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r"
    assert c.send(first) == (TC_ACT_OK, first)
    assert c.send(b"\n0\r\n\r\n" + API) == (TC_ACT_OK, b"\n0\r\n\r\n")
    assert c.send(API)[1] is None
    assert stats(dp)["api"] == (0, 1)


def test_a_request_behind_one_whose_method_starts_with_an_underscore_is_judged(dp: InboundDataplane) -> None:
    """nginx serves "_X /ok" and "-X /ok" (a method may start with '_' or '-'): the follower reads their
    heads and bodies as any other's; it took only 'A'-'Z' for a request's first byte and passed the rest
    of the segment (a GET /api behind it) unread."""
    dp.apply(dp.compile(rules(BLOCK_API)))
    for i, method in enumerate((b"_X", b"-X")):
        c = Client(dp, sport=42000 + i)
        head = method + b" /ok HTTP/1.1\r\nHost: svc\r\nContent-Length: 1\r\n\r\n"
        assert c.send(head + b"x" + API) == (TC_ACT_OK, head + b"x")
        assert c.send(API)[1] is None
    assert stats(dp)["api"] == (0, 2)


def test_a_header_that_frames_the_body_is_read_whole(dp: InboundDataplane) -> None:
    """A Content-Length line cut by the segment's end is not guessed at: its bytes so far are carried to
    the next segment and read with the rest (the segments go on: a client cannot merge a short tail with
    its next full-size segment, so holding it back would stall the connection)."""
    dp.apply(dp.compile(rules(BLOCK_API)))
    c = Client(dp)
    start = b"POST /up HTTP/1.1\r\nHost: svc\r\nContent-Len"
    assert c.send(start) == (TC_ACT_OK, start)
    assert c.send(b"gth: 1") == (TC_ACT_OK, b"gth: 1")
    rest = b"2\r\n\r\n" + b"x" * 12
    assert c.send(rest + API) == (TC_ACT_OK, rest)
    assert c.send(API)[1] is None
    assert stats(dp)["api"] == (0, 1)


@pytest.mark.parametrize("split", range(1, 20))
def test_a_split_at_any_byte_of_the_framing_lines_is_followed(dp: InboundDataplane, split: int) -> None:
    dp.apply(dp.compile(rules(BLOCK_API)))
    c = Client(dp, sport=41000 + split)
    stream = (
        b"POST /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1a;x=y\r\n" + b"z" * 26 + b"\r\n0\r\n\r\n"
    )
    at = len(b"POST /up HTTP/1.1\r\n") + split
    assert c.send(stream[:at]) == (TC_ACT_OK, stream[:at])
    assert c.send(stream[at:] + API) == (TC_ACT_OK, stream[at:])
    assert c.send(API)[1] is None
    assert stats(dp)["api"] == (0, 1)


def test_a_long_header_line_is_skipped_across_segments(dp: InboundDataplane) -> None:
    dp.apply(dp.compile(rules(BLOCK_API)))
    c = Client(dp)
    cookie = b"GET /other HTTP/1.1\r\nCookie: " + b"c" * 600
    assert c.send(cookie) == (TC_ACT_OK, cookie)
    assert c.send(b"c" * 100 + b"\r\n\r\n" + API) == (TC_ACT_OK, b"c" * 100 + b"\r\n\r\n")
    assert c.send(API)[1] is None


@pytest.mark.parametrize(
    "head",
    [
        b"POST /up HTTP/1.1\r\nContent-Length: 12abc\r\n\r\n",
        b"POST /up HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"POST /up HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"POST /up HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"POST /up HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        b"POST /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhiXY\r\n0\r\n\r\n",  # not a line end
    ],
)
def test_framing_no_server_reads_resets_the_connection(dp: InboundDataplane, head: bytes) -> None:
    dp.apply(dp.compile(rules(BLOCK_API)))
    assert Client(dp).send(head + API)[1] is None
    assert dp.port_counters(8080)["framing_reset"] == 1


def test_framing_servers_read_is_followed(dp: InboundDataplane) -> None:
    dp.apply(dp.compile(rules(BLOCK_API)))
    for i, head in enumerate(
        [
            b"POST /up HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            b"POST /up HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
            b"POST /up HTTP/1.1\r\ntransfer-encoding: gzip, Chunked\r\n\r\n0\r\n\r\n",
            b"POST /up HTTP/1.1\nContent-Length: 1\n\nz",  # bare LF line ends
            b"\r\n\r\nGET /other HTTP/1.1\r\n\r\n",
        ]
    ):
        c = Client(dp, sport=41000 + i)
        assert c.send(head + API) == (TC_ACT_OK, head)
        assert c.send(API)[1] is None
    assert stats(dp)["api"] == (0, 5)
    assert dp.port_counters(8080)["framing_reset"] == 0


def test_a_segment_the_stack_dropped_is_followed_again_from_its_start(dp: InboundDataplane) -> None:
    """The server's stack may drop a segment the program passed (memory, a bad checksum): the client
    sends it again and the stream is followed from where that segment started."""
    dp.apply(dp.compile(rules(BLOCK_API)))
    c = Client(dp)
    post = b"POST /up HTTP/1.1\r\nContent-Length: 3\r\n\r\n"
    assert c.send(post) == (TC_ACT_OK, post)
    c.seq -= len(post)  # the stack dropped it
    c.delivered.clear()
    assert c.send(post) == (TC_ACT_OK, post)
    assert c.send(b"abc" + API) == (TC_ACT_OK, b"abc")
    assert dp.port_counters(8080)["stream_lost"] == 0


@pytest.mark.parametrize("merged", [b"", API], ids=["duplicate", "merged-with-more"])
def test_a_segment_sent_again_before_the_stack_took_it_keeps_its_verdict(
    dp: InboundDataplane, merged: bytes
) -> None:
    """A duplicate queued behind its original while the server holds the socket (or the original dropped
    by the stack) looks new to the socket lookup: the requests it carries were judged already, and are
    passed again without being judged or counted again (as `retransmit`); a request merged behind them is
    cut off."""
    dp.apply(dp.compile(rules(COUNT_ALL)))
    c = Client(dp)
    head = b"GET /other?id=7 HTTP/1.1\r\nHost: svc\r\nX-Long: " + b"v" * 300 + b"\r\n\r\n"
    assert c.send(head + API) == (TC_ACT_OK, head + API)
    c.seq -= len(head + API)
    assert c.send(head + API + merged) == (TC_ACT_OK, head + API)
    assert stats(dp) == {"api": (1, 0), "other": (1, 0), "up": (0, 0)}, "each judged once"
    assert dp.port_counters(8080)["retransmit"] == 1
    assert c.send(API) == (TC_ACT_OK, API)
    assert stats(dp) == {"api": (2, 0), "other": (1, 0), "up": (0, 0)}


API_2 = b"GET /api HTTP/1.1\r\nHost: svc\r\nX-Id: 2\r\n\r\n"


@pytest.mark.parametrize(
    ("again", "passed", "api"),
    [
        (OTHER + API_2, OTHER, (1, 1)),  # the first the same, another behind it: the other judged
        (OTHER, OTHER, (1, 0)),  # the first alone
        (API_2 + API, None, (1, 1)),  # the last the same, another before it: the first judged (refused)
    ],
)
def test_a_segment_again_with_other_pipelined_requests_is_judged_again(
    dp: InboundDataplane, again: bytes, passed: bytes | None, api: tuple[int, int]
) -> None:
    """Bytes at the place of a segment that carried two requests, with other requests: every head of the
    segment is compared (chained in one hash), so they are judged as new (an attacker must not pass a
    request under the verdict of one judged before)."""
    dp.apply(dp.compile(rules(ONE_API)))
    c = Client(dp)
    assert c.send(OTHER + API) == (TC_ACT_OK, OTHER + API)
    c.seq -= len(OTHER + API)
    assert c.send(again)[1] == passed
    assert stats(dp)["api"] == api
    assert dp.port_counters(8080)["retransmit"] == 0


@pytest.mark.parametrize(
    ("first", "api"),
    [
        (OTHER, (1, 0)),  # another resource: /api judged (its one request)
        (b"GET /api HTTP/1.1\r\nHost: svc\r\nX-Id: 1\r\n\r\n", (1, 1)),  # the same route, another head
        (b"GET /api HTTP/1.1\r\nHost: svc\r\n", (1, 1)),  # the head went on: more of it now
    ],
)
def test_different_bytes_at_a_place_the_stack_did_not_take_are_judged(
    dp: InboundDataplane, first: bytes, api: tuple[int, int]
) -> None:
    """A hostile client can have the stack drop a segment the program passed (a bad checksum, beyond the
    window) and send other bytes at the same place: only the same head keeps the verdict, anything else
    is judged (an attacker must not pass a limited request, or hotspot value, under an earlier one's)."""
    dp.apply(dp.compile(rules(ONE_API)))
    c = Client(dp)
    assert c.send(first) == (TC_ACT_OK, first)
    c.seq = 1000  # the stack dropped it
    assert c.send(API)[1] == (API if api == (1, 0) else None)
    assert stats(dp)["api"] == api, "the request must be judged (refused when /api's one is spent)"
    assert dp.port_counters(8080)["retransmit"] == 0


def test_an_unknown_stream_position_is_read_as_a_request_start_and_counted(dp: InboundDataplane) -> None:
    dp.apply(dp.compile(rules(BLOCK_API)))
    c = Client(dp)
    assert c.send(OTHER) == (TC_ACT_OK, OTHER)
    c.seq += 10  # bytes the program never saw
    assert c.send(API)[1] is None
    assert dp.port_counters(8080)["stream_lost"] == 1


def test_http2_with_prior_knowledge_is_not_cut(dp: InboundDataplane) -> None:
    dp.apply(dp.compile(rules(BLOCK_API)))
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes(9)
    assert Client(dp).send(preface) == (TC_ACT_OK, preface)


# --- generated streams: every request judged exactly once, every byte delivered once --------------------


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["api", "other", "length", "chunked"]))
    lead = draw(st.sampled_from([b"", b"\r\n"]))
    if kind == "api":
        return lead + API
    if kind == "other":
        return (
            lead
            + b"GET /other HTTP/1.1\r\nHost: svc\r\nX-Pad: "
            + b"p" * draw(st.integers(0, 300))
            + b"\r\n\r\n"
        )
    body_parts = draw(st.lists(st.sampled_from([API, b"x" * 7, b"0\r\n\r\n", b"\r\n"]), max_size=4))
    if kind == "length":
        body = b"".join(body_parts)
        return lead + b"POST /up HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    chunks = b"".join(b"%x\r\n" % len(p) + p + b"\r\n" for p in body_parts if p)
    return lead + b"POST /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(reqs=st.lists(requests(), min_size=1, max_size=6), sizes=st.lists(st.integers(1, 400), min_size=1))
def test_generated_streams_judge_every_request_once(
    dp: InboundDataplane, reqs: list[bytes], sizes: list[int]
) -> None:
    """Random requests (with Content-Length and chunked bodies that hold request-like bytes), split at
    random points and pipelined: the client sends what the server's stack has not taken, as Linux does
    (a dropped segment comes again merged with what follows); every request is judged exactly once and
    the server's stack gets the stream byte for byte."""
    dp.clear()
    dp.apply(dp.compile(rules(COUNT_ALL)))
    stream = b"".join(reqs)
    c = Client(dp, sport=42000)
    sent, i, tries = 0, 0, 0
    while sent < len(stream):
        size = sizes[i % len(sizes)] + (400 * tries)
        retval, kept = c.send(stream[sent : sent + size])
        assert retval in (TC_ACT_OK, TC_ACT_SHOT)
        if kept is None:
            tries += 1
            assert tries < 10, "a segment is dropped for good"
            continue
        sent += len(kept)
        i, tries = i + 1, 0
    assert bytes(c.delivered) == stream
    expect = {
        "api": sum(r.lstrip(b"\r\n").startswith(b"GET /api") for r in reqs),
        "other": sum(r.lstrip(b"\r\n").startswith(b"GET /other") for r in reqs),
        "up": sum(r.lstrip(b"\r\n").startswith(b"POST") for r in reqs),
    }
    assert {k: v[0] for k, v in stats(dp).items()} == expect
    assert dp.port_counters(8080)["stream_lost"] == 0


def urgent_of(frame: bytes) -> tuple[int, int]:
    """(the URG flag, the urgent pointer) of an IPv4 frame without IP options."""
    return frame[34 + 13] & URG, struct.unpack("!H", frame[34 + 18 : 34 + 20])[0]


@pytest.mark.parametrize(
    "payload, pointer",
    [(b"GET /aXpi HTTP/1.1\r\nHost: svc\r\n\r\n", 7), (b"", 40)],
    ids=["in-the-target", "bare-ack-naming-a-later-byte"],
)
def test_an_urgent_pointer_is_cleared_so_the_server_reads_the_bytes_judged(
    dp: InboundDataplane, payload: bytes, pointer: int
) -> None:
    """A stack takes the byte an urgent pointer names out of what its application reads (nginx does not
    set SO_OOBINLINE): `GET /aXpi` with X urgent reaches nginx as `GET /api`, and a bare ACK can name a
    byte still to come. The program clears URG and the pointer, checksums kept: the server reads every
    byte, as judged."""
    dp.apply(dp.compile(rules(ONE_API)))
    flags = URG | (PSH | ACK if payload else ACK)
    frame = tcp_frame(CLIENT, SERVER, 40000, 8080, flags=flags, seq=1000, payload=payload, urgent=pointer)
    assert urgent_of(frame) == (URG, pointer)
    res = dp.obj.program("tc_ingress").test_run(frame)
    assert res.retval == TC_ACT_OK
    assert urgent_of(res.data_out) == (0, 0)
    out = parse_frame(res.data_out)
    assert out.tcp_csum_ok and out.flags == flags & ~URG and out.payload == payload
    assert dp.port_counters(8080)["urgent"] == 1
    assert stats(dp)["api"] == (0, 0), "/aXpi is not /api (and the server reads /aXpi too)"


def test_an_urgent_pointer_on_a_port_without_http_resources_is_left_alone(dp: InboundDataplane) -> None:
    dp.apply(dp.compile(rules("resources:\n  - {name: conns, match: {protocol: tcp, port: 8080}}\n")))
    frame = tcp_frame(CLIENT, SERVER, 40000, 8080, flags=URG | ACK, seq=1000, urgent=40)
    res = dp.obj.program("tc_ingress").test_run(frame)
    assert (res.retval, res.data_out) == (TC_ACT_OK, frame)


SLOW_ONE_AT_A_TIME = """
resources:
  - {name: slow, match: {protocol: http, port: 8080, method: GET, path: /slow}}
  - {name: other, match: {protocol: http, port: 8080, method: GET, path: /other}}
isolationRules:
  - {resource: slow, threshold: 1}
"""
SLOW = b"GET /slow HTTP/1.1\r\nHost: svc\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def concurrency(dp: InboundDataplane) -> dict[str, int]:
    return {s.name: s.concurrency for s in dp.resource_stats()}


def respond(dp: InboundDataplane, client: Client, n: int = 1) -> None:
    """The server's responses to the client's next `n` requests, each in a segment of its own."""
    for _ in range(n):
        frame = tcp_frame(
            SERVER, CLIENT, 8080, client.sport, flags=PSH | ACK, seq=client.seq, payload=RESPONSE
        )
        assert dp.obj.program("tc_egress").test_run(frame).retval == TC_ACT_OK


def test_a_request_pipelined_behind_a_slow_one_does_not_take_it_out_of_its_concurrency(
    dp: InboundDataplane,
) -> None:
    """Sentinel counts a request in its resource's concurrency from its entry to its exit. A request judged
    while its connection's last one is in flight (pipelining) queues behind it: before, it took the
    connection's one in-flight entry over, and a cheap request pipelined behind a slow one took the slow
    one out of its isolation limit (any number of connections could run it at once)."""
    dp.apply(dp.compile(rules(SLOW_ONE_AT_A_TIME)))
    first = Client(dp, sport=40001)
    assert first.send(SLOW + OTHER) == (TC_ACT_OK, SLOW + OTHER)
    assert concurrency(dp) == {"slow": 1, "other": 1}
    assert Client(dp, sport=40002).send(SLOW)[1] is None, "one /slow is in flight: refused"
    respond(dp, first)  # /slow answered: /other is the one in flight now
    assert concurrency(dp) == {"slow": 0, "other": 1}
    respond(dp, first)
    assert concurrency(dp) == {"slow": 0, "other": 0}
    stats = {s.name: (s.complete, s.abort) for s in dp.resource_stats()}
    assert stats == {"slow": (1, 0), "other": (1, 0)}
    assert not list(dp.maps.inflight_queue.items()), (
        "a drained queue keeps no entry (it would outlive the connection)"
    )


def test_requests_queued_behind_one_in_flight_are_given_back_when_the_connection_resets(
    dp: InboundDataplane,
) -> None:
    dp.apply(dp.compile(rules(SLOW_ONE_AT_A_TIME)))
    c = Client(dp, sport=40003)
    assert c.send(OTHER + SLOW + OTHER) == (TC_ACT_OK, OTHER + SLOW + OTHER)
    assert concurrency(dp) == {"slow": 1, "other": 2}
    assert c.send(b"", flags=RST | ACK)[0] == TC_ACT_OK
    assert concurrency(dp) == {"slow": 0, "other": 0}
    assert {s.name: s.abort for s in dp.resource_stats()} == {"slow": 1, "other": 2}


def test_past_so_many_requests_in_flight_on_a_connection_the_next_waits(dp: InboundDataplane) -> None:
    """At most SE_QUEUED_MAX requests wait behind the one in flight: the next is not judged (nothing
    counted) but dropped or cut, and comes again once responses were seen."""
    dp.apply(dp.compile(rules(COUNT_ALL)))
    queued = int(SentinelLimits.SE_QUEUED_MAX)
    c = Client(dp, sport=40004)
    assert c.send(OTHER * 9) == (TC_ACT_OK, OTHER * 9)
    assert c.send(OTHER * (queued - 8) + API) == (TC_ACT_OK, OTHER * (queued - 8))  # full: cut before /api
    assert c.send(API)[1] is None  # dropped: the first request of its segment
    assert stats(dp)["api"] == (0, 0), "not judged"
    assert dp.port_counters(8080)["queue_full"] == 2
    respond(dp, c)
    assert c.send(API) == (TC_ACT_OK, API)
    assert stats(dp)["api"] == (1, 0)


def test_reconciliation_counts_the_requests_queued_behind_one_in_flight(dp: InboundDataplane) -> None:
    """The control plane's reconciliation compares each resource's concurrency with the requests the maps
    hold in flight: those queued behind another are in flight too (not drift to take back)."""
    dp.apply(dp.compile(rules(SLOW_ONE_AT_A_TIME)))
    c = Client(dp, sport=40005)
    assert c.send(OTHER + SLOW + OTHER) == (TC_ACT_OK, OTHER + SLOW + OTHER)
    for _ in range(3):
        assert dp.reconciler.run(grace_ns=0).adjusted == {}
    assert concurrency(dp) == {"slow": 1, "other": 2}
    respond(dp, c, 3)
    assert concurrency(dp) == {"slow": 0, "other": 0}
    assert dp.reconciler.run(grace_ns=0).adjusted == {}
