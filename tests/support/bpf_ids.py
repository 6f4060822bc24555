"""Which BPF programs, links and maps a process holds, which exist on the machine, and waiting for the
ones a process held to be freed: how the tracer tests check that an exited command leaves nothing."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

BPFTOOL = "/usr/sbin/bpftool"
KINDS = ("prog", "link", "map")


def bpf_fd_ids(pid: int) -> dict[str, set[int]]:
    """Ids of the BPF programs, links and maps a process holds open (from /proc/PID/fdinfo)."""
    ids: dict[str, set[int]] = {kind: set() for kind in KINDS}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except FileNotFoundError:
            continue
        kind = {
            "anon_inode:bpf-prog": "prog",
            "anon_inode:bpf_link": "link",
            "anon_inode:bpf-link": "link",
            "anon_inode:bpf-map": "map",
        }.get(target)
        if kind is None:
            continue
        field = re.search(rf"^{kind}_id:\s*(\d+)", info, re.M)
        assert field, info
        ids[kind].add(int(field.group(1)))
    return ids


def bpftool_ids() -> dict[str, set[int]]:
    """Ids of the programs, links and maps that exist now, per bpftool."""

    def show(what: str) -> list[dict[str, Any]]:
        res = subprocess.run(
            [BPFTOOL, "--json", what, "show"], capture_output=True, text=True, timeout=30, check=True
        )
        return json.loads(res.stdout or "[]")

    return {kind: {item["id"] for item in show(kind)} for kind in KINDS}


def left_after_exit(owned: dict[str, set[int]], timeout_s: float = 10) -> dict[str, set[int]]:
    """Of ``owned`` (``bpf_fd_ids`` of a process that has exited), the ids that still exist once they are
    all gone or ``timeout_s`` has passed: objects are freed when the last reference goes, a moment later."""
    deadline = time.monotonic() + timeout_s
    while True:
        now = bpftool_ids()
        left = {kind: owned[kind] & now[kind] for kind in owned}
        if not any(left.values()) or time.monotonic() > deadline:
            return left
        time.sleep(0.05)
