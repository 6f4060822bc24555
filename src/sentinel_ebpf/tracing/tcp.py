"""TCP connection tracer: every outgoing connect() attempt (and optionally every accept()).

Works without kprobes and without tracefs: hooks are BTF tracepoints (``tp_btf``) with a fallback to raw
tracepoints (``raw_tp``) on kernels whose tp_btf loading fails. See ``bpf/tcptrace.bpf.c`` for why the
event is emitted at the socket's first state change after SYN_SENT (the source port is known only then).
"""

from __future__ import annotations

import ctypes
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sentinel_ebpf._maps import TcptraceMaps, set_tcptrace_rodata
from sentinel_ebpf._types import ConnDirection, ConnEvent, ConnOutcome, SentinelLimits, TraceStat
from sentinel_ebpf.errors import SentinelError
from sentinel_ebpf.libbpf import BpfObject, RingBuffer
from sentinel_ebpf.tracing.base import BpfTracer, Clock, addr, check_pid_ports, is_v4

# accept and accept4 syscall numbers (the raw syscall tracepoints report numbers, not names)
ACCEPT_SYSCALLS: dict[str, tuple[int, int]] = {"x86_64": (43, 288), "aarch64": (202, 242)}

HEADER = f"{'Comm':<16} {'Src addr':<15} {'Port':<6} -> {'Dest addr':<15} Port"


@dataclass(frozen=True)
class TraceFilter:
    pid: int = 0  # 0: every process
    ports: tuple[int, ...] = ()  # destination port (connect) or local port (accept)
    comm: str | None = None
    accept: bool = False  # also report inbound (accepted) connections

    def __post_init__(self) -> None:
        check_pid_ports(self.pid, self.ports)
        if self.comm is not None and not 0 < len(self.comm.encode()) < SentinelLimits.SE_COMM_LEN:
            raise ValueError(
                f"comm must be 1..{int(SentinelLimits.SE_COMM_LEN) - 1} bytes, got {self.comm!r}"
            )


@dataclass(frozen=True)
class Connection:
    timestamp: float  # wall clock seconds when connect()/accept() ran
    pid: int
    tid: int
    uid: int
    comm: str
    family: int  # 4 or 6
    saddr: str
    sport: int
    daddr: str
    dport: int
    direction: str  # "connect" or "accept"
    outcome: str  # "established", "failed" (refused, timed out, closed before established)

    def line(self) -> str:
        """The original plugin's line format."""
        when = datetime.fromtimestamp(self.timestamp).strftime("%Y/%m/%d %H:%M:%S")
        return f"{when} {self.comm:<16} {self.saddr:<15} {self.sport:<6} -> {self.daddr:<15} {self.dport}"

    def json_dict(self) -> dict[str, Any]:
        return asdict(self)


def decode(raw: bytes, clock: Clock | None = None) -> Connection:
    if len(raw) < ctypes.sizeof(ConnEvent):
        raise ValueError(f"short conn_event: {len(raw)} bytes")
    ev = ConnEvent.from_buffer_copy(raw)
    clock = clock or Clock()
    return Connection(
        timestamp=clock.wall(ev.ts_ns),
        pid=ev.pid,
        tid=ev.tid,
        uid=ev.uid,
        comm=ev.comm.decode(errors="replace"),
        family=4 if is_v4(ev.family, ev.daddr) else 6,
        saddr=addr(ev.family, ev.saddr),
        sport=ev.sport,
        daddr=addr(ev.family, ev.daddr),
        dport=ev.dport,
        direction="accept" if ev.direction == ConnDirection.CONN_ACCEPT else "connect",
        outcome={
            ConnOutcome.CONN_OUTCOME_ESTABLISHED: "established",
            ConnOutcome.CONN_OUTCOME_FAILED: "failed",
        }.get(ConnOutcome(ev.outcome), "unknown"),
    )


class ConnTracer(BpfTracer):
    """Load, attach and consume the tracer. ``with ConnTracer(filter) as t: t.poll(cb, 100)``."""

    OBJECT = "tcptrace"
    LOST = ("lost", "pending_full")  # ring buffer full, or no room to remember an attempt
    _ring: RingBuffer | None

    def __init__(self, filters: TraceFilter | None = None, flavor: str = "auto") -> None:
        super().__init__(flavor)
        self._maps: TcptraceMaps | None = None
        self.filters = filters or TraceFilter()
        self._callback: Callable[[Connection], None] | None = None

    def _configure(self, obj: BpfObject, flavor: str) -> None:
        f = self.filters
        accept_nr: tuple[int, int] | tuple[None, None] = (None, None)
        if f.accept:
            nums = ACCEPT_SYSCALLS.get(platform.machine())
            if nums is None:
                raise SentinelError(f"--accept is not supported on {platform.machine()} yet")
            accept_nr = nums
        set_tcptrace_rodata(
            obj,
            targ_tgid=f.pid,
            targ_nports=len(f.ports),
            targ_ports=list(f.ports),
            targ_filter_comm=f.comm is not None,
            targ_comm=(f.comm or "").encode(),
            targ_accept=f.accept,
            targ_accept_nr=accept_nr[0],
            targ_accept4_nr=accept_nr[1],
        )
        for name, prog in obj.programs.items():
            is_syscall = name.startswith("sys_")
            prog.autoload = name.endswith(f"_{flavor}") and (f.accept or not is_syscall)

    def _attach(self, obj: BpfObject) -> None:
        for prog in obj.programs.values():
            if prog.autoload:
                self._links.append(obj.track(prog.attach()))
        self._maps = TcptraceMaps(obj)
        self._ring = RingBuffer(self._maps.events, self._on_event)

    def _on_event(self, raw: bytes) -> None:
        if self._callback is not None:
            self._callback(decode(raw, self._clock))

    def poll(self, callback: Callable[[Connection], None], timeout_ms: int = 100) -> int:
        assert self._ring is not None, "tracer not started"
        self._callback = callback
        return self._ring.poll(timeout_ms)

    def drain(self, callback: Callable[[Connection], None]) -> int:
        assert self._ring is not None, "tracer not started"
        self._callback = callback
        return self._ring.consume()

    def counters(self) -> dict[str, int]:
        stats = (TraceStat.TRACE_STAT_EVENTS, TraceStat.TRACE_STAT_LOST, TraceStat.TRACE_STAT_PENDING_FULL)
        assert self._obj is not None and self._maps is not None, "tracer not started"
        return self._percpu_sums(self._maps.trace_stats, stats, "TRACE_STAT_")
