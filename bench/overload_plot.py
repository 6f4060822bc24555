#!/usr/bin/env python3
"""Plot passed and blocked requests per second under 10x overload: this project vs nginx ``limit_req``.

Uses ``accuracy_netns.py``'s setup (one nginx serving two ports in a server namespace: 8080 guarded by
the inbound data plane, 8081 by ``limit_req``; ``_ratedclient.py`` sending an open-loop 10 x T requests
per second from a client namespace) and draws, per 500 ms bin of the client's clock, the 200s and 429s
the client received, scaled to per second, for both systems one above the other, with the threshold.

usage: sudo .venv/bin/python bench/overload_plot.py [--threshold 100] [--seconds 12] [--out bench/overload.png]
       (matplotlib: ``pip install -e '.[bench]'``)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from accuracy_netns import GUARDED, LIMIT_REQ, PATH, RULES, Run, client_bins, drive, in_netns, start_nginx

from integration.netns import NetnsPair
from sentinel_ebpf.inbound import InboundDataplane
from sentinel_ebpf.rules import load_text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threshold", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--out", default=str(Path(__file__).with_name("overload.png")))
    args = ap.parse_args()
    t = args.threshold
    runs: list[Run] = []
    with NetnsPair("op") as pair, InboundDataplane() as dp:
        nginx, _log = start_nginx(pair, t)
        dp.apply(dp.compile(load_text(RULES.format(port=GUARDED, path=PATH, t=t))))
        with in_netns(pair.server):
            dp.attach(pair.server_if)
        for system, port, guard in (
            ("sentinel-ebpf (kernel 429)", GUARDED, dp),
            ("nginx limit_req", LIMIT_REQ, None),
        ):
            run = Run(system, t, 10.0 * t)
            drive(pair, run, port, args.seconds, guard, 1)
            runs.append(run)
            time.sleep(0.5)
        nginx.terminate()
        nginx.wait(10)
        with in_netns(pair.server):
            dp.detach_all()

    fig, axes = plt.subplots(len(runs), 1, figsize=(9, 6), sharex=True, sharey=True)
    for ax, run in zip(axes, runs, strict=True):
        ok, blocked = client_bins(run, "200"), client_bins(run, "429")
        first = min(ok.keys() | blocked.keys())
        bins = sorted(ok.keys() | blocked.keys())[1:-1]  # the first and last bins are partial
        xs = [(b - first) * 0.5 for b in bins]
        ax.plot(xs, [ok[b] * 2 for b in bins], drawstyle="steps-post", label="passed (200) per s")
        ax.plot(xs, [blocked[b] * 2 for b in bins], drawstyle="steps-post", label="blocked (429) per s")
        ax.axhline(t, color="grey", linestyle="--", linewidth=1, label=f"threshold {t}/s")
        ax.set_title(f"{run.system}: {run.rate:.0f} requests/s offered (10 x threshold)")
        ax.set_ylabel("requests per second")
        ax.set_yscale("symlog", linthresh=10)
        ax.legend(loc="center right", fontsize=8)
    axes[-1].set_xlabel("seconds (500 ms bins, client clock)")
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")
    for run in runs:
        ok = client_bins(run, "200")
        print(f"{run.system}: 200s per 500 ms bin: {[ok[b] for b in sorted(ok)]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
