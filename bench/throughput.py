"""Throughput with the inbound data plane attached vs without it: wrk against nginx, interleaved runs.

usage: sudo flock /tmp/sentinel-bench.lock .venv/bin/python -m bench.throughput
           [--seconds 5] [--rounds 10] [--stats-rounds 3] [--connections 32] [--workers 1] [--others 300]

One client/server namespace pair (tests/support/netns.py). nginx (``--workers`` workers, keep-alive,
a static 12-byte file, access log off) in the server namespace; wrk (2 threads, ``--connections``
keep-alive connections, closed loop) in the client namespace. Server processes are pinned to CPU 1 and
the server veth's receive path to CPU 1 by RPS; wrk and the client veth's receive path to CPU 0
(bench/_serverside.py). The TC programs (``tc_ingress``, ``tc_egress``) of one ``InboundDataplane`` are
attached to the server veth or not, in three configurations run in turn in every round (the order
rotates from round to round):

  none     no program attached
  match    attached; the requested path is an HTTP resource with a flow rule it never reaches
           (threshold 1e9 QPS), beside ``--others`` more HTTP resources with flow rules on the same port
  nomatch  attached; ``--others`` HTTP resources with flow rules, all on another port
  match_del  as match, from a second object loaded with ``idle_connections=0``: each request's in-flight
           entry is deleted at its response (an LRU insert and delete per request), as before entries
           were kept per connection
  match_base  as match, from another build of inbound.bpf.o (``--baseline-object PATH``, only then):
           a change to the programs measured side by side with the object before it

Printed: the median requests/s per configuration, its ratio to ``none`` (the figure to judge) and the
median of per-round ratios; the busy share of both CPUs (/proc/stat ticks); and the server side's CPU
per request, measured exactly as in rejection_cost.py (server cgroup usage + network softirq time on
CPU 1 outside the server processes, bench/softirq_time.bpf.c), which other work on the machine does not
disturb, with its ratio to ``none``. Every raw run follows. Then ``--stats-rounds`` more rounds with
``kernel.bpf_stats_enabled=1`` (restored afterwards): the in-situ cost of each attached program,
``run_time_ns / run_cnt`` from the program fd's fdinfo, cross-checked with ``bpftool prog show``, and
program time per request. Statistics collection itself adds two clock reads per program run, so the
throughput figures come from the rounds without it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

from bench._serverside import (
    CLIENT_CPU,
    SERVER_CPU,
    Cgroup,
    CpuSample,
    SoftirqMeter,
    bpf_stats_enabled,
    bpftool_prog,
    fdinfo,
    measured,
    set_rps,
)
from sentinel_ebpf.enforce import InboundDataplane
from sentinel_ebpf.enforce import loader as enforce_loader
from sentinel_ebpf.netns import entered as in_netns
from sentinel_ebpf.rules import load_text
from tests.support.netns import NetnsPair
from tests.support.nginx import BENCH_HTTP, nginx_conf, start_nginx
from tests.support.wrk import wrk

PORT, OTHER_PORT = 8080, 9090
PATH = "/static/small.txt"
BIG = 1_000_000_000
CONFIGS = ("none", "match", "nomatch", "match_del")


def rules(config: str, others: int) -> str:
    port = PORT if config.startswith("match") else OTHER_PORT
    lines = ["resources:"]
    if config.startswith("match"):
        lines.append(f"  - {{name: bench, match: {{protocol: http, port: {PORT}, path: /static}}}}")
    lines += [
        f"  - {{name: r{i:04d}, match: {{protocol: http, port: {port}, method: GET, path: /api/r{i:04d}}}}}"
        for i in range(others)
    ]
    lines.append("flowRules:")
    if config.startswith("match"):
        lines.append(f"  - {{resource: bench, threshold: {BIG}, statIntervalInMs: 1000}}")
    lines += [f"  - {{resource: r{i:04d}, threshold: 1000, statIntervalInMs: 1000}}" for i in range(others)]
    return "\n".join(lines) + "\n"


def run_once(
    pair: NetnsPair,
    dps: dict[str, InboundDataplane],
    meter: SoftirqMeter,
    config: str,
    args: argparse.Namespace,
    server: Cgroup,
) -> dict[str, Any]:
    dp = dps[config if config in ("match_del", "match_base") else "main"]
    with in_netns(pair.server):
        for d in dps.values():  # one object attached at a time
            d.detach_all()
        if config != "none":
            dp.apply(dp.compile(load_text(rules(config, args.others))))
            dp.attach(pair.server_if)
    progs = {name: dp.obj.program(name).fd for name in ("tc_ingress", "tc_egress")}
    before = {name: fdinfo(fd) for name, fd in progs.items()}
    url = f"http://{pair.server_ip}:{PORT}{PATH}"
    res, cpu = measured(
        server,
        None,
        lambda: wrk(pair, url, args.seconds, args.connections, args.threads, cpu=CLIENT_CPU),
        meter,
    )
    after = {name: fdinfo(fd) for name, fd in progs.items()}
    if res.non2xx or res.socket_errors:
        raise RuntimeError(f"{config}: wrk saw errors (the rules must not block):\n{res.output}")
    out: dict[str, Any] = {"config": config, "requests": res.requests, "seconds": res.seconds, "rps": res.rps}
    out.update(cpu)
    out["server_ns_per_req"] = 1e9 * (cpu["server_cgroup_s"] + cpu["softirq_net_outside_s"]) / res.requests
    if config != "none":
        out["progs"] = {
            name: {
                "prog_id": after[name]["prog_id"],
                "run_cnt": after[name]["run_cnt"] - before[name]["run_cnt"],
                "run_time_ns": after[name]["run_time_ns"] - before[name]["run_time_ns"],
                "bpftool": bpftool_prog(after[name]["prog_id"]),
            }
            for name in progs
        }
        if config.startswith("match"):
            st = next(s for s in dp.resource_stats() if s.name == "bench")
            out["kernel_pass"], out["kernel_block"] = st.passed, st.blocked
    return out


@contextlib.contextmanager
def object_from(path: Path) -> Iterator[None]:
    """InboundDataplanes made inside load ``path`` instead of the package's inbound.bpf.o."""
    with mock.patch.object(enforce_loader, "object_path", lambda name: path):
        yield


def rounds(pair: NetnsPair, dps: dict[str, InboundDataplane], meter: SoftirqMeter, args: argparse.Namespace, server: Cgroup, n: int) -> list[dict[str, Any]]:  # fmt: skip
    runs = []
    configs = CONFIGS + (("match_base",) if "match_base" in dps else ())
    for i in range(n):
        order = configs[i % len(configs) :] + configs[: i % len(configs)]
        for config in order:
            r = run_once(pair, dps, meter, config, args, server)
            r["round"] = i + 1
            print(f"  round {i + 1} {config:<8} {r['rps']:>10,.0f} req/s", file=sys.stderr, flush=True)
            runs.append(r)
    return runs


def configs_of(runs: list[dict[str, Any]]) -> list[str]:
    return [c for c in (*CONFIGS, "match_base") if any(r["config"] == c for r in runs)]


def summary(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out = {}
    for config in configs_of(runs):
        rs = [r for r in runs if r["config"] == config]
        out[config] = {
            "rps": statistics.median(r["rps"] for r in rs),
            "server_busy": statistics.median(r["server_cpu_busy_s"] / r["wall_s"] for r in rs),
            "client_busy": statistics.median(r["client_cpu_busy_s"] / r["wall_s"] for r in rs),
            "ns_per_req": statistics.median(r["server_ns_per_req"] for r in rs),
        }
    # per-round ratios: each attached run against the "none" run of the same round
    for config in configs_of(runs)[1:]:
        ratios, cpu_ratios = [], []
        for i in {r["round"] for r in runs}:
            base = next(r for r in runs if r["round"] == i and r["config"] == "none")
            mine = next(r for r in runs if r["round"] == i and r["config"] == config)
            ratios.append(mine["rps"] / base["rps"])
            cpu_ratios.append(mine["server_ns_per_req"] / base["server_ns_per_req"])
        out[config]["ratio_median_of_rounds"] = statistics.median(ratios)
        out[config]["cpu_ratio_median_of_rounds"] = statistics.median(cpu_ratios)
    return out


def print_table(title: str, runs: list[dict[str, Any]]) -> None:
    s = summary(runs)
    base = s["none"]["rps"]
    print(f"\n{title}")
    print(f"{'config':<9} {'req/s (median)':>15} {'vs none':>8} {'round ratio':>11} {'server CPU':>10} "
          f"{'client CPU':>10} {'server ns/req':>13} {'vs none':>8} {'round ratio':>11}")  # fmt: skip
    for config in configs_of(runs):
        c = s[config]
        rr = f"{c['ratio_median_of_rounds']:.4f}" if "ratio_median_of_rounds" in c else "-"
        cr = f"{c['cpu_ratio_median_of_rounds']:.4f}" if "cpu_ratio_median_of_rounds" in c else "-"
        print(f"{config:<9} {c['rps']:>15,.0f} {c['rps'] / base:>8.4f} {rr:>11} {c['server_busy']:>10.2f} "
              f"{c['client_busy']:>10.2f} {c['ns_per_req']:>13,.0f} {c['ns_per_req'] / s['none']['ns_per_req']:>8.4f} "
              f"{cr:>11}")  # fmt: skip
    print("raw runs: round config req/s requests seconds | CPU 1 (ticks) busy/steal/softirq share, CPU 0 busy "
          "share | server ns/req: procs + net softirq outside them, and CPU 1 ticks")  # fmt: skip
    for r in runs:
        w = r["wall_s"]
        print(f"  {r['round']} {r['config']:<8} {r['rps']:>10,.0f} {r['requests']:>9} {r['seconds']:>6.2f} "
              f"{r['server_cpu_busy_s'] / w:>5.2f} {r['server_cpu_steal_s'] / w:>5.2f} "
              f"{r['server_cpu_softirq_s'] / w:>5.2f} {r['client_cpu_busy_s'] / w:>5.2f} "
              f"| {r['server_ns_per_req']:>7,.0f} {1e9 * r['server_cpu_busy_s'] / r['requests']:>7,.0f}")  # fmt: skip


def print_stats(runs: list[dict[str, Any]]) -> None:
    print("\nin-situ program cost (kernel.bpf_stats_enabled=1): run_time_ns / run_cnt, per attached run")
    print(f"{'config':<8} {'round':>5} {'program':<11} {'run_cnt':>10} {'ns/run':>7} {'runs/req':>8} "
          f"{'ns/req':>7} {'bpftool ns/run (cumulative)':>28}")  # fmt: skip
    per_config: dict[tuple[str, str], list[float]] = {}
    for r in runs:
        for name, p in r.get("progs", {}).items():
            ns = p["run_time_ns"] / max(1, p["run_cnt"])
            per_config.setdefault((r["config"], name), []).append(ns)
            bt = p["bpftool"]
            print(f"{r['config']:<8} {r['round']:>5} {name:<11} {p['run_cnt']:>10,} {ns:>7.1f} "
                  f"{p['run_cnt'] / r['requests']:>8.2f} {p['run_time_ns'] / r['requests']:>7.1f} "
                  f"{bt['run_time_ns'] / max(1, bt['run_cnt']):>28.1f}")  # fmt: skip
    base = [r["server_ns_per_req"] for r in runs if r["config"] == "none"]
    if base:
        c = statistics.median(base)
        print(f"server CPU per request without a program (median): {c:,.0f} ns")
        for config in configs_of(runs)[1:]:
            added = [sum(p["run_time_ns"] for p in r["progs"].values()) / r["requests"] for r in runs
                     if r["config"] == config]  # fmt: skip
            if added:
                a = statistics.median(added)
                print(f"  {config}: programs add {a:,.0f} ns per request -> expected ratio {c / (c + a):.4f}")
    print(
        "medians: "
        + ", ".join(f"{c} {n} {statistics.median(v):.1f} ns/run" for (c, n), v in per_config.items())
    )


def measure_all(
    pair: NetnsPair, dps: dict[str, InboundDataplane], args: argparse.Namespace, server: Cgroup
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    set_rps(pair, pair.server, pair.server_if, SERVER_CPU)
    set_rps(pair, pair.client, pair.client_if, CLIENT_CPU)
    work = pair.tmpdir / "nginx"
    (work / "www" / "static").mkdir(parents=True)
    (work / "www" / "static" / "small.txt").write_text("hello world\n")
    body = f"server {{ listen {PORT} backlog=4096; location / {{ root {work}/www; }} }}"
    conf = nginx_conf(work, f"{BENCH_HTTP}\n    {body}", workers=args.workers, events=4096, master=True)
    start_nginx(pair, work, conf, [PORT], cpu=SERVER_CPU, preexec_fn=server.join)
    p0 = CpuSample.take()
    time.sleep(2)
    p1 = CpuSample.take()
    print(f"background before the runs: server CPU {p0.busy_s(p1, SERVER_CPU) / 2:.2f}, client CPU "
          f"{p0.busy_s(p1, CLIENT_CPU) / 2:.2f} busy")  # fmt: skip
    wrk(pair, f"http://{pair.server_ip}:{PORT}{PATH}", 2, args.connections, args.threads, cpu=CLIENT_CPU)
    meter = SoftirqMeter(SERVER_CPU, server, pair.tmpdir)
    try:
        runs = rounds(pair, dps, meter, args, server, args.rounds)
        with bpf_stats_enabled():
            stat_runs = rounds(pair, dps, meter, args, server, args.stats_rounds)
    finally:
        meter.close()
    return runs, stat_runs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--stats-rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=1, help="nginx workers (all on the server CPU)")
    ap.add_argument("--others", type=int, default=300, help="resources besides the matched one")
    ap.add_argument("--baseline-object", type=Path, help="another build of inbound.bpf.o: config match_base")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("throughput.py needs root")
    print(f"command: {shlex.join(sys.argv)}")
    print(f"kernel {os.uname().release}, {os.cpu_count()} cpus; server on CPU {SERVER_CPU}, client on CPU "
          f"{CLIENT_CPU}; {args.seconds} s per run; wrk -t{args.threads} -c{args.connections}; "
          f"nginx {args.workers} worker(s)")  # fmt: skip
    server = Cgroup("tp")
    try:
        with NetnsPair("tp") as pair:
            dps: dict[str, InboundDataplane] = {}
            try:
                dps["main"] = InboundDataplane()
                dps["match_del"] = InboundDataplane(idle_connections=0)
                if args.baseline_object:
                    with object_from(args.baseline_object):
                        dps["match_base"] = InboundDataplane()
                runs, stat_runs = measure_all(pair, dps, args, server)
            finally:
                for dp in dps.values():
                    with in_netns(pair.server):  # the ifindex is the namespace's: never the host's
                        dp.detach_all()
                    dp.close()
    finally:
        server.remove()
    print_table("throughput (kernel.bpf_stats_enabled=0)", runs)
    print_table("throughput with kernel.bpf_stats_enabled=1 (for reference)", stat_runs)
    print_stats(stat_runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
