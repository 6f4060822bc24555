"""/proc readings of another process, for tests and benchmarks: CPU time, memory, threads, descriptors;
and pinning a command to a CPU."""

from __future__ import annotations

import os
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all threads), from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of proc(5)


def pin(cpu: int) -> list[str]:
    """argv prefix that runs a command on ``cpu`` only (``taskset``)."""
    return ["taskset", "-c", str(cpu)]


def status_kib(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (peak RSS), VmSize, RssAnon, RssFile and Threads from /proc/<pid>/status."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM", "VmSize", "RssAnon", "RssFile", "Threads"):
            out[name] = int(value.split()[0])
    return out


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def bpf_map_fds(pid: int) -> dict[int, dict[str, int]]:
    """map id -> fdinfo fields (map_type, key_size, value_size, max_entries, memlock, ...) of every BPF
    map the process holds open."""
    maps: dict[int, dict[str, int]] = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:bpf-map":
                continue
            info: dict[str, int] = {}
            for line in Path(f"/proc/{pid}/fdinfo/{fd}").read_text().splitlines():
                name, _, value = line.partition(":")
                value = value.strip()
                if value.lstrip("-").isdigit():
                    info[name] = int(value)
                elif name == "map_flags":
                    info[name] = int(value, 16)
        except OSError:
            continue  # closed meanwhile
        if "map_id" in info:
            maps[info["map_id"]] = info
    return maps
