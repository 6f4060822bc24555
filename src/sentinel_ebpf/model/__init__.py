"""Pure-Python reference model of Sentinel's algorithms, with an injectable clock.

It is the oracle the kernel implementation is tested against, and usable on its own::

    from sentinel_ebpf.model import ManualClock, Sentinel

    clock = ManualClock()
    sentinel = Sentinel(ruleset, clock=clock)
    entry = sentinel.entry("GET:/api/orders", param={"remote_ip": "10.0.0.7"})

Modules: ``clock``, ``leap_array`` (sliding windows), ``stat`` (per-resource statistics), ``flow``,
``circuitbreaker``, ``hotspot``, ``system`` and ``sentinel`` (rule check order, entry/exit).
"""

from sentinel_ebpf._types import BlockType
from sentinel_ebpf.model.circuitbreaker import CircuitBreaker, State, StateChange, StateChangeListener
from sentinel_ebpf.model.clock import Clock, ManualClock, SystemClock
from sentinel_ebpf.model.leap_array import BucketLeapArray, LeapArray, MetricEvent, SlidingWindowMetric
from sentinel_ebpf.model.sentinel import BlockInfo, Entry, ModelStats, Sentinel
from sentinel_ebpf.model.system import SystemMetrics

__all__ = [
    "BlockInfo",
    "BlockType",
    "BucketLeapArray",
    "CircuitBreaker",
    "Clock",
    "Entry",
    "LeapArray",
    "ManualClock",
    "MetricEvent",
    "ModelStats",
    "Sentinel",
    "SlidingWindowMetric",
    "State",
    "StateChange",
    "StateChangeListener",
    "SystemClock",
    "SystemMetrics",
]
