"""Cluster flow rules through Redis: 2, 4 and 8 daemons sharing one global threshold under skewed load.

usage: sudo python -m bench.cluster [--nodes 2,4,8] [--threshold 200] [--json]

Each node is a client/server namespace pair (tests/support/netns.py) with nginx on 8080 and
`sentinel-ebpf run --cluster unix://.../redis.sock` attached to its server veth; one redis-server on a
Unix socket (namespaces share the filesystem) serves all of them. The rule:
{resource: web (http, 8080, /), threshold: T, clusterMode: true, clusterConfig: {thresholdType: 1}}.
Load (bench/_ratedclient.py, open loop, evenly spaced): node 0 offers 3 x T per second, every other node
T / (4 x nodes) (well under an even share), for 9 s. Measured, per fleet size:

- admitted per second: the daemons' kernel pass counters over 4 s from 1 s after node 0's first request,
  against T (error %); the light
  nodes' admitted / offered (fairness: each should get all it asks for).
- Redis load: round trips per second per node (the daemons' renewals), and commands per second per node
  as redis-server counts them (INFO commandstats: EVALSHA plus the commands the script runs).
- rebalance: node 1 starts offering 3 x T at ~6.5 s; node 0 stops at 9 s. Time from node 0's last request
  until node 1's passes over a trailing 300 ms reach 90% of what it should now get (T minus the light
  nodes' demand), polled every 50 ms from its control socket.
- fallback and rejoin: redis-server is stopped, then started again; time until each daemon logs the
  change (its log's timestamps; the worst node is reported).
- daemon idle CPU: the busiest daemon's CPU (utime + stime) over 3 s before any load, renewing its lease
  10 times a second (a daemon without --cluster idles at ~0.6%, bench/control_plane.py).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sentinel_ebpf.daemon import request
from tests.support.daemon_helpers import Daemon
from tests.support.netns import NetnsPair
from tests.support.nginx import hello_nginx
from tests.support.procstat import cpu_seconds
from tests.support.redisserver import RedisServer

CLIENT = Path(__file__).with_name("_ratedclient.py")
RULES = """
resources:
  - {{name: web, match: {{protocol: http, port: 8080, path: /}}}}
flowRules:
  - {{id: web-global, resource: web, threshold: {t}, clusterMode: true, clusterConfig: {{thresholdType: 1}}}}
"""
LOG_TIME = "%Y-%m-%d %H:%M:%S,%f"


def stats(d: Daemon) -> dict[str, Any]:
    return request(d.socket, "stats")


def passed(d: Daemon) -> tuple[float, int, int]:
    """(monotonic s, pass, pass + flow blocks) of resource web."""
    web = stats(d)["resources"]["web"]
    return time.monotonic(), int(web["pass"]), int(web["pass"]) + int(web["block_by_type"]["flow"])


def load(pair: NetnsPair, rate: float, seconds: float) -> subprocess.Popen[str]:
    return pair.popen(pair.client, sys.executable, str(CLIENT), pair.server_ip, "8080", "/", f"{rate:g}",
                      f"{seconds:g}", "64", stdout=subprocess.PIPE, text=True)  # fmt: skip


def commandstats(redis: RedisServer) -> dict[str, int]:
    out = {}
    for line in redis.cli("info", "commandstats").splitlines():
        if line.startswith("cmdstat_"):
            name, _, rest = line.partition(":")
            out[name.removeprefix("cmdstat_")] = int(rest.split(",")[0].split("=")[1])
    return out


def log_time_after(d: Daemon, text: str, after: int, timeout: float = 10) -> datetime.datetime:
    line = d.wait_log(text, timeout=timeout, after=after)
    return datetime.datetime.strptime(line[:23], LOG_TIME)


def run(n: int, threshold: float) -> dict[str, Any]:
    light = threshold / (4 * n)
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(RedisServer())
        pairs = [stack.enter_context(NetnsPair("cl")) for _ in range(n)]
        for p in pairs:
            hello_nginx(p, 8080)
        app = f"bench-{n}-{time.monotonic_ns() % 10**6}"
        with ThreadPoolExecutor(n) as pool:
            daemons = list(pool.map(lambda p: Daemon(p, RULES.format(t=threshold), "--cluster", redis.url,
                                                     "--app", app), pairs))  # fmt: skip
        for d in daemons:
            stack.callback(d.close)
        deadline = time.monotonic() + 20
        while any(stats(d)["cluster"]["rules"][0]["live_nodes"] != n for d in daemons):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {n} daemons do not see each other")
            time.sleep(0.2)

        # the daemons' own CPU with nothing to do but renew their leases
        cpu0, cpu_t0 = [cpu_seconds(d.proc.pid) for d in daemons], time.monotonic()
        time.sleep(3.0)
        idle_cpu = max(
            c1 - c0 for c0, c1 in zip(cpu0, [cpu_seconds(d.proc.pid) for d in daemons], strict=True)
        )
        idle_cpu_pct = idle_cpu / (time.monotonic() - cpu_t0) * 100

        # accuracy and Redis load: node 0 hot, the others light
        t_start = time.monotonic()
        hot0 = load(pairs[0], 3 * threshold, 9)
        lights = [load(p, light, 14) for p in pairs[2:]]
        light1 = load(pairs[1], light, 6.5)
        while passed(daemons[0])[2] == 0:  # the client's start-up takes a while on a busy machine
            if time.monotonic() > t_start + 10:
                raise RuntimeError("node 0's client sends nothing")
            time.sleep(0.05)
        t_hot = time.monotonic()
        time.sleep(1.0)
        before = [passed(d) for d in daemons]
        renew0 = [stats(d)["cluster"]["renewals"] for d in daemons]
        cmd0, cmd_t0 = commandstats(redis), time.monotonic()
        time.sleep(max(0.0, t_hot + 5.0 - time.monotonic()))
        after = [passed(d) for d in daemons]
        renew1 = [stats(d)["cluster"]["renewals"] for d in daemons]
        cmd1, cmd_t1 = commandstats(redis), time.monotonic()
        rates = [(a[1] - b[1]) / (a[0] - b[0]) for a, b in zip(after, before, strict=True)]
        offered = [(a[2] - b[2]) / (a[0] - b[0]) for a, b in zip(after, before, strict=True)]
        admitted = sum(rates)
        renewals = sum(r1 - r0 for r0, r1 in zip(renew0, renew1, strict=True)) / (cmd_t1 - cmd_t0) / n
        commands = sum(cmd1.get(k, 0) - cmd0.get(k, 0) for k in cmd1) / (cmd_t1 - cmd_t0) / n
        fairness = min((r / o for r, o in zip(rates[1:], offered[1:], strict=True) if o > 0), default=1.0)

        # rebalance: node 1 turns hot while node 0 is still hot, then node 0 stops
        light1.communicate(timeout=30)
        hot1 = load(pairs[1], 3 * threshold, 7)
        end0 = json.loads(hot0.communicate(timeout=30)[0])["end_ms"] / 1000
        expected = threshold - light * (n - 2)
        samples = []
        while time.monotonic() < end0 + 3.0:
            samples.append(passed(daemons[1]))
            time.sleep(0.05)
        rebalance_ms = None
        for i, (t, p, _) in enumerate(samples):
            if t < end0:
                continue
            back = [s for s in samples[: i + 1] if s[0] >= t - 0.3]
            if len(back) >= 2 and (p - back[0][1]) / (t - back[0][0]) >= 0.9 * expected:
                rebalance_ms = round((t - end0) * 1000)
                break

        # fallback and rejoin
        marks = [len(d.proc.stderr) for d in daemons]
        stopped = datetime.datetime.now()
        redis.stop()
        fell = [(log_time_after(d, "Redis unreachable", m) - stopped).total_seconds() * 1000
                for d, m in zip(daemons, marks, strict=True)]  # fmt: skip
        time.sleep(1.0)
        marks = [len(d.proc.stderr) for d in daemons]
        started = datetime.datetime.now()
        redis.start()
        back_ms = [(log_time_after(d, "back in the cluster", m) - started).total_seconds() * 1000
                   for d, m in zip(daemons, marks, strict=True)]  # fmt: skip
        hot1.communicate(timeout=30)
        for p in lights:
            p.communicate(timeout=30)
        return {
            "nodes": n,
            "threshold": threshold,
            "admitted_per_s": round(admitted, 1),
            "error_pct": round((admitted - threshold) / threshold * 100, 2),
            "hot_node_per_s": round(rates[0], 1),
            "light_offered_per_s": round(light, 1),
            "light_min_admitted_ratio": round(fairness, 3),
            "rebalance_ms": rebalance_ms,
            "redis_round_trips_per_s_per_node": round(renewals, 1),
            "redis_commands_per_s_per_node": round(commands, 1),
            "fallback_ms_max": round(max(fell)),
            "rejoin_ms_max": round(max(back_ms)),
            "daemon_idle_cpu_pct_max": round(idle_cpu_pct, 2),
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", default="2,4,8")
    ap.add_argument("--threshold", type=float, default=200)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = [run(int(n), args.threshold) for n in args.nodes.split(",")]
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(
        "| nodes | threshold/s | admitted/s | error | light nodes got | rebalance | Redis round trips/s/node "
        "| Redis commands/s/node | fallback | rejoin | daemon idle CPU |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['nodes']} | {r['threshold']:g} | {r['admitted_per_s']} | {r['error_pct']:+.2f} % "
              f"| {r['light_min_admitted_ratio'] * 100:.0f} % | {r['rebalance_ms']} ms "
              f"| {r['redis_round_trips_per_s_per_node']} | {r['redis_commands_per_s_per_node']} "
              f"| {r['fallback_ms_max']} ms | {r['rejoin_ms_max']} ms | {r['daemon_idle_cpu_pct_max']} % |")  # fmt: skip


if __name__ == "__main__":
    main()
