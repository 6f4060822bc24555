"""What the small HTTP/1.1 servers share (the built-in demo's, the test backends'): a keep-alive handler
that logs nothing and answers whole bodies, and a server that takes a blocked request's reset calmly."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class PlainHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 (keep-alive), no request log; ``reply`` sends a body with its Content-Length."""

    protocol_version = "HTTP/1.1"

    def reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class ResetTolerantServer(ThreadingHTTPServer):
    """A thread per connection (daemon threads). A request that sentinel-ebpf blocks reaches the server as
    a RST (ECONNRESET): that is the point, not an error to print."""

    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass
