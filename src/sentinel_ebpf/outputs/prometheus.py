"""Prometheus exporter with sentinel-golang's metric names, labels and label values.

The collector reads a ``MetricsSnapshot`` on every scrape (nothing is kept between scrapes), so it only
reports what the kernel maps hold. With the default namespace a scrape looks like sentinel-golang's::

    sentinel_go_handled_total{host="h",app="a",pid="1",resource="r",result="block",block_type="BlockTypeFlowControl"} 3.0
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIServer

import prometheus_client
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from sentinel_ebpf._closing import Closing
from sentinel_ebpf.stats import BLOCK_TYPES, BreakerTransition, ResourceStats

DEFAULT_NAMESPACE = "sentinel_go"  # sentinel-golang's, so existing dashboards and alerts keep working
DEFAULT_APP_NAME = "sentinel-ebpf"
DEFAULT_HOST = "127.0.0.1"

RESULT_PASS = "pass"
RESULT_BLOCK = "block"
# sentinel-golang's BlockType.String() values, used as the block_type label.
BLOCK_TYPE_LABELS: Mapping[str, str] = {
    "flow": "BlockTypeFlowControl",
    "isolation": "BlockTypeIsolation",
    "circuit_breaking": "BlockTypeCircuitBreaking",
    "system": "BlockTypeSystem",
    "hotspot": "BlockTypeHotSpotParamFlow",
}
BLOCK_TYPE_UNKNOWN = "BlockTypeUnknown"
# sentinel-golang's circuit breaker State.String() values, used as from_state/to_state.
BREAKER_STATE_LABELS: Mapping[str, str] = {"closed": "Closed", "open": "Open", "half_open": "HalfOpen"}

_METRIC_LABELS = frozenset({"resource", "result", "block_type", "from_state", "to_state"})


@dataclass(frozen=True)
class MetricsSnapshot:
    """What one scrape reports.

    ``state_changes`` counts each transition since the rule set was loaded (keys are hashable
    ``BreakerTransition`` values; breakers of one resource are summed, as the Go label set has no breaker id).
    ``cpu_ratio`` and ``process_memory_bytes`` are omitted from the scrape when None.
    """

    resources: Sequence[ResourceStats] = ()
    state_changes: Mapping[BreakerTransition, int] = field(default_factory=dict)
    cpu_ratio: float | None = None
    process_memory_bytes: int | None = None


def default_const_labels(app_name: str = DEFAULT_APP_NAME) -> dict[str, str]:
    """The labels sentinel-golang puts on every metric: host, app, pid."""
    return {"host": socket.gethostname() or "unknown", "app": app_name, "pid": str(os.getpid())}


class SentinelCollector(Collector):
    """A custom collector over ``snapshot()``; register it in a ``CollectorRegistry``."""

    def __init__(
        self,
        snapshot: Callable[[], MetricsSnapshot],
        *,
        namespace: str = DEFAULT_NAMESPACE,
        const_labels: Mapping[str, str] | None = None,
    ) -> None:
        labels = default_const_labels() if const_labels is None else dict(const_labels)
        clash = _METRIC_LABELS.intersection(labels)
        if clash:
            raise ValueError(f"constant labels {sorted(clash)} clash with metric labels; rename them")
        self._snapshot = snapshot
        self._prefix = f"{namespace}_" if namespace else ""
        self._const_names = list(labels)
        self._const_values = list(labels.values())

    def describe(self) -> Iterable[Metric]:
        """The metric families without samples, so registering does not read a snapshot."""
        return self._families()

    def collect(self) -> Iterable[Metric]:
        snap = self._snapshot()
        handled, changed, threshold, wait, cpu, memory, abort = self._families()
        c = self._const_values
        for res in snap.resources:
            handled.add_metric([*c, res.name, RESULT_PASS, ""], res.passed)
            typed = 0
            for kind in BLOCK_TYPES:
                count = res.block_by_type.get(kind, 0)
                typed += count
                handled.add_metric([*c, res.name, RESULT_BLOCK, BLOCK_TYPE_LABELS[kind]], count)
            if res.blocked > typed:  # blocks the collector could not attribute to a rule kind
                handled.add_metric([*c, res.name, RESULT_BLOCK, BLOCK_TYPE_UNKNOWN], res.blocked - typed)
            wait.add_metric([*c, res.name], res.flow_wait_total)
            abort.add_metric([*c, res.name], res.abort)
            if res.flow_threshold is not None:
                threshold.add_metric([*c, res.name], res.flow_threshold)
        transitions: dict[tuple[str, str, str], int] = {}
        for change, count in snap.state_changes.items():
            key = (change.resource, _state_label(change.from_state), _state_label(change.to_state))
            transitions[key] = transitions.get(key, 0) + count
        for (resource, from_state, to_state), count in sorted(transitions.items()):
            changed.add_metric([*c, resource, from_state, to_state], count)
        families: list[Metric] = [handled, changed, threshold, wait, abort]
        if snap.cpu_ratio is not None:
            cpu.add_metric(c, snap.cpu_ratio)
            families.append(cpu)
        if snap.process_memory_bytes is not None:
            memory.add_metric(c, snap.process_memory_bytes)
            families.append(memory)
        return families

    def _families(
        self,
    ) -> tuple[
        CounterMetricFamily,
        CounterMetricFamily,
        GaugeMetricFamily,
        CounterMetricFamily,
        GaugeMetricFamily,
        GaugeMetricFamily,
        CounterMetricFamily,
    ]:
        p, c = self._prefix, self._const_names
        return (
            CounterMetricFamily(
                f"{p}handled_total", "Total handled count", labels=[*c, "resource", "result", "block_type"]
            ),
            CounterMetricFamily(
                f"{p}circuit_breaker_state_changed_total",
                "Circuit breaker total state change count",
                labels=[*c, "resource", "from_state", "to_state"],
            ),
            GaugeMetricFamily(
                f"{p}resource_flow_threshold", "Resource flow threshold", labels=[*c, "resource"]
            ),
            CounterMetricFamily(f"{p}flow_wait_total", "Flow wait count", labels=[*c, "resource"]),
            GaugeMetricFamily(f"{p}cpu_ratio", "Process cpu ratio", labels=c),
            GaugeMetricFamily(f"{p}process_memory_bytes", "Process memory in bytes", labels=c),
            CounterMetricFamily(
                f"{p}abort_total",
                "Requests the client abandoned before the response",
                labels=[*c, "resource"],
            ),
        )


def _state_label(state: str) -> str:
    return BREAKER_STATE_LABELS.get(state, state)


class MetricsServer(Closing):
    """A running ``/metrics`` HTTP server; ``close()`` stops it and frees the port."""

    def __init__(self, server: WSGIServer, thread: threading.Thread, host: str, port: int) -> None:
        self._server: WSGIServer | None = server
        self._thread = thread
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        server, self._server = self._server, None
        if server is None:  # already closed
            return
        server.shutdown()
        server.server_close()
        self._thread.join()


def start_http_server(collector: Collector, port: int, host: str = DEFAULT_HOST) -> MetricsServer:
    """Serve ``collector`` (alone in its own registry) at ``http://host:port/metrics`` from a daemon thread.

    The default host is loopback only; pass ``0.0.0.0`` to let Prometheus scrape from elsewhere. Port 0
    picks a free port (see ``MetricsServer.port``).
    """
    registry = CollectorRegistry()
    registry.register(collector)
    server, thread = prometheus_client.start_http_server(port, addr=host, registry=registry)
    bound_port = int(server.server_address[1])
    return MetricsServer(server, thread, host, bound_port)
