"""Outputs of the statistics snapshots (``sentinel_ebpf.stats``): no kernel needed.

- ``metric_log``: Sentinel's per-second metric log files (``MetricLogWriter``, ``parse_line``).
"""

from __future__ import annotations

from sentinel_ebpf.outputs.metric_log import (
    MetricItem,
    MetricLine,
    MetricLineError,
    MetricLogWriter,
    ResourceType,
    format_line,
    parse_line,
)

__all__ = [
    "MetricItem",
    "MetricLine",
    "MetricLineError",
    "MetricLogWriter",
    "ResourceType",
    "format_line",
    "parse_line",
]
