"""A threaded HTTP server for the server namespace: /slow answers after SLOW_S seconds, the rest at once.

usage: slowserver.py PORT [SLOW_S]
"""

from __future__ import annotations

import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    slow_s = 1.0

    def do_GET(self) -> None:
        if self.path.startswith("/slow"):
            time.sleep(self.slow_s)
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    address_family = __import__("socket").AF_INET6

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # blocked requests arrive as RSTs


if __name__ == "__main__":
    Handler.slow_s = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
    Server(("::", int(sys.argv[1])), Handler).serve_forever()
