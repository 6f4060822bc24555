"""Network namespaces for tests and benchmarks: a client/server namespace pair joined by a veth pair.

Everything here is created under names unique to this process (pid plus a random suffix) and removed on
teardown, also when a test fails. Test traffic stays inside the namespaces this module creates.

    with NetnsPair() as pair:                       # 10.200.<n>.1 (client) <-> 10.200.<n>.2 (server)
        web = pair.start_http_server(8000)          # python -m http.server in the server namespace
        pair.run(pair.client, "curl", f"http://{pair.server_ip}:8000/")

The subnet number ``n`` is reserved with an advisory lock file, so concurrent test runs on one machine
(CI shares it) never use the same 10.200.<n>.0/24, and a host-wide observer such as the tracer can tell
their traffic apart by address.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import random
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

# Waits for processes are multiplied by this: an emulated guest (scripts/kernel-matrix.sh) starts Python
# and loads the BPF objects several times slower than the host.
TIMEOUT_SCALE = float(os.environ.get("SENTINEL_TEST_TIMEOUT_SCALE", "1"))

IP = shutil.which("ip") or "/usr/sbin/ip"
SS = shutil.which("ss") or "/usr/bin/ss"
IFNAMSIZ = 15  # usable characters of a Linux interface name
LOCK_DIR = Path(tempfile.gettempdir())
# No proxy for test traffic, whatever the environment says.
CLEAN_ENV = {
    k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")
}
CLEAN_ENV["no_proxy"] = CLEAN_ENV["NO_PROXY"] = "*"


class NetnsError(RuntimeError):
    pass


def _run(argv: Sequence[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if res.returncode != 0:
        raise NetnsError(
            f"{' '.join(argv)} exited {res.returncode}: {res.stderr.strip() or res.stdout.strip()}"
        )
    return res


def unique_token() -> str:
    """pid (hex) + 4 random hex digits: short enough for interface names, unique on the machine."""
    return f"{os.getpid():x}{secrets.token_hex(2)}"


def _reserve_subnet() -> tuple[int, IO[str]]:
    """Pick a free 10.200.<n>.0/24 among concurrent test processes; the lock lives as long as the file."""
    candidates = list(range(1, 255))
    random.shuffle(candidates)
    for n in candidates:
        f = open(LOCK_DIR / f"sentinel-ebpf-it-10.200.{n}.lock", "a")  # noqa: SIM115 - held for the pair's life
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            continue
        return n, f
    raise NetnsError("no free 10.200.<n>.0/24 subnet: 254 concurrent test pairs?")


@dataclass
class Server:
    """A server process running in a namespace."""

    name: str
    proc: subprocess.Popen[Any]
    ns: str
    port: int
    workdir: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        path = self.workdir / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""


class SubnetEnds:
    """The addresses of the two ends of a link on a reserved subnet (``self.subnet``, n): the client end
    10.200.<n>.1 and fd00:200:<n>::1, the server end 10.200.<n>.2 and fd00:200:<n>::2."""

    subnet: int

    @property
    def client_ip(self) -> str:
        return f"10.200.{self.subnet}.1"

    @property
    def server_ip(self) -> str:
        return f"10.200.{self.subnet}.2"

    @property
    def client_ip6(self) -> str:
        return f"fd00:200:{self.subnet}::1"

    @property
    def server_ip6(self) -> str:
        return f"fd00:200:{self.subnet}::2"


class NetnsPair(SubnetEnds):
    """Two namespaces, ``client`` and ``server``, joined by a veth pair, IPv4 and IPv6.

    Addresses: client 10.200.<n>.1/24 and fd00:200:<n>::1/64, server 10.200.<n>.2/24 and
    fd00:200:<n>::2/64 (``nodad``, usable at once). Both namespaces have ``lo`` up.
    """

    def __init__(self, tag: str = "se") -> None:
        token = unique_token()
        self.tag = tag
        self.client = f"{tag}-{token}-client"
        self.server = f"{tag}-{token}-server"
        # Created directly inside their namespaces (never in the host's), unique anyway.
        self.client_if = f"{tag}{token}c"
        self.server_if = f"{tag}{token}s"
        assert len(self.client_if) <= IFNAMSIZ and len(self.server_if) <= IFNAMSIZ, self.client_if
        self.subnet = 0
        self._lock: IO[str] | None = None
        self.ipv6 = False  # True once created: IPv6 setup failing fails create()
        self._procs: list[subprocess.Popen[Any]] = []
        self._tmp: Path | None = None
        self._created: list[str] = []

    @property
    def tmpdir(self) -> Path:
        if self._tmp is None:
            self._tmp = Path(tempfile.mkdtemp(prefix=f"{self.client}-"))
        return self._tmp

    # life cycle
    def create(self) -> NetnsPair:
        atexit.register(self.destroy)  # belt and braces: also when a fixture finaliser never runs
        try:
            self.subnet, self._lock = _reserve_subnet()
            for ns in (self.client, self.server):
                _run([IP, "netns", "add", ns])
                self._created.append(ns)
            _run(
                [
                    IP,
                    "link",
                    "add",
                    self.client_if,
                    "netns",
                    self.client,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    self.server_if,
                    "netns",
                    self.server,
                ]
            )
            for ns, ifname, v4 in (
                (self.client, self.client_if, self.client_ip),
                (self.server, self.server_if, self.server_ip),
            ):
                _run(self.cmd(ns, IP, "link", "set", "lo", "up"))
                _run(self.cmd(ns, IP, "addr", "add", f"{v4}/24", "dev", ifname))
                _run(self.cmd(ns, IP, "link", "set", ifname, "up"))
            # IPv6 is part of what the tests check: a failure here fails the test that asked for the
            # pair (a host with IPv6 disabled must say so, not lose the IPv6 half of tests silently).
            for ns, ifname, v6 in (
                (self.client, self.client_if, self.client_ip6),
                (self.server, self.server_if, self.server_ip6),
            ):
                try:
                    _run(self.cmd(ns, IP, "-6", "addr", "add", f"{v6}/64", "dev", ifname, "nodad"))
                except NetnsError as exc:
                    raise NetnsError(
                        f"IPv6 setup failed in {ns} ({exc}); the tests need IPv6 "
                        "(is it disabled: sysctl net.ipv6.conf.all.disable_ipv6, ipv6.disable=1?)"
                    ) from None
            self.ipv6 = True
        except BaseException:
            self.destroy()
            raise
        return self

    def destroy(self) -> None:
        """Kill what runs in the namespaces, delete them (the veth pair goes with them). Idempotent."""
        errors: list[str] = []
        for proc in reversed(self._procs):
            stop_process(proc)
        self._procs.clear()
        for ns in reversed(self._created):
            # Anything still inside was started by this test (perhaps indirectly): end it by pid.
            with contextlib.suppress(Exception):
                pids = _run([IP, "netns", "pids", ns], timeout=10).stdout.split()
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
            try:
                _run([IP, "netns", "del", ns], timeout=30)
            except (NetnsError, subprocess.TimeoutExpired) as exc:
                if Path("/run/netns", ns).exists():
                    errors.append(str(exc))
        self._created.clear()
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        atexit.unregister(self.destroy)
        if errors:
            raise NetnsError("; ".join(errors))

    def __enter__(self) -> NetnsPair:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    # running things
    @staticmethod
    def cmd(ns: str, *argv: str) -> list[str]:
        """argv that runs inside ``ns``. ``ip netns exec`` execs the command: its pid is the Popen's."""
        return [IP, "netns", "exec", ns, *argv]

    def run(
        self, ns: str, *argv: str, timeout: float = 30, check: bool = False, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        kw.setdefault("env", CLEAN_ENV)
        return subprocess.run(
            self.cmd(ns, *argv),
            capture_output=True,
            text=True,
            timeout=timeout * TIMEOUT_SCALE,
            check=check,
            **kw,
        )

    def popen(self, ns: str, *argv: str, **kw: Any) -> subprocess.Popen[Any]:
        """Start a process inside ``ns`` in its own session; it is killed on teardown."""
        kw.setdefault("env", CLEAN_ENV)
        kw.setdefault("start_new_session", True)
        proc = subprocess.Popen(self.cmd(ns, *argv), **kw)
        self._procs.append(proc)
        return proc

    def wait_listening(
        self, ns: str, port: int, proc: subprocess.Popen[Any] | None = None, timeout: float = 15
    ) -> None:
        """Wait until a TCP socket listens on ``port`` in ``ns`` (checked with ss, no traffic)."""
        timeout *= TIMEOUT_SCALE
        deadline = time.monotonic() + timeout
        while True:
            res = subprocess.run(
                self.cmd(ns, SS, "-Hltn", f"sport = :{port}"),
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
            if res.returncode == 0 and res.stdout.strip():
                return
            if proc is not None and proc.poll() is not None:
                raise NetnsError(f"server in {ns} exited with {proc.returncode} before listening on {port}")
            if time.monotonic() > deadline:
                raise NetnsError(f"nothing listens on {port} in {ns} after {timeout}s")
            time.sleep(0.02)

    def start_http_server(self, port: int = 8000, python: str | None = None) -> Server:
        """``python -m http.server`` on [::]:port (dual stack) in the server namespace."""
        import sys

        workdir = self.tmpdir / f"http-{port}"
        (workdir / "www").mkdir(parents=True)
        (workdir / "www" / "index.html").write_text("hello from sentinel-ebpf tests\n")
        log = open(workdir / "server.log", "w")  # noqa: SIM115 - the child keeps it
        with log:
            proc = self.popen(
                self.server,
                python or sys.executable,
                "-m",
                "http.server",
                "--bind",
                "::",
                "--directory",
                str(workdir / "www"),
                str(port),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        server = Server("http.server", proc, self.server, port, workdir)
        self.wait_ready(server)
        return server

    def wait_ready(self, server: Server, port: int | None = None) -> None:
        """Wait until ``server`` listens on ``port`` (its own by default); its log in the error if never."""
        try:
            self.wait_listening(server.ns, server.port if port is None else port, server.proc)
        except NetnsError as exc:
            raise NetnsError(f"{exc}\n{server.name} log:\n{server.log()}") from None


class PodsNode(NetnsPair):
    """A node as Kubernetes makes one: a host namespace (``client``: the daemon and the clients run there)
    and pod namespaces, each joined to the host by its own veth pair, its end named ``eth0`` in the pod,
    as CNI plugins name it. Pod i is ``pod_ip(i)`` = 10.200.<n>.<4i+2>/30, its host side 10.200.<n>.<4i+1>
    on ``host_if(i)``. ``server`` is the first pod. IPv4 only."""

    def __init__(self, pods: int = 2, tag: str = "se") -> None:
        super().__init__(tag)
        self.token = self.client.split("-")[1]
        self.client = f"{tag}-{self.token}-host"
        self.server = self.pod_name(0)
        self.pods: list[str] = []
        self.initial_pods = pods
        self.pod_if = "eth0"

    def pod_name(self, i: int) -> str:
        return f"{self.tag}-{self.token}-pod{i}"

    def host_if(self, i: int) -> str:
        return f"{self.tag}{self.token}h{i}"

    def pod_ip(self, i: int) -> str:
        return f"10.200.{self.subnet}.{4 * i + 2}"

    @property
    def server_ip(self) -> str:
        return self.pod_ip(0)

    def create(self) -> PodsNode:
        atexit.register(self.destroy)
        try:
            self.subnet, self._lock = _reserve_subnet()
            _run([IP, "netns", "add", self.client])
            self._created.append(self.client)
            _run(self.cmd(self.client, IP, "link", "set", "lo", "up"))
            for _ in range(self.initial_pods):
                self.add_pod()
        except BaseException:
            self.destroy()
            raise
        return self

    def add_pod(self) -> str:
        """One more pod namespace, joined to the host as the others; returns its name."""
        i = len(self.pods)
        pod, host_if = self.pod_name(i), self.host_if(i)
        assert i < 60 and len(host_if) <= IFNAMSIZ
        _run([IP, "netns", "add", pod])
        self._created.append(pod)
        self.pods.append(pod)
        _run(self.cmd(pod, IP, "link", "set", "lo", "up"))
        _run([IP, "link", "add", host_if, "netns", self.client, "type", "veth", "peer", "name", self.pod_if,
              "netns", pod])  # fmt: skip
        host_addr = f"10.200.{self.subnet}.{4 * i + 1}/30"
        _run(self.cmd(self.client, IP, "addr", "add", host_addr, "dev", host_if))
        _run(self.cmd(pod, IP, "addr", "add", f"{self.pod_ip(i)}/30", "dev", self.pod_if))
        _run(self.cmd(pod, IP, "link", "set", self.pod_if, "up"))
        _run(self.cmd(self.client, IP, "link", "set", host_if, "up"))
        return pod

    def __enter__(self) -> PodsNode:
        return self.create()


def stop_process(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 5) -> None:
    """Stop a process started with ``start_new_session=True`` (its group id is its pid), then reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()
