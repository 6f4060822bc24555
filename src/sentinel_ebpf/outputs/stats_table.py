"""Terminal tables for ``stats`` (cumulative counters) and ``top`` (rates between two snapshots)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.table import Table
from rich.text import Text

from sentinel_ebpf.stats import BreakerSnapshot, ResourceStats

_STATE_STYLES = {"closed": "green", "open": "bold red", "half_open": "yellow"}
_SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[int]) -> str:
    """One character per value, scaled to the largest; zero is the lowest bar, anything else above it."""
    top = max(values, default=0)
    if top <= 0:
        return _SPARKS[0] * len(values)
    steps = len(_SPARKS) - 2
    return "".join(_SPARKS[0] if v <= 0 else _SPARKS[1 + round(v / top * steps)] for v in values)


def per_second(metrics: Mapping[str, Any], field: str, seconds: int) -> dict[str, list[int]]:
    """``field`` of each resource over the last ``seconds`` of a ``metrics`` reply (zeros where the
    daemon kept no point), oldest first."""
    to_ms = int(metrics["to_ms"])
    start = to_ms - seconds * 1000
    out = {}
    for name, points in metrics["resources"].items():
        at = {p["t"]: p[field] for p in points}
        out[name] = [at.get(t, 0) for t in range(start, to_ms, 1000)]
    return out


def stats_table(
    current: Sequence[ResourceStats],
    previous: Sequence[ResourceStats] | None = None,
    elapsed_s: float = 0.0,
    history: Mapping[str, Sequence[int]] | None = None,
) -> Table:
    """One row per resource of ``current``.

    Without ``previous`` (``stats``): cumulative pass, block, complete, error and the mean RT since load.
    With ``previous`` taken ``elapsed_s`` seconds earlier (``top``): pass/block/complete/error per second
    and the mean RT of the requests completed in between. A counter that went down (rules reloaded) or a
    resource absent before counts from zero. Concurrency and breaker states are the current values.
    ``history`` (resource -> pass per second, oldest first) adds a sparkline column.
    """
    rates = previous is not None
    if rates and elapsed_s <= 0:
        raise ValueError(f"elapsed_s must be positive to compute rates, got {elapsed_s}")
    before = {r.name: r for r in previous} if previous is not None else {}
    table = Table(title="sentinel-ebpf: per second" if rates else "sentinel-ebpf: since rules loaded")
    unit = " QPS" if rates else ""
    table.add_column("Resource", overflow="fold")
    for name in ("Pass", "Block", "Complete", "Error"):
        table.add_column(name + unit, justify="right")
    table.add_column("Avg RT ms", justify="right")
    table.add_column("Concurrency", justify="right")
    table.add_column("Circuit breakers")
    width = max((len(v) for v in history.values()), default=0) if history is not None else 0
    if history is not None:
        # never cut: a cut sparkline would lose its newest seconds (other columns wrap instead)
        table.add_column(
            f"Pass/s, last {width} s" if width else "Pass/s history", min_width=width, no_wrap=True
        )
    for res in current:
        old = before.get(res.name)
        base = old if old is not None and not _was_reset(res, old) else ResourceStats(res.name)
        counts = (
            res.passed - base.passed,
            res.blocked - base.blocked,
            res.complete - base.complete,
            res.error - base.error,
        )
        rt_sum_ms = res.rt_sum_ms - base.rt_sum_ms
        avg_rt_ms = rt_sum_ms / counts[2] if counts[2] else 0.0
        shown = [f"{c / elapsed_s:.1f}" for c in counts] if rates else [str(c) for c in counts]
        table.add_row(
            res.name + (" (tls, observed)" if res.source == "tls_trace" else ""),
            shown[0],
            Text(shown[1], style="red" if counts[1] else ""),
            shown[2],
            shown[3],
            f"{avg_rt_ms:.1f}",
            str(res.concurrency),
            _breakers(res.circuit_breakers),
            *([sparkline(history.get(res.name) or [0] * width)] if history is not None else []),
        )
    return table


def _was_reset(now: ResourceStats, then: ResourceStats) -> bool:
    """Counters only grow while a rule set is loaded; any decrease means they restarted from zero."""
    return (
        now.passed < then.passed
        or now.blocked < then.blocked
        or now.complete < then.complete
        or now.error < then.error
        or now.rt_sum_ms < then.rt_sum_ms
    )


def _breakers(breakers: Sequence[BreakerSnapshot]) -> Text:
    if not breakers:
        return Text("-")
    text = Text()
    for i, b in enumerate(breakers):
        if i:
            text.append(", ")
        if len(breakers) > 1:
            text.append(f"{b.id}:")
        text.append(b.state, style=_STATE_STYLES.get(b.state, ""))
    return text
