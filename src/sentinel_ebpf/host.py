"""Facts about the machine the daemon, the data plane and ``doctor`` all need (mounts, capabilities)."""

from __future__ import annotations

from pathlib import Path


def mounts() -> dict[str, str]:
    """fstype -> first mount point, from /proc/mounts (empty when it cannot be read)."""
    found: dict[str, str] = {}
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        parts = line.split()
        if len(parts) >= 3:
            found.setdefault(parts[2], parts[1])
    return found


def cgroup2_mount() -> str | None:
    """Where the cgroup2 hierarchy is mounted, or None."""
    return mounts().get("cgroup2")


def cap_eff() -> int:
    """This process's effective capability mask."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0
