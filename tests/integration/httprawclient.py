"""HTTP/1.1 client for the HTTP tracer tests: exact bytes out, exact bytes in, optionally pipelined.

usage: httprawclient.py HOST PORT (plain|tls) (pipeline|sequential) REQUEST...
where REQUEST is ``GET:/path`` or ``POST:/path:N`` (an N-byte body). Prints one JSON object: the local
port and, per request, the path, the bytes sent, the status and the bytes received (head + body).
"""

from __future__ import annotations

import json
import socket
import ssl
import sys
from typing import Any, BinaryIO


def build(spec: str, host: str) -> tuple[str, bytes]:
    method, path, *rest = spec.split(":")
    body = b"b" * int(rest[0]) if rest else b""
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: httprawclient\r\n"
    if method == "POST":
        head += f"Content-Length: {len(body)}\r\n"
    return path, (head + "\r\n").encode() + body


def read_response(f: BinaryIO) -> tuple[int, int]:
    """(status, bytes) of one response: head, then a Content-Length or chunked body."""
    size = 0
    status_line = f.readline()
    size += len(status_line)
    status = int(status_line.split()[1])
    length = 0
    chunked = False
    while True:
        line = f.readline()
        size += len(line)
        if line in (b"\r\n", b""):
            break
        name, _, value = line.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
        elif name.lower() == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    if not chunked:
        size += len(f.read(length))
        return status, size
    while True:
        line = f.readline()
        size += len(line)
        n = int(line.split(b";")[0], 16)
        size += len(f.read(n + 2)) if n else 0
        if n == 0:
            size += len(f.readline())  # the empty trailer line
            return status, size


def main() -> None:
    host, port, mode, order, *specs = sys.argv[1:]
    sock: Any = socket.create_connection((host, int(port)), timeout=20)
    if mode == "tls":
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        sock = ctx.wrap_socket(sock, server_hostname=host)
    f = sock.makefile("rb")
    requests = [build(s, host) for s in specs]
    out: list[dict[str, Any]] = []
    if order == "pipeline":
        sock.sendall(b"".join(raw for _, raw in requests))
        for path, raw in requests:
            status, size = read_response(f)
            out.append({"path": path, "sent": len(raw), "status": status, "received": size})
    else:
        for path, raw in requests:
            sock.sendall(raw)
            status, size = read_response(f)
            out.append({"path": path, "sent": len(raw), "status": status, "received": size})
    print(json.dumps({"local_port": sock.getsockname()[1], "exchanges": out}))
    sock.close()


if __name__ == "__main__":
    main()
