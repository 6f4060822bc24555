"""The demo HTTP server the built-in example protects."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

DEFAULT_RULES = Path(__file__).with_name("default_rules.yaml")
DEMO_HOST, DEMO_PORT = "127.0.0.1", 18080


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path.startswith("/slow"):
            time.sleep(0.5)
        body = f"hello from the sentinel-ebpf demo: {self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # A blocked request reaches the server as a RST (ECONNRESET): that is the point, not an error.
        pass


class DemoServer:
    def __init__(self, host: str = DEMO_HOST, port: int = DEMO_PORT) -> None:
        self.server = _Server((host, port), _Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="demo-server", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
