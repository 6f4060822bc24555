#!/usr/bin/env python3
"""Admission accuracy of a QPS flow rule under 10x overload.

Two measurements, side by side in one run:
  virtual  the ingress program through BPF_PROG_TEST_RUN on a virtual clock: 10 x threshold arrivals per
           second for 10 s (evenly spaced, and Poisson), every second and every 500 ms bucket counted.
           This is the algorithm's accuracy, free of scheduling noise.
  real     `sentinel-ebpf run` in a network namespace in front of nginx, driven from another
           namespace by parallel clients for 10 s; passes per second from the Sentinel metric log the
           daemon writes (threshold 100 only: the clients here reach about 1,000 requests per second).

usage: sudo .venv/bin/python -m bench.accuracy [--thresholds 10,100,1000] [--seconds 10] [--no-real]
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from sentinel_ebpf.enforce import InboundDataplane
from sentinel_ebpf.rules import load_text
from tests.support.nginx import hello_nginx
from tests.support.packets import ACK, PSH, TC_ACT_OK, http_request, tcp_frame

ROOT = Path(__file__).resolve().parent.parent

T0_MS = 1_700_000_000_000
RULES = """
resources:
  - {{name: limited, match: {{protocol: http, port: 8000, path: /}}}}
flowRules:
  - {{resource: limited, threshold: {t}, statIntervalInMs: 1000}}
"""


def virtual(threshold: int, seconds: int, poisson: bool) -> dict[str, float]:
    rate = 10 * threshold
    rnd = random.Random(1)
    with InboundDataplane(test_clock=True, socket_lookup=False) as dp:
        dp.apply(dp.compile(load_text(RULES.format(t=threshold), "bench.yaml")))
        prog = dp.obj.program("tc_ingress")
        per_second = [0] * seconds
        per_bucket = [0] * (2 * seconds)
        t_ms, port = 0.0, 1024
        while True:
            t_ms += rnd.expovariate(rate / 1000) if poisson else 1000 / rate
            if t_ms >= seconds * 1000:
                break
            dp.set_clock_ns(int((T0_MS + t_ms) * 1_000_000))
            port = port + 1 if port < 65000 else 1024
            frame = tcp_frame(
                "127.0.0.2", "127.0.0.1", port, 8000, flags=PSH | ACK, payload=http_request("GET", "/")
            )
            res = prog.test_run(frame)
            if res.retval == TC_ACT_OK and res.data_out == frame:
                per_second[int(t_ms // 1000)] += 1
                per_bucket[int(t_ms // 500)] += 1
    return summarize(per_second, threshold, per_bucket)


def summarize(per_second: list[int], threshold: int, per_bucket: list[int] | None = None) -> dict[str, float]:
    out = {
        "mean": statistics.mean(per_second),
        "min": min(per_second),
        "max": max(per_second),
        "error_pct": 100 * abs(statistics.mean(per_second) - threshold) / threshold,
    }
    if per_bucket is not None:
        # sliding 1 s windows made of two buckets: how far above the threshold they ever go
        windows = [per_bucket[i] + per_bucket[i + 1] for i in range(len(per_bucket) - 1)]
        out["max_window_overshoot"] = max(0, max(windows) - threshold)
    return out


def real(threshold: int, seconds: int, clients: int) -> dict[str, float]:
    from integration.background import sentinel_cli
    from integration.netns import NetnsPair

    with NetnsPair("sb") as pair:
        # nginx: a backend that accepts fast (python's http.server has a backlog of 5, which the RSTs of
        # blocked requests fill, and then SYNs wait for retransmission)
        hello_nginx(pair, 8000)
        work = pair.tmpdir / "bench"
        work.mkdir()
        (work / "rules.yaml").write_text(RULES.format(t=threshold))
        daemon = pair.popen(pair.server, *sentinel_cli(), "run", "-r", str(work / "rules.yaml"), "-i", pair.server_if,
                            "--control-socket", str(work / "c.sock"), "--state-dir", str(work / "state"),
                            "--log-dir", str(work / "log"), "--metrics-addr", "",
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
        assert daemon.stderr is not None
        while "enforcing" not in (line := daemon.stderr.readline()):
            if not line:
                raise SystemExit("the daemon did not start")
        load = ROOT / "tests" / "integration" / "httpload.py"
        procs = [pair.popen(pair.client, sys.executable, str(load), pair.server_ip, "8000", "/", str(seconds),
                            stdout=subprocess.PIPE, text=True) for _ in range(clients)]  # fmt: skip
        sent = sum(json.loads(p.communicate(timeout=seconds + 60)[0])["sent"] for p in procs)
        time.sleep(2.5)  # the last completed second reaches the metric log
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(20)
        rows = []
        for f in sorted((work / "log").glob("*metrics.log*")):
            if not f.name.endswith(".idx"):
                rows += [ln.split("|") for ln in f.read_text().splitlines()]
        passes = [int(r[3]) for r in rows if r[2] == "limited"]
        blocks = [int(r[4]) for r in rows if r[2] == "limited"]
        full = passes[1:-1]  # whole seconds of load (the first and last are partial)
        out = summarize(full, threshold)
        out["offered_per_s"] = sent / seconds
        out["blocked_per_s"] = statistics.mean(blocks[1:-1]) if len(blocks) > 2 else 0.0
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--thresholds", default="10,100,1000")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--clients", type=int, default=1)
    ap.add_argument("--no-real", action="store_true")
    args = ap.parse_args()
    print(f"command: {' '.join(sys.argv)}")
    print(
        f"{'mode':<16} {'threshold':>9} {'mean/s':>8} {'min/s':>6} {'max/s':>6} {'err %':>6} {'max 1s-window over':>19}"
    )
    for t in (int(x) for x in args.thresholds.split(",")):
        for poisson in (False, True):
            r = virtual(t, args.seconds, poisson)
            mode = "virtual poisson" if poisson else "virtual even"
            print(f"{mode:<16} {t:>9} {r['mean']:>8.2f} {r['min']:>6.0f} {r['max']:>6.0f} {r['error_pct']:>6.2f} "
                  f"{r['max_window_overshoot']:>19.0f}")  # fmt: skip
    if not args.no_real:
        r = real(100, args.seconds, args.clients)
        print(f"{'real (veth)':<16} {100:>9} {r['mean']:>8.2f} {r['min']:>6.0f} {r['max']:>6.0f} {r['error_pct']:>6.2f} "
              f"{'-':>19}   offered {r['offered_per_s']:.0f}/s, blocked {r['blocked_per_s']:.0f}/s")  # fmt: skip


if __name__ == "__main__":
    main()
