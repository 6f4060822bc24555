"""HTTP/1.x reassembly from call-sized pieces (``sentinel_ebpf.tracing.httpparse``), no kernel."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from sentinel_ebpf.tracing.httpparse import Exchange, HttpStream

REQ = b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\n\r\n"
RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
POST = b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello world"
CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n"
)


def server() -> tuple[HttpStream, list[Exchange]]:
    out: list[Exchange] = []
    return HttpStream(out.append), out


def test_one_exchange_server_side_sizes_and_latency() -> None:
    conn, out = server()
    conn.feed("recv", REQ, 0, 1.0)
    conn.feed("send", RESP, 0, 1.25)
    assert len(out) == 1
    ex = out[0]
    assert ex.role == "server"
    assert ex.request is not None and ex.response is not None
    assert (ex.request.method, ex.request.target) == ("GET", "/a?x=1")
    assert ex.response.status == 200
    assert ex.request.size == len(REQ) and ex.response.size == len(RESP)
    assert ex.response.end_ts - ex.request.start_ts == 0.25


def test_client_side_role_from_the_request_it_writes() -> None:
    conn, out = server()
    conn.feed("send", POST, 0, 1.0)
    conn.feed("recv", RESP, 0, 2.0)
    assert [(e.role, e.request.method if e.request else None, e.response.status if e.response else 0)
            for e in out] == [("client", "POST", 200)]  # fmt: skip
    assert out[0].request is not None and out[0].request.size == len(POST)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_split_into_calls_gives_the_same_exchanges(data: st.DataObject) -> None:
    """Pipelined requests and responses cut at arbitrary points, one call per piece."""
    requests = REQ + POST + b"HEAD /h HTTP/1.1\r\n\r\n" + REQ
    responses = (
        RESP
        + CHUNKED
        + b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"  # HEAD: no body despite the length
        + b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
    )

    def pieces(blob: bytes) -> list[bytes]:
        cuts = sorted(data.draw(st.sets(st.integers(1, len(blob) - 1), max_size=12)))
        bounds = [0, *cuts, len(blob)]
        return [blob[a:b] for a, b in itertools.pairwise(bounds)]

    conn, out = server()
    ts = 0.0
    for piece in pieces(requests):
        ts += 1
        conn.feed("recv", piece, 0, ts)
    for piece in pieces(responses):
        ts += 1
        conn.feed("send", piece, 0, ts)
    got = [(e.request.method, e.request.target, e.response.status, e.response.size)
           for e in out if e.request and e.response]  # fmt: skip
    assert got == [
        ("GET", "/a?x=1", 200, len(RESP)),
        ("POST", "/p", 200, len(CHUNKED)),
        ("HEAD", "/h", 200, 41),
        ("GET", "/a?x=1", 404, 45),
    ]
    assert conn.desyncs == 0


def test_body_bytes_not_copied_are_counted() -> None:
    """The kernel copies a prefix of a large call; the rest of a known-length body is counted."""
    conn, out = server()
    body = 1_000_000
    head = f"POST /upload HTTP/1.1\r\nContent-Length: {body}\r\n\r\n".encode()
    conn.feed("recv", head + b"x" * 100, body - 100, 1.0)
    conn.feed("send", RESP, 0, 2.0)
    assert out[0].request is not None and out[0].request.size == len(head) + body
    assert conn.desyncs == 0


def test_missing_bytes_in_a_head_desynchronise_until_a_new_message() -> None:
    conn, out = server()
    conn.feed("recv", b"GET /lost HTTP/1.1\r\nHo", 500, 1.0)  # head cut, 500 bytes unseen
    conn.feed("recv", b"st: h\r\n\r\n", 0, 1.1)  # continuation: ignored while lost
    conn.feed("recv", REQ, 0, 2.0)  # a new request: followed again
    conn.feed("send", RESP, 0, 3.0)
    assert conn.desyncs == 1
    assert [(e.request.target if e.request else None) for e in out] == ["/a?x=1"]


def test_response_until_close_and_request_without_response() -> None:
    conn, out = server()
    conn.feed("send", REQ, 0, 1.0)
    conn.feed("recv", b"HTTP/1.0 200 OK\r\n\r\nbody...", 0, 2.0)
    conn.feed("recv", b"more", 0, 3.0)
    assert out == []
    conn.close(4.0)
    assert out[0].response is not None
    assert out[0].response.size == len(b"HTTP/1.0 200 OK\r\n\r\nbody...more")
    assert out[0].response.end_ts == 4.0

    conn2, out2 = server()
    conn2.feed("recv", REQ, 0, 1.0)
    conn2.close(2.0)
    assert len(out2) == 1 and out2[0].response is None


def test_interim_100_continue_and_204_304() -> None:
    conn, out = server()
    conn.feed("recv", POST, 0, 1.0)
    conn.feed("send", b"HTTP/1.1 100 Continue\r\n\r\n", 0, 1.1)
    conn.feed("send", b"HTTP/1.1 204 No Content\r\n\r\n", 0, 1.2)
    conn.feed("recv", REQ, 0, 2.0)
    conn.feed("send", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n", 0, 2.1)
    assert [(e.response.status if e.response else 0) for e in out] == [204, 304]


def test_switching_protocols_stops_following() -> None:
    conn, out = server()
    conn.feed("recv", b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n", 0, 1.0)
    conn.feed("send", b"HTTP/1.1 101 Switching Protocols\r\n\r\n", 0, 1.1)
    conn.feed("recv", b"\x81\x05hello", 0, 1.2)
    conn.feed("send", b"GET / HTTP/1.1\r\n\r\n", 0, 1.3)  # websocket payload, not HTTP
    assert [(e.response.status if e.response else 0) for e in out] == [101]
    assert conn.desyncs == 0


def test_not_http_is_ignored() -> None:
    conn, out = server()
    conn.feed("recv", b"\x16\x03\x01\x02\x00", 0, 1.0)
    conn.feed("send", b"SSH-2.0-OpenSSH\r\n", 0, 1.1)
    assert out == [] and conn.role == ""


def test_bad_head_loses_the_stream() -> None:
    conn, out = server()
    conn.feed("recv", b"GET / HTTP/1.1\r\nContent-Length: nope\r\n\r\n", 0, 1.0)
    assert conn.desyncs == 1 and out == []


def test_oversized_head_is_abandoned() -> None:
    conn, out = server()
    conn.feed("recv", b"GET / HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 20_000, 0, 1.0)
    conn.feed("send", RESP, 0, 2.0)
    assert conn.desyncs == 1
    assert [(e.request, e.response.status if e.response else 0) for e in out] == [(None, 200)]


def test_requests_after_a_large_body_in_the_same_call_are_seen_in_its_tail() -> None:
    """The kernel copies a long call's first and last bytes; requests pipelined after a body survive."""
    body = 200_000
    blob = REQ + f"POST /up HTTP/1.1\r\nContent-Length: {body}\r\n\r\n".encode() + b"b" * body + REQ + POST
    head, tail = blob[:6144], blob[-2048:]
    conn, out = server()
    conn.feed("recv", head, len(blob) - len(head) - len(tail), 1.0, tail)
    for _ in range(4):
        conn.feed("send", RESP, 0, 2.0)
    assert [(e.request.method, e.request.target, e.request.size) for e in out if e.request] == [
        ("GET", "/a?x=1", len(REQ)),
        ("POST", "/up", len(blob) - 2 * len(REQ) - len(POST)),
        ("GET", "/a?x=1", len(REQ)),
        ("POST", "/p", len(POST)),
    ]
    assert conn.desyncs == 0
