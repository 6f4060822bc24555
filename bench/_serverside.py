"""Shared pieces of the server-side benchmarks (throughput.py, rejection_cost.py).

A client/server namespace pair (tests/support/netns.py) with the server pinned to one CPU and the
client to the other: processes by ``taskset``, and the network receive path by RPS on each veth (the
server veth's packets are processed in softirq on the server's CPU, the client veth's on the client's).
So everything the server side costs, its processes and the kernel's receive path for its packets (TC
programs included), lands on the server CPU, and the server processes also run in a cgroup v2 of their
own for an exact process figure. Helpers: that cgroup, per-CPU /proc/stat samples, the TC programs'
``run_time_ns``/``run_cnt`` (``kernel.bpf_stats_enabled``), and entering a namespace; nginx, wrk and the
pair itself come from tests.support.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sentinel_ebpf._build import compile_object, ensure_vmlinux_h, find_clang
from sentinel_ebpf.libbpf import BpfObject, Link, Map
from tests.support.netns import NetnsPair, unique_token

ROOT = Path(__file__).resolve().parent.parent

CGROUP2 = Path("/sys/fs/cgroup/unified")
STATS_SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")
USER_HZ = os.sysconf("SC_CLK_TCK")
SERVER_CPU, CLIENT_CPU = 1, 0
SOFTIRQ_SRC = Path(__file__).with_name("softirq_time.bpf.c")
NET_TX_SOFTIRQ, NET_RX_SOFTIRQ, NR_SOFTIRQS = 2, 3, 10


class Cgroup:
    """A cgroup v2 directory of our own; ``join`` is a ``preexec_fn`` that moves the child into it before
    it execs ``ip netns exec`` (which remounts /sys, so the cgroup could not be joined from inside)."""

    def __init__(self, tag: str) -> None:
        if not (CGROUP2 / "cgroup.procs").exists():
            raise RuntimeError(f"cgroup2 is not mounted at {CGROUP2}")
        self.path = CGROUP2 / f"sentinel-bench-{tag}-{unique_token()}"
        self.path.mkdir()

    def join(self) -> None:
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def usage_usec(self) -> int:
        for line in (self.path / "cpu.stat").read_text().splitlines():
            key, value = line.split()
            if key == "usage_usec":
                return int(value)
        raise RuntimeError(f"no usage_usec in {self.path}/cpu.stat")

    @property
    def id(self) -> int:
        """The cgroup v2 id (what bpf_get_current_cgroup_id returns): its directory's inode number."""
        return os.stat(self.path).st_ino

    def pids(self) -> list[int]:
        return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]

    def remove(self) -> None:
        """Kill what is still inside (all started by this benchmark), then remove the directory."""
        if not self.path.exists():
            return
        for _ in range(50):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
            time.sleep(0.1)
        with contextlib.suppress(OSError):
            self.path.rmdir()


def build_bench_object(src: Path, workdir: Path) -> Path:
    """Compile a benchmark's own BPF source into ``workdir`` with the project's build flags."""
    bundled = ROOT / "src" / "sentinel_ebpf" / "bpf" / "vmlinux.h"
    if bundled.exists():
        shutil.copy(bundled, workdir / "vmlinux.h")
    else:
        ensure_vmlinux_h(workdir)
    return compile_object(src, find_clang(), workdir)


class SoftirqMaps:
    """The maps of ``softirq_time.bpf.o`` that are read, named here only (as ``sentinel_ebpf._maps`` has
    them for the project's objects): ``SoftirqMaps(obj)`` once the object is open."""

    def __init__(self, obj: BpfObject) -> None:
        #: ARRAY, max_entries 2 * NR_SOFTIRQS: __u32 -> __u64, index vec * 2 (+1 when in the cgroup)
        self.softirq_ns: Map = obj.map("softirq_ns")


class SoftirqMeter:
    """Softirq time on ``cpu`` split by whether the interrupted task is in ``cgroup``
    (bench/softirq_time.bpf.c, compiled here with the project's build flags into ``workdir``)."""

    def __init__(self, cpu: int, cgroup: Cgroup, workdir: Path) -> None:
        self.obj = BpfObject.open(build_bench_object(SOFTIRQ_SRC, workdir))
        self.links: list[Link] = []
        try:
            self.obj.set_rodata(target_cpu=cpu, target_cgroup_id=cgroup.id)
            self.obj.load()
            self.maps = SoftirqMaps(self.obj)
            for prog in ("softirq_entry", "softirq_exit"):
                self.links.append(self.obj.program(prog).attach())
        except BaseException:
            self.close()
            raise

    def read_ns(self) -> dict[str, int]:
        """Cumulative ns: ``net_outside`` (NET_RX + NET_TX while a task outside the cgroup was current:
        idle, ksoftirqd or another process), ``net_inside`` (already in the cgroup's usage), ``other``
        (every other vector, wherever it ran)."""
        m = self.maps.softirq_ns
        v = [int.from_bytes(m.lookup(i.to_bytes(4, "little")), "little") for i in range(2 * NR_SOFTIRQS)]
        net = (NET_TX_SOFTIRQ, NET_RX_SOFTIRQ)
        return {
            "net_outside": sum(v[2 * i] for i in net),
            "net_inside": sum(v[2 * i + 1] for i in net),
            "other": sum(v) - sum(v[2 * i] + v[2 * i + 1] for i in net),
        }

    def close(self) -> None:
        while self.links:
            self.links.pop().close()
        self.obj.close()


@dataclass
class CpuSample:
    """Per-CPU /proc/stat ticks (USER_HZ): busy (user, nice, system, irq, softirq), softirq + irq, and
    steal (time the hypervisor gave this virtual CPU to someone else: neither busy nor idle here)."""

    busy: dict[int, int]
    softirq: dict[int, int]
    steal: dict[int, int]
    total: dict[int, int]
    mono: float

    @staticmethod
    def take() -> CpuSample:
        busy, soft, steal, total = {}, {}, {}, {}
        for line in Path("/proc/stat").read_text().splitlines():
            m = re.match(r"cpu(\d+) (.*)", line)
            if not m:
                continue
            f = [int(x) for x in m.group(2).split()]
            cpu = int(m.group(1))
            # user nice system idle iowait irq softirq steal guest guest_nice (guest is inside user)
            total[cpu] = sum(f[:8])
            busy[cpu] = f[0] + f[1] + f[2] + f[5] + f[6]
            soft[cpu] = f[5] + f[6]
            steal[cpu] = f[7]
        return CpuSample(busy, soft, steal, total, time.monotonic())

    def busy_s(self, later: CpuSample, cpu: int) -> float:
        return (later.busy[cpu] - self.busy[cpu]) / USER_HZ

    def softirq_s(self, later: CpuSample, cpu: int) -> float:
        return (later.softirq[cpu] - self.softirq[cpu]) / USER_HZ

    def steal_s(self, later: CpuSample, cpu: int) -> float:
        return (later.steal[cpu] - self.steal[cpu]) / USER_HZ


def set_rps(pair: NetnsPair, ns: str, ifname: str, cpu: int) -> None:
    """Process ``ifname``'s received packets on ``cpu`` (RPS); sysfs is the namespace's own inside it."""
    path = f"/sys/class/net/{ifname}/queues/rx-0/rps_cpus"
    pair.run(ns, "sh", "-c", f"echo {1 << cpu:x} > {path}", check=True)


def fdinfo(fd: int) -> dict[str, int]:
    """A BPF program fd's /proc fdinfo: prog_id, run_time_ns, run_cnt (counted while bpf stats are on)."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("prog_id", "run_time_ns", "run_cnt"):
            out[key] = int(value.strip())
    return out


def bpftool_prog(prog_id: int) -> dict[str, int]:
    """``bpftool prog show id N``: run_time_ns and run_cnt (absent, i.e. 0, until stats were enabled)."""
    res = subprocess.run(
        ["bpftool", "prog", "show", "id", str(prog_id), "--json"], capture_output=True, text=True, timeout=20
    )
    if res.returncode != 0:
        raise RuntimeError(f"bpftool prog show id {prog_id}: {res.stderr.strip()}")
    info = json.loads(res.stdout)
    return {"run_time_ns": int(info.get("run_time_ns", 0)), "run_cnt": int(info.get("run_cnt", 0))}


@contextlib.contextmanager
def bpf_stats_enabled() -> Iterator[None]:
    """``kernel.bpf_stats_enabled=1`` for the block; the previous value is restored whatever happens."""
    before = STATS_SYSCTL.read_text().strip()
    STATS_SYSCTL.write_text("1\n")
    try:
        yield
    finally:
        STATS_SYSCTL.write_text(before + "\n")


def measured(
    server: Cgroup, client: Cgroup | None, load: Callable[[], Any], meter: SoftirqMeter | None = None
) -> tuple[Any, dict[str, float]]:
    """Run ``load`` and return its result with the CPU it cost, in seconds: server cgroup, server CPU
    busy/softirq/steal (/proc/stat), network softirq on the server CPU outside/inside the server cgroup
    (``meter``), client CPU busy, client cgroup (when given), wall time."""
    s0, c0 = server.usage_usec(), client.usage_usec() if client else 0
    m0 = meter.read_ns() if meter else {}
    p0 = CpuSample.take()
    result = load()
    p1 = CpuSample.take()
    m1 = meter.read_ns() if meter else {}
    s1, c1 = server.usage_usec(), client.usage_usec() if client else 0
    cpu = {
        "wall_s": p1.mono - p0.mono,
        "server_cgroup_s": (s1 - s0) / 1e6,
        "server_cpu_busy_s": p0.busy_s(p1, SERVER_CPU),
        "server_cpu_softirq_s": p0.softirq_s(p1, SERVER_CPU),
        "server_cpu_steal_s": p0.steal_s(p1, SERVER_CPU),
        "client_cpu_busy_s": p0.busy_s(p1, CLIENT_CPU),
        "client_cgroup_s": (c1 - c0) / 1e6,
    }
    for key in m0:
        cpu[f"softirq_{key}_s"] = (m1[key] - m0[key]) / 1e9
    return result, cpu


def idle_busy(window_s: float = 0.5, settle_s: float = 10.0) -> dict[str, float]:
    """Busy share of each CPU while this benchmark runs nothing: what others on the machine add.

    Waits (up to ``settle_s``) for the server CPU to settle below 10% busy over ``window_s``, so the tail
    of the previous run (a server still draining its queue) is not taken for someone else's work; returns
    the last window, and how long it waited.
    """
    t0 = time.monotonic()
    while True:
        p0 = CpuSample.take()
        time.sleep(window_s)
        p1 = CpuSample.take()
        wall = p1.mono - p0.mono
        server = p0.busy_s(p1, SERVER_CPU) / wall
        if server < 0.10 or time.monotonic() - t0 > settle_s:
            return {
                "server_cpu": server,
                "client_cpu": p0.busy_s(p1, CLIENT_CPU) / wall,
                "settle_s": time.monotonic() - t0,
            }
