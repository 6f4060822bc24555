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

import sys
import time

from bench._rule_change import (
    FILE_WATCH,
    OPEN,
    RELOAD,
    file_change,
    file_latencies,
    parse_args,
    report,
    serve,
)
from tests.support.daemon_helpers import Daemon
from tests.support.netns import NetnsPair
from tests.support.procstat import cpu_seconds, status_kib


def many_resources(n: int) -> str:
    lines = ["resources:", "  - {name: root, match: {protocol: http, port: 8080, path: /}}"]
    lines += [
        f"  - {{name: r{i}, match: {{protocol: http, port: 8080, method: GET, path: /p/{i}}}}}"
        for i in range(n - 1)
    ]
    lines += ["flowRules:"] + [f"  - {{resource: r{i}, threshold: 1000}}" for i in range(n - 1)]
    return "\n".join(lines) + "\n"


def idle(pid: int, seconds: float) -> float:
    time.sleep(3)  # let start-up work finish
    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(pid) - c0) / (time.monotonic() - t0) * 100


def main() -> int:
    args = parse_args(__doc__, lambda ap: ap.add_argument("--idle-seconds", type=float, default=60))
    with NetnsPair("cp") as pair:
        with serve(pair) as d:
            results = file_latencies(pair, d, args.changes, (RELOAD, FILE_WATCH))
            file_change(d, via_reload=True)(OPEN)  # everything passes again while idle
            idle_1 = idle(d.proc.pid, args.idle_seconds)
            mem_1 = status_kib(d.proc.pid)
        with Daemon(pair, many_resources(1000)) as d:
            idle_1000 = idle(d.proc.pid, args.idle_seconds)
            mem_1000 = status_kib(d.proc.pid)

    def daemon_table() -> None:
        print(f"\n{'daemon':<34} {'idle CPU % of a core':>20} {'VmRSS MiB':>10} {'VmHWM MiB':>10}")
        for label, cpu, mem in (("1 resource (after 200 reloads)", idle_1, mem_1),
                                ("1,000 resources", idle_1000, mem_1000)):  # fmt: skip
            print(f"{label:<34} {cpu:>20.2f} {mem['VmRSS'] / 1024:>10.1f} {mem['VmHWM'] / 1024:>10.1f}")
        print("targets: idle CPU <= 1% of a core, RSS <= 80 MB")

    report(results, "the rename of the new rules file", 12, "target p99 <= 100", more=daemon_table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
