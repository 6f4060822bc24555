"""``sentinel-ebpf trace``: print every TCP connection attempt as the original plugin did."""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated

import typer

from sentinel_ebpf.cli import app
from sentinel_ebpf.cli._common import fail, reported_errors, require_root, stop_on_signals
from sentinel_ebpf.trace import HEADER, Connection, ConnTracer, TraceFilter


@app.command()
def trace(
    pid: Annotated[int, typer.Option("-p", "--pid", help="Only this process (tgid).", min=0)] = 0,
    port: Annotated[
        list[int] | None,
        typer.Option(
            "-P", "--port", help="Only this destination port (local port for --accept); repeatable."
        ),
    ] = None,
    comm: Annotated[str | None, typer.Option("--comm", help="Only processes with this command name.")] = None,
    count: Annotated[int, typer.Option("-c", "--count", help="Exit after this many connections.", min=0)] = 0,
    duration: Annotated[
        float, typer.Option("-d", "--duration", help="Exit after this many seconds.", min=0)
    ] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    accept: Annotated[
        bool, typer.Option("--accept", help="Also show inbound (accepted) connections.")
    ] = False,
    flavor: Annotated[
        str, typer.Option("--hooks", help="auto, btf (tp_btf) or raw (raw_tp).", hidden=True)
    ] = "auto",
) -> None:
    """Trace outgoing TCP connection attempts (IPv4 and IPv6), one line each.

    A line is printed when the attempt resolves (established, refused, timed out or closed), with the
    time connect() was called and the real source port.
    """
    try:
        filters = TraceFilter(pid=pid, ports=tuple(port or ()), comm=comm, accept=accept)
    except ValueError as exc:
        raise fail(str(exc), code=2) from None
    require_root("trace")
    seen = 0
    deadline = time.monotonic() + duration if duration else None

    class Done(Exception):
        pass

    def emit(conn: Connection) -> None:
        nonlocal seen
        if as_json:
            print(json.dumps(conn.json_dict()), flush=True)
        else:
            print(conn.line(), flush=True)
        seen += 1
        if count and seen >= count:
            raise Done

    with reported_errors(), stop_on_signals(), ConnTracer(filters, flavor=flavor) as tracer:
        print(
            f"sentinel-ebpf: tracing TCP connections ({tracer.flavor} hooks); Ctrl-C to stop",
            file=sys.stderr,
            flush=True,
        )
        if not as_json:
            print(time.strftime("%Y/%m/%d %H:%M:%S ") + HEADER, flush=True)
        try:
            while deadline is None or time.monotonic() < deadline:
                tracer.poll(emit, 100)
                lost = tracer.new_lost()
                if lost:
                    print(f"sentinel-ebpf: {lost} connection events lost", file=sys.stderr, flush=True)
        except Done:
            pass
