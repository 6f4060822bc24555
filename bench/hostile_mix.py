"""The rate a limit admits when hostile framings are mixed in: every way of writing the same request
(bench/_hostile.py: split request lines, pipelining, requests after bodies, absolute-form, percent and
dot-segment targets, leading empty lines, runs of spaces, HEAD, FIN) against one GET /api limit.

usage: sudo flock /tmp/sentinel-bench.lock .venv/bin/python -m bench.hostile_mix
           [--threshold 50] [--rate 400] [--seconds 10]

One client/server namespace pair (tests/support/netns.py); nginx in the server namespace answers
everything with 200 and logs each request it gets (``$msec "$request" $status``); the inbound TC
programs of one ``InboundDataplane`` on the server veth enforce ``GET /api`` at ``--threshold`` per
second (flow Reject, 1 s window). The client opens ``--rate`` connections per second, each carrying
one framing after another. What reaches nginx is the truth: its requests for /api (targets normalised
as the kernel does) are counted per second of nginx's clock, the first and last partial seconds left
out. Printed: per second, admitted vs the threshold (mean, min, max); the kernel's pass count against
nginx's (equal when no request slipped past or was counted twice); and per framing, requests for /api
written, the statuses the client read for them (a framing with a POST before /api gets that answer
too; it is left out), resets.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter
from pathlib import Path

from sentinel_ebpf.enforce import InboundDataplane
from sentinel_ebpf.rules import load_text
from sentinel_ebpf.rules.target import normalize_target
from tests.support.netns import NetnsPair
from tests.support.nginx import nginx_conf, start_nginx

PORT = 8080
CLIENT = Path(__file__).with_name("_hostile.py")


def rules(threshold: int) -> str:
    return f"""
resources:
  - {{name: api, match: {{protocol: http, port: {PORT}, method: GET, path: /api}}}}
flowRules:
  - {{resource: api, threshold: {threshold}, statIntervalInMs: 1000}}
"""


def admitted_per_second(log: Path) -> Counter[int]:
    """Requests for /api (GET or HEAD) nginx got, per second of its clock."""
    per: Counter[int] = Counter()
    for line in log.read_text(errors="replace").splitlines():
        msec, _, rest = line.partition(" ")
        request = rest.split('"')[1] if rest.count('"') >= 2 else ""
        parts = request.split()
        if len(parts) < 2 or parts[0] not in ("GET", "HEAD"):
            continue
        target = parts[1]
        if "://" in target:  # absolute-form: the path after the authority, as the kernel reads it
            target = "/" + target.split("://", 1)[1].partition("/")[2]
        if normalize_target(target).startswith("/api"):
            per[int(float(msec))] += 1
    return per


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threshold", type=int, default=50)
    ap.add_argument("--rate", type=float, default=400.0, help="connections per second, all framings")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument(
        "--framings", default="", help="comma-separated names from bench/_hostile.py (default: all)"
    )
    args = ap.parse_args()
    with NetnsPair() as pair, InboundDataplane() as dp:
        work = pair.tmpdir / "nginx"
        body = f"""log_format bench '$msec "$request" $status';
    access_log {work}/access.log bench;
    keepalive_requests 1000000;
    server {{ listen {PORT}; location / {{ return 200 "ok\\n"; }} }}"""
        start_nginx(pair, work, nginx_conf(work, body, events=1024), [PORT])
        dp.apply(dp.compile(load_text(rules(args.threshold), "bench")))
        dp.attach(f"{pair.server_if}@{pair.server}")
        res = pair.run(pair.client, sys.executable, str(CLIENT), pair.server_ip, str(PORT), str(args.seconds),
                       str(args.rate), "64", *([args.framings] if args.framings else []), timeout=args.seconds + 60)  # fmt: skip
        if res.returncode != 0:
            raise RuntimeError(f"client failed: {res.stderr}")
        per_framing = json.loads(res.stdout)
        st = next(s for s in dp.resource_stats() if s.name == "api")
        dp.detach_all()
        per_second = admitted_per_second(work / "access.log")
    seconds = sorted(per_second)[1:-1]  # whole seconds only
    counts = [per_second[s] for s in seconds]
    offered = sum(f["requests"] for f in per_framing.values()) / args.seconds
    print(f"threshold {args.threshold}/s, {args.seconds:g} s, offered {offered:.0f} requests/s for GET /api "
          f"in {len(per_framing)} framings at {args.rate:g} connections/s")  # fmt: skip
    if counts:
        print(f"admitted by the server per whole second ({len(counts)} s): mean {statistics.mean(counts):.1f}, "
              f"min {min(counts)}, max {max(counts)}  (mean / threshold {statistics.mean(counts) / args.threshold:.3f})")  # fmt: skip
    print(f"kernel pass {st.passed}, block {st.blocked}; nginx got {sum(per_second.values())} for /api")
    print()
    print("| framing | requests | 200 | 429 | reset | other |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, c in per_framing.items():
        other = sum(v for k, v in c.items() if k not in ("connections", "requests", "200", "429", "reset"))
        if name in ("after_body", "chunked_then"):  # the POST before the request for /api is answered too
            c["200"] = c.get("200", 0) - c["connections"]
        print(f"| {name} | {c.get('requests', 0)} | {c.get('200', 0)} | {c.get('429', 0)} | {c.get('reset', 0)} | {other} |")  # fmt: skip


if __name__ == "__main__":
    main()
