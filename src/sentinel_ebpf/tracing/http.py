"""HTTP/1.x request tracing from system calls and OpenSSL, as the application sees its messages.

The kernel side (``bpf/httptrace.bpf.c``) ships what TCP sockets move through read/write/readv/writev/
recvfrom/sendto/recvmsg/sendmsg (and how much sendfile moved), and the plain text of OpenSSL's
SSL_read/SSL_write (+ ``_ex``) through uprobes on every libssl found; ``httpparse`` reassembles messages
and pairs requests with responses. One :class:`HttpRecord` per exchange.
"""

from __future__ import annotations

import ctypes
import os
import platform
import re
import subprocess
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sentinel_ebpf._maps import HttptraceMaps, set_httptrace_rodata
from sentinel_ebpf._types import (
    HttpDataDir,
    HttpDataSource,
    HttpEvent,
    HttpEventKind,
    HttpSyscall,
    HttpTraceLimits,
    HttpTraceStat,
)
from sentinel_ebpf.errors import SentinelError
from sentinel_ebpf.libbpf import BpfObject, RingReader
from sentinel_ebpf.tracing.base import BpfTracer, addr, check_pid_ports
from sentinel_ebpf.tracing.httpparse import Exchange, HttpStream

# Syscall numbers of enum http_syscall, per architecture (raw syscall tracepoints report numbers).
SYSCALLS: dict[str, dict[HttpSyscall, int]] = {
    "x86_64": {
        HttpSyscall.HTTP_SC_READ: 0,
        HttpSyscall.HTTP_SC_WRITE: 1,
        HttpSyscall.HTTP_SC_READV: 19,
        HttpSyscall.HTTP_SC_WRITEV: 20,
        HttpSyscall.HTTP_SC_RECVFROM: 45,
        HttpSyscall.HTTP_SC_SENDTO: 44,
        HttpSyscall.HTTP_SC_RECVMSG: 47,
        HttpSyscall.HTTP_SC_SENDMSG: 46,
        HttpSyscall.HTTP_SC_SENDFILE: 40,
    },
    "aarch64": {
        HttpSyscall.HTTP_SC_READ: 63,
        HttpSyscall.HTTP_SC_WRITE: 64,
        HttpSyscall.HTTP_SC_READV: 65,
        HttpSyscall.HTTP_SC_WRITEV: 66,
        HttpSyscall.HTTP_SC_RECVFROM: 207,
        HttpSyscall.HTTP_SC_SENDTO: 206,
        HttpSyscall.HTTP_SC_RECVMSG: 212,
        HttpSyscall.HTTP_SC_SENDMSG: 211,
        HttpSyscall.HTTP_SC_SENDFILE: 71,
    },
}

# OpenSSL functions hooked, with the entry program for each; every one returns through ssl_exit.
TLS_FUNCTIONS = {
    "SSL_read": "ssl_read_enter",
    "SSL_read_ex": "ssl_read_ex_enter",
    "SSL_write": "ssl_write_enter",
    "SSL_write_ex": "ssl_write_ex_enter",
}

_EVENT_SIZE = ctypes.sizeof(HttpEvent)  # the data follows the header

HEADER = (
    f"{'TIME':<12} {'PID':>7} {'COMM':<15} {'DIR':<6} {'METHOD':<7} {'STATUS':>6} "
    f"{'LAT(ms)':>9} {'REQ':>8} {'RESP':>8} PATH"
)

MAX_CONNECTIONS = int(HttpTraceLimits.SE_HTTP_CONN_MAX)


@dataclass(frozen=True)
class HttpTraceFilter:
    pid: int = 0  # 0: every process
    ports: tuple[int, ...] = ()  # local or remote port
    tls: bool = True  # hook OpenSSL too

    def __post_init__(self) -> None:
        check_pid_ports(self.pid, self.ports)


@dataclass(slots=True)  # not frozen: built for every request, and frozen dataclasses build slowly
class HttpRecord:
    """One request/response pair as one process saw it."""

    timestamp: float  # wall clock seconds: when the request's first byte was read (server) or written
    pid: int
    comm: str
    direction: str  # "server" or "client"
    method: str  # "" when the request was not seen
    path: str
    status: int  # 0: no response (the connection closed first)
    latency_ms: float  # request's first byte to response's last byte; 0 when either is missing
    request_bytes: int
    response_bytes: int
    tls: bool
    local: str  # "addr:port" ("" when the socket is unknown, e.g. TLS over a memory BIO)
    remote: str

    @property
    def local_port(self) -> int:
        return int(self.local.rsplit(":", 1)[1]) if self.local else 0

    @property
    def remote_port(self) -> int:
        return int(self.remote.rsplit(":", 1)[1]) if self.remote else 0

    def line(self) -> str:
        when = datetime.fromtimestamp(self.timestamp).strftime("%H:%M:%S.%f")[:12]
        status = str(self.status) if self.status else "-"
        method = (self.method or "?") + ("*" if self.tls else "")
        return (
            f"{when:<12} {self.pid:>7} {self.comm[:15]:<15} {self.direction:<6} {method:<7} "
            f"{status:>6} {self.latency_ms:>9.3f} {self.request_bytes:>8} {self.response_bytes:>8} "
            f"{self.path or '?'}"
        )

    def json_dict(self) -> dict[str, Any]:
        return asdict(self)


def _endpoint(family: int, raw: bytes, port: int) -> str:
    if not family:
        return ""
    text = addr(family, raw)
    return f"[{text}]:{port}" if ":" in text else f"{text}:{port}"


@dataclass
class _Conn:
    parser: HttpStream
    pid: int
    comm: str
    tls: bool
    local: str
    remote: str
    ports: tuple[int, int]


_LIBSSL = re.compile(r"/libssl\.so[.\d]*$")


def find_libssl(pid: int = 0) -> list[str]:
    """The libssl files to hook: those ``pid`` maps, or (pid 0) any process maps plus the linker cache.

    A uprobe is placed on the file, so it also fires in processes that map it later.
    """
    paths: set[str] = set()
    procs: Iterable[str] = [str(pid)] if pid else (p for p in os.listdir("/proc") if p.isdigit())
    for proc in procs:
        try:
            with open(f"/proc/{proc}/maps") as maps:
                for line in maps:
                    path = line.rstrip("\n").split(None, 5)[-1]
                    if _LIBSSL.search(path):
                        paths.add(path)
        except OSError:
            continue  # gone, or not ours to read
    if not pid:
        try:
            cache = subprocess.run(
                ["ldconfig", "-p"], capture_output=True, text=True, check=False, timeout=10
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            cache = ""
        for line in cache.splitlines():
            path = line.rsplit("=>", 1)[-1].strip()
            if _LIBSSL.search(path):
                paths.add(path)
    real = {os.path.realpath(p) for p in paths}  # symlinks (libssl.so -> libssl.so.3) are one file
    return sorted(p for p in real if os.path.isfile(p))


class HttpTracer(BpfTracer):
    """Load, attach and consume the HTTP tracer: ``with HttpTracer(f) as t: t.poll(cb, 100)``."""

    OBJECT = "httptrace"
    LOST = ("lost", "active_full")  # ring buffer full, or calls not remembered
    _ring: RingReader | None

    def __init__(self, filters: HttpTraceFilter | None = None, flavor: str = "auto") -> None:
        super().__init__(flavor)
        self.filters = filters or HttpTraceFilter()
        self.tls_libraries: list[str] = []
        self.tls_errors: list[str] = []
        self._callback: Callable[[HttpRecord], None] | None = None
        self._conns: OrderedDict[tuple[int, int], _Conn] = OrderedDict()
        self.events = 0
        self.evicted = 0
        self._gone_desyncs = 0  # desyncs of connections no longer followed (closed, replaced, evicted)
        self._maps: HttptraceMaps | None = None

    # --- kernel ----------------------------------------------------------------------------------------

    def _configure(self, obj: BpfObject, flavor: str) -> None:
        f = self.filters
        nums = SYSCALLS.get(platform.machine())
        if nums is None:
            raise SentinelError(f"HTTP tracing is not supported on {platform.machine()} yet")
        nr = [-1] * int(HttpSyscall.HTTP_SC_MAX)
        for sc, num in nums.items():
            nr[int(sc)] = num
        set_httptrace_rodata(
            obj,
            targ_tgid=f.pid,
            targ_self=os.getpid(),
            targ_nports=len(f.ports),
            targ_ports=list(f.ports),
            targ_nr=nr,
        )
        for name, prog in obj.programs.items():
            if name.startswith("http_"):
                prog.autoload = name.endswith(f"_{flavor}")
            else:
                prog.autoload = f.tls

    def _attach(self, obj: BpfObject) -> None:
        for name, prog in obj.programs.items():
            if prog.autoload and name.startswith("http_"):
                self._links.append(obj.track(prog.attach()))
        if self.filters.tls:
            self._attach_tls()
        self._maps = HttptraceMaps(obj)
        self._ring = RingReader(self._maps.http_events)

    def _attach_tls(self) -> None:
        assert self._obj is not None
        exit_prog = self._obj.program("ssl_exit")
        for lib in find_libssl(self.filters.pid):
            attached = 0
            for function, entry in TLS_FUNCTIONS.items():
                try:
                    enter = self._obj.program(entry).attach_uprobe(lib, function)
                except SentinelError as exc:
                    self.tls_errors.append(str(exc))
                    continue
                self._links.append(self._obj.track(enter))
                self._links.append(self._obj.track(exit_prog.attach_uprobe(lib, function, retprobe=True)))
                attached += 1
            if attached:
                self.tls_libraries.append(lib)

    # --- events ----------------------------------------------------------------------------------------

    def _on_event(self, raw: bytes) -> None:
        ev = HttpEvent.from_buffer_copy(raw)
        conn_id, source, sport, dport = ev.conn_id, ev.source, ev.sport, ev.dport
        self.events += 1
        ts = self._clock.wall(ev.ts_ns)
        key = (conn_id, source)
        if ev.kind == HttpEventKind.HTTP_EV_CLOSE:
            for src in (HttpDataSource.HTTP_SRC_SYSCALL, HttpDataSource.HTTP_SRC_TLS):
                conn = self._conns.pop((conn_id, src), None)
                if conn is not None:
                    conn.parser.close(ts)
                    self._gone_desyncs += conn.parser.desyncs
            return
        conn = self._conns.get(key)
        if conn is not None and conn.ports != (sport, dport):
            # The socket's memory now holds another connection (its close was not seen): start over.
            del self._conns[key]
            conn.parser.close(ts)
            self._gone_desyncs += conn.parser.desyncs
            conn = None
        if conn is None:
            conn = self._new_conn(
                key, ev.pid, ev.comm, source, ev.family, bytes(ev.saddr), sport, bytes(ev.daddr), dport
            )
        else:
            self._conns.move_to_end(key)
        copied = ev.copied
        head_end = _EVENT_SIZE + copied - ev.tail
        conn.parser.feed(
            "recv" if ev.dir == HttpDataDir.HTTP_DIR_RECV else "send",
            raw[_EVENT_SIZE:head_end],
            ev.len - copied,
            ts,
            raw[head_end : _EVENT_SIZE + copied],
        )

    def _new_conn(self, key: tuple[int, int], pid: int, comm: bytes, source: int, family: int,
                  saddr: bytes, sport: int, daddr: bytes, dport: int) -> _Conn:  # fmt: skip
        if len(self._conns) >= MAX_CONNECTIONS:
            _, old = self._conns.popitem(last=False)
            self._gone_desyncs += old.parser.desyncs
            self.evicted += 1
        holder: list[_Conn] = []

        def on_exchange(ex: Exchange) -> None:
            if self._callback is not None:
                self._callback(self._record(holder[0], ex))

        conn = _Conn(
            parser=HttpStream(on_exchange),
            pid=pid,
            comm=comm.split(b"\0", 1)[0].decode(errors="replace"),
            tls=source == HttpDataSource.HTTP_SRC_TLS,
            local=_endpoint(family, saddr, sport),
            remote=_endpoint(family, daddr, dport),
            ports=(sport, dport),
        )
        holder.append(conn)
        self._conns[key] = conn
        return conn

    @staticmethod
    def _record(conn: _Conn, ex: Exchange) -> HttpRecord:
        req, resp = ex.request, ex.response
        start = req.start_ts if req else resp.start_ts if resp else 0.0
        latency = (resp.end_ts - req.start_ts) * 1000 if req and resp else 0.0
        return HttpRecord(
            timestamp=start,
            pid=conn.pid,
            comm=conn.comm,
            direction=ex.role,
            method=req.method if req else "",
            path=req.target if req else "",
            status=resp.status if resp else 0,
            latency_ms=round(max(latency, 0.0), 3),
            request_bytes=req.size if req else 0,
            response_bytes=resp.size if resp else 0,
            tls=conn.tls,
            local=conn.local,
            remote=conn.remote,
        )

    def poll(self, callback: Callable[[HttpRecord], None], timeout_ms: int = 100) -> int:
        """Consume what the kernel shipped, waiting up to ``timeout_ms`` for it; returns events read."""
        assert self._ring is not None, "tracer not started"
        self._callback = callback
        records = self._ring.read()
        if not records and self._ring.wait(timeout_ms):
            records = self._ring.read()
        on_event = self._on_event
        for raw in records:
            on_event(raw)
        return len(records)

    def drain(self, callback: Callable[[HttpRecord], None]) -> int:
        return self.poll(callback, 0)

    def counters(self) -> dict[str, int]:
        """Kernel counters (events, lost, truncated, active_full, skipped) and user-space ones."""
        stats = [s for s in HttpTraceStat if s != HttpTraceStat.HTTP_STAT_MAX]
        assert self._obj is not None and self._maps is not None, "tracer not started"
        out = self._percpu_sums(self._maps.http_stats, stats, "HTTP_STAT_")
        out["desyncs"] = self._gone_desyncs + sum(c.parser.desyncs for c in self._conns.values())
        out["connections"] = len(self._conns)
        out["evicted"] = self.evicted
        return out


__all__ = [
    "HEADER",
    "HttpRecord",
    "HttpTraceFilter",
    "HttpTracer",
    "find_libssl",
]
