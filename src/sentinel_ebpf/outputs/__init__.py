"""Outputs of the statistics snapshots (``sentinel_ebpf.stats``): no kernel needed.

- ``metric_log``: Sentinel's per-second metric log files (``MetricLogWriter``, ``parse_line``).
- ``prometheus``: a Prometheus collector with sentinel-golang's names and an HTTP server for it.
- ``stats_json``: the ``stats --json`` document.
- ``stats_table``: the rich tables of ``stats`` and ``top``.
"""

from __future__ import annotations

from sentinel_ebpf.outputs.metric_log import (
    TOTAL_INBOUND_RESOURCE,
    MetricItem,
    MetricLine,
    MetricLineError,
    MetricLogWriter,
    ResourceType,
    classification_of,
    format_line,
    parse_line,
)
from sentinel_ebpf.outputs.prometheus import (
    MetricsServer,
    MetricsSnapshot,
    SentinelCollector,
    default_const_labels,
    start_http_server,
)
from sentinel_ebpf.outputs.stats_json import stats_document
from sentinel_ebpf.outputs.stats_table import stats_table

__all__ = [
    "TOTAL_INBOUND_RESOURCE",
    "MetricItem",
    "MetricLine",
    "MetricLineError",
    "MetricLogWriter",
    "MetricsServer",
    "MetricsSnapshot",
    "ResourceType",
    "SentinelCollector",
    "classification_of",
    "default_const_labels",
    "format_line",
    "parse_line",
    "start_http_server",
    "stats_document",
    "stats_table",
]
