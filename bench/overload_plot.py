#!/usr/bin/env python3
"""Plot pass/block rates over time under 10x overload: this project vs nginx ``limit_req``.

usage: sudo .venv/bin/python -m bench.overload_plot [--threshold 100] [--overload 10] [--seconds 20]
                                                    [--out bench/overload.png]

Same setup and client as bench/accuracy_netns.py (imported from it): one nginx in a server namespace
serving port 8080 guarded by the inbound data plane on the server veth (flow rule: ``threshold`` QPS,
statIntervalInMs 1000, kernel-built 429) and port 8081 with nginx ``limit_req`` (rate=threshold r/s,
burst 0, nodelay, 429); bench/_ratedclient.py sends ``overload`` x threshold requests per second (open
loop, evenly spaced) to one, then the other. Plotted from the client's answers, per 500 ms bin of
CLOCK_MONOTONIC: requests per second over the one-second window ending at each bin (the two last 500 ms
bins: the window the Sentinel rule enforces), passed (200) and blocked (429, or a reset), both systems
on one time axis from the start of their run; a third panel shows the passed requests per 500 ms bin
(how each system spreads its admissions inside a second). The per-second table and the bins are printed
too.
Needs matplotlib (``pip install -e ".[bench]"``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench import accuracy_netns as acc
from sentinel_ebpf.enforce import InboundDataplane
from sentinel_ebpf.rules import load_text
from tests.support.netns import NetnsPair


def series(run: acc.Run) -> tuple[list[float], list[int], list[int]]:
    """(seconds from the run's start, passed per 1 s window, blocked per 1 s window), one per 500 ms bin."""
    ok, blocked = acc.client_bins(run, "200"), acc.client_bins(run, "429")
    blocked += acc.client_bins(run, "reset") + acc.client_bins(run, "error")
    start_ms, end_ms = int(run.client["start_ms"]), int(run.client["end_ms"])  # type: ignore[call-overload]
    first, last = start_ms // 500 + 1, end_ms // 500  # whole bins only
    t, p, b = [], [], []
    for i in range(first + 1, last):
        t.append((i + 1) * 500 / 1000 - start_ms / 1000)  # the window's end
        p.append(ok[i - 1] + ok[i])
        b.append(blocked[i - 1] + blocked[i])
    return t, p, b


def bins(run: acc.Run) -> tuple[list[float], list[int], list[int]]:
    """(seconds from the run's start, passed, blocked) per whole 500 ms bin."""
    ok, blocked = acc.client_bins(run, "200"), acc.client_bins(run, "429")
    start_ms, end_ms = int(run.client["start_ms"]), int(run.client["end_ms"])  # type: ignore[call-overload]
    idx = range(start_ms // 500 + 1, end_ms // 500)
    return [i * 500 / 1000 - start_ms / 1000 for i in idx], [ok[i] for i in idx], [blocked[i] for i in idx]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threshold", type=int, default=100)
    ap.add_argument("--overload", type=float, default=10.0)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--out", default=str(Path(__file__).with_name("overload.png")))
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("overload_plot.py needs root")
    t_ = args.threshold
    runs: list[acc.Run] = []
    with NetnsPair("ovl") as pair, InboundDataplane() as dp:
        nginx, _ = acc.start_limited_nginx(pair, t_)
        dp.apply(dp.compile(load_text(acc.RULES.format(port=acc.GUARDED, path=acc.PATH, t=t_))))
        with acc.in_netns(pair.server):
            dp.attach(pair.server_if)
        try:
            for system, port, guard in (("sentinel-ebpf (kernel 429)", acc.GUARDED, dp),
                                        ("nginx limit_req", acc.LIMIT_REQ, None)):  # fmt: skip
                run = acc.Run(system, t_, args.overload * t_)
                print(f"running {system}: {run.rate:.0f} req/s for {args.seconds:g} s", flush=True)
                acc.drive(pair, run, port, args.seconds, guard, 1 if t_ < 1000 else 2)
                acc.analyse(run)
                runs.append(run)
                time.sleep(1)
        finally:
            with acc.in_netns(pair.server):
                dp.detach_all()
            nginx.terminate()
            nginx.wait(10)

    fig, axes = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    for ax, run in zip(axes[:2], runs, strict=True):
        t, p, b = series(run)
        ax.plot(t, p, color="tab:green", marker=".", label="passed (200) per second")
        ax.plot(t, b, color="tab:red", linestyle="--", label="blocked (429) per second")
        ax.axhline(t_, color="black", linewidth=0.8, linestyle=":", label=f"threshold {t_}/s")
        offered = run.summary["offered_per_s"]
        ax.set_title(f"{run.system}: offered {offered:.0f}/s ({offered / t_:.1f}x), "
                     f"passed mean {run.summary['mean']:.1f}/s, min {run.summary['min']:.0f}, "
                     f"max {run.summary['max']:.0f} per whole second", fontsize=10)  # fmt: skip
        ax.set_ylim(0, offered * 1.1)
        ax.set_ylabel("requests/s (1 s window)")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="center right", fontsize=8)
    ax = axes[2]
    for run, colour in zip(runs, ("tab:blue", "tab:orange"), strict=True):
        t, p, _ = bins(run)
        ax.step(t, p, where="post", color=colour, label=run.system)
    ax.set_title(
        "passed per 500 ms bin: how the admitted requests are spread inside each second", fontsize=10
    )
    ax.set_ylabel("passed per 500 ms")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="center right", fontsize=8)
    axes[-1].set_xlabel("seconds since the load started (one point per 500 ms)")
    fig.suptitle(f"Flow rule {t_} QPS under {args.overload:g}x overload (same client, same run, "
                 f"{os.cpu_count()}-core machine)", fontsize=11)  # fmt: skip
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"command: python {' '.join(sys.argv)}\nwrote {args.out}")
    for run in runs:
        acc.print_run(run)
        t, p, b = series(run)
        print(
            "  1 s windows every 500 ms (passed/blocked): "
            + " ".join(f"{x}/{y}" for x, y in zip(p, b, strict=True))
        )
    print(
        f"\n{'system':<28} {'offered/s':>9} {'mean pass/s':>11} {'min':>5} {'max':>5} {'max 1s-window':>13}"
    )
    for run in runs:
        s = run.summary
        _, p, _ = series(run)
        print(f"{run.system:<28} {s['offered_per_s']:>9.0f} {s['mean']:>11.2f} {s['min']:>5.0f} {s['max']:>5.0f} "
              f"{max(p[1:], default=0):>13}")  # fmt: skip


if __name__ == "__main__":
    main()
