"""Host metrics for system rules (Load, CpuUsage) and Prometheus (cpu_ratio, process_memory_bytes)."""

from __future__ import annotations

import os
from pathlib import Path


class CpuSampler:
    """CPU usage ratio between two reads of /proc/stat (None until two reads exist)."""

    def __init__(self, stat: Path = Path("/proc/stat")) -> None:
        self.stat = stat
        self._last: tuple[int, int] | None = None

    def sample(self) -> float | None:
        try:
            fields = [int(x) for x in self.stat.read_text().splitlines()[0].split()[1:]]
        except (OSError, ValueError, IndexError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        total = sum(fields[:8])
        last, self._last = self._last, (idle, total)
        if last is None or total <= last[1]:
            return None
        return max(0.0, min(1.0, 1.0 - (idle - last[0]) / (total - last[1])))


def load1() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def process_memory_bytes(status: Path = Path("/proc/self/status")) -> int | None:
    try:
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None
