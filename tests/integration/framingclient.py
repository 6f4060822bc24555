"""Send HTTP requests in pieces, as a hostile client would: exact bytes, one send() per piece.

usage: framingclient.py HOST PORT DELAY_MS NODELAY(0|1) RESPONSES PIECE...   (each PIECE is a Python bytes
literal; a tuple ``("oob", b"X")`` sends its bytes with MSG_OOB: the last byte is marked urgent) Reads until RESPONSES status lines came, or the connection ended. Prints one JSON object: the
status of the first answer (0: none), its first line, every answer's status in order and the milliseconds
from the first send to the answers.
"""

from __future__ import annotations

import ast
import json
import re
import socket
import sys
import time


def main() -> None:
    host, port, delay_ms, nodelay = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "1"
    responses = int(sys.argv[5])
    pieces = [ast.literal_eval(p) for p in sys.argv[6:]]
    sock = socket.create_connection((host, port), timeout=10)
    if nodelay:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    start = time.monotonic()
    for i, piece in enumerate(pieces):
        if i:
            time.sleep(delay_ms / 1000)
        if isinstance(piece, tuple):
            sock.send(piece[1], socket.MSG_OOB)
        else:
            sock.sendall(piece)
    data = b""
    try:
        while len(statuses(data)) < responses:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    elapsed_ms = (time.monotonic() - start) * 1000
    line = data.split(b"\r\n", 1)[0].decode(errors="replace")
    status = int(line.split()[1]) if line.startswith("HTTP/") and len(line.split()) > 1 else 0
    print(
        json.dumps({"status": status, "line": line, "statuses": statuses(data), "ms": round(elapsed_ms, 1)})
    )


def statuses(data: bytes) -> list[int]:
    """The status of each response in `data` (the status lines; the bodies here hold none)."""
    return [int(m) for m in re.findall(rb"HTTP/1\.[01] (\d{3}) ", data)]


if __name__ == "__main__":
    main()
