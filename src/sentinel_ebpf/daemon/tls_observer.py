"""Statistics of ``tls: true`` resources, from the HTTP tracer (observability only).

The packet path cannot read HTTPS requests, so such resources are not compiled into the kernel's maps;
instead the daemon runs :class:`~sentinel_ebpf.tracing.http.HttpTracer` on their ports, with OpenSSL
hooked, and counts every traced exchange that matches one: pass (a request seen: nothing is ever
blocked), complete (a response came back), error (a 5xx response, or none before the connection
closed), and the response time. An inbound resource matches the server side of its local port, an
outbound one the client side of its remote port (and host network); method and the longest path prefix
choose among resources of one port, as on the packet path.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sentinel_ebpf._worker import Worker
from sentinel_ebpf.errors import SentinelError
from sentinel_ebpf.rules import Resource
from sentinel_ebpf.stats import ResourceStats
from sentinel_ebpf.tracing.http import HttpRecord, HttpTraceFilter, HttpTracer

log = logging.getLogger(__name__)


@dataclass
class _Counts:
    passed: int = 0
    complete: int = 0
    error: int = 0
    rt_sum_ms: float = 0.0


@dataclass
class TlsMatcher:
    """Which tls resource an exchange belongs to."""

    resources: Sequence[Resource]
    _by_port: dict[tuple[bool, int], list[Resource]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        for r in self.resources:
            self._by_port.setdefault((r.match.inbound, r.match.port), []).append(r)
        for candidates in self._by_port.values():  # longest path first, then a method before none
            candidates.sort(key=lambda r: (-len(r.match.path or ""), r.match.method is None))

    @property
    def ports(self) -> tuple[int, ...]:
        return tuple(sorted({r.match.port for r in self.resources}))

    def match(self, rec: HttpRecord) -> Resource | None:
        if not rec.tls or not rec.method:
            return None
        inbound = rec.direction == "server"
        port = rec.local_port if inbound else rec.remote_port
        for r in self._by_port.get((inbound, port), ()):
            m = r.match
            if m.method is not None and m.method != rec.method:
                continue
            if m.path is not None and not rec.path.startswith(m.path):
                continue
            if m.host is not None:
                host = rec.remote.rsplit(":", 1)[0].strip("[]")
                try:
                    if ipaddress.ip_address(host) not in m.host:
                        continue
                except ValueError:
                    continue
            return r
        return None


class TlsObserver:
    """Counts for the tls resources of the rule set in force, fed by a tracer on its own thread."""

    def __init__(
        self,
        resources: Sequence[Resource],
        tracer_factory: Callable[[HttpTraceFilter], HttpTracer] = HttpTracer,
    ) -> None:
        self.matcher = TlsMatcher(list(resources))
        self._counts = {r.name: _Counts() for r in resources}
        self._lock = threading.Lock()
        self._worker = Worker("tls-observer", join_timeout_s=10)
        self._factory = tracer_factory
        self.error: str | None = None

    @property
    def keys(self) -> frozenset[tuple[str, tuple[object, ...]]]:
        return frozenset((r.name, r.match.key()) for r in self.matcher.resources)

    def record(self, rec: HttpRecord) -> None:
        res = self.matcher.match(rec)
        if res is None:
            return
        with self._lock:
            c = self._counts[res.name]
            c.passed += 1
            if rec.status:
                c.complete += 1
                c.rt_sum_ms += rec.latency_ms
            if not rec.status or rec.status >= 500:
                c.error += 1

    def start(self) -> TlsObserver:
        if not self.matcher.resources:
            return self
        try:
            tracer = self._factory(HttpTraceFilter(ports=self.matcher.ports, tls=True)).start()
        except (SentinelError, ValueError) as exc:
            self.error = str(exc)
            log.error("tls resources are not observed: the HTTP tracer did not start: %s", exc)
            return self
        if not tracer.tls_libraries:
            log.warning("tls resources: no libssl found to hook; their counts stay at zero")
        else:
            log.info("observing tls resources on ports %s through %s", ", ".join(map(str, self.matcher.ports)),
                     ", ".join(tracer.tls_libraries))  # fmt: skip

        def loop() -> None:
            try:
                while not self._worker.stopping.is_set():
                    tracer.poll(self.record, 100)
            except Exception as exc:  # never take the daemon down: say so and stop observing
                self.error = str(exc)
                log.error("tls observer stopped: %s", exc)
            finally:
                tracer.close()

        self._worker.start(loop)
        return self

    def stop(self) -> None:
        self._worker.stop()

    def stats(self) -> list[ResourceStats]:
        with self._lock:
            return [
                ResourceStats(
                    name,
                    passed=c.passed,
                    complete=c.complete,
                    error=c.error,
                    rt_sum_ms=c.rt_sum_ms,
                    source="tls_trace",
                )
                for name, c in self._counts.items()
            ]
