"""Probe an HTTP server as fast as one connection per request allows, printing ``<monotonic> <status>``.

usage: _prober.py HOST PORT SECONDS   (run inside the client namespace; CLOCK_MONOTONIC is host-wide)
A reset or refused connection prints status 0.
"""

from __future__ import annotations

import socket
import sys
import time


def main() -> None:
    host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    request = f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    end = time.monotonic() + seconds
    out = sys.stdout
    while time.monotonic() < end:
        status = 0
        try:
            with socket.create_connection((host, port), timeout=2) as s:
                s.sendall(request)
                head = s.recv(64)
                if head.startswith(b"HTTP/1."):
                    status = int(head[9:12])
        except OSError:
            pass
        out.write(f"{time.monotonic():.6f} {status}\n")
        out.flush()
        time.sleep(0.0005)


if __name__ == "__main__":
    main()
