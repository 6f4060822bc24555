"""``sentinel-ebpf trace``: print every TCP connection attempt as the original plugin did."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Annotated, TypeVar

import typer

from sentinel_ebpf.cli import app
from sentinel_ebpf.cli._common import fail, reported_errors, require_root, stop_on_signals
from sentinel_ebpf.tracing.http import HEADER as HTTP_HEADER
from sentinel_ebpf.tracing.http import HttpRecord, HttpTraceFilter, HttpTracer
from sentinel_ebpf.tracing.tcp import HEADER, Connection, ConnTracer, TraceFilter


@app.command()
def trace(
    pid: Annotated[int, typer.Option("-p", "--pid", help="Only this process (tgid).", min=0)] = 0,
    port: Annotated[
        list[int] | None,
        typer.Option(
            "-P",
            "--port",
            help="Only this destination port (local port for --accept; either for --http); repeatable.",
        ),
    ] = None,
    comm: Annotated[str | None, typer.Option("--comm", help="Only processes with this command name.")] = None,
    count: Annotated[
        int,
        typer.Option("-c", "--count", help="Exit after this many connections (requests with --http).", min=0),
    ] = 0,
    duration: Annotated[
        float, typer.Option("-d", "--duration", help="Exit after this many seconds.", min=0)
    ] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    accept: Annotated[
        bool, typer.Option("--accept", help="Also show inbound (accepted) connections.")
    ] = False,
    http: Annotated[
        bool,
        typer.Option(
            "--http",
            help="Trace HTTP/1.x requests instead: one line per request/response pair, from the "
            "read/write system calls and OpenSSL (HTTPS in plain text).",
        ),
    ] = False,
    tls: Annotated[
        bool, typer.Option("--tls/--no-tls", help="With --http: also hook OpenSSL (libssl).")
    ] = True,
    flavor: Annotated[
        str, typer.Option("--hooks", help="auto, btf (tp_btf) or raw (raw_tp).", hidden=True)
    ] = "auto",
) -> None:
    """Trace outgoing TCP connection attempts (IPv4 and IPv6), one line each.

    A line is printed when the attempt resolves (established, refused, timed out or closed), with the
    time connect() was called and the real source port.

    With --http: one line per HTTP/1.x request/response pair as each process sees it (server: it read
    the request; client: it wrote it), with method, path, status, latency and sizes; -P matches the
    local or the remote port. HTTPS requests made or served through OpenSSL are shown in plain text
    (method marked with *).
    """
    if http:
        if comm is not None or accept:
            raise fail("--comm and --accept apply to connection tracing, not to --http", code=2)
        _trace_http(pid, port or [], tls, count, duration, as_json, flavor)
        return
    try:
        filters = TraceFilter(pid=pid, ports=tuple(port or ()), comm=comm, accept=accept)
    except ValueError as exc:
        raise fail(str(exc), code=2) from None
    require_root("trace")
    with reported_errors(), stop_on_signals(), ConnTracer(filters, flavor=flavor) as tracer:
        print(
            f"sentinel-ebpf: tracing TCP connections ({tracer.flavor} hooks); Ctrl-C to stop",
            file=sys.stderr,
            flush=True,
        )
        if not as_json:
            print(time.strftime("%Y/%m/%d %H:%M:%S ") + HEADER, flush=True)
        _consume(tracer.poll, tracer.new_lost, count, duration, as_json, "connection", tracer.counters)


def _trace_http(
    pid: int, ports: list[int], tls: bool, count: int, duration: float, as_json: bool, flavor: str
) -> None:
    try:
        filters = HttpTraceFilter(pid=pid, ports=tuple(ports), tls=tls)
    except ValueError as exc:
        raise fail(str(exc), code=2) from None
    require_root("trace --http")
    with reported_errors(), stop_on_signals(), HttpTracer(filters, flavor=flavor) as tracer:
        libs = ", ".join(tracer.tls_libraries) or "none found"
        print(
            f"sentinel-ebpf: tracing HTTP ({tracer.flavor} hooks; OpenSSL: "
            f"{libs if tls else 'off'}); Ctrl-C to stop",
            file=sys.stderr,
            flush=True,
        )
        for problem in tracer.tls_errors:
            print(f"sentinel-ebpf: {problem}", file=sys.stderr, flush=True)
        if not as_json:
            print(HTTP_HEADER, flush=True)
        _consume(tracer.poll, tracer.new_lost, count, duration, as_json, "HTTP data", tracer.counters)


R = TypeVar("R", Connection, HttpRecord)


class _Done(Exception):
    pass


def _consume(
    poll: Callable[[Callable[[R], None], int], int],
    new_lost: Callable[[], int],
    count: int,
    duration: float,
    as_json: bool,
    what: str,
    counters: Callable[[], dict[str, int]],
) -> None:
    """Print each record (a line, or a JSON object) until ``count`` records or ``duration`` seconds (0:
    no limit). Output is flushed once per poll, not per line (at thousands of records a second a flush
    per line made the consumer fall behind the ring buffer); lost events are read once a second, and
    at exit, with every counter of the tracer (one JSON line on stderr)."""
    seen = 0
    deadline = time.monotonic() + duration if duration else None

    def emit(rec: R) -> None:
        nonlocal seen
        print(json.dumps(rec.json_dict()) if as_json else rec.line())
        seen += 1
        if count and seen >= count:
            raise _Done

    def report_lost() -> None:
        lost = new_lost()
        if lost:
            print(f"sentinel-ebpf: {lost} {what} events lost", file=sys.stderr, flush=True)

    next_check = time.monotonic() + 1.0
    try:
        while deadline is None or time.monotonic() < deadline:
            poll(emit, 100)
            sys.stdout.flush()
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + 1.0
                report_lost()
    except _Done:
        pass
    finally:
        sys.stdout.flush()
        report_lost()
        print(f"sentinel-ebpf: counters at exit: {json.dumps(counters())}", file=sys.stderr, flush=True)
