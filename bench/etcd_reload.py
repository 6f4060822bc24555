#!/usr/bin/env python3
"""Rules from etcd: a write of the etcd key to enforcement, beside the control socket's reload of a rules
file, in one run, on the same namespaces, nginx and prober.

nginx in a server namespace behind ``sentinel-ebpf run``; ``_prober.py`` in the client namespace prints
each answer with its CLOCK_MONOTONIC time (as in ``control_plane.py``). The rules alternate between a QPS
threshold of 0 on ``/`` (every request answered 429 by the kernel) and one far above the load.

- ``reload``: a daemon with ``-r FILE``; the new file renamed into place, then a control-socket
  ``reload``; latency from the rename.
- ``etcd put``: a daemon with ``-r etcd://127.0.0.1:2379/KEY`` (etcd inside the server namespace);
  ``_etcd_putter.py`` there writes the key; latency from just before the put is sent, so it includes
  the write's commit, the watch notification and the reload.

usage: sudo .venv/bin/python -m bench.etcd_reload [--changes 100]
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bench.control_plane import CLOSED, OPEN, PROBER, RULES, percentile, write_rules
from sentinel_ebpf.daemon import request
from tests.support.daemon_helpers import Daemon
from tests.support.etcd_server import EtcdServer
from tests.support.netns import NetnsPair
from tests.support.nginx import hello_nginx

BENCH = Path(__file__).resolve().parent

KEY = "/bench/rules"
PUTTER = BENCH / "_etcd_putter.py"


def latencies(pair: NetnsPair, changes: int, change: Callable[[int], float]) -> tuple[list[float], int]:
    """``change(threshold)`` applies a rule change and returns its monotonic start time."""
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

    threading.Thread(target=read, daemon=True).start()
    out: list[float] = []
    failed = 0
    try:
        state = OPEN
        time.sleep(1.0)
        for _ in range(changes):
            state = CLOSED if state == OPEN else OPEN
            want = 429 if state == CLOSED else 200
            with lock:
                i = max(0, len(probes) - 50)
            t0 = change(state)
            seen = None
            deadline = time.monotonic() + 3
            while seen is None and time.monotonic() < deadline:
                with lock:
                    while i < len(probes) and seen is None:
                        ts, st = probes[i]
                        if ts > t0 and st == want:
                            seen = ts
                        i += 1
                time.sleep(0.002)
            if seen is None:
                failed += 1
            else:
                out.append((seen - t0) * 1000)
            time.sleep(random.uniform(0.15, 0.35))
    finally:
        prober.kill()
        prober.wait()
    return out, failed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--changes", type=int, default=100)
    args = ap.parse_args()
    print(f"$ {' '.join(sys.argv)}")
    results: dict[str, tuple[list[float], int]] = {}
    with NetnsPair("ep") as pair:
        hello_nginx(pair, 8080)
        d = Daemon(pair, RULES.format(threshold=OPEN))
        try:

            def by_reload(threshold: int) -> float:
                t0 = write_rules(d.rules, RULES.format(threshold=threshold))
                request(d.socket, "reload")
                return t0

            results["reload"] = latencies(pair, args.changes, by_reload)
        finally:
            d.close()
        etcd = EtcdServer(pair.tmpdir, pair=pair).start()
        putter = subprocess.Popen(pair.cmd(pair.server, sys.executable, str(PUTTER), etcd.url(KEY)),
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)  # fmt: skip
        assert putter.stdin is not None and putter.stdout is not None

        def by_put(threshold: int) -> float:
            putter.stdin.write(f"{threshold}\n")  # type: ignore[union-attr]
            putter.stdin.flush()  # type: ignore[union-attr]
            return float(putter.stdout.readline().split()[0])  # type: ignore[union-attr]

        try:
            by_put(OPEN)
            d = Daemon(pair, "", source=etcd.url(KEY))
            try:
                results["etcd put"] = latencies(pair, args.changes, by_put)
            finally:
                d.close()
        finally:
            putter.kill()
            putter.wait()
            etcd.stop()

    print("\nrule change to enforcement (ms from the change to the first answer showing it)")
    print(f"{'change by':<10} {'n':>4} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>7} {'failed':>6}")
    for name, (lat, failed) in results.items():
        print(f"{name:<10} {len(lat):>4} {statistics.median(lat):>7.1f} {percentile(lat, 90):>7.1f} "
              f"{percentile(lat, 99):>7.1f} {max(lat):>7.1f} {failed:>6}")  # fmt: skip
    print("\nraw latencies (ms):")
    for name, (lat, _) in results.items():
        print(f"  {name}: {' '.join(f'{v:.1f}' for v in lat)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
