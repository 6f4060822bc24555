"""A Unix-socket proxy in front of a server that can be made slow: every chunk of the server's answers is
held ``delay_s`` before it goes on (changeable while connections are open). For tests of what a client
does when its server answers, but late (a loaded Redis, a congested link).

    with SlowProxy(redis.socket) as proxy:   # proxy.url: unix:///tmp/.../proxy.sock
        proxy.delay_s = 0.08
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

from sentinel_ebpf._closing import Closing


class SlowProxy(Closing):
    def __init__(self, target: Path) -> None:
        self.target = target
        self.delay_s = 0.0
        self._dir = Path(tempfile.mkdtemp(prefix="se-slowproxy-"))
        self._dir.chmod(0o755)
        self.socket = self._dir / "proxy.sock"
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self.socket))
        self._listener.listen(64)
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        threading.Thread(target=self._accept, name="slowproxy", daemon=True).start()

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                server.connect(str(self.target))
            except OSError:
                client.close()  # the server is away: so is the proxy, for this client
                server.close()
                continue
            with self._lock:
                self._open += [client, server]
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, delayed: bool) -> None:
        try:
            while data := src.recv(65536):
                if delayed and self.delay_s > 0:
                    time.sleep(self.delay_s)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        with self._lock:
            for s in self._open:
                s.close()
            self._open.clear()
        shutil.rmtree(self._dir, ignore_errors=True)
