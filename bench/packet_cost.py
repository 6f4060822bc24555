#!/usr/bin/env python3
"""Per-packet cost of the TC ingress program, measured with BPF_PROG_TEST_RUN (the kernel's own timing of
`repeat` runs of one packet), side by side in one run.

usage: sudo .venv/bin/python bench/packet_cost.py [--repeat 1000000]

A passing request is tracked in the in-flight map; repeated runs reuse one 4-tuple, so the figure is
the cost of judging it plus replacing its in-flight entry. Blocked requests are not measured here: the
test run repeats the program on the same skb, which the first run rewrites into the reply.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "dataplane"))

from packets import ACK, PSH, SYN, http_request, tcp_frame  # noqa: E402

from sentinel_ebpf._types import SentinelLimits  # noqa: E402
from sentinel_ebpf.inbound import InboundDataplane  # noqa: E402
from sentinel_ebpf.rules import load_text  # noqa: E402

C, S = "127.0.0.2", "127.0.0.1"


def rules(n_resources: int, threshold: int = 10**6) -> str:
    lines = ["resources:", "  - {name: conns, match: {protocol: tcp, port: 9090}}"]
    lines += [
        f"  - {{name: r{i}, match: {{protocol: http, port: 8080, path: /api/v1/r{i}}}}}"
        for i in range(n_resources)
    ]
    lines += ["flowRules:", f"  - {{resource: conns, threshold: {threshold}}}"]
    lines += [f"  - {{resource: r{i}, threshold: {threshold}}}" for i in range(n_resources)]
    return "\n".join(lines) + "\n"


def cost(dp: InboundDataplane, frame: bytes, repeat: int) -> float:
    return float(dp.obj.program("tc_ingress").test_run(frame, repeat=repeat).duration_ns)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=1_000_000)
    args = ap.parse_args()
    print(f"command: {' '.join(sys.argv)}")
    request = tcp_frame(C, S, 40000, 8080, flags=PSH | ACK, payload=http_request("GET", "/api/v1/r7/items"))
    rows: list[tuple[str, float]] = []
    with InboundDataplane() as dp:
        dp.apply(dp.compile(load_text(rules(10), "bench.yaml")))
        rows.append(
            (
                "non-matching TCP packet (port not protected)",
                cost(dp, tcp_frame(C, S, 40000, 5555), args.repeat),
            )
        )
        rows.append(
            ("malformed (truncated TCP header)", cost(dp, tcp_frame(C, S, 1, 8080)[:40], args.repeat))
        )
        rows.append(
            ("SYN to a TCP resource, passes", cost(dp, tcp_frame(C, S, 40001, 9090, flags=SYN), args.repeat))
        )
        limit = int(SentinelLimits.SE_MAX_RESOURCES) - 2
        for n in (10, 100, 1000, limit):
            dp.apply(dp.compile(load_text(rules(n), "bench.yaml")))
            rows.append((f"HTTP request, passes, {n} resources", cost(dp, request, args.repeat)))
    base = rows[0][1]
    print(f"{'packet':<48} {'ns/packet':>10} {'x non-matching':>15}")
    for name, ns in rows:
        print(f"{name:<48} {ns:>10.0f} {ns / base:>15.1f}")


if __name__ == "__main__":
    main()
