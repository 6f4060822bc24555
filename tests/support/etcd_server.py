"""A real etcd (Debian's etcd-server, /usr/bin/etcd) for tests: one member, a temporary data directory,
listening on loopback only, in the host's namespace or inside a test namespace. ``stop`` and ``start``
again keep the data (revisions go on), as a restarted etcd would.

    with EtcdServer(tmp_path) as etcd:            # host namespace, free loopback ports
        etcd.url("/sentinel/rules")               # etcd://127.0.0.1:PORT/sentinel/rules
    EtcdServer(dir, pair=pair).start()           # inside pair.server, on its 127.0.0.1:2379
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from .netns import CLEAN_ENV, NetnsPair, stop_process

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EtcdServer:
    def __init__(
        self,
        workdir: Path,
        pair: NetnsPair | None = None,
        tls: dict[str, str] | None = None,
        also_on: str | None = None,
    ) -> None:
        """``tls``: {"cert", "key", "ca"} files: serve HTTPS and require client certificates from ``ca``.
        ``also_on``: another local address to serve clients on (the server's veth address, for clients
        in the pair's client namespace)."""
        self.dir = workdir / "etcd"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pair = pair
        self.tls = tls
        # a namespace of the test's own has every port free; the host's shares them with other tests
        self.port, self.peer_port = (2379, 2380) if pair else (free_port(), free_port())
        self.also_on = also_on
        self.proc: subprocess.Popen[Any] | None = None

    def url(self, key: str) -> str:
        return f"{'etcds' if self.tls else 'etcd'}://127.0.0.1:{self.port}{key}"

    def start(self, timeout: float = 30) -> EtcdServer:
        if not Path(ETCD).exists():
            raise FileNotFoundError("etcd is not installed (apt-get install etcd-server)")
        scheme = "https" if self.tls else "http"
        client = f"{scheme}://127.0.0.1:{self.port}"
        listen = client + (f",{scheme}://{self.also_on}:{self.port}" if self.also_on else "")
        peer = f"http://127.0.0.1:{self.peer_port}"
        argv = [ETCD, "--name", "test", "--data-dir", str(self.dir / "data"), "--listen-client-urls", listen,
                "--advertise-client-urls", client, "--listen-peer-urls", peer, "--initial-advertise-peer-urls",
                peer, "--initial-cluster", f"test={peer}", "--log-outputs", "stderr"]  # fmt: skip
        if self.tls:
            argv += ["--cert-file", self.tls["cert"], "--key-file", self.tls["key"], "--client-cert-auth",
                     "--trusted-ca-file", self.tls["ca"]]  # fmt: skip
        log = open(self.dir / "etcd.log", "a")  # noqa: SIM115 - the child keeps it
        with log:
            if self.pair is not None:
                self.proc = self.pair.popen(self.pair.server, *argv, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT)  # fmt: skip
            else:
                self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                             env=CLEAN_ENV, start_new_session=True)  # fmt: skip
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while "ready to serve client requests" not in self.log():
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"etcd not ready after {timeout}s:\n{self.log()[-3000:]}")
            time.sleep(0.05)

    def log(self) -> str:
        path = self.dir / "etcd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None
            (self.dir / "etcd.log").write_text("")  # the next start waits for its own "ready" line

    def __enter__(self) -> EtcdServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
