"""The ``stats --json`` document (a contract: see DESIGN.md, "Contracts")."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sentinel_ebpf.stats import BLOCK_TYPES, BREAKER_STATES, ResourceStats


def resource_document(res: ResourceStats) -> dict[str, Any]:
    """One resource's entry: cumulative counters since the rule set was loaded, and live gauges."""
    unknown = set(res.block_by_type) - set(BLOCK_TYPES)
    if unknown:
        raise ValueError(
            f"resource {res.name!r}: unknown block types {sorted(unknown)}; expected {BLOCK_TYPES}"
        )
    for breaker in res.circuit_breakers:
        if breaker.state not in BREAKER_STATES:
            raise ValueError(
                f"resource {res.name!r}, circuit breaker {breaker.id!r}: state {breaker.state!r} "
                f"is not one of {BREAKER_STATES}"
            )
    return {
        "pass": res.passed,
        "block": res.blocked,
        "complete": res.complete,
        "error": res.error,
        "abort": res.abort,
        "concurrency": res.concurrency,
        "avg_rt_ms": float(res.avg_rt_ms),
        "block_by_type": {kind: res.block_by_type.get(kind, 0) for kind in BLOCK_TYPES},
        "circuit_breakers": [{"id": b.id, "state": b.state} for b in res.circuit_breakers],
        "source": res.source,
    }


def stats_document(resources: Iterable[ResourceStats]) -> dict[str, Any]:
    """``{"resources": {NAME: {...}}}``, resources in the order given; a repeated name is an error."""
    out: dict[str, dict[str, Any]] = {}
    for res in resources:
        if res.name in out:
            raise ValueError(f"resource {res.name!r} appears twice in the snapshot")
        out[res.name] = resource_document(res)
    return {"resources": out}
