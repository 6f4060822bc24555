"""A backend that fails on command: the first line of MODE_FILE says how it answers.

usage: flakyserver.py PORT MODE_FILE     modes: ok | 500 | slow (0.3 s, then 200)
"""

from __future__ import annotations

import socket
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    mode_file = Path("/dev/null")

    def do_GET(self) -> None:
        mode = (self.mode_file.read_text().split() or ["ok"])[0]
        if mode == "slow":
            time.sleep(0.3)
        status = 500 if mode == "500" else 200
        body = f"{mode}\n".encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    address_family = socket.AF_INET6

    def handle_error(self, request: object, client_address: object) -> None:
        pass


if __name__ == "__main__":
    Handler.mode_file = Path(sys.argv[2])
    Server(("::", int(sys.argv[1])), Handler).serve_forever()
