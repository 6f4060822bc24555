"""One keep-alive connection, batches of HTTP requests: requests refused (/c, each sent once every
earlier response was read: nothing is owed then), pipelined requests,
a request after a Content-Length body, after a chunked body, bodies that hold request-like bytes and
span several segments. Each batch is written in one to three send() calls split at random points, 2 ms
apart (so that segments start inside heads and bodies), never inside a request line: a request line
split over the writes of a client whose losses hold it to one segment in flight is the limit
docs/inbound.md names (dropped until the connection is reset: the client cannot merge into its
retransmission what it has not sent). Reads each batch's responses before the next.

usage: pipelineclient.py HOST PORT BATCHES SEED
Prints {"statuses": [...], "expect": [...], "sent": {path: n}}: every response's status in order, the
statuses expected (/c is refused: 429, the others 200) and how many requests went to each path.
"""

from __future__ import annotations

import json
import random
import re
import socket
import sys
import time
from collections import Counter

FAKE = b"GET /a HTTP/1.1\r\nHost: svc\r\n\r\n"  # request-like bytes inside bodies


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: svc\r\n\r\n".encode()


def body(rng: random.Random) -> bytes:
    return b"".join(
        rng.choice([FAKE, b"x" * rng.randint(1, 3000), b"\r\n\r\n"]) for _ in range(rng.randint(1, 4))
    )


def batch(rng: random.Random, sent: Counter[str], expect: list[int]) -> tuple[bytes, int]:
    """One batch's bytes and how many responses it gets; `expect` gets their statuses (/c: 429)."""
    kind = rng.choice(["single", "pipelined", "length", "chunked", "limited"])
    if kind in ("single", "limited"):
        path = rng.choice(["/a", "/b"]) if kind == "single" else "/c"
        sent[path] += 1
        expect.append(429 if path == "/c" else 200)
        return get(path), 1
    if kind == "pipelined":
        sent["/a"] += 1
        sent["/b"] += 1
        expect += [200, 200]
        return get("/a") + get("/b"), 2
    expect += [200, 200]
    data = body(rng)
    sent["/up"] += 1
    sent["/b"] += 1
    if kind == "length":
        head = b"POST /up HTTP/1.1\r\nHost: svc\r\nContent-Length: %d\r\n\r\n" % len(data)
        return head + data + get("/b"), 2
    cuts = sorted(rng.sample(range(1, len(data)), min(2, len(data) - 1))) if len(data) > 1 else []
    parts = [data[i:j] for i, j in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts if p)
    head = b"POST /up HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n"
    return head + chunks + b"0\r\n\r\n" + get("/b"), 2


def split_points(data: bytes) -> list[int]:
    """Where a batch may be split: anywhere but inside a request line (from a request's start to its end)."""
    inside: set[int] = set()
    for m in re.finditer(rb"(?:GET|POST) /\w+ HTTP/1\.1\r\n", data):
        if m.start() == 0 or data[m.start() - 2 : m.start()] == b"\r\n":
            inside.update(range(m.start() + 1, m.end()))
    return [i for i in range(1, len(data)) if i not in inside]


def read_responses(sock: socket.socket, buf: bytes, n: int) -> tuple[list[int], bytes]:
    statuses: list[int] = []
    while len(statuses) < n:
        m = re.match(rb"HTTP/1\.1 (\d{3}) [^\r\n]*\r\n(.*?)\r\n\r\n", buf, re.S)
        if m:
            length = re.search(rb"(?i)content-length: *(\d+)", m.group(2))
            end = m.end() + (int(length.group(1)) if length else 0)
            if len(buf) >= end:
                statuses.append(int(m.group(1)))
                buf = buf[end:]
                continue
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
    return statuses, buf


def main() -> None:
    host, port, batches, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    rng = random.Random(seed)
    sent: Counter[str] = Counter()
    statuses: list[int] = []
    expect: list[int] = []
    buf = b""
    with socket.create_connection((host, port), timeout=20) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(batches):
            data, n = batch(rng, sent, expect)
            splits = sorted(rng.sample(split_points(data), rng.randint(0, 2)))
            for i, j in zip([0, *splits], [*splits, len(data)], strict=True):
                if i:
                    time.sleep(0.002)
                sock.sendall(data[i:j])
            got, buf = read_responses(sock, buf, n)
            statuses += got
            if len(got) < n:
                break
    print(json.dumps({"statuses": statuses, "expect": expect, "sent": dict(sent)}))


if __name__ == "__main__":
    main()
