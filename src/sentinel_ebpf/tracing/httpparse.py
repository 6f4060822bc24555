"""Reassembly of HTTP/1.x exchanges from the data a connection moved, call by call.

Pure Python, no kernel: the HTTP tracer (``tracing.http``) feeds it what the read/write system calls
(or OpenSSL) moved. A call may carry part of a message, several messages (pipelining), or more bytes than
were copied out of the kernel (only the first ``SE_HTTP_DATA_MAX`` are): the bytes not seen are
``missing`` and are counted as body when the framing says they are body. Where they would be a message
head or chunk framing the stream has lost its place; it waits for a call that starts a new message and
counts the desynchronisation.

Framing follows RFC 9112 section 6: ``Transfer-Encoding: chunked`` wins over ``Content-Length``; a response
to HEAD, a 1xx, 204 or 304 has no body; a response with neither header lasts until the connection closes;
a request with neither has no body. A 1xx response other than 101 is interim and does not answer the
request; 101 ends HTTP on the connection.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_HEAD = 16 * 1024  # a message head (start line + headers) larger than this is not followed

METHODS = (b"GET", b"POST", b"PUT", b"HEAD", b"DELETE", b"PATCH", b"OPTIONS", b"CONNECT", b"TRACE")
_STARTS = tuple(m + b" " for m in METHODS)


def starts_request(data: bytes) -> bool:
    return data.startswith(_STARTS)


def starts_response(data: bytes) -> bool:
    return data.startswith(b"HTTP/1.")


def _header(lower_head: bytes, marker: bytes) -> bytes | None:
    """The value of the header whose ``\\r\\nname:`` is ``marker``, in a lower-cased head."""
    i = lower_head.find(marker)
    if i < 0:
        return None
    i += len(marker)
    return lower_head[i : lower_head.find(b"\r\n", i)]


def _may_begin(data: bytes) -> bool:
    """Could these (fewer than 8) bytes be the start of a request or a response?"""
    return any(s.startswith(data) for s in (*_STARTS, b"HTTP/1."))


@dataclass(slots=True)
class Message:
    """One HTTP message: a request (method, target) or a response (status)."""

    start_ts: float  # when the call carrying its first byte returned
    end_ts: float = 0.0  # when the call carrying its last byte returned
    method: str = ""
    target: str = ""
    status: int = 0
    size: int = 0  # bytes on the wire (head + body as framed)
    head_size: int = 0
    keep_alive: bool = True


@dataclass
class Exchange:
    """A request and its response as one side of the connection saw them."""

    role: str  # "server" (read the request) or "client" (wrote it)
    request: Message | None  # None: the request was not seen (tracing started mid-connection)
    response: Message | None  # None: the connection closed before a response


_HEAD, _BODY, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILER, _UNTIL_CLOSE, _LOST, _OPAQUE = range(9)


class MessageStream:
    """One direction of a connection: a sequence of requests, or of responses."""

    def __init__(self, requests: bool, on_message: Callable[[Message], None],
                 response_framing: Callable[[Message], str] | None = None) -> None:  # fmt: skip
        self.requests = requests
        self.on_message = on_message
        # For responses: "none" (no body, e.g. HEAD), or "normal" (by the headers), asked per response.
        self.response_framing = response_framing
        self.state = _HEAD
        self.head = bytearray()
        self.remaining = 0
        self.current: Message | None = None
        self.desyncs = 0
        self.pending_line = bytearray()  # partial chunk-size or trailer line

    # --- helpers -------------------------------------------------------------------------------------

    def _finish(self, ts: float) -> None:
        msg = self.current
        assert msg is not None
        msg.end_ts = ts
        self.current = None
        self.state = _HEAD
        self.on_message(msg)

    def _lose(self) -> None:
        self.desyncs += 1
        self.state = _LOST
        self.current = None
        self.head.clear()
        self.pending_line.clear()

    def _starts_message(self, data: bytes) -> bool:
        return starts_request(data) if self.requests else starts_response(data)

    def _may_start(self, rest: bytes) -> bool:
        """Can a message start here: it does, or too few bytes arrived to tell."""
        if self._starts_message(rest[:8]):
            return True
        if len(rest) >= 8:
            return False
        starts = _STARTS if self.requests else (b"HTTP/1.",)
        return any(s.startswith(rest) for s in starts)

    def _parse_head(self, head: bytes, ts: float) -> bool:
        """Start ``self.current`` from a complete head; False when it is not a message we follow.

        Written for speed (the tracer parses every message it sees): a few searches in C over the
        lower-cased head instead of a loop over header lines.
        """
        parts = head[: head.find(b"\r\n")].split(b" ", 2)
        msg = self.current or Message(start_ts=ts)
        msg.head_size = msg.size = len(head)
        if self.requests:
            if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
                return False
            msg.method = parts[0].decode("ascii", "replace")
            msg.target = parts[1].decode("utf-8", "replace")
            version = parts[2]
        else:
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
                return False
            msg.status = int(parts[1])
            version = parts[0]
        lower = head.lower()
        length: int | None = None
        value = _header(lower, b"\r\ncontent-length:")
        if value is not None:
            try:
                length = int(value)
            except ValueError:
                return False
        value = _header(lower, b"\r\ntransfer-encoding:")
        chunked = value is not None and value.strip().endswith(b"chunked")
        connection = _header(lower, b"\r\nconnection:") or b""
        msg.keep_alive = (b"close" not in connection) and (
            version != b"HTTP/1.0" or b"keep-alive" in connection
        )
        self.current = msg
        if not self.requests:
            framing = self.response_framing(msg) if self.response_framing else "normal"
            if framing == "none" or 100 <= msg.status < 200 or msg.status in (204, 304):
                self.state, self.remaining = _BODY, 0
                return True
        if chunked:
            self.state = _CHUNK_SIZE
        elif length is not None:
            self.state, self.remaining = _BODY, max(length, 0)
        elif self.requests:
            self.state, self.remaining = _BODY, 0
        else:
            self.state = _UNTIL_CLOSE
        return True

    # --- input ---------------------------------------------------------------------------------------

    def feed(self, data: bytes, missing: int, ts: float) -> None:
        """The bytes one call moved: ``data`` seen, then ``missing`` more that were not copied."""
        state = self.state
        pos = 0
        n = len(data)
        if state == _HEAD and self.current is None and not missing:
            # Fast path, the common case: the call starts a message and holds its whole head.
            end = data.find(b"\r\n\r\n")
            if end >= 0 and self._starts_message(data):
                pos = end + 4
                self.current = Message(start_ts=ts)
                if not self._parse_head(data[:pos], ts):
                    self._lose()
                    return
                if self.state == _BODY and self.remaining == n - pos:
                    self.current.size += self.remaining
                    self.remaining = 0
                    self._finish(ts)
                    return
        elif state == _OPAQUE:
            return
        elif state == _LOST:
            if not self._starts_message(data):
                return
            self.state = _HEAD
        while True:
            st = self.state
            if st == _HEAD:
                if pos >= n:
                    break
                if self.current is None:
                    if not self._may_start(data[pos:]):
                        self._lose()
                        return
                    self.current = Message(start_ts=ts)
                start = max(0, len(self.head) - 3)
                self.head += data[pos:]
                end = self.head.find(b"\r\n\r\n", start)
                if end < 0:
                    if len(self.head) > MAX_HEAD:
                        self._lose()
                        return
                    pos = n
                    break
                consumed = end + 4 - (len(self.head) - (n - pos))
                head = bytes(self.head[: end + 4])
                self.head.clear()
                pos += consumed
                if not self._parse_head(head, ts):
                    self._lose()
                    return
                if self.state == _BODY and self.remaining == 0:
                    self._finish(ts)
                continue
            if st == _BODY:
                take = min(self.remaining, n - pos)
                pos += take
                self.remaining -= take
                assert self.current is not None
                self.current.size += take
                if self.remaining == 0:
                    self._finish(ts)
                    continue
                if pos >= n:
                    break
            if st == _UNTIL_CLOSE:
                assert self.current is not None
                self.current.size += n - pos
                pos = n
                break
            if st in (_CHUNK_SIZE, _TRAILER, _CHUNK_CRLF):
                if pos >= n:
                    break
                nl = data.find(b"\n", pos)
                if nl < 0:
                    self.pending_line += data[pos:]
                    if len(self.pending_line) > 1024:
                        self._lose()
                        return
                    self._grow(n - pos)
                    pos = n
                    break
                line = bytes(self.pending_line) + data[pos : nl + 1]
                self.pending_line.clear()
                self._grow(nl + 1 - pos)
                pos = nl + 1
                if st == _CHUNK_CRLF:
                    self.state = _CHUNK_SIZE
                    continue
                if st == _TRAILER:
                    if line.strip() == b"":
                        self._finish(ts)
                    continue
                size_text = line.split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    self._lose()
                    return
                if size == 0:
                    self.state = _TRAILER
                else:
                    self.state, self.remaining = _CHUNK_DATA, size
                continue
            if st == _CHUNK_DATA:
                take = min(self.remaining, n - pos)
                pos += take
                self.remaining -= take
                self._grow(take)
                if self.remaining == 0:
                    self.state = _CHUNK_CRLF
                    continue
                break
            break
        if missing:
            self._skip(missing)

    def _grow(self, count: int) -> None:
        if self.current is not None:
            self.current.size += count

    def _skip(self, missing: int) -> None:
        """Bytes that were moved but not copied: body if the framing says so, else we are lost."""
        if self.state == _UNTIL_CLOSE:
            self._grow(missing)
        elif self.state in (_BODY, _CHUNK_DATA) and missing <= self.remaining:
            self.remaining -= missing
            self._grow(missing)
            if self.remaining == 0 and self.state == _CHUNK_DATA:
                self.state = _CHUNK_CRLF
            # a body that ends here is finished by finish_body_now() with this call's time
        else:
            self._lose()

    def finish_body_now(self, ts: float) -> None:
        if self.state == _BODY and self.remaining == 0 and self.current is not None:
            self._finish(ts)

    def close(self, ts: float) -> None:
        """The connection closed: a message delimited by the close is complete."""
        if self.state == _UNTIL_CLOSE and self.current is not None:
            self._finish(ts)
        self.current = None

    def opaque(self) -> None:
        """Stop following (the connection switched protocols)."""
        self.state = _OPAQUE
        self.current = None


@dataclass
class HttpStream:
    """Both directions of one connection, pairing requests with responses in order."""

    on_exchange: Callable[[Exchange], None]
    role: str = ""  # "server" or "client", decided by the first message seen
    pending: deque[Message] = field(default_factory=deque)
    streams: dict[str, MessageStream] = field(default_factory=dict)  # by "recv"/"send"
    last_ts: float = 0.0
    early: dict[str, list[tuple[bytes, float]]] = field(default_factory=dict)

    def _stream(self, direction: str, data: bytes) -> MessageStream | None:
        stream = self.streams.get(direction)
        if stream is not None:
            return stream
        if not self.role:
            if starts_request(data):
                self.role = "server" if direction == "recv" else "client"
            elif starts_response(data):
                self.role = "client" if direction == "recv" else "server"
            else:
                return None
        return self._make_stream(direction)

    def _make_stream(self, direction: str) -> MessageStream:
        requests = (direction == "recv") == (self.role == "server")
        stream = (
            MessageStream(True, self._on_request)
            if requests
            else MessageStream(False, self._on_response, self._framing)
        )
        self.streams[direction] = stream
        return stream

    def _on_request(self, msg: Message) -> None:
        self.pending.append(msg)
        if len(self.pending) > 1024:  # a peer that never answers: keep the newest
            self.pending.popleft()

    def _framing(self, response: Message) -> str:
        if self.pending and self.pending[0].method == "HEAD":
            return "none"
        return "normal"

    def _on_response(self, msg: Message) -> None:
        if 100 <= msg.status < 200 and msg.status != 101:
            return  # interim: the final response is still to come
        request = self.pending.popleft() if self.pending else None
        self.on_exchange(Exchange(self.role, request, msg))
        if msg.status == 101:
            for stream in self.streams.values():
                stream.opaque()

    def feed(self, direction: str, data: bytes, missing: int, ts: float, tail: bytes = b"") -> None:
        """What one call moved: ``data``, then ``missing`` bytes not seen, then ``tail``."""
        self.last_ts = ts
        stream = self.streams.get(direction)
        if stream is not None and not missing and not self.early:  # fast path
            stream.feed(data, 0, ts)
            if stream.state == _BODY and stream.remaining == 0:
                stream.finish_body_now(ts)
            return
        early = self.early.get(direction)
        if early is not None:  # the first bytes were too few to tell what the stream is
            early.append((data, ts))
            data = b"".join(d for d, _ in early)
        stream = self._stream(direction, data)
        if stream is None:
            if len(data) < 8 and not missing and _may_begin(data):
                self.early.setdefault(direction, [(data, ts)])
            else:
                self.early.pop(direction, None)
            return
        for piece, piece_ts in self.early.pop(direction, [(data, ts)]):
            stream.feed(piece, 0, piece_ts)
            stream.finish_body_now(piece_ts)
        if missing:
            stream.feed(b"", missing, ts)
            stream.finish_body_now(ts)
        if tail:
            stream.feed(tail, 0, ts)
            stream.finish_body_now(ts)

    def close(self, ts: float) -> None:
        for stream in self.streams.values():
            stream.close(ts)
        while self.pending:  # requests the connection closed on: no response
            self.on_exchange(Exchange(self.role, self.pending.popleft(), None))

    @property
    def desyncs(self) -> int:
        return sum(s.desyncs for s in self.streams.values())
