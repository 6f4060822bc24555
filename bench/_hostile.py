"""Requests for one resource written every way a hostile client might (helper of hostile_mix.py; runs in
the client namespace).

usage: _hostile.py HOST PORT SECONDS RATE [WORKERS [FRAMING,...]]
RATE connections per second in all, started evenly for SECONDS, each carrying one framing after another
of FRAMINGS (round robin), on WORKERS threads. Each connection writes its parts as separate segments
(TCP_NODELAY, 2 ms apart), then reads until it has a status line for every request it wrote (a request
before the one for /api has its own), the server closes, or 1 s passes, and counts the status lines. Prints one JSON object: per framing, connections made, requests written for
the resource, and status lines read by code.
"""

from __future__ import annotations

import json
import queue
import re
import socket
import sys
import threading
import time
from collections import Counter, defaultdict

REQ = b" HTTP/1.1\r\nHost: svc\r\n\r\n"
STATUS = re.compile(rb"HTTP/1\.[01] (\d{3}) ")
# framing -> (segments written, requests for the resource in them). Every one asks for /api; two also
# carry a POST to another path before it (RESPONSES counts what comes back).
FRAMINGS: dict[str, tuple[list[bytes], int]] = {
    "plain": ([b"GET /api" + REQ], 1),
    "split_line": ([b"GE", b"T /a", b"pi" + REQ], 1),
    "pipelined_3": ([(b"GET /api" + REQ) * 3], 3),
    "after_body": ([b"POST /form HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\n\r\nhelloGET /api" + REQ], 1),
    "chunked_then": (
        [
            b"POST /form HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            b"GET /api" + REQ
        ],
        1,
    ),
    "absolute_form": ([b"GET http://svc/api" + REQ], 1),
    "percent": ([b"GET /%61pi" + REQ], 1),
    "dot_segments": ([b"GET /x/../api" + REQ], 1),
    "double_slash": ([b"GET //api" + REQ], 1),
    "leading_crlf": ([b"\r\n\r\nGET /api" + REQ], 1),
    "spaces": ([b"GET   /api" + REQ], 1),
    "head": ([b"HEAD /api" + REQ], 1),
    "with_fin": ([b"GET /api HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n"], 1),
}


RESPONSES = {name: n + (name in ("after_body", "chunked_then")) for name, (_, n) in FRAMINGS.items()}


def one(host: str, port: int, name: str) -> Counter[str]:
    parts, _ = FRAMINGS[name]
    got: Counter[str] = Counter()
    try:
        s = socket.create_connection((host, port), timeout=2)
    except OSError:
        got["connect_failed"] += 1
        return got
    try:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i, part in enumerate(parts):
            if i:
                time.sleep(0.002)
            s.sendall(part)
        if name == "with_fin":
            s.shutdown(socket.SHUT_WR)
        s.settimeout(1.0)
        data = b""
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                got["reset"] += 1
                break
            if not chunk:
                break
            data += chunk
            if len(STATUS.findall(data)) >= RESPONSES[name]:
                break
        for code in STATUS.findall(data):  # (bodies here hold no status line; they end without CRLF)
            got[code.decode()] += 1
    except OSError:
        got["error"] += 1
    finally:
        s.close()
    return got


def main() -> None:
    host, port, seconds, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
    workers = int(sys.argv[5]) if len(sys.argv) > 5 else 64
    names = sys.argv[6].split(",") if len(sys.argv) > 6 else list(FRAMINGS)
    jobs: queue.Queue[str | None] = queue.Queue()
    results: defaultdict[str, Counter[str]] = defaultdict(Counter)
    lock = threading.Lock()

    def work() -> None:
        while (name := jobs.get()) is not None:
            got = one(host, port, name)
            with lock:
                results[name].update(got)
                results[name]["connections"] += 1
                results[name]["requests"] += FRAMINGS[name][1]

    threads = [threading.Thread(target=work, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    start = time.monotonic()
    n = 0
    while time.monotonic() - start < seconds:
        time.sleep(max(0.0, start + n / rate - time.monotonic()))
        jobs.put(names[n % len(names)])
        n += 1
    for _ in threads:
        jobs.put(None)
    for t in threads:
        t.join(timeout=10)
    print(json.dumps({name: dict(c) for name, c in sorted(results.items())}))


if __name__ == "__main__":
    main()
