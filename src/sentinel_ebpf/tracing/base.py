"""What the tracers share: their filters' checks, address formatting, the clock, and the lifecycle of a
loaded tracer object (hook flavour, links, ring buffer, per-CPU counters, loss reporting, close)."""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TypeVar

from sentinel_ebpf._closing import Closing
from sentinel_ebpf._types import SentinelLimits
from sentinel_ebpf.errors import BpfLoadError
from sentinel_ebpf.libbpf import BpfObject, Link, Map, RingBuffer, RingReader
from sentinel_ebpf.objects import object_path

_Tracer = TypeVar("_Tracer", bound="BpfTracer")


def check_pid_ports(pid: int, ports: tuple[int, ...]) -> None:
    """ValueError unless ``pid`` (0: every process) and ``ports`` fit a tracer's filters."""
    if pid < 0:
        raise ValueError(f"pid must be >= 0, got {pid}")
    if len(ports) > SentinelLimits.SE_MAX_PORT_FILTERS:
        raise ValueError(f"at most {int(SentinelLimits.SE_MAX_PORT_FILTERS)} ports, got {len(ports)}")
    for port in ports:
        if not 1 <= port <= 65535:
            raise ValueError(f"port {port} out of range 1..65535")


def addr(family: int, raw: Iterable[int]) -> str:
    data = bytes(raw)
    if family == socket.AF_INET:
        return str(ipaddress.IPv4Address(data[:4]))
    v6 = ipaddress.IPv6Address(data[:16])
    # An IPv4 peer of a dual-stack socket: show the IPv4 address users know it by.
    return str(v6.ipv4_mapped) if v6.ipv4_mapped else str(v6)


def is_v4(family: int, raw: Iterable[int]) -> bool:
    return family == socket.AF_INET or ipaddress.IPv6Address(bytes(raw)[:16]).ipv4_mapped is not None


@dataclass
class Clock:
    """Converts CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns) to wall-clock seconds."""

    offset: float = field(default_factory=lambda: time.time() - time.monotonic())

    def wall(self, mono_ns: int) -> float:
        return self.offset + mono_ns / 1e9


def load_first_flavor(open_flavor: Callable[[str], BpfObject], want: str, flavors: Sequence[str]
                      ) -> tuple[BpfObject, str]:  # fmt: skip
    """Load with the first hook flavour that loads (``want`` "auto": each of ``flavors`` in turn)."""
    last: BpfLoadError | None = None
    for flavor in flavors if want == "auto" else (want,):
        try:
            return open_flavor(flavor), flavor
        except BpfLoadError as exc:
            last = exc
    assert last is not None
    raise last


class BpfTracer(Closing):
    """What the tracers share: the hook flavour, the loaded object and its links, the ring buffer,
    per-CPU counters, loss reporting, close. A tracer is a context manager (``start`` on entry)."""

    OBJECT = ""  # the BPF object's name (objects.object_path)
    FLAVORS = ("btf", "raw")
    LOST: tuple[str, ...] = ()  # the counters whose sum new_lost() reports

    def __init__(self, flavor: str) -> None:
        if flavor not in ("auto", *self.FLAVORS):
            raise ValueError(f"flavor must be auto, btf or raw, not {flavor!r}")
        self._want = flavor
        self.flavor: str | None = None
        self._obj: BpfObject | None = None
        self._links: list[Link] = []
        self._ring: RingBuffer | RingReader | None = None
        self._clock = Clock()
        self._reported_lost = 0

    def _open(self, flavor: str) -> BpfObject:
        """The object, configured for ``flavor`` (``_configure``) and loaded; closed again if either fails."""
        obj = BpfObject.open(object_path(self.OBJECT))
        try:
            self._configure(obj, flavor)
            obj.load()
        except BaseException:
            obj.close()
            raise
        return obj

    def _configure(self, obj: BpfObject, flavor: str) -> None:
        """Before the load: the read-only data from the filters, and which programs load."""
        raise NotImplementedError

    def start(self: _Tracer) -> _Tracer:
        """Load (the first flavour that loads) and attach (``_attach``); on failure nothing is left."""
        self._obj, self.flavor = self.load()
        try:
            self._attach(self._obj)
        except BaseException:
            self.close()
            raise
        return self

    def _attach(self, obj: BpfObject) -> None:
        """After the load: attach the programs that loaded, open the maps and the ring buffer."""
        raise NotImplementedError

    def load(self) -> tuple[BpfObject, str]:
        """Load the object as ``start`` does (first flavour that loads), without attaching anything: what
        ``doctor`` checks. Returns the object, which the caller closes, and the flavour."""
        return load_first_flavor(self._open, self._want, self.FLAVORS)

    @staticmethod
    def _percpu_sums(counters: Map, stats: Iterable[IntEnum], prefix: str) -> dict[str, int]:
        """Each counter of a per-CPU array summed over the CPUs, named after its enum member."""
        return {
            stat.name.removeprefix(prefix).lower(): sum(
                int.from_bytes(v, "little") for v in counters.lookup(int(stat).to_bytes(4, "little"))
            )
            for stat in stats
        }

    def counters(self) -> dict[str, int]:
        raise NotImplementedError

    def new_lost(self) -> int:
        """Events lost since the last call (the LOST counters)."""
        c = self.counters()
        lost = sum(c[k] for k in self.LOST)
        new, self._reported_lost = lost - self._reported_lost, lost
        return new

    def close(self) -> None:
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        if self._obj is not None:
            self._obj.close()  # detaches the tracked links first
            self._obj = None
        self._links.clear()

    def __enter__(self: _Tracer) -> _Tracer:
        return self.start()
