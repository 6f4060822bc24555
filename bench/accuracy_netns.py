"""Admission accuracy under 10x overload with real traffic, side by side with nginx ``limit_req``.

usage: sudo python -m bench.accuracy_netns [--thresholds 10,100,1000] [--seconds 10] [--overload 10]

One client/server namespace pair (tests/support/netns.py) joined by a veth. In the server namespace
one nginx (single worker) serves two ports:
  8080  a static 3-byte file, guarded by the inbound data plane attached (TC) to the server veth, with
        the rule {resource: limited (http, port 8080, path /limited), threshold: T, statIntervalInMs: 1000};
  8081  the same location with nginx ``limit_req`` (zone rate=Tr/s, burst=0, nodelay, status 429).
For each threshold T, bench/_ratedclient.py in the client namespace (``--procs`` processes for T >= 1000,
each with an equal share of the rate) sends 10 x T requests per second
(open loop, evenly spaced, 64 keep-alive connections, reconnecting after a 429 with Connection: close or
a reset) for the run's seconds to port 8080, then the same load to port 8081.

Per completed second (aligned on the kernel's 500 ms bucket boundaries, CLOCK_MONOTONIC) it reports:
passed from the kernel's buckets (eBPF only), 200s the client saw, 200s nginx logged, blocked, and
passed/T. "max over/bucket" is the largest excess over T of any two consecutive 500 ms buckets (the
sliding one-second window the rule enforces); for nginx it is computed from the client's 200s.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from sentinel_ebpf.enforce import InboundDataplane
from sentinel_ebpf.netns import entered as in_netns
from sentinel_ebpf.rules import load_text
from tests.support.netns import NetnsPair
from tests.support.nginx import nginx_conf, start_nginx

GUARDED, LIMIT_REQ = 8080, 8081
PATH = "/limited"
CLIENT = Path(__file__).with_name("_ratedclient.py")
RULES = """
resources:
  - {{name: limited, match: {{protocol: http, port: {port}, path: {path}}}}}
flowRules:
  - {{resource: limited, threshold: {t}, statIntervalInMs: 1000}}
"""


def start_limited_nginx(pair: NetnsPair, threshold: int) -> tuple[subprocess.Popen[bytes], Path]:
    """nginx serving a static file on GUARDED (for the kernel to limit) and LIMIT_REQ (nginx's own
    ``limit_req`` at ``threshold``/s); returns the process and its access log ($msec $server_port $status)."""
    work = pair.tmpdir / f"nginx-{threshold}"
    (work / "www").mkdir(parents=True)
    (work / "www" / PATH.lstrip("/")).write_text("ok\n")  # a static file: limit_req runs before content
    body = f"""log_format bench '$msec $server_port $status';
    access_log {work}/access.log bench;
    keepalive_requests 1000000;
    limit_req_zone $server_port zone=bench:1m rate={threshold}r/s;
    server {{
        listen {GUARDED} backlog=4096;
        location / {{ root {work}/www; }}
    }}
    server {{
        listen {LIMIT_REQ} backlog=4096;
        location / {{
            limit_req zone=bench nodelay;
            limit_req_status 429;
            root {work}/www;
        }}
    }}"""
    server = start_nginx(pair, work, nginx_conf(work, body, events=4096), [GUARDED, LIMIT_REQ])
    return server.proc, work / "access.log"


@dataclass
class Run:
    system: str
    threshold: int
    rate: float
    client: dict[str, object] = field(default_factory=dict)
    kernel: dict[int, tuple[int, int]] = field(default_factory=dict)  # bucket start ms -> pass, block
    served: Counter[int] = field(default_factory=Counter)  # 500 ms bin -> 200s nginx logged
    seconds: list[dict[str, float]] = field(default_factory=list)
    summary: dict[str, float] = field(default_factory=dict)
    command: str = ""


def client_bins(run: Run, status: str) -> Counter[int]:
    bins = run.client["bins"]
    assert isinstance(bins, dict)
    return Counter({int(k): int(v.get(status, 0)) for k, v in bins.items()})


def drive(pair: NetnsPair, run: Run, port: int, seconds: float, dp: InboundDataplane | None, n: int) -> None:
    """``n`` client processes, each sending rate / n requests per second; their outcomes are merged."""
    argv = [
        sys.executable,
        str(CLIENT),
        pair.server_ip,
        str(port),
        PATH,
        str(run.rate / n),
        str(seconds),
        "64",
    ]
    procs = [
        pair.popen(pair.client, *argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL) for _ in range(n)
    ]
    run.command = f"{n} x " + shlex.join(["ip", "netns", "exec", pair.client, *argv])
    while any(p.poll() is None for p in procs):
        time.sleep(0.5)
        if dp is not None:
            sample_kernel(dp, run)
    outs = [json.loads(p.stdout.read() if p.stdout else b"{}") for p in procs]
    bins: dict[str, Counter[str]] = {}
    for out in outs:
        for k, v in out["bins"].items():
            bins.setdefault(k, Counter()).update(v)
    run.client = {
        "start_ms": min(o["start_ms"] for o in outs), "end_ms": max(o["end_ms"] for o in outs),
        **{k: sum(o[k] for o in outs) for k in ("released", "sent", "not_sent", "connects")},
        "bins": {k: dict(v) for k, v in bins.items()},
    }  # fmt: skip
    if dp is not None:
        sample_kernel(dp, run)


def sample_kernel(dp: InboundDataplane, run: Run) -> None:
    rid = next(r.id for r in dp.compiled.resources if r.name == "limited")
    for b in dp.raw_stats(rid).buckets:
        if b.start_ms:
            run.kernel[int(b.start_ms)] = (int(getattr(b, "pass")), int(b.block))


def read_access_log(path: Path, port: int, offset_ms: float, skip: int) -> tuple[Counter[int], int]:
    """200s per 500 ms monotonic bin from nginx's access log (wall clock -> monotonic via offset)."""
    served: Counter[int] = Counter()
    lines = path.read_text().splitlines()
    for line in lines[skip:]:
        msec, sport, status = line.split()
        if int(sport) == port and status == "200":
            served[int((float(msec) * 1000 - offset_ms) // 500)] += 1
    return served, len(lines)


def analyse(run: Run) -> None:
    t = run.threshold
    start, end = int(run.client["start_ms"]), int(run.client["end_ms"])  # type: ignore[call-overload]
    ok, blocked = client_bins(run, "200"), client_bins(run, "429")
    resets = client_bins(run, "reset") + client_bins(run, "error")
    if run.kernel:
        passed = Counter({s // 500: p for s, (p, _) in run.kernel.items()})
        kblock = Counter({s // 500: b for s, (_, b) in run.kernel.items()})
    else:
        passed, kblock = ok, blocked + resets
    first = -(-start // 1000) * 2 + 2  # skip the first whole second (connections opening)
    last = end // 1000 * 2  # bins before the last whole second ends
    for b in range(first, last, 2):
        run.seconds.append({
            "second": (b - first) // 2 + 1, "passed": passed[b] + passed[b + 1],
            "client_200": ok[b] + ok[b + 1], "served_200": run.served[b] + run.served[b + 1],
            "blocked": kblock[b] + kblock[b + 1], "client_429": blocked[b] + blocked[b + 1],
            "reset_or_error": resets[b] + resets[b + 1], "ratio": (passed[b] + passed[b + 1]) / t,
        })  # fmt: skip
    windows = [passed[b - 1] + passed[b] for b in range(first + 1, last)]
    per_s = [s["passed"] for s in run.seconds] or [0.0]
    mean = statistics.fmean(per_s)
    sent = int(run.client["sent"])  # type: ignore[call-overload]
    run.summary = {
        "offered_per_s": sent / max(0.001, (end - start) / 1000),
        "mean": mean, "min": min(per_s), "max": max(per_s),
        "max_over_bucket": max(windows, default=0) - t, "err_pct": 100 * (mean - t) / t,
        "worst_err_pct": 100 * max(abs(p - t) for p in per_s) / t,
        "not_sent": float(run.client["not_sent"]),  # type: ignore[arg-type]
    }  # fmt: skip


def print_run(run: Run) -> None:
    print(f"\n{run.system}, threshold {run.threshold}/s, offered {run.summary['offered_per_s']:.0f}/s")
    print(f"  command: {run.command}")
    print(f"  {'s':>3} {'passed':>7} {'client200':>9} {'nginx200':>8} {'blocked':>8} {'client429':>9} "
          f"{'reset/err':>9} {'ratio':>6}")  # fmt: skip
    for s in run.seconds:
        print(f"  {s['second']:>3} {s['passed']:>7} {s['client_200']:>9} {s['served_200']:>8} "
              f"{s['blocked']:>8} {s['client_429']:>9} {s['reset_or_error']:>9} {s['ratio']:>6.3f}")  # fmt: skip
    if run.kernel:
        k = sorted(run.kernel.items())
        print("  kernel buckets (start_ms: pass/block): " + " ".join(f"{s}:{p}/{b}" for s, (p, b) in k))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--thresholds", default="10,100,1000")
    ap.add_argument("--seconds", type=float, default=12.0, help="load duration (first second is skipped)")
    ap.add_argument("--overload", type=float, default=10.0)
    ap.add_argument("--procs", type=int, default=2, help="client processes (the rate is split among them)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("accuracy_netns.py needs root")
    runs: list[Run] = []
    with NetnsPair("bn") as pair, InboundDataplane() as dp:
        offset_ms = time.time() * 1000 - time.monotonic() * 1000
        for t in (int(x) for x in args.thresholds.split(",")):
            nginx, log = start_limited_nginx(pair, t)
            dp.apply(dp.compile(load_text(RULES.format(port=GUARDED, path=PATH, t=t))))
            with in_netns(pair.server):
                if not dp.attached():
                    dp.attach(pair.server_if)
            skip = 0
            for system, port, guard in (("eBPF 429", GUARDED, dp), ("nginx limit_req", LIMIT_REQ, None)):
                run = Run(system, t, args.overload * t)
                print(f"running {system} at threshold {t}: {run.rate:.0f} req/s", file=sys.stderr, flush=True)
                drive(pair, run, port, args.seconds, guard, args.procs if t >= 1000 else 1)
                time.sleep(0.5)  # nginx writes its log line after the response
                run.served, skip = read_access_log(log, port, offset_ms, skip)
                analyse(run)
                runs.append(run)
            nginx.terminate()
            nginx.wait(10)
        with in_netns(pair.server):
            dp.detach_all()
    print(f"command: python {shlex.join(sys.argv)}")
    print(f"kernel {os.uname().release}, {os.cpu_count()} cpus; load {args.overload:g} x threshold, "
          f"{args.seconds:g} s, first second skipped; per-second rows are whole seconds")  # fmt: skip
    for run in runs:
        print_run(run)
    print("\nsummary (passed per completed second)")
    print(f"{'system':<16} {'T':>5} {'offered/s':>9} {'mean':>8} {'min':>6} {'max':>6} {'mean/T':>7} "
          f"{'err %':>6} {'worst %':>7} {'max over/bucket':>15} {'not sent':>8}")  # fmt: skip
    for r in runs:
        s = r.summary
        print(f"{r.system:<16} {r.threshold:>5} {s['offered_per_s']:>9.0f} {s['mean']:>8.2f} {s['min']:>6.0f} "
              f"{s['max']:>6.0f} {s['mean'] / r.threshold:>7.3f} {s['err_pct']:>6.2f} {s['worst_err_pct']:>7.2f} "
              f"{s['max_over_bucket']:>15.0f} {s['not_sent']:>8.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
