#!/usr/bin/env python3
"""How long a caller waits when a dependency fails: with an open circuit breaker vs without one.

  inbound   a handler that answers after 300 ms (SlowRequestRatio breaker, maxAllowedRtMs 100): the
            caller's request time without sentinel-ebpf, then with the daemon once the breaker is open.
  outbound  connect() to a backend address that does not answer (no host behind it on the veth subnet:
            the caller waits for ARP to fail) vs an ErrorCount breaker on that resource, once open.

usage: sudo .venv/bin/python -m bench.failfast [--requests 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from sentinel_ebpf.doctor import cgroup2_mount
from sentinel_ebpf.enforce import InboundDataplane
from sentinel_ebpf.rules import load_text
from tests.support.daemon_helpers import Daemon
from tests.support.netns import NetnsPair

ROOT = Path(__file__).resolve().parent.parent

FLAKY = ROOT / "tests" / "integration" / "flakyserver.py"
OUTCLIENT = ROOT / "tests" / "integration" / "outclient.py"


def curl_times(pair: NetnsPair, n: int) -> list[float]:
    out = []
    for _ in range(n):
        res = pair.run(pair.client, "curl", "-s", "-o", "/dev/null", "-w", "%{time_total}", "--max-time", "10",
                       f"http://{pair.server_ip}:8000/api")  # fmt: skip
        out.append(float(res.stdout) * 1000)
    return out


def inbound(n: int) -> tuple[list[float], list[float]]:
    with NetnsPair("bf") as pair:
        mode = pair.tmpdir / "mode"
        mode.write_text("slow")
        proc = pair.popen(pair.server, sys.executable, str(FLAKY), "8000", str(mode))
        pair.wait_listening(pair.server, 8000, proc)
        without = curl_times(pair, n)
        d = Daemon(
            pair,
            """
resources:
  - {name: api, match: {protocol: http, port: 8000, path: /api}}
circuitBreakerRules:
  - {resource: api, strategy: 0, maxAllowedRtMs: 100, threshold: 0.5, minRequestAmount: 3, statIntervalMs: 10000, statSlidingWindowBucketCount: 10,
     retryTimeoutMs: 60000}
""",
        )
        try:
            curl_times(pair, 4)  # trips the breaker
            with_breaker = curl_times(pair, n)
        finally:
            d.close()
        return without, with_breaker


def outbound(n: int) -> tuple[list[float], list[float]]:
    root = cgroup2_mount()
    assert root is not None
    with NetnsPair("bo") as pair:
        ghost = pair.server_ip.rsplit(".", 1)[0] + ".99"  # nobody there
        cg = Path(root, f"sentinel-bench-{uuid.uuid4().hex[:6]}")
        cg.mkdir()

        def attempts(count: int) -> list[float]:
            script = f'echo $$ > {cg}/cgroup.procs && exec "$@"'
            argv = ["sh", "-c", script, "sh", "ip", "netns", "exec", pair.client, sys.executable, str(OUTCLIENT),
                    ghost, "5432", str(count)]  # fmt: skip
            res = subprocess.run(argv, capture_output=True, text=True, timeout=120)
            return [r["ms"] for r in json.loads(res.stdout)]

        try:
            without = attempts(max(3, n // 5))  # each waits for ARP to give up: keep it short
            with InboundDataplane() as dp:
                dp.attach_outbound()
                dp.apply(
                    dp.compile(
                        load_text(f"""
resources:
  - {{name: db, match: {{direction: outbound, protocol: tcp, host: {ghost}/32, port: 5432, cgroup: /{cg.name}}}}}
circuitBreakerRules:
  - {{resource: db, strategy: 2, threshold: 1, minRequestAmount: 1, statIntervalMs: 10000, statSlidingWindowBucketCount: 10, retryTimeoutMs: 60000}}
""")
                    )
                )
                attempts(1)  # fails slowly once: the breaker opens
                with_breaker = attempts(n)
        finally:
            for _ in range(50):
                try:
                    cg.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)
        return without, with_breaker


def row(name: str, without: list[float], with_breaker: list[float]) -> str:
    a, b = statistics.median(without), statistics.median(with_breaker)
    return (
        f"{name:<9} {a:>14.2f} {b:>14.3f} {a / b:>10.0f}x   (max {max(with_breaker):.3f} ms with the breaker)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=20)
    args = ap.parse_args()
    print(f"command: {' '.join(sys.argv)}")
    print(f"{'caller':<9} {'without, ms':>14} {'open breaker':>14} {'ratio':>11}   (medians)")
    print(row("inbound", *inbound(args.requests)))
    print(row("outbound", *outbound(args.requests)))


if __name__ == "__main__":
    main()
