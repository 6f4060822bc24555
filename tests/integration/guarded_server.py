"""Run inside the server namespace: a recording HTTP server behind the inbound data plane.

usage: guarded_server.py RULES_YAML IFACE PORT
Prints "ready" once attached and listening, then one JSON line per connection the server saw:
{"requests": [first request lines], "reset": bool}. Stops on SIGTERM, printing the data-plane counters.
IFACE "-": no data plane (a recording server for callers judged elsewhere; counters and stats empty).
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import sys
import threading
from types import FrameType

from sentinel_ebpf.enforce import InboundDataplane
from sentinel_ebpf.rules import load_file

lock = threading.Lock()


def emit(obj: object) -> None:
    with lock:
        print(json.dumps(obj), flush=True)


def handle(conn: socket.socket) -> None:
    seen: list[str] = []
    reset = False
    buf = b""
    try:
        while True:
            data = conn.recv(65536)
            if not data:
                break
            buf += data
            while b"\r\n\r\n" in buf:
                head, buf = buf.split(b"\r\n\r\n", 1)
                line = head.split(b"\r\n", 1)[0].decode()
                seen.append(line)
                body = f"served {line}\n".encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    except ConnectionResetError:
        reset = True
    finally:
        conn.close()
        emit({"requests": seen, "reset": reset})


def main() -> None:
    rules_path, iface, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    srv = socket.socket(socket.AF_INET6)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("::", port))
    srv.listen(64)
    with contextlib.ExitStack() as stack:
        dp = None
        if iface != "-":
            dp = stack.enter_context(InboundDataplane())
            dp.apply(dp.compile(load_file(rules_path)))
            dp.attach(iface)

        def stop(signum: int, frame: FrameType | None) -> None:
            emit(
                {
                    "counters": dp.counters() if dp else {},
                    "stats": {s.name: [s.passed, s.blocked] for s in dp.resource_stats()} if dp else {},
                }
            )
            stack.close()
            sys.exit(0)

        signal.signal(signal.SIGTERM, stop)
        emit("ready")
        while True:
            conn, _ = srv.accept()
            threading.Thread(target=handle, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
