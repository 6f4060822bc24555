"""Statistics snapshots: what the collector reads from the kernel and every output formats.

These are plain values, produced by the control plane (from BPF maps) or by the reference model, and
consumed by the metric log, the Prometheus exporter, ``stats --json`` and ``top``.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from dataclasses import dataclass, field, replace
from typing import Any

BLOCK_TYPES = ("flow", "isolation", "circuit_breaking", "system", "hotspot")
BREAKER_STATES = ("closed", "open", "half_open")


@dataclass(frozen=True)
class SecondCounts:
    """One resource's counts in one completed second (a metric log line)."""

    second_ms: int  # start of the second, epoch milliseconds
    pass_qps: int
    block_qps: int
    complete_qps: int
    error_qps: int
    avg_rt_ms: int  # rt sum / complete, 0 without completions
    occupied_pass_qps: int = 0
    concurrency: int = 0

    def is_zero(self) -> bool:
        return not (
            self.pass_qps or self.block_qps or self.complete_qps or self.error_qps or self.concurrency
        )


@dataclass(frozen=True)
class BreakerSnapshot:
    id: str
    state: str  # one of BREAKER_STATES


@dataclass(frozen=True)
class BreakerTransition:
    """A circuit breaker transition, for circuit_breaker_state_changed_total."""

    resource: str
    breaker_id: str
    from_state: str
    to_state: str


@dataclass(frozen=True)
class ResourceStats:
    """Cumulative counters since the rule set was loaded, plus live gauges."""

    name: str
    passed: int = 0
    blocked: int = 0
    complete: int = 0
    error: int = 0
    abort: int = 0  # requests the client abandoned before the response (not errors, breakers ignore them)
    concurrency: int = 0
    rt_sum_ms: float = 0.0
    block_by_type: dict[str, int] = field(default_factory=lambda: dict.fromkeys(BLOCK_TYPES, 0))
    circuit_breakers: tuple[BreakerSnapshot, ...] = ()
    flow_threshold: float | None = None  # the first flow rule's threshold, for resource_flow_threshold
    flow_wait_total: int = 0  # requests admitted into the (virtual) throttling queue
    # "kernel": governed on the packet path; "tls_trace": a tls resource, observed by tracing OpenSSL
    # (pass = requests seen, never blocked)
    source: str = "kernel"

    @property
    def avg_rt_ms(self) -> float:
        return self.rt_sum_ms / self.complete if self.complete else 0.0


COUNTERS = ("pass", "block", "complete", "error")
GAUGES = ("concurrency", "pass_qps", "block_qps")


@dataclass(frozen=True)
class NodeRecord:
    """What one node says about itself. ``resources``: per resource the cumulative ``pass``, ``block``,
    ``complete``, ``error`` since its rules were loaded, the current ``concurrency``, and ``pass_qps`` /
    ``block_qps`` of its last complete second."""

    node: str
    health: str  # "up", or "down" (with ``error``)
    version: str | None = None
    rules_revision: str | None = None
    loaded_at: float | None = None
    seen_ms: int = 0  # when the record was taken (epoch ms)
    error: str | None = None
    resources: dict[str, dict[str, float]] = field(default_factory=dict)


def node_record(node: str, stats: dict[str, Any], history: dict[str, Any], now_ms: int) -> NodeRecord:
    """A daemon's record from its ``stats`` document and its ``metrics`` history of the last seconds."""
    last = history["to_ms"] - history["step_ms"]
    resources = {}
    for name, r in stats["resources"].items():
        point: dict[str, Any] = next((p for p in history["resources"].get(name, []) if p["t"] == last), {})
        resources[name] = {
            **{k: r[k] for k in COUNTERS}, "concurrency": r["concurrency"],
            "pass_qps": point.get("pass", 0), "block_qps": point.get("block", 0),
        }  # fmt: skip
    return NodeRecord(
        node=node, health="up", version=stats.get("version"), rules_revision=stats.get("revision"),
        loaded_at=stats.get("loaded_at"), seen_ms=now_ms, resources=resources,
    )  # fmt: skip


# The fleet registries (Redis with --cluster, etcd with rules from etcd): each node writes its record every
# PUBLISH_EVERY_MS; one older than STALE_MS shows the node down, and after FORGET_MS it is removed.
PUBLISH_EVERY_MS = 1000
STALE_MS = 3000
FORGET_MS = 60_000


def default_node_id() -> str:
    """This daemon's name in the fleet: host, pid and a random suffix (a restarted daemon is a new node)."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def read_node_record(name: str, raw: str | bytes, now_ms: int, where: str) -> NodeRecord | None:
    """The record a registry holds for node ``name``, aged: down once stale, None once to be forgotten;
    an unreadable one (another version's) as the node down with the reason. ``where``: the registry."""
    try:
        rec = NodeRecord(**json.loads(raw))
    except (TypeError, ValueError) as exc:
        return NodeRecord(node=name, health="down", seen_ms=now_ms,
                          error=f"unreadable record in {where} ({type(exc).__name__}: {exc})")  # fmt: skip
    age = now_ms - rec.seen_ms
    if age > FORGET_MS:
        return None
    if age > STALE_MS and rec.health == "up":
        rec = replace(rec, health="down", error=f"no record from the node for {age / 1000:.0f} s")
    return rec
