"""The demo HTTP server the built-in example protects."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from sentinel_ebpf._plainhttp import PlainHandler, ResetTolerantServer

DEFAULT_RULES = Path(__file__).with_name("default_rules.yaml")
DEMO_HOST, DEMO_PORT = "127.0.0.1", 18080


class _Handler(PlainHandler):
    def do_GET(self) -> None:
        if self.path.startswith("/slow"):
            time.sleep(0.5)
        self.reply(200, f"hello from the sentinel-ebpf demo: {self.path}\n".encode())


class DemoServer:
    def __init__(self, host: str = DEMO_HOST, port: int = DEMO_PORT) -> None:
        self.server = ResetTolerantServer((host, port), _Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="demo-server", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
