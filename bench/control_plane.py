#!/usr/bin/env python3
"""Control plane: rule change to enforcement, daemon idle CPU and memory.

1. Rule change to enforcement. nginx in a server namespace behind ``sentinel-ebpf run`` (server side);
   ``_prober.py`` in the client namespace sends one request per connection back to back (~1-2 per ms)
   and prints each answer with its CLOCK_MONOTONIC time (host-wide, so comparable with this process's).
   The rules file alternates between a QPS threshold of 0 on ``/`` (every request answered 429 by the
   kernel) and a threshold far above the load. Latency = the time from the change (the rename of the new
   file into place) to the first answer showing the new rule. Two ways to change:
   ``reload`` (the control socket's reload request, sent right after the rename) and ``file watch``
   (only the rename; the daemon polls the file every 50 ms). Pauses between changes are random
   (150-350 ms) so changes land at every phase of the daemon's tick. The figure includes the probe
   interval (the prober's own ~0.5-1 ms per request).
2. Idle CPU: the daemon with rules loaded and no traffic, user + system time from /proc/PID/stat over
   ``--idle-seconds``, with 1 resource and with 1,000 resources.
3. Memory: VmRSS and VmHWM of the daemon process after all of the above.

usage: sudo .venv/bin/python -m bench.control_plane [--changes 100] [--idle-seconds 60]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from sentinel_ebpf.daemon import request
from tests.support.daemon_helpers import Daemon
from tests.support.netns import NetnsPair
from tests.support.nginx import hello_nginx
from tests.support.procstat import cpu_seconds, status_kib

PROBER = Path(__file__).with_name("_prober.py")
RULES = """
resources:
  - {{name: root, match: {{protocol: http, port: 8080, path: /}}}}
flowRules:
  - {{resource: root, threshold: {threshold}, statIntervalInMs: 1000}}
"""
CLOSED, OPEN = 0, 1_000_000


def many_resources(n: int) -> str:
    lines = ["resources:", "  - {name: root, match: {protocol: http, port: 8080, path: /}}"]
    lines += [
        f"  - {{name: r{i}, match: {{protocol: http, port: 8080, method: GET, path: /p/{i}}}}}"
        for i in range(n - 1)
    ]
    lines += ["flowRules:"] + [f"  - {{resource: r{i}, threshold: 1000}}" for i in range(n - 1)]
    return "\n".join(lines) + "\n"


def write_rules(path: Path, text: str) -> float:
    """Replace the rules file atomically; returns the monotonic time of the rename."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    t = time.monotonic()
    os.replace(tmp, path)
    return t


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def change_latency(pair: NetnsPair, d: Daemon, changes: int, via_reload: bool) -> tuple[list[float], int]:
    probes: list[tuple[float, int]] = []
    prober = subprocess.Popen(pair.cmd(pair.client, sys.executable, str(PROBER), pair.server_ip, "8080",
                                       str(changes * 0.6 + 30)), stdout=subprocess.PIPE, text=True)  # fmt: skip
    lock = threading.Lock()

    def read() -> None:
        assert prober.stdout is not None
        for line in prober.stdout:
            ts, status = line.split()
            with lock:
                probes.append((float(ts), int(status)))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    latencies: list[float] = []
    failed = 0
    try:
        state = OPEN
        time.sleep(1.0)
        for _ in range(changes):
            state = CLOSED if state == OPEN else OPEN
            want = 429 if state == CLOSED else 200
            t0 = write_rules(d.rules, RULES.format(threshold=state))
            if via_reload:
                reply = request(d.socket, "reload")
                if not reply.get("accepted"):
                    failed += 1
            deadline = time.monotonic() + 3
            seen = None
            with lock:
                i = max(0, len(probes) - 50)  # answers before the change are all older than t0
            while seen is None and time.monotonic() < deadline:
                with lock:
                    while i < len(probes) and seen is None:
                        ts, st = probes[i]
                        if ts > t0 and st == want:  # the first answer after t0 with the new status
                            seen = ts
                        i += 1
                time.sleep(0.002)
            if seen is None:
                failed += 1
            else:
                latencies.append((seen - t0) * 1000)
            time.sleep(random.uniform(0.15, 0.35))
    finally:
        prober.kill()
        prober.wait()
    return latencies, failed


def idle(pid: int, seconds: float) -> float:
    time.sleep(3)  # let start-up work finish
    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(pid) - c0) / (time.monotonic() - t0) * 100


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--changes", type=int, default=100)
    ap.add_argument("--idle-seconds", type=float, default=60)
    args = ap.parse_args()
    print(f"$ {' '.join(sys.argv)}")
    results: dict[str, tuple[list[float], int]] = {}
    with NetnsPair("cp") as pair:
        hello_nginx(pair, 8080)
        d = Daemon(pair, RULES.format(threshold=OPEN))
        try:
            for name, via in (("reload", True), ("file watch", False)):
                results[name] = change_latency(pair, d, args.changes, via)
            write_rules(d.rules, RULES.format(threshold=OPEN))
            request(d.socket, "reload")
            idle_1 = idle(d.proc.pid, args.idle_seconds)
            mem_1 = status_kib(d.proc.pid)
        finally:
            d.close()
        d = Daemon(pair, many_resources(1000))
        try:
            idle_1000 = idle(d.proc.pid, args.idle_seconds)
            mem_1000 = status_kib(d.proc.pid)
        finally:
            d.close()

    print(
        "\nrule change to enforcement (ms from the rename of the new rules file to the first answer showing it)"
    )
    print(
        f"{'change by':<12} {'n':>4} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>7} {'failed':>6}  target p99 <= 100"
    )
    for name, (lat, failed) in results.items():
        print(f"{name:<12} {len(lat):>4} {statistics.median(lat):>7.1f} {percentile(lat, 90):>7.1f} "
              f"{percentile(lat, 99):>7.1f} {max(lat):>7.1f} {failed:>6}")  # fmt: skip
    print(f"\n{'daemon':<34} {'idle CPU % of a core':>20} {'VmRSS MiB':>10} {'VmHWM MiB':>10}")
    for label, cpu, mem in (("1 resource (after 200 reloads)", idle_1, mem_1),
                            ("1,000 resources", idle_1000, mem_1000)):  # fmt: skip
        print(f"{label:<34} {cpu:>20.2f} {mem['VmRSS'] / 1024:>10.1f} {mem['VmHWM'] / 1024:>10.1f}")
    print("targets: idle CPU <= 1% of a core, RSS <= 80 MB")
    print("\nraw latencies (ms):")
    for name, (lat, _) in results.items():
        print(f"  {name}: {' '.join(f'{v:.1f}' for v in lat)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
