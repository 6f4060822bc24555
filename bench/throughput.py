#!/usr/bin/env python3
"""Throughput with the data plane attached vs without it, and the programs' in-situ cost.

nginx (one worker, keep-alive, a 12-byte ``return 200``) in a server namespace; wrk (2 threads,
``--connections``) in a client namespace for ``--seconds``. Per round, in turn:

  none       no program attached
  no match   ``sentinel-ebpf run`` on the server veth with 1,000 HTTP resources on another port
  match      the same daemon with 1,000 HTTP resources on nginx's port: the requests match ``/`` (a QPS
             threshold far above the load) and are counted; nothing is blocked

``--rounds`` rounds; the table shows the median requests per second of each mode and its ratio to
``none``. While wrk runs, ``kernel.bpf_stats_enabled`` is 1 and the run time and run count of the
attached TC programs are read from ``bpftool prog show`` before and after: the in-situ ns per program
run, over every packet of the run (both directions, ACKs included). The sysctl is restored afterwards.

usage: sudo .venv/bin/python bench/throughput.py [--seconds 10] [--rounds 5] [--connections 32]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from integration.daemon_helpers import Daemon  # noqa: E402
from integration.netns import NetnsPair  # noqa: E402

PORT = 8080
SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")


def rules(port: int, n: int = 1000) -> str:
    lines = ["resources:", f"  - {{name: root, match: {{protocol: http, port: {port}, path: /}}}}"]
    lines += [
        f"  - {{name: r{i}, match: {{protocol: http, port: {port}, method: GET, path: /p/{i}}}}}"
        for i in range(n - 1)
    ]
    lines += ["flowRules:", "  - {resource: root, threshold: 1000000000}"]
    lines += [f"  - {{resource: r{i}, threshold: 1000}}" for i in range(n - 1)]
    return "\n".join(lines) + "\n"


def wrk(pair: NetnsPair, seconds: int, connections: int) -> float:
    res = pair.run(pair.client, "wrk", "-t2", f"-c{connections}", f"-d{seconds}s", f"http://{pair.server_ip}:{PORT}/",
                   timeout=seconds + 60)  # fmt: skip
    if "Non-2xx" in res.stdout or "Socket errors" in res.stdout:
        raise RuntimeError(f"wrk saw failures:\n{res.stdout}")
    m = re.search(r"Requests/sec:\s+([\d.]+)", res.stdout)
    if not m:
        raise RuntimeError(f"wrk output not understood:\n{res.stdout}{res.stderr}")
    return float(m.group(1))


def prog_ids(pid: int) -> set[int]:
    """Ids of the BPF programs a process holds (its fdinfo), so other loaders' programs are not counted."""
    ids = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if fd.readlink().as_posix() == "anon_inode:bpf-prog":
                m = re.search(r"^prog_id:\s*(\d+)", Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text(), re.M)
                if m:
                    ids.add(int(m.group(1)))
        except OSError:
            continue
    return ids


def tc_prog_stats(pid: int) -> dict[str, tuple[int, int]]:
    """(run time ns, run count) of the daemon's TC programs, by name."""
    out = subprocess.run(
        ["bpftool", "--json", "prog", "show"], capture_output=True, text=True, check=True
    ).stdout
    mine = prog_ids(pid)
    stats: dict[str, tuple[int, int]] = {}
    for p in json.loads(out or "[]"):
        if p["id"] in mine and p.get("type") == "sched_cls" and p.get("name", "").startswith("tc_"):
            prev = stats.get(p["name"], (0, 0))
            stats[p["name"]] = (prev[0] + p.get("run_time_ns", 0), prev[1] + p.get("run_cnt", 0))
    return stats


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=32)
    args = ap.parse_args()
    print(f"$ {' '.join(sys.argv)}")
    rps: dict[str, list[float]] = {"none": [], "no match": [], "match": []}
    insitu: dict[str, list[dict[str, float]]] = {"no match": [], "match": []}
    old_sysctl = SYSCTL.read_text().strip()
    SYSCTL.write_text("1")
    try:
        with NetnsPair("tp") as pair:
            pair.start_nginx(PORT)
            wrk(pair, 2, args.connections)  # warm up
            for _ in range(args.rounds):
                rps["none"].append(wrk(pair, args.seconds, args.connections))
                for mode, port in (("no match", PORT + 1), ("match", PORT)):
                    d = Daemon(pair, rules(port))
                    try:
                        before = tc_prog_stats(d.proc.pid)
                        rps[mode].append(wrk(pair, args.seconds, args.connections))
                        after = tc_prog_stats(d.proc.pid)
                        if mode == "match":
                            stats = d.stats()["resources"]["root"]
                            assert stats["block"] == 0 and stats["pass"] > 0, stats
                    finally:
                        d.close()
                    insitu[mode].append({
                        name: (after[name][0] - before.get(name, (0, 0))[0])
                        / max(1, after[name][1] - before.get(name, (0, 0))[1])
                        for name in after
                    })  # fmt: skip
    finally:
        SYSCTL.write_text(old_sysctl)
    base = statistics.median(rps["none"])
    print(f"\n{'mode':<10} {'median req/s':>12} {'vs none':>8}   runs")
    for mode, values in rps.items():
        med = statistics.median(values)
        print(f"{mode:<10} {med:>12,.0f} {med / base:>8.3f}   {', '.join(f'{v:,.0f}' for v in values)}")
    print("\nin-situ cost per program run (kernel.bpf_stats_enabled), median over rounds:")
    for mode, runs in insitu.items():
        for name in sorted({n for r in runs for n in r}):
            print(f"  {mode:<10} {name:<12} {statistics.median(r.get(name, 0.0) for r in runs):7.0f} ns")
    print("target: >= 97% of the requests per second without the data plane")
    return 0


if __name__ == "__main__":
    sys.exit(main())
