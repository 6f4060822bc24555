"""The dashboard's HTTP server (standard library ``http.server``: a handful of JSON endpoints and static
files need no framework, and no dependency is added to a root daemon's host).

Security:
- The page and its assets are public (nothing secret in them); every ``/api/`` request needs the token
  (``Authorization: Bearer TOKEN``) when the server listens on anything but loopback, which it refuses to
  do without ``--token-file``.
- State changes only by POST, and every POST needs the token, wherever the server listens (the control
  socket is root's: without a token any local user could change the rules through the dashboard). A POST
  must be ``application/json``, and its ``Origin`` (when sent) must be this server: a cross-site page can
  send neither the JSON body nor the Authorization header without a CORS preflight, which is never
  granted.
- On loopback the ``Host`` header must name loopback (a DNS-rebinding page cannot read the API).
- Every answer carries a strict Content-Security-Policy (scripts and styles from this server only, no
  framing), ``nosniff`` and ``no-referrer``; API answers are ``no-store``.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from sentinel_ebpf.dashboard.backend import Backend, BackendError

log = logging.getLogger("sentinel_ebpf.dashboard")
DEFAULT_LISTEN = "127.0.0.1:8719"
MAX_BODY_BYTES = 4 << 20
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'")  # fmt: skip
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".png": "image/png", ".txt": "text/plain; charset=utf-8"}  # fmt: skip


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) -> (host, port); ValueError says what is wrong."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen must be HOST:PORT, got {listen!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _static_files() -> dict[str, bytes]:
    root = resources.files("sentinel_ebpf.dashboard") / "static"
    out: dict[str, bytes] = {}

    def walk(node: Any, prefix: str) -> None:
        for child in node.iterdir():
            if child.is_dir():
                walk(child, f"{prefix}{child.name}/")
            else:
                out[prefix + child.name] = child.read_bytes()

    walk(root, "")
    return out


class DashboardServer:
    """Serves the page and the API until ``close``. ``token`` None: read-only, loopback only."""

    def __init__(self, backend: Backend, listen: str = DEFAULT_LISTEN, token: str | None = None) -> None:
        host, port = parse_listen(listen)
        self.loopback = is_loopback(host)
        if not self.loopback and not token:
            raise ValueError(f"listening on {host} (not loopback) needs a token: pass --token-file FILE")
        self.backend = backend
        self.token = token
        self.static = _static_files()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_cls = type(
            "_Server", (ThreadingHTTPServer,), {"address_family": family, "daemon_threads": True}
        )
        self._httpd: ThreadingHTTPServer = server_cls((host, port), _handler(self))
        self.port = int(self._httpd.server_address[1])
        shown = f"[{host}]" if family == socket.AF_INET6 else host
        self.url = f"http://{shown}:{self.port}/"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="dashboard", daemon=True)

    def start(self) -> DashboardServer:
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._httpd.serve_forever()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def host_allowed(self, host_header: str | None) -> bool:
        if not self.loopback:
            return True  # the token guards every API request there
        if not host_header:
            return False
        name = host_header.rsplit(":", 1)[0] if not host_header.endswith("]") else host_header
        return is_loopback(name.strip("[]"))

    def token_ok(self, header: str | None) -> bool:
        if not self.token or not header or not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header[7:].strip().encode(), self.token.encode())


def _handler(app: DashboardServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "sentinel-ebpf-dashboard"
        sys_version = ""

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s " + format, self.address_string(), *args)

        # -- answers ----------------------------------------------------------------------------------
        def _send(self, status: int, body: bytes, ctype: str, cache: bool = False) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Security-Policy", _CSP)
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("X-Frame-Options", "DENY")
            self.send_header("Referrer-Policy", "no-referrer")
            self.send_header("Cache-Control", "max-age=300" if cache else "no-store")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, doc: Any) -> None:
            self._send(status, json.dumps(doc).encode(), "application/json")

        def _error(self, status: int, message: str) -> None:
            self._json(status, {"error": message})

        # -- checks -----------------------------------------------------------------------------------
        def _guard(self, api: bool, post: bool) -> bool:
            """True when the request may go on; otherwise the refusal is sent."""
            if not app.host_allowed(self.headers.get("Host")):
                self._error(421, "this dashboard answers only to loopback host names (127.0.0.1, localhost)")
                return False
            if not api:
                return True
            needs_token = post or not app.loopback
            if needs_token and not app.token:
                self._error(403, "rule edits need a token: start the dashboard with --token-file FILE")
                return False
            if needs_token and not app.token_ok(self.headers.get("Authorization")):
                self._error(401, "missing or wrong token (Authorization: Bearer TOKEN)")
                return False
            if post:
                ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
                if ctype != "application/json":
                    self._error(415, "POST bodies must be application/json")
                    return False
                origin = self.headers.get("Origin")
                if origin is not None and urlsplit(origin).netloc != self.headers.get("Host"):
                    self._error(403, f"cross-origin request from {origin} refused")
                    return False
            return True

        # -- routes -----------------------------------------------------------------------------------
        def do_GET(self) -> None:
            url = urlsplit(self.path)
            api = url.path.startswith("/api/")
            if not self._guard(api, post=False):
                return
            try:
                if not api:
                    self._static(url.path)
                    return
                query = parse_qs(url.query)
                parts = url.path.strip("/").split("/")[1:]
                self._json(200, self._get(parts, query))
            except BackendError as exc:
                self._error(exc.status, str(exc))
            except Exception as exc:  # an answer, never a dropped connection
                log.exception("GET %s", self.path)
                self._error(500, f"internal error: {type(exc).__name__}: {exc}")

        do_HEAD = do_GET

        def _static(self, path: str) -> None:
            name = "index.html" if path in ("/", "/index.html") else path.removeprefix("/static/")
            body = app.static.get(name) if name == "index.html" or path.startswith("/static/") else None
            if body is None:
                self._error(404, f"no page {path}")
                return
            ext = name[name.rfind(".") :]
            self._send(200, body, _TYPES.get(ext, "application/octet-stream"), cache=name != "index.html")

        def _get(self, parts: list[str], query: dict[str, list[str]]) -> Any:
            if parts == ["overview"]:
                return {
                    "daemons": app.backend.daemons(),
                    "token_required": not app.loopback,
                    "edits_enabled": bool(app.token),
                }
            if parts == ["doctor"]:
                return app.backend.doctor.summary()
            if parts == ["fleet"]:
                return app.backend.fleet()
            if len(parts) == 3 and parts[0] == "daemons":
                daemon = _int(parts[1], "daemon")
                if parts[2] == "stats":
                    return app.backend.stats(daemon)
                if parts[2] == "metrics":
                    return app.backend.metrics(daemon, _int(query.get("since", ["0"])[0], "since"))
                if parts[2] == "rules":
                    return app.backend.rules(daemon)
            raise BackendError(404, f"no API endpoint {self.path}")

        def do_POST(self) -> None:
            url = urlsplit(self.path)
            if not self._guard(True, post=True):
                return
            try:
                body = self._body()
                parts = url.path.strip("/").split("/")[1:]
                if len(parts) == 4 and parts[0] == "daemons" and parts[2] == "rules":
                    daemon = _int(parts[1], "daemon")
                    if parts[3] == "check":
                        self._json(200, app.backend.check(daemon, body.get("document")))
                        return
                    if parts[3] == "apply":
                        self._json(200, app.backend.apply(daemon, body.get("document"), body.get("base")))
                        return
                raise BackendError(404, f"no API endpoint POST {self.path}")
            except BackendError as exc:
                self._error(exc.status, str(exc))
            except Exception as exc:
                log.exception("POST %s", self.path)
                self._error(500, f"internal error: {type(exc).__name__}: {exc}")

        def _body(self) -> dict[str, Any]:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                raise BackendError(413, f"request body over {MAX_BODY_BYTES} bytes")
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                raise BackendError(400, "the request body is not JSON") from None
            if not isinstance(body, dict):
                raise BackendError(400, "the request body must be a JSON object")
            return body

        def _method_not_allowed(self) -> None:
            self._error(HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} is not supported")

        do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _method_not_allowed

    return Handler


def _int(text: str, what: str) -> int:
    if not text.isdigit():
        raise BackendError(400, f"{what} must be a non-negative integer, got {text!r}")
    return int(text)
