"""TCP connection storm for tracer.py (runs inside a test namespace).

usage: _conns.py serve PORT                  accept and close connections until killed
       _conns.py connect HOST PORT N [RATE]  open N connections (RATE per second, 0: as fast as possible),
                                             each closed at once with a RST (SO_LINGER 0: no TIME_WAIT)
``connect`` prints one JSON line: established, failed, start and end (CLOCK_MONOTONIC, ns).
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import time

LINGER_RST = struct.pack("ii", 1, 0)


def serve(port: int) -> None:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(4096)
    while True:
        conn, _ = srv.accept()
        conn.close()


def connect(host: str, port: int, n: int, rate: float) -> None:
    established = failed = 0
    period_ns = int(1e9 / rate) if rate > 0 else 0
    start = next_ns = time.monotonic_ns()
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.connect((host, port))
            established += 1
        except OSError:
            failed += 1
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
        s.close()
        if period_ns:
            next_ns += period_ns
            pause = next_ns - time.monotonic_ns()
            if pause > 0:
                time.sleep(pause / 1e9)
    end = time.monotonic_ns()
    print(json.dumps({"established": established, "failed": failed, "start_ns": start, "end_ns": end}))


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]))
    else:
        connect(
            sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]) if len(sys.argv) > 5 else 0
        )
