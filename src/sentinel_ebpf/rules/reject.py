"""How a blocked request looks to clients (the ``reject`` section).

```yaml
reject:
  http: {status: 429, body: "Too Many Requests\\n", headers: {Retry-After: "1"}}
  # or http: {mode: rst} / {mode: drop}
  tcp: rst    # or drop
  incomplete: drop   # or pass: a request line split over several segments, IP fragments, deep IPv6 chains
  deferAccept: [8080]   # ports whose handshakes complete with the first request (or true: every HTTP port)
```

``incomplete``: a request line that does not end in the segment where it starts cannot be matched. By
default (``drop``) the kernel drops that segment so that the client sends it again, merged with what
follows, and resets the connection after a few tries; ``pass`` lets such requests through unjudged
(counted per port as ``port_incomplete_passed``). The same choice covers what the kernel cannot read at
all: a first IP fragment to a protected port and IPv6 extension headers past the parser's bound are
dropped by default (a client could hide a SYN or request in them) and pass with ``pass``, counted.

``deferAccept``: on these ports (``true``: every port with HTTP resources) the bare ACK that completes a
client's handshake is dropped while the server's stack holds only the pending handshake, so the
connection is made by the client's first request, judged on the way (what ``TCP_DEFER_ACCEPT`` and
nginx's ``listen ... deferred`` do). A refused first request then resets the pending handshake: the
server accepts nothing and reads no reset. A client that connects and stays silent for longer than the
server's SYN-ACK retries (about a minute) is reset when it finally writes.

The HTTP answer is built in the kernel from the request packet, so the whole response (status line,
headers, the ``Content-Length`` and ``Connection: close`` added here, blank line and body) must fit in
``HTTP_RESPONSE_MAX_BYTES``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from sentinel_ebpf.rules._fields import RuleContext, type_name

SECTION = "reject"
HTTP_RESPONSE_MAX_BYTES = 512
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# Headers the kernel writes itself.
_RESERVED_HEADERS = ("content-length", "connection", "transfer-encoding")


@dataclass(frozen=True)
class HttpReject:
    mode: str = "response"  # "response", "rst", "drop"
    status: int = 429
    body: str = "Too Many Requests\n"
    headers: tuple[tuple[str, str], ...] = ()

    def response_bytes(self, keep_alive: bool = False) -> bytes:
        """The exact bytes sent to the client in "response" mode: with ``Connection: close`` when the
        connection ends with them, without when it is kept (the reply put in the connection's stream)."""
        try:
            reason = HTTPStatus(self.status).phrase
        except ValueError:
            reason = "Blocked"
        body = self.body.encode()
        lines = [f"HTTP/1.1 {self.status} {reason}"]
        lines += [f"{k}: {v}" for k, v in self.headers]
        lines += [f"Content-Length: {len(body)}", *(() if keep_alive else ("Connection: close",)), "", ""]
        return "\r\n".join(lines).encode() + body


@dataclass(frozen=True)
class RejectConfig:
    http: HttpReject = field(default_factory=HttpReject)
    tcp: str = "rst"  # "rst" or "drop"
    incomplete: str = "drop"  # "drop" or "pass"
    defer_accept: bool | tuple[int, ...] = False  # True: every HTTP port


def parse(raw: Any, ctx: RuleContext) -> RejectConfig:
    if raw is None:
        return RejectConfig()
    if not isinstance(raw, Mapping):
        ctx.add(f"reject must be an object {{http, tcp, incomplete}}, got {type_name(raw)}")
        return RejectConfig()
    for key in raw:
        if key not in ("http", "tcp", "incomplete", "deferAccept"):
            ctx.add(f"unknown key {key!r}; reject has http, tcp, incomplete and deferAccept", str(key))
    tcp = raw.get("tcp", "rst")
    if tcp not in ("rst", "drop"):
        ctx.add(f"tcp must be rst or drop, got {tcp!r}", "tcp")
        tcp = "rst"
    incomplete = raw.get("incomplete", "drop")
    if incomplete not in ("drop", "pass"):
        ctx.add(f"incomplete must be drop or pass, got {incomplete!r}", "incomplete")
        incomplete = "drop"
    return RejectConfig(
        http=_parse_http(raw.get("http"), ctx), tcp=tcp, incomplete=incomplete,
        defer_accept=_parse_defer_accept(raw.get("deferAccept", False), ctx),
    )  # fmt: skip


def _parse_defer_accept(raw: Any, ctx: RuleContext) -> bool | tuple[int, ...]:
    if isinstance(raw, bool):
        return raw
    if not isinstance(raw, list) or not all(
        isinstance(p, int) and not isinstance(p, bool) and 1 <= p <= 65535 for p in raw
    ):
        ctx.add(f"deferAccept must be true, false or a list of ports 1..65535, got {raw!r}", "deferAccept")
        return False
    return tuple(raw)


def _parse_http(raw: Any, ctx: RuleContext) -> HttpReject:
    def bad(reason: str, *keys: str) -> None:
        ctx.add(reason, ".".join(("http", *keys)), subpath=keys)

    if raw is None:
        return HttpReject()
    if isinstance(raw, str):
        raw = {"mode": raw}
    if not isinstance(raw, Mapping):
        bad(f"must be an object {{status, body, headers}} or {{mode: rst|drop}}, got {type_name(raw)}")
        return HttpReject()
    for key in raw:
        if key not in ("mode", "status", "body", "headers"):
            bad(f"unknown key {key!r}; http has mode, status, body, headers", str(key))
    mode = raw.get("mode", "response")
    if mode not in ("response", "rst", "drop"):
        bad(f"mode must be response, rst or drop, got {mode!r}", "mode")
        mode = "response"
    if mode != "response":
        for key in ("status", "body", "headers"):
            if key in raw:
                bad(f"{key} has no effect with mode {mode}", key)
        return HttpReject(mode=mode)
    status = raw.get("status", 429)
    if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
        bad(f"status must be an integer in 400..599, got {status!r}", "status")
        status = 429
    body = raw.get("body", HttpReject.body)
    if not isinstance(body, str):
        bad(f"body must be a string, got {type_name(body)}", "body")
        body = ""
    headers_raw = raw.get("headers", {})
    headers: list[tuple[str, str]] = []
    if not isinstance(headers_raw, Mapping):
        bad(f"headers must be an object {{Name: value}}, got {type_name(headers_raw)}", "headers")
    else:
        for name, value in headers_raw.items():
            sname = str(name)
            if not _TOKEN.match(sname):
                bad(f"invalid header name {sname!r}", "headers", sname)
                continue
            if sname.lower() in _RESERVED_HEADERS:
                bad(f"{sname} is set by sentinel-ebpf itself", "headers", sname)
                continue
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                bad(f"header value must be a string, got {type_name(value)}", "headers", sname)
                continue
            text = str(value)
            if any(c in text for c in "\r\n\0"):
                bad("header value must not contain CR, LF or NUL", "headers", sname)
                continue
            headers.append((sname, text))
    cfg = HttpReject(mode="response", status=status, body=body, headers=tuple(headers))
    size = len(cfg.response_bytes())
    if size > HTTP_RESPONSE_MAX_BYTES:
        bad(
            f"the response is {size} bytes; the kernel can send at most {HTTP_RESPONSE_MAX_BYTES} "
            "(shorten body or headers)"
        )
    return cfg
