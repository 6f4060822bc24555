"""System adaptive protection (sentinel-golang ``core/system``), including the BBR check."""

from __future__ import annotations

from dataclasses import dataclass

from sentinel_ebpf.model.leap_array import MetricEvent
from sentinel_ebpf.model.stat import ResourceStat
from sentinel_ebpf.rules.system import MetricType, SystemRule


@dataclass
class SystemMetrics:
    """Host metrics the system rules and MemoryAdaptive flow rules read. None means "not read yet"."""

    load1: float | None = None
    cpu_usage: float | None = None  # 0.0 .. 1.0
    memory: int | None = None  # bytes used by the protected process(es)

    def memory_bytes(self) -> int | None:
        return self.memory


@dataclass(frozen=True)
class SystemResult:
    passed: bool
    message: str = ""
    snapshot: float = 0.0


def bbr_allows(inbound: ResourceStat, now_ms: int) -> bool:
    """``checkBbrSimple``: block only if concurrency exceeds what the best observed rate can carry."""
    concurrency = inbound.concurrency
    min_rt = inbound.min_rt(now_ms)
    max_complete = inbound.max_avg(now_ms, MetricEvent.COMPLETE)
    return not (concurrency > 1 and concurrency > max_complete * min_rt / 1000.0)


def check_rule(rule: SystemRule, inbound: ResourceStat, metrics: SystemMetrics, now_ms: int) -> SystemResult:
    threshold = rule.trigger_count
    mt = rule.metric_type
    if mt is MetricType.InboundQPS:
        qps = inbound.qps(now_ms, MetricEvent.PASS)
        return SystemResult(qps < threshold, "" if qps < threshold else "system qps check blocked", qps)
    if mt is MetricType.Concurrency:
        n = float(inbound.concurrency)
        return SystemResult(n < threshold, "" if n < threshold else "system concurrency check blocked", n)
    if mt is MetricType.AvgRT:
        rt = inbound.avg_rt(now_ms)
        return SystemResult(rt < threshold, "" if rt < threshold else "system avg rt check blocked", rt)
    value = metrics.load1 if mt is MetricType.Load else metrics.cpu_usage
    what = "load" if mt is MetricType.Load else "cpu usage"
    if value is None:
        return SystemResult(True, "", -1.0)  # not read yet: pass
    if value > threshold and (not rule.is_bbr or not bbr_allows(inbound, now_ms)):
        return SystemResult(False, f"system {what} check blocked", value)
    return SystemResult(True, "", value)
