#!/usr/bin/env python3
"""Soak: minutes of full load against the daemon with flow and hotspot rules; does anything grow?

usage: sudo .venv/bin/python -m bench.soak [--minutes 10] [--interval 5] [--connections 32]

nginx (one worker, keep-alive, ``return 200``) in a server namespace; ``sentinel-ebpf run`` on the server
veth (metric log, Prometheus, control socket on) with

  api   http /api   flow rule 2,000 QPS (Reject; under this load most requests are answered 429 by the
                    kernel, with Connection: close, so wrk reconnects: connection churn) and a hotspot
                    rule on remote_ip (QPS 1,000,000: one value, never blocks)
  item  http /item  hotspot rule on query ``uid`` (QPS 5 per value, paramsMaxCapacity 100,000); flow
                    rule 1,000,000 QPS (never reached)

and wrk in the client namespace, closed loop (2 threads, ``--connections``), alternating /api and
/item?uid=<random of 10,000,000> (bench/_soak.lua), so the hotspot LRU sees a new value on nearly every
request. Every ``--interval`` seconds: the daemon's VmRSS, threads, open descriptors and CPU share
(/proc), and for every BPF map the daemon holds, its entries (counted in this process through the map
id: lookup_batch, or get_next_key for LPM tries; arrays are full by definition, socket storage is not
enumerable) and its kernel memory
(``memlock`` in the map fd's fdinfo). The report says, per quantity, the first (after one minute of
warm-up), largest and last value, and whether it stayed within its bound: entries <= max_entries, map
memory unchanged, RSS <= 80 MiB and within 5 MiB of its value after warm-up, threads and descriptors
unchanged.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sentinel_ebpf.libbpf import _lib
from sentinel_ebpf.libbpf.maps import Map
from tests.support.daemon_helpers import Daemon
from tests.support.netns import NetnsPair
from tests.support.nginx import BENCH_HTTP, nginx_conf, start_nginx
from tests.support.procstat import bpf_map_fds, cpu_seconds, open_fds, status_kib
from tests.support.wrk import WrkResult, parse_wrk

PORT = 8080
LUA = Path(__file__).with_name("_soak.lua")
WARMUP_S = 60.0
RSS_LIMIT_MIB = 80.0
RSS_GROWTH_MIB = 5.0
ARRAYS = {2, 6}  # BPF_MAP_TYPE_ARRAY, PERCPU_ARRAY: every entry always exists
RINGBUF = 27
SK_STORAGE = 24  # socket-local storage: its entries live on the sockets, no key to iterate
LPM_TRIE = 11
RULES = f"""
resources:
  - {{name: api, match: {{protocol: http, port: {PORT}, path: /api}}}}
  - {{name: item, match: {{protocol: http, port: {PORT}, path: /item}}}}
flowRules:
  - {{resource: api, threshold: 2000, statIntervalInMs: 1000}}
  - {{resource: item, threshold: 1000000, statIntervalInMs: 1000}}
hotSpotParamRules:
  - {{resource: api, paramKey: remote_ip, metricType: 1, threshold: 1000000, durationInSec: 1}}
  - {{resource: item, paramKey: "query:uid", metricType: 1, threshold: 5, durationInSec: 1,
     paramsMaxCapacity: 100000}}
"""


class MapCounter:
    """Count the entries of another process's BPF map, opened by id."""

    def __init__(self, map_id: int, info: dict[str, int]) -> None:
        self.id = map_id
        self.info = info
        self.type = info["map_type"]
        self.max_entries = info["max_entries"]
        res = subprocess.run(["bpftool", "map", "show", "id", str(map_id), "-j"],
                             capture_output=True, text=True, check=False)  # fmt: skip
        self.name = (
            json.loads(res.stdout).get("name", f"id{map_id}") if res.returncode == 0 else f"id{map_id}"
        )
        libbpf = ctypes.CDLL("libbpf.so.1", use_errno=True)
        libbpf.bpf_map_get_fd_by_id.argtypes = [ctypes.c_uint32]
        libbpf.bpf_map_get_fd_by_id.restype = ctypes.c_int
        fd = libbpf.bpf_map_get_fd_by_id(map_id)
        if fd < 0:
            raise OSError(ctypes.get_errno(), f"bpf_map_get_fd_by_id({map_id})")
        self.fd = fd
        self.map = Map.of_fd(fd)

    @property
    def counted(self) -> bool:
        return self.type not in ARRAYS and self.type not in (RINGBUF, SK_STORAGE)

    def entries(self) -> int | None:
        if not self.counted:
            return None
        if self.type == LPM_TRIE or not _lib.has("bpf_map_lookup_batch"):
            return sum(1 for _ in self.map)
        return self._count_batched()

    def _count_batched(self, batch: int = 16384) -> int:
        lib = _lib.lib()
        ksize, vsize = self.info["key_size"], self.map._stored_value_size
        keys = ctypes.create_string_buffer(ksize * batch)
        values = ctypes.create_string_buffer(vsize * batch)
        token_in: Any = None
        token_out = ctypes.create_string_buffer(max(ksize, 8))
        opts = _lib.BpfMapBatchOpts(sz=ctypes.sizeof(_lib.BpfMapBatchOpts))
        total = 0
        while True:
            count = ctypes.c_uint32(batch)
            rc = lib.bpf_map_lookup_batch(self.fd, token_in, token_out, keys, values, ctypes.byref(count),
                                          ctypes.byref(opts))  # fmt: skip
            err = _lib.errno_now() if rc != 0 else 0
            if rc != 0 and err != errno.ENOENT:
                if err == errno.ENOSPC:  # a bucket larger than the batch: retry bigger
                    return self._count_batched(batch * 2)
                raise OSError(err, f"lookup_batch on map {self.name}")
            total += count.value
            if rc != 0:
                return total
            token_in = ctypes.create_string_buffer(token_out.raw)

    def close(self) -> None:
        os.close(self.fd)


@dataclass
class Sample:
    t: float
    rss_kib: int
    hwm_kib: int
    threads: int
    fds: int
    cpu_ratio: float
    entries: dict[int, int | None] = field(default_factory=dict)
    memlock: dict[int, int] = field(default_factory=dict)


@contextlib.contextmanager
def opened_maps(pid: int) -> Iterator[dict[int, MapCounter]]:
    maps = {mid: MapCounter(mid, info) for mid, info in sorted(bpf_map_fds(pid).items())}
    try:
        yield maps
    finally:
        for m in maps.values():
            m.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--interval", type=float, default=5, help="seconds between samples")
    ap.add_argument("--connections", type=int, default=32)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces, BPF)")
    print("command:", shlex.join([sys.executable, *sys.argv]), flush=True)
    seconds = int(args.minutes * 60)
    warmup = min(WARMUP_S, seconds / 4)
    samples: list[Sample] = []
    with NetnsPair("soak") as pair:
        work = pair.tmpdir / "nginx-soak"
        server = f'server {{ listen {PORT} backlog=4096; location / {{ return 200 "ok\\n"; }} }}'
        nginx = start_nginx(pair, work, nginx_conf(work, f"{BENCH_HTTP}\n    {server}", events=4096), [PORT])
        daemon = Daemon(pair, RULES)
        pid = daemon.proc.pid
        try:
            argv = ["wrk", "-t2", f"-c{args.connections}", f"-d{seconds}s", "-s", str(LUA),
                    f"http://{pair.server_ip}:{PORT}/"]  # fmt: skip
            print("load:", shlex.join(["ip", "netns", "exec", pair.client, *argv]), flush=True)
            wrk = pair.popen(pair.client, *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)  # fmt: skip
            start = time.monotonic()
            with opened_maps(pid) as maps:
                cpu0, t_prev = cpu_seconds(pid), start
                while wrk.poll() is None:
                    time.sleep(args.interval)
                    now = time.monotonic()
                    cpu1 = cpu_seconds(pid)
                    st = status_kib(pid)
                    fdinfo = bpf_map_fds(pid)
                    s = Sample(now - start, st["VmRSS"], st["VmHWM"], st["Threads"], open_fds(pid),
                               (cpu1 - cpu0) / (now - t_prev))  # fmt: skip
                    cpu0, t_prev = cpu1, now
                    for mid, m in maps.items():
                        s.entries[mid] = m.entries()
                        s.memlock[mid] = fdinfo.get(mid, {}).get("memlock", -1)
                    samples.append(s)
                    hot = {
                        m.name: s.entries[mid]
                        for mid, m in maps.items()
                        if m.name in ("hot_values", "inflight")
                    }
                    print(f"  t={s.t:6.0f}s rss={s.rss_kib / 1024:6.1f} MiB cpu={100 * s.cpu_ratio:5.1f}% "
                          f"fds={s.fds} {hot}", flush=True)  # fmt: skip
                out, _ = wrk.communicate(timeout=60)
                stats = daemon.stats()
                report(samples, maps, warmup, parse_wrk(out), stats, nginx.pid)
                print("\nwrk output:\n" + out)
        finally:
            daemon.proc.signal(15)
            with contextlib.suppress(AssertionError):
                daemon.proc.wait_exit(20)
            daemon.close()


def report(
    samples: list[Sample],
    maps: dict[int, MapCounter],
    warmup: float,
    wrk: WrkResult,
    stats: dict[str, Any],
    nginx_pid: int,
) -> None:
    if not samples:
        print("no samples (run shorter than one interval?)")
        return
    base = next((s for s in samples if s.t >= warmup), samples[-1])
    last = samples[-1]
    problems = []
    print(f"\nload: {wrk.requests} requests in {wrk.seconds:.0f} s = "
          f"{wrk.rps:,.0f}/s (non-2xx {wrk.non2xx}: the kernel's 429s; "
          f"socket errors {wrk.socket_error_count})")  # fmt: skip
    for name, r in stats["resources"].items():
        print(f"  {name}: pass {r['pass']:,} block {r['block']:,} {r['block_by_type']}")
    print(f"  data plane counters: {stats.get('dataplane')}")
    print(f"\n{len(samples)} samples every ~{samples[0].t:.0f} s; 'after warm-up' is t={base.t:.0f}s\n")
    print(f"{'quantity':34} {'bound':>12} {'after warm-up':>14} {'max':>12} {'last':>12}  verdict")

    def row(name: str, bound: str, first: float, top: float, end: float, ok: bool, fmt: str = ",.0f") -> None:
        verdict = "ok" if ok else "GREW"
        if not ok:
            problems.append(name)
        print(f"{name:34} {bound:>12} {first:>14{fmt}} {top:>12{fmt}} {end:>12{fmt}}  {verdict}")

    rss = [s.rss_kib / 1024 for s in samples if s.t >= base.t]
    row("daemon VmRSS (MiB)", f"<= {RSS_LIMIT_MIB:.0f}", base.rss_kib / 1024, max(rss), last.rss_kib / 1024,
        max(rss) <= RSS_LIMIT_MIB and max(rss) - base.rss_kib / 1024 <= RSS_GROWTH_MIB, ".1f")  # fmt: skip
    row("daemon VmHWM (MiB)", f"<= {RSS_LIMIT_MIB:.0f}", base.hwm_kib / 1024, last.hwm_kib / 1024,
        last.hwm_kib / 1024, last.hwm_kib / 1024 <= RSS_LIMIT_MIB, ".1f")  # fmt: skip
    row("daemon threads", "unchanged", base.threads, max(s.threads for s in samples), last.threads,
        max(s.threads for s in samples) == base.threads)  # fmt: skip
    row("daemon open descriptors", "unchanged", base.fds, max(s.fds for s in samples), last.fds,
        max(s.fds for s in samples) == base.fds)  # fmt: skip
    cpu = [s.cpu_ratio * 100 for s in samples if s.t >= base.t]
    print(f"{'daemon CPU (% of a core)':34} {'':>12} {base.cpu_ratio * 100:>14.1f} {max(cpu):>12.1f} "
          f"{last.cpu_ratio * 100:>12.1f}  (mean {sum(cpu) / len(cpu):.1f})")  # fmt: skip
    for mid, m in maps.items():
        if m.counted:
            vals = [s.entries[mid] or 0 for s in samples]
            row(f"map {m.name} entries", f"<= {m.max_entries:,}", base.entries[mid] or 0, max(vals),
                last.entries[mid] or 0, max(vals) <= m.max_entries)  # fmt: skip
    total = [sum(s.memlock.values()) / 2**20 for s in samples]
    row("all maps' kernel memory (MiB)", "unchanged", sum(base.memlock.values()) / 2**20, max(total),
        total[-1], max(total) == min(total), ".1f")  # fmt: skip
    changed = [m.name for mid, m in maps.items() if len({s.memlock[mid] for s in samples}) > 1]
    print(f"maps whose memlock changed: {changed or 'none'}; not counted (arrays and ring buffers, full by "
          "definition; socket storage, kept on the sockets): "
          f"{', '.join(m.name for m in maps.values() if not m.counted)}")  # fmt: skip
    with contextlib.suppress(OSError):
        print(f"nginx VmRSS at the end: {status_kib(nginx_pid)['VmRSS'] / 1024:.1f} MiB")
    print("\nverdict:", "nothing grew beyond its bound" if not problems else "GREW: " + ", ".join(problems))


if __name__ == "__main__":
    main()
