"""Send one HTTP request in pieces, as a hostile client would: exact bytes, one send() per piece.

usage: framingclient.py HOST PORT DELAY_MS NODELAY(0|1) PIECE...   (each PIECE is a Python bytes literal)
Prints one JSON object: the status of the answer (0: none), its first line and the milliseconds from the
first send to the answer.
"""

from __future__ import annotations

import ast
import json
import socket
import sys
import time


def main() -> None:
    host, port, delay_ms, nodelay = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "1"
    pieces = [ast.literal_eval(p) for p in sys.argv[5:]]
    sock = socket.create_connection((host, port), timeout=10)
    if nodelay:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    start = time.monotonic()
    for i, piece in enumerate(pieces):
        if i:
            time.sleep(delay_ms / 1000)
        sock.sendall(piece)
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    elapsed_ms = (time.monotonic() - start) * 1000
    line = data.split(b"\r\n", 1)[0].decode(errors="replace")
    status = int(line.split()[1]) if line.startswith("HTTP/") and len(line.split()) > 1 else 0
    print(json.dumps({"status": status, "line": line, "ms": round(elapsed_ms, 1)}))


if __name__ == "__main__":
    main()
