"""Server-side CPU per rejected request under the same overload: eBPF vs nginx limit_req vs slowapi.

usage: sudo flock /tmp/sentinel-bench.lock .venv/bin/python -m bench.rejection_cost
           [--threshold 100] [--seconds 10] [--rounds 5] [--connections 64]
           [--systems ebpf,ebpf-rst,ebpf-syn,nginx,python] [--loads keepalive,close]
       (needs the ``bench`` extra: ``.venv/bin/pip install -e '.[bench]'`` for uvicorn and slowapi)

One client/server namespace pair (tests/support/netns.py). The server side is pinned to CPU 1 (its
processes by taskset, the server veth's receive path by RPS: softirq work for packets to the server,
TC programs included, runs there) and its processes run in a cgroup v2 of their own; wrk (closed loop,
``--connections`` connections, 2 threads) and the client veth's receive path are on CPU 0
(bench/_serverside.py). Each system limits one resource to ``--threshold`` requests per second:

  ebpf      nginx (1 worker) serving a 12-byte static file on 8080, the inbound data plane attached to
            the server veth with {resource: all of port 8080 (http), threshold: T}: the kernel answers
            429 in the connection's stream and keeps the connection (the server never sees the
            request; with the ``close`` load the client closes it anyway)
  ebpf-rst  the same with ``reject: {http: {mode: rst}}``: the request is answered with a reset
  ebpf-syn  a TCP resource (port 8080, threshold T new connections/s): the SYN is answered with a RST,
            nginx never sees the connection (only with the ``close`` load: with keep-alive it limits
            connections, not requests)
  nginx     the same nginx, port 8081: limit_req (zone rate=Tr/s, burst 0, nodelay, limit_req_status 429)
            in front of the same file
  python    uvicorn (uvloop, httptools, 1 worker, access log off) running bench/_asgi_limited.py:
            Starlette behind slowapi's ASGI middleware, one in-memory fixed-window limit "T/second"

Two client loads (``--loads``): ``keepalive`` (wrk's default: a connection is reused until the server
closes it; nginx's, slowapi's and the kernel's 429 keep it open) and ``close`` (wrk sends
``Connection: close``: a new connection for every request, whatever the answer).

Every case runs in every round (order rotating), ``--seconds`` each, the data plane attached only during
ebpf runs. Per run: wrk's responses (non-2xx = rejected; for ebpf-rst and ebpf-syn, which send no
response, the kernel's block count), and the CPU the server side used:

  server CPU = procs + softirq: **procs** is usage_usec of the server processes' cgroup (exact; without
  CONFIG_IRQ_TIME_ACCOUNTING, as here, it also holds the softirq work that ran while a server process was
  the current task); **softirq** is NET_RX + NET_TX softirq time on CPU 1 while any other task was current
  (idle, ksoftirqd, an unrelated process), timed by bench/softirq_time.bpf.c (tp_btf softirq_entry/exit).
  That is where the kernel's 429/RST path and the server's TCP receive work run when nginx is not.
  Neither part is disturbed by other work on the machine (except its own network softirqs on CPU 1).
  **CPU1 ticks** (for comparison): busy time of CPU 1 from /proc/stat (user, system, irq, softirq; not
  steal; tick sampled at 250 Hz) minus what CPU 1 was busy with just before the run (a 0.5 s window
  once CPU 1 has settled below 10% busy, or after 10 s); other work on the machine skews it.

CPU per rejected request = CPU / rejected (the passed requests, T per second, are included and
negligible next to thousands of rejections per second). Printed per load: medians over rounds, the
ratio of the medians to ebpf and the median of the per-round ratios; then every raw run.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench._serverside import (
    CLIENT_CPU,
    SERVER_CPU,
    Cgroup,
    SoftirqMeter,
    idle_busy,
    measured,
    set_rps,
)
from sentinel_ebpf.enforce import InboundDataplane
from sentinel_ebpf.netns import entered as in_netns
from sentinel_ebpf.rules import load_text
from tests.support.netns import NetnsPair
from tests.support.nginx import BENCH_HTTP, nginx_conf, start_nginx
from tests.support.procstat import pin
from tests.support.wrk import wrk

EBPF_PORT, NGINX_PORT, PY_PORT = 8080, 8081, 8082
PATH = "/static/small.txt"
APP = Path(__file__).with_name("_asgi_limited.py")
SYSTEMS = ("ebpf", "ebpf-rst", "ebpf-syn", "nginx", "python")
LOADS = {
    "keepalive": "keep-alive connections (a client reconnects only when the server closes)",
    "close": "a new connection for every request (Connection: close sent by the client)",
}
RULES = """
resources:
  - {{name: limited, match: {{protocol: http, port: {port}, path: /}}}}
flowRules:
  - {{resource: limited, threshold: {t}, statIntervalInMs: 1000}}
{reject}
"""
SYN_RULES = """
resources:
  - {{name: limited, match: {{protocol: tcp, port: {port}}}}}
flowRules:
  - {{resource: limited, threshold: {t}, statIntervalInMs: 1000}}
"""


def start_servers(pair: NetnsPair, args: argparse.Namespace, server: Cgroup) -> None:
    work = pair.tmpdir / "nginx"
    (work / "www" / "static").mkdir(parents=True)
    (work / "www" / "static" / "small.txt").write_text("hello world\n")
    body = f"""
    limit_req_zone $server_port zone=bench:1m rate={args.threshold}r/s;
    server {{ listen {EBPF_PORT} backlog=4096; location / {{ root {work}/www; }} }}
    server {{
        listen {NGINX_PORT} backlog=4096;
        location / {{ limit_req zone=bench nodelay; limit_req_status 429; root {work}/www; }}
    }}
"""
    conf = nginx_conf(work, f"{BENCH_HTTP}\n    {body}", events=8192, master=True)
    start_nginx(pair, work, conf, [EBPF_PORT, NGINX_PORT], cpu=SERVER_CPU, preexec_fn=server.join)
    if "python" in args.systems:
        env = {**os.environ, "BENCH_LIMIT": f"{args.threshold}/second"}
        proc = pair.popen(
            pair.server, *pin(SERVER_CPU), sys.executable, "-m", "uvicorn", "--app-dir", str(APP.parent),
            "--host", pair.server_ip, "--port", str(PY_PORT), "--workers", "1", "--loop", "uvloop",
            "--http", "httptools", "--no-access-log", "--log-level", "warning", "--backlog", "4096",
            f"{APP.stem}:app", env=env, stdin=subprocess.DEVNULL, preexec_fn=server.join,
        )  # fmt: skip
        pair.wait_listening(pair.server, PY_PORT, proc)


def rules_for(system: str, threshold: int) -> str:
    if system == "ebpf-syn":
        return SYN_RULES.format(port=EBPF_PORT, t=threshold)
    reject = "reject: {http: {mode: rst}}" if system == "ebpf-rst" else ""
    return RULES.format(port=EBPF_PORT, t=threshold, reject=reject)


def run_once(
    pair: NetnsPair,
    dp: InboundDataplane,
    meter: SoftirqMeter,
    system: str,
    load: str,
    args: argparse.Namespace,
    server: Cgroup,
    client: Cgroup,
) -> dict[str, Any]:
    with in_netns(pair.server):
        dp.detach_all()
        if system.startswith("ebpf"):
            dp.apply(dp.compile(load_text(rules_for(system, args.threshold))))
            dp.attach(pair.server_if)
    port = {"nginx": NGINX_PORT, "python": PY_PORT}.get(system, EBPF_PORT)
    url = f"http://{pair.server_ip}:{port}{PATH}"
    headers = ("Connection: close",) if load == "close" else ()
    background = idle_busy()
    k0 = dp.resource_stats()[0] if system.startswith("ebpf") else None
    res, cpu = measured(
        server,
        client,
        lambda: wrk(
            pair,
            url,
            args.seconds,
            args.connections,
            2,
            cpu=CLIENT_CPU,
            preexec_fn=client.join,
            headers=headers,
        ),
        meter,
    )
    out: dict[str, Any] = {"system": system, "load": load, "requests": res.requests, "seconds": res.seconds}
    out.update(cpu)
    out["background_server_cpu"] = background["server_cpu"]
    out["background_client_cpu"] = background["client_cpu"]
    out["rejected"] = res.non2xx
    out["passed"] = res.requests - res.non2xx
    out["socket_errors"] = res.socket_errors
    if k0 is not None:
        k1 = dp.resource_stats()[0]
        out["kernel_pass"], out["kernel_block"] = k1.passed - k0.passed, k1.blocked - k0.blocked
    if system in (
        "ebpf-rst",
        "ebpf-syn",
    ):  # no response: wrk counts a read or connect error, the kernel a block
        out["rejected"] = out["kernel_block"]
    n = max(1, out["rejected"])
    out["server_s"] = cpu["server_cgroup_s"] + cpu["softirq_net_outside_s"]
    out["us_per_rejected"] = 1e6 * out["server_s"] / n
    out["cgroup_us_per_rejected"] = 1e6 * cpu["server_cgroup_s"] / n
    out["softirq_us_per_rejected"] = 1e6 * cpu["softirq_net_outside_s"] / n
    tick_s = max(0.0, cpu["server_cpu_busy_s"] - background["server_cpu"] * cpu["wall_s"])
    out["tick_us_per_rejected"] = 1e6 * tick_s / n
    return out


def measure_all(
    pair: NetnsPair, dp: InboundDataplane, args: argparse.Namespace, server: Cgroup, client: Cgroup
) -> list[dict[str, Any]]:
    set_rps(pair, pair.server, pair.server_if, SERVER_CPU)
    set_rps(pair, pair.client, pair.client_if, CLIENT_CPU)
    # every kernel 429 ends its connection: give the client all the ports it can use
    pair.run(pair.client, "sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65000", check=True)
    pair.run(pair.client, "sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1", check=True)
    start_servers(pair, args, server)
    meter = SoftirqMeter(SERVER_CPU, server, pair.tmpdir)
    try:
        return run_cases(pair, dp, meter, args, server, client)
    finally:
        meter.close()


def run_cases(
    pair: NetnsPair,
    dp: InboundDataplane,
    meter: SoftirqMeter,
    args: argparse.Namespace,
    server: Cgroup,
    client: Cgroup,
) -> list[dict[str, Any]]:
    for port in (EBPF_PORT, NGINX_PORT, *((PY_PORT,) if "python" in args.systems else ())):  # warm up
        wrk(pair, f"http://{pair.server_ip}:{port}{PATH}", 2, args.connections, 2, cpu=CLIENT_CPU)
    cases = [
        (s, ld) for ld in args.loads for s in args.systems if not (s == "ebpf-syn" and ld == "keepalive")
    ]
    runs = []
    for i in range(args.rounds):
        for system, load in cases[i % len(cases) :] + cases[: i % len(cases)]:
            r = run_once(pair, dp, meter, system, load, args, server, client)
            r["round"] = i + 1
            print(f"  round {i + 1} {load:<9} {system:<8} {r['rejected'] / r['seconds']:>9,.0f} rejected/s "
                  f"{r['us_per_rejected']:>8.2f} us/rejected", file=sys.stderr, flush=True)  # fmt: skip
            runs.append(r)
    return runs


def report(runs: list[dict[str, Any]], args: argparse.Namespace) -> None:
    keys = ("us_per_rejected", "cgroup_us_per_rejected", "softirq_us_per_rejected", "tick_us_per_rejected")
    for load in args.loads:
        lr = [r for r in runs if r["load"] == load]
        med: dict[str, dict[str, float]] = {}
        for system in args.systems:
            rs = [r for r in lr if r["system"] == system]
            if not rs:
                continue
            med[system] = {key: statistics.median(float(r[key]) for r in rs) for key in keys}
            med[system]["rejected_per_s"] = statistics.median(r["rejected"] / r["seconds"] for r in rs)
            med[system]["passed_per_s"] = statistics.median(r["passed"] / r["seconds"] for r in rs)
            med[system]["server_busy"] = statistics.median(r["server_s"] / r["wall_s"] for r in rs)
        if not med:
            continue
        base_name = "ebpf" if "ebpf" in med else next(iter(med))
        base = med[base_name]
        print(f"\n{load}: {LOADS[load]}; threshold {args.threshold}/s, wrk -c{args.connections}, "
              f"{args.seconds} s x {args.rounds} rounds (medians)")  # fmt: skip
        print(f"{'system':<9} {'rejected/s':>10} {'x T':>5} {'passed/s':>8} {'server CPU':>10} "
              f"{'us/rejected':>11} {f'/ {base_name}':>9} {'round ratio':>11} {'procs us':>8} "
              f"{'softirq us':>10} {'CPU1 ticks us':>13}")  # fmt: skip
        for system, m in med.items():
            ratios = []
            for i in {r["round"] for r in lr}:
                mine = [r["us_per_rejected"] for r in lr if r["round"] == i and r["system"] == system]
                ref = [r["us_per_rejected"] for r in lr if r["round"] == i and r["system"] == base_name]
                if mine and ref:
                    ratios.append(mine[0] / ref[0])
            print(f"{system:<9} {m['rejected_per_s']:>10,.0f} {m['rejected_per_s'] / args.threshold:>5.0f} "
                  f"{m['passed_per_s']:>8.1f} {m['server_busy']:>10.2f} {m['us_per_rejected']:>11.2f} "
                  f"{m['us_per_rejected'] / base['us_per_rejected']:>8.2f}x "
                  f"{statistics.median(ratios):>10.2f}x {m['cgroup_us_per_rejected']:>8.2f} "
                  f"{m['softirq_us_per_rejected']:>10.2f} {m['tick_us_per_rejected']:>13.2f}")  # fmt: skip
    print("\nraw runs: round load system requests seconds rejected passed kernel_block | server side, s: "
          "cgroup net-softirq-outside net-softirq-inside other-softirq | CPU 1 ticks, s: busy steal softirq "
          "background-share | client CPU busy s | wrk socket errors")  # fmt: skip
    for r in runs:
        print(f"  {r['round']} {r['load']:<9} {r['system']:<8} {r['requests']:>8} {r['seconds']:>6.2f} "
              f"{r['rejected']:>8} {r['passed']:>6} {r.get('kernel_block', '-')!s:>8} | "
              f"{r['server_cgroup_s']:>6.2f} {r['softirq_net_outside_s']:>6.2f} {r['softirq_net_inside_s']:>6.2f} "
              f"{r['softirq_other_s']:>6.2f} | {r['server_cpu_busy_s']:>6.2f} {r['server_cpu_steal_s']:>5.2f} "
              f"{r['server_cpu_softirq_s']:>6.2f} {r['background_server_cpu']:>5.2f} | "
              f"{r['client_cpu_busy_s']:>6.2f} | {r['socket_errors'] or '-'}")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threshold", type=int, default=100)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated, of the default")
    ap.add_argument("--loads", default=",".join(LOADS), help="comma-separated, of the default")
    args = ap.parse_args()
    args.systems = tuple(s for s in args.systems.split(",") if s)
    args.loads = tuple(s for s in args.loads.split(",") if s)
    if unknown := (set(args.systems) - set(SYSTEMS)) | (set(args.loads) - set(LOADS)):
        sys.exit(f"unknown systems or loads: {', '.join(sorted(unknown))}")
    if os.geteuid() != 0:
        sys.exit("rejection_cost.py needs root")
    print(f"command: {shlex.join(sys.argv)}")
    print(f"kernel {os.uname().release}, {os.cpu_count()} cpus; server side on CPU {SERVER_CPU}, client on "
          f"CPU {CLIENT_CPU}")  # fmt: skip
    server, client = Cgroup("rc-server"), Cgroup("rc-client")
    try:
        with NetnsPair("rc") as pair:
            dp = InboundDataplane()
            try:
                runs = measure_all(pair, dp, args, server, client)
            finally:
                with in_netns(pair.server):  # the ifindex is the namespace's: never detach from the host's
                    dp.detach_all()
                dp.close()
    finally:
        server.remove()
        client.remove()
    report(runs, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
