"""A real ``redis-server`` for tests and benchmarks: on a Unix socket in a temporary directory (reachable
from every network namespace, which share the filesystem) or on a loopback port; a Redis Cluster of a few
loopback nodes. Everything is stopped and removed on close, also when a test fails.

    with RedisServer() as r:               # unix socket
        r.url                              # unix:///tmp/.../redis.sock
        r.stop(); r.start()                # Redis goes away and comes back on the same socket
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from sentinel_ebpf._closing import Closing

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


def have_redis() -> bool:
    return Path(REDIS_SERVER).exists()


def require_redis() -> None:
    """Skip without redis-server; under CI=true, where scripts/setup.sh installs it, fail instead."""
    import pytest

    if not have_redis():
        if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
            pytest.fail("redis-server is not installed (scripts/setup.sh installs it)")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(cluster: bool = False) -> int:
    """A free loopback port; for a cluster node, one whose bus port (+10000) is free too."""
    if not cluster:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])
    rnd = random.Random()
    for _ in range(100):
        port = rnd.randrange(20000, 45000)
        if _free(port) and _free(port + 10000):
            return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


class RedisServer(Closing):
    def __init__(self, *, port: int = 0, cluster: bool = False, tls: bool = False,
                 directory: Path | None = None) -> None:  # fmt: skip
        """``port`` 0: a Unix socket only; else that loopback port (``cluster``: in cluster mode; ``tls``:
        TLS on it, with a self-signed certificate made here by openssl)."""
        self.port = port
        self.cluster = cluster
        self.tls = tls
        self._own_dir = directory is None
        self.dir = directory or Path(tempfile.mkdtemp(prefix="se-redis-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o755)
        self.socket = self.dir / "redis.sock"
        self.proc: subprocess.Popen[Any] | None = None

    @property
    def url(self) -> str:
        if self.tls:
            return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={self.dir / 'cert.pem'}"
        return f"redis://127.0.0.1:{self.port}" if self.port else f"unix://{self.socket}"

    def start(self) -> RedisServer:
        argv = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.dir), "--unixsocket", str(self.socket), "--unixsocketperm", "777"]  # fmt: skip
        if self.cluster:
            argv += ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{self.port}.conf"]
        if self.tls:
            cert, key = self.dir / "cert.pem", self.dir / "key.pem"
            if not cert.exists():
                subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                                "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext",
                                "subjectAltName=IP:127.0.0.1"], capture_output=True, timeout=60, check=True)  # fmt: skip
            argv[1:3] = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(cert),
                         "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"]  # fmt: skip
        log = open(self.dir / f"redis-{self.port}.log", "a")  # noqa: SIM115 - the child keeps it
        with log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + 10
        while not self.ping():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start: {self.log()}")
            time.sleep(0.02)
        return self

    def ping(self) -> bool:
        if not self.socket.exists():
            return False
        res = subprocess.run([REDIS_CLI, "-s", str(self.socket), "ping"], capture_output=True, text=True,
                             timeout=5, check=False)  # fmt: skip
        return res.stdout.strip() == "PONG"

    def cli(self, *args: str) -> str:
        res = subprocess.run([REDIS_CLI, "-s", str(self.socket), *args], capture_output=True, text=True,
                             timeout=10, check=True)  # fmt: skip
        return res.stdout

    def log(self) -> str:
        path = self.dir / f"redis-{self.port}.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def pause(self) -> None:
        """SIGSTOP: Redis stops answering (slow Redis) without closing connections."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()


class RedisClusterServers(Closing):
    """``n`` loopback nodes in cluster mode, slots spread by ``redis-cli --cluster create``."""

    def __init__(self, n: int = 3) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="se-rcluster-"))
        self.nodes = [
            RedisServer(port=free_port(cluster=True), cluster=True, directory=self.dir / str(i))
            for i in range(n)
        ]

    @property
    def url(self) -> str:
        return "redis://" + ",".join(f"127.0.0.1:{s.port}" for s in self.nodes)

    def __enter__(self) -> RedisClusterServers:
        try:
            for s in self.nodes:
                s.start()
            subprocess.run([REDIS_CLI, "--cluster", "create", *(f"127.0.0.1:{s.port}" for s in self.nodes),
                            "--cluster-replicas", "0", "--cluster-yes"], capture_output=True, text=True,
                           timeout=30, check=True)  # fmt: skip
            deadline = time.monotonic() + 15
            while "cluster_state:ok" not in self.nodes[0].cli("cluster", "info"):
                if time.monotonic() > deadline:
                    raise RuntimeError("the Redis Cluster did not become ok")
                time.sleep(0.1)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for s in self.nodes:
            s.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
