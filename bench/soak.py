#!/usr/bin/env python3
"""Soak: ``--minutes`` of full load through the daemon, with its memory and the kernel maps sampled.

nginx in a server namespace behind ``sentinel-ebpf run`` with a flow rule, a hotspot rule on a query
parameter and an isolation rule; wrk (2 threads, 32 connections) from a client namespace with a new
random ``user`` value in every request (``_wrk_random_user.lua``), so the hotspot's per-value map keeps
filling and must evict. Every ``--every`` seconds: the daemon's VmRSS and CPU time, the sum of the
kernel memory (``bytes_memlock``) of the maps the daemon holds, and the entries of the hotspot value map
(``bpftool map dump``). At the end: whether RSS grew after the first minute (more than 10%) and whether
any map holds more entries than its ``max_entries``; wrk's totals (requests, non-2xx).

usage: sudo .venv/bin/python bench/soak.py [--minutes 10] [--every 10]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from integration.daemon_helpers import Daemon  # noqa: E402
from integration.netns import NetnsPair  # noqa: E402

LUA = Path(__file__).with_name("_wrk_random_user.lua")
RULES = """
resources:
  - {name: api, match: {protocol: http, port: 8080, path: /}}
flowRules:
  - {resource: api, threshold: 20000, statIntervalInMs: 1000}
isolationRules:
  - {resource: api, threshold: 1000}
hotSpotParamRules:
  - {resource: api, paramKey: "query:user", metricType: 1, threshold: 5, durationInSec: 1}
"""


def bpftool(*args: str) -> Any:
    out = subprocess.run(
        ["bpftool", "--json", *args], capture_output=True, text=True, check=True, timeout=120
    )
    return json.loads(out.stdout or "[]")


def daemon_maps(pid: int) -> list[dict[str, Any]]:
    ids = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if Path(f"/proc/{pid}/fd/{fd.name}").readlink().as_posix() == "anon_inode:bpf-map":
                m = re.search(r"^map_id:\s*(\d+)", Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text(), re.M)
                if m:
                    ids.add(int(m.group(1)))
        except OSError:
            continue
    return [m for m in bpftool("map", "show") if m["id"] in ids]


def sample(pid: int) -> dict[str, Any]:
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    maps = daemon_maps(pid)
    counts = {}
    for m in maps:
        if m.get("type") in ("lru_hash", "hash") and m.get("name", "").startswith(("hot", "inflight")):
            counts[m["name"]] = (len(bpftool("map", "dump", "id", str(m["id"]))), m["max_entries"])
    return {"t": time.monotonic(), "rss_kib": rss, "cpu_s": (int(fields[11]) + int(fields[12])) / 100,
            "memlock_mib": sum(m.get("bytes_memlock", 0) for m in maps) / 2**20, "entries": counts}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--every", type=float, default=10)
    args = ap.parse_args()
    print(f"$ {' '.join(sys.argv)}")
    seconds = int(args.minutes * 60)
    samples: list[dict[str, Any]] = []
    with NetnsPair("sk") as pair:
        pair.start_nginx(8080)
        d = Daemon(pair, RULES)
        try:
            out: dict[str, str] = {}

            def load() -> None:
                res = pair.run(pair.client, "wrk", "-t2", "-c32", f"-d{seconds}s", "-s", str(LUA),
                               f"http://{pair.server_ip}:8080/", timeout=seconds + 120)  # fmt: skip
                out["wrk"] = res.stdout

            wrk = threading.Thread(target=load)
            wrk.start()
            t0 = time.monotonic()
            while wrk.is_alive():
                s = sample(d.proc.pid)
                samples.append(s)
                print(f"{s['t'] - t0:7.0f}s rss {s['rss_kib'] / 1024:6.1f} MiB  cpu {s['cpu_s']:7.1f}s  "
                      f"maps {s['memlock_mib']:7.1f} MiB  entries {s['entries']}", flush=True)  # fmt: skip
                wrk.join(args.every)
            stats = d.stats()["resources"]["api"]
        finally:
            d.close()
    after_first_minute = [s for s in samples if s["t"] - samples[0]["t"] >= 60] or samples
    base = after_first_minute[0]["rss_kib"]
    peak = max(s["rss_kib"] for s in after_first_minute)
    over = {name: c for s in samples for name, c in s["entries"].items() if c[0] > c[1]}
    print(f"\nwrk: {' '.join(out.get('wrk', '').split())}")
    print(f"daemon stats: pass {stats['pass']}, block {stats['block']} {stats['block_by_type']}")
    print(f"RSS after the first minute {base / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB "
          f"({(peak / base - 1) * 100:+.1f}%): {'no growth' if peak <= base * 1.1 else 'GREW'}")  # fmt: skip
    print(
        f"kernel map memory {samples[-1]['memlock_mib']:.1f} MiB (fixed at load); maps over max_entries: {over or 'none'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
