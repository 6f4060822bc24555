#!/usr/bin/env python3
"""How many distinct hotspot parameter values the kernel tracks, in how much kernel memory.

Loads the inbound data plane with ``--keys`` slots for hotspot values (``run --hotspot-keys``; the LRU map
``hot_values`` is preallocated), a resource with a hotspot rule on the query parameter ``user`` (QPS 100
per value: nothing here is blocked), and runs the ingress program through ``BPF_PROG_TEST_RUN`` on
``--values`` requests, each with a new ``user`` value (a new client port each, as new requests). Then it
counts the map's entries and reads its kernel memory (``memlock`` in the map's fdinfo), and the whole
object's.

usage: sudo .venv/bin/python -m bench.hotspot_scale [--keys 1048576] [--values 1000000]
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from sentinel_ebpf.enforce import InboundDataplane
from sentinel_ebpf.rules import load_text
from tests.support.packets import ACK, PSH, tcp_frame

RULES = """
resources:
  - {name: api, match: {protocol: http, port: 8080, path: /}}
hotSpotParamRules:
  - {resource: api, paramKey: "query:user", metricType: 1, threshold: 100, durationInSec: 1}
"""
TC_ACT_OK = 0


def memlock(fd: int) -> int:
    return int(re.search(r"memlock:\s*(\d+)", Path(f"/proc/self/fdinfo/{fd}").read_text()).group(1))  # type: ignore[union-attr]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=1 << 20)
    ap.add_argument("--values", type=int, default=1_000_000)
    args = ap.parse_args()
    print(f"$ {' '.join(sys.argv)}")
    with InboundDataplane(hotspot_values=args.keys, socket_lookup=False) as dp:
        dp.apply(dp.compile(load_text(RULES)))
        prog = dp.obj.program("tc_ingress")
        hot = dp.maps.hot_values
        passed = 0
        t0 = time.monotonic()
        for i in range(args.values):
            payload = f"GET /?user=u{i} HTTP/1.1\r\nHost: svc\r\n\r\n".encode()
            frame = tcp_frame("10.1.0.2", "10.1.0.1", 1024 + i % 60000, 8080, flags=PSH | ACK,
                              seq=1000 + i, payload=payload)  # fmt: skip
            passed += prog.test_run(frame).retval == TC_ACT_OK
        elapsed = time.monotonic() - t0
        tracked = sum(1 for _ in hot)
        total = sum(memlock(m.fd) for m in dp.obj.maps.values())
        hot_mem = memlock(hot.fd)
    print(f"\n{'hotspot slots':>13} {'values sent':>11} {'passed':>9} {'tracked':>9} {'hot_values MiB':>14} "
          f"{'bytes/slot':>10} {'all maps MiB':>12}")  # fmt: skip
    print(f"{args.keys:>13,} {args.values:>11,} {passed:>9,} {tracked:>9,} {hot_mem / 2**20:>14.1f} "
          f"{hot_mem / args.keys:>10.0f} {total / 2**20:>12.1f}")  # fmt: skip
    print(f"({elapsed:.0f} s of test runs; target: 1,000,000 values tracked within 128 MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
