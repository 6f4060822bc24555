"""Rule change to enforcement, the measurement shared by ``control_plane.py`` and ``etcd_reload.py``.

Both benches flip one QPS threshold between ``CLOSED`` (every request answered 429 by the kernel) and
``OPEN`` (far above the load) while ``_prober.py`` in the client namespace prints each answer with its
CLOCK_MONOTONIC time; only the way a change reaches the daemon differs, so that is the one thing each
passes in. Kept in one place so that the two benches' figures stay comparable.
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
from collections.abc import Callable, Sequence
from pathlib import Path

from sentinel_ebpf.daemon import request
from tests.support.daemon_helpers import Daemon
from tests.support.netns import NetnsPair
from tests.support.nginx import hello_nginx

PROBER = Path(__file__).with_name("_prober.py")
RULES = """
resources:
  - {{name: root, match: {{protocol: http, port: 8080, path: /}}}}
flowRules:
  - {{resource: root, threshold: {threshold}, statIntervalInMs: 1000}}
"""
CLOSED, OPEN = 0, 1_000_000
#: the ways of changing the rules file: a control-socket reload after the rename, or the rename alone
RELOAD, FILE_WATCH = "reload", "file watch"

#: name of the way of change -> (latencies in ms, changes never seen or not accepted)
Results = dict[str, tuple[list[float], int]]


def argument_parser(description: str) -> argparse.ArgumentParser:
    """The benches' common option: ``--changes``, how many rule changes each way of change gets."""
    ap = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--changes", type=int, default=100)
    return ap


def parse_args(
    description: str, more: Callable[[argparse.ArgumentParser], object] = lambda ap: None
) -> argparse.Namespace:
    """The command line (``argument_parser``'s option, then what ``more`` adds), echoed first."""
    ap = argument_parser(description)
    more(ap)
    args = ap.parse_args()
    print(f"$ {' '.join(sys.argv)}")
    return args


def serve(pair: NetnsPair) -> Daemon:
    """nginx on :8080 in the server namespace behind a daemon whose rules file lets everything pass
    (``with serve(pair) as d``: the daemon closed on leaving)."""
    hello_nginx(pair, 8080)
    return Daemon(pair, RULES.format(threshold=OPEN))


def write_rules(path: Path, text: str) -> float:
    """Replace the rules file atomically; returns the monotonic time of the rename."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    t = time.monotonic()
    os.replace(tmp, path)
    return t


def file_change(d: Daemon, via_reload: bool) -> Callable[[int], tuple[float, bool]]:
    """A change (for ``change_latencies``) by rewriting ``d``'s rules file, then (``via_reload``) asking for
    a reload over the control socket; a reload the daemon does not accept counts as failed."""

    def change(threshold: int) -> tuple[float, bool]:
        t0 = write_rules(d.rules, RULES.format(threshold=threshold))
        return t0, not via_reload or bool(request(d.socket, "reload").get("accepted"))

    return change


def file_latencies(pair: NetnsPair, d: Daemon, changes: int, ways: Sequence[str]) -> Results:
    """``changes`` changes of ``d``'s rules file for each of ``ways`` (``RELOAD``, ``FILE_WATCH``)."""
    return {way: change_latencies(pair, changes, file_change(d, via_reload=way == RELOAD)) for way in ways}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def change_latencies(
    pair: NetnsPair, changes: int, change: Callable[[int], tuple[float, bool]]
) -> tuple[list[float], int]:
    """Apply ``changes`` changes, alternating ``CLOSED`` and ``OPEN``, and time each to enforcement.

    ``change(threshold)`` applies one and returns its monotonic start time and whether the daemon
    accepted it (a refused change counts as failed). Latency is from that start to the first answer
    showing the new status; a change not seen within 3 s counts as failed. Pauses between changes are
    random (150-350 ms) so changes land at every phase of the daemon's tick.
    """
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
    latencies: list[float] = []
    failed = 0
    try:
        state = OPEN
        time.sleep(1.0)
        for _ in range(changes):
            state = CLOSED if state == OPEN else OPEN
            want = 429 if state == CLOSED else 200
            with lock:
                i = max(0, len(probes) - 50)  # answers before the change are all older than t0
            t0, accepted = change(state)
            if not accepted:
                failed += 1
            seen = None
            deadline = time.monotonic() + 3
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


def print_latency_table(results: Results, start: str, width: int, target: str = "") -> None:
    """The percentiles of each way of change, one row each, ``width`` wide in the first column; ``start``:
    what the latency is measured from, ``target``: said after the column heads."""
    print(f"\nrule change to enforcement (ms from {start} to the first answer showing it)")
    print(f"{'change by':<{width}} {'n':>4} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>7} {'failed':>6}"
          + (f"  {target}" if target else ""))  # fmt: skip
    for name, (lat, failed) in results.items():
        print(f"{name:<{width}} {len(lat):>4} {statistics.median(lat):>7.1f} {percentile(lat, 90):>7.1f} "
              f"{percentile(lat, 99):>7.1f} {max(lat):>7.1f} {failed:>6}")  # fmt: skip


def print_raw_latencies(results: Results) -> None:
    print("\nraw latencies (ms):")
    for name, (lat, _) in results.items():
        print(f"  {name}: {' '.join(f'{v:.1f}' for v in lat)}")


def report(results: Results, start: str, width: int, target: str = "",
           more: Callable[[], None] = lambda: None) -> None:  # fmt: skip
    """``print_latency_table``, then what ``more`` prints, then ``print_raw_latencies``."""
    print_latency_table(results, start, width, target)
    more()
    print_raw_latencies(results)
