"""The fleet view: every node with its health, version and rules revision, and per resource the sum over
the nodes.

It is computed from node records (``stats.NodeRecord``), whatever their source: the daemons of this
host (``LocalSockets``, the dashboard's ``--control-socket`` list) or the Redis registry the ``--cluster``
daemons write to (``cluster.registry.RedisNodes``, ``dashboard --fleet``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, Protocol

from sentinel_ebpf.daemon.control import ControlError, request
from sentinel_ebpf.stats import COUNTERS, GAUGES, NodeRecord, node_record


class NodeSource(Protocol):
    def records(self) -> list[NodeRecord]: ...


def fleet_view(records: list[NodeRecord]) -> dict[str, Any]:
    """``{"nodes": [...], "resources": {NAME: {counter and gauge sums..., "nodes": N}}}``; only nodes that
    are up count in the sums."""
    sums: dict[str, dict[str, float]] = {}
    for rec in records:
        if rec.health != "up":
            continue
        for name, values in rec.resources.items():
            total = sums.setdefault(name, {k: 0 for k in (*COUNTERS, *GAUGES, "nodes")})
            for k in (*COUNTERS, *GAUGES):
                total[k] += values.get(k, 0)
            total["nodes"] += 1
    nodes = [{k: v for k, v in asdict(r).items() if k != "resources"} for r in records]
    revisions = {r.rules_revision for r in records if r.health == "up"}
    return {"nodes": nodes, "resources": dict(sorted(sums.items())), "same_rules": len(revisions) <= 1}


class LocalSockets:
    """The daemons of this host, asked over their control sockets."""

    def __init__(self, sockets: list[str], ask: Callable[..., dict[str, Any]] = request) -> None:
        self.sockets = sockets
        self.ask = ask

    def records(self) -> list[NodeRecord]:
        return [self._record(path) for path in self.sockets]

    def _record(self, path: str) -> NodeRecord:
        now_ms = round(time.time() * 1000)
        try:
            return self._ask_record(path, now_ms)
        except ControlError as exc:
            return NodeRecord(node=path, health="down", seen_ms=now_ms, error=str(exc))
        except (KeyError, TypeError, ValueError) as exc:  # another version's replies
            error = f"unexpected reply from the daemon ({type(exc).__name__}: {exc}): is it an older version?"
            return NodeRecord(node=path, health="down", seen_ms=now_ms, error=error)

    def _ask_record(self, path: str, now_ms: int) -> NodeRecord:
        stats = self.ask(path, "stats", timeout_s=2.0)
        history = self.ask(path, "metrics", timeout_s=2.0, since=now_ms - 3000)
        return node_record(path, stats, history, now_ms)
