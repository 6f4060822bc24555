"""``sentinel-ebpf stats`` and ``sentinel-ebpf top``: ask the running daemon."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.live import Live

from sentinel_ebpf.cli import app
from sentinel_ebpf.cli._common import fail, stop_on_signals
from sentinel_ebpf.daemon import ControlError, request
from sentinel_ebpf.daemon.control import DEFAULT_SOCKET
from sentinel_ebpf.outputs.stats_table import per_second, stats_table
from sentinel_ebpf.stats import BreakerSnapshot, ResourceStats

HISTORY_S = 30  # the sparkline's span in `top`
SocketOption = Annotated[str, typer.Option("--control-socket", help="The daemon's control socket.")]


def _resources(doc: dict[str, Any]) -> list[ResourceStats]:
    out = []
    for name, r in doc["resources"].items():
        out.append(ResourceStats(
            name=name, passed=r["pass"], blocked=r["block"], complete=r["complete"], error=r["error"],
            concurrency=r["concurrency"], rt_sum_ms=r["avg_rt_ms"] * r["complete"],
            block_by_type=dict(r["block_by_type"]),
            circuit_breakers=tuple(BreakerSnapshot(b["id"], b["state"]) for b in r["circuit_breakers"]),
            source=r.get("source", "kernel"),
        ))  # fmt: skip
    return out


def _fetch(path: str) -> dict[str, Any]:
    try:
        return request(path, "stats")
    except ControlError as exc:
        raise fail(str(exc)) from None


def _history(path: str) -> dict[str, list[int]] | None:
    """Pass per second over the last HISTORY_S seconds, from the daemon's memory (None: a daemon without it)."""
    since_ms = (int(time.time()) - HISTORY_S - 1) * 1000
    try:
        return per_second(request(path, "metrics", since=since_ms), "pass", HISTORY_S)
    except ControlError:
        return None


@app.command()
def stats(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object (the documented shape).")] = False,
    control_socket: SocketOption = DEFAULT_SOCKET,
) -> None:
    """Cumulative counters per resource since the rule set was loaded."""
    doc = _fetch(control_socket)
    if as_json:
        doc.pop("ok", None)
        print(json.dumps(doc))
        return
    Console().print(stats_table(_resources(doc)))


@app.command()
def top(
    control_socket: SocketOption = DEFAULT_SOCKET,
    interval: Annotated[float, typer.Option("--interval", help="Seconds between refreshes.", min=0.1)] = 1.0,
    count: Annotated[
        int, typer.Option("--count", help="Stop after this many refreshes (0: never).", min=0)
    ] = 0,
) -> None:
    """A live per-resource table: pass/block QPS, RT, concurrency, breaker states, the last 30 s."""
    previous = _resources(_fetch(control_socket))
    then = time.monotonic()
    shown = 0
    with stop_on_signals(), Live(stats_table(previous), auto_refresh=False) as live:
        while not count or shown < count:
            time.sleep(interval)
            current = _resources(_fetch(control_socket))
            now = time.monotonic()
            live.update(stats_table(current, previous, now - then, _history(control_socket)), refresh=True)
            previous, then = current, now
            shown += 1
