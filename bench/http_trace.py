#!/usr/bin/env python3
"""Does the HTTP tracer keep up: wrk against nginx with ``HttpTracer`` consuming, vs without it.

nginx (one worker, keep-alive, a 13-byte ``return 200``) in a server namespace, wrk in a client
namespace, ``--seconds`` per run. Two loads: paced (each wrk connection pauses 1 ms after a response,
``bench/_wrk_paced.lua``: a fixed offered load; 32 and 48 connections by default) and closed loop (as fast
as wrk can). Runs alternate: no tracer, tracer on nginx's pid (server side only), tracer on the port
(both sides: wrk's requests too), ``--rounds`` times. For each traced run: requests
wrk completed, records the tracer produced (server and client side), kernel events and lost events,
the tracer's CPU time (user + system of this process, i.e. the Python consumer) and its share of a
core, and the requests per second relative to the untraced runs of the same invocation.

usage: sudo .venv/bin/python -m bench.http_trace [--seconds 10] [--rounds 3] [--connections 16]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from sentinel_ebpf.tracing.http import HttpRecord, HttpTraceFilter, HttpTracer
from tests.support.netns import NetnsPair
from tests.support.nginx import BENCH_HTTP, nginx_conf, start_nginx
from tests.support.wrk import WrkResult, wrk

PORT = 8380
PACED = Path(__file__).with_name("_wrk_paced.lua")


def run_wrk(pair: NetnsPair, seconds: float, connections: int, paced: bool = False) -> WrkResult:
    """wrk for ``seconds``; paced: every connection waits 1 ms after each response (a fixed offered load)."""
    url = f"http://{pair.server_ip}:{PORT}/"
    return wrk(pair, url, seconds, connections, script=PACED if paced else None)


def traced_run(
    pair: NetnsPair, filters: HttpTraceFilter, seconds: float, connections: int, paced: bool
) -> dict[str, Any]:
    records = {"server": 0, "client": 0}
    ok = {"server": 0, "client": 0}

    def count(rec: HttpRecord) -> None:
        records[rec.direction] += 1
        ok[rec.direction] += rec.status == 200 and rec.path == "/"

    with HttpTracer(filters) as tracer:
        stop = threading.Event()
        result: dict[str, Any] = {}

        def load() -> None:
            result["wrk"] = run_wrk(pair, seconds, connections, paced)
            stop.set()

        cpu0 = time.process_time()
        t = threading.Thread(target=load)
        t.start()
        while not stop.is_set():
            tracer.poll(count, 100)
        t.join()
        quiet = time.monotonic()
        while time.monotonic() - quiet < 1.0:  # drain: the last records of the run
            if tracer.poll(count, 100):
                quiet = time.monotonic()
        cpu = time.process_time() - cpu0
        counters = tracer.counters()
    run: WrkResult = result["wrk"]
    done, secs, errors = run.requests, run.seconds, run.errors
    return {"requests": done, "rps": done / secs, "records": records, "ok": ok, "cpu_s": cpu,
            "cpu_share": cpu / secs, "kernel": counters, "errors": errors}  # fmt: skip


def measure(pair: NetnsPair, nginx_pid: int, args: argparse.Namespace, paced: bool) -> None:
    conns = args.paced if paced else args.connections
    plain: list[float] = []
    runs: dict[str, list[dict[str, Any]]] = {"pid": [], "port": []}
    for _ in range(args.rounds):
        run = run_wrk(pair, args.seconds, conns, paced)
        done, secs = run.requests, run.seconds
        plain.append(done / secs)
        runs["pid"].append(
            traced_run(pair, HttpTraceFilter(pid=nginx_pid, tls=False), args.seconds, conns, paced)
        )
        runs["port"].append(
            traced_run(pair, HttpTraceFilter(ports=(PORT,), tls=False), args.seconds, conns, paced)
        )
    base = statistics.median(plain)
    load = (
        f"paced: {conns} connections, 1 ms pause after each response"
        if paced
        else f"closed loop, {conns} connections"
    )
    print(f"\n== {load}; without tracer: median {base:,.0f} req/s ({', '.join(f'{r:,.0f}' for r in plain)})")
    print(f"{'traced':<22} {'req/s':>9} {'vs none':>8} {'requests':>10} {'records':>10} {'missing':>8} "
          f"{'lost':>7} {'trunc':>6} {'CPU/core':>8}")  # fmt: skip
    for kind, label in (("pid", "nginx pid (server)"), ("port", "port (both sides)")):
        for r in runs[kind]:
            want = r["requests"] * (1 if kind == "pid" else 2)
            got = r["ok"]["server"] + (r["ok"]["client"] if kind == "port" else 0)
            print(f"{label:<22} {r['rps']:>9,.0f} {r['rps'] / base:>8.3f} {r['requests']:>10,} {got:>10,} "
                  f"{want - got:>8,} {r['kernel']['lost']:>7} {r['kernel']['truncated']:>6} {r['cpu_share']:>8.2f}")  # fmt: skip
    print("raw:")
    for kind in runs:
        for r in runs[kind]:
            print(" ", kind, r)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=16, help="closed loop (as fast as possible)")
    ap.add_argument(
        "--paced-connections",
        type=int,
        nargs="+",
        default=[32, 48],
        help="paced loads to run (~0.6k req/s per connection)",
    )
    ap.add_argument("--paced-only", action="store_true", help="skip the closed-loop load")
    args = ap.parse_args()
    print(f"$ {' '.join(sys.argv)}")
    with NetnsPair("hb") as pair:
        work = pair.tmpdir / "nginx-bench"
        server = f'server {{ listen {PORT}; location / {{ return 200 "hello world\\n"; }} }}'
        nginx = start_nginx(pair, work, nginx_conf(work, f"{BENCH_HTTP}\n    {server}", events=1024), [PORT])
        run_wrk(pair, 2, args.connections)  # warm up
        for conns in args.paced_connections:
            args.paced = conns
            measure(pair, nginx.pid, args, paced=True)
        if not args.paced_only:
            measure(pair, nginx.pid, args, paced=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
