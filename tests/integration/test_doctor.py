"""`sentinel-ebpf doctor` against the machine it runs on."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernel("probes")


def _all_checks() -> tuple[str, ...]:
    """ALL_CHECKS of tests/unit/core/test_doctor_verdict.py (what the verdict tests take as doctor's checks)."""
    path = Path(__file__).parents[1] / "unit" / "core" / "test_doctor_verdict.py"
    spec = importlib.util.spec_from_file_location("_doctor_verdict_spec", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ALL_CHECKS  # type: ignore[no-any-return]


DOCTOR = [sys.executable, "-m", "sentinel_ebpf", "doctor", "--json"]


def _doctor(*prefix: str) -> tuple[int, dict[str, object]]:
    argv = [*prefix, "-c", shlex.join(DOCTOR)] if prefix else DOCTOR
    res = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    return res.returncode, json.loads(res.stdout)


def _kprobes_attachable() -> bool:
    """kprobes attach through the kprobe PMU or tracefs' kprobe_events (tracefs is looked at in a
    private mount namespace: mounted there if the host has not, gone with it)."""
    if Path("/sys/bus/event_source/devices/kprobe").exists():
        return True
    probe = "mount -t tracefs none /sys/kernel/tracing 2>/dev/null; test -e /sys/kernel/tracing/kprobe_events"
    return subprocess.run(["unshare", "-m", "sh", "-c", probe], timeout=30, check=False).returncode == 0


def _bpftool_prog_types() -> dict[str, bool]:
    """What libbpf's own probe (through bpftool, not this project's code) says of each program type."""
    bpftool = shutil.which("bpftool") or "/usr/sbin/bpftool"
    out = subprocess.run([bpftool, "feature", "probe", "kernel"], capture_output=True, text=True,
                         timeout=120, check=True).stdout  # fmt: skip
    return {
        m.group(1): m.group(2) is None
        for m in re.finditer(r"^eBPF program_type (\w+) is (NOT )?available", out, re.M)
    }


def test_doctor_reports_this_machine() -> None:
    code, report = _doctor()
    checks = {c["name"]: c for c in report["checks"]}  # type: ignore[union-attr, index]
    assert code == 0 and report["ok"] is True
    assert tuple(checks) == _all_checks()
    for name in ("hook tp_btf", "hook raw_tp", "BPF_PROG_TEST_RUN", "hook cgroup/connect4", "map ringbuf"):
        assert checks[name]["status"] == "ok", checks[name]
    # the optional hooks: exactly what the machine has, found out independently of doctor's code
    types = _bpftool_prog_types()
    expected = {
        "hook kprobe": types["kprobe"] and _kprobes_attachable(),
        "hook fentry": types["tracing"],  # fentry programs are BPF_PROG_TYPE_TRACING
        "hook lsm": types["lsm"],
    }
    for name, present in expected.items():
        assert checks[name]["status"] == ("ok" if present else "missing"), (checks[name], types)
        assert checks[name]["detail"], checks[name]
    features = {f["name"]: f for f in report["features"]}  # type: ignore[union-attr, index]
    assert features["trace (TCP connection tracer)"]["available"]
    assert features["kprobe-based tracing"]["available"] is expected["hook kprobe"], features


def test_doctor_without_privileges_fails_clearly() -> None:
    drop = "cap_sys_admin,cap_bpf,cap_perfmon,cap_net_admin"
    code, report = _doctor("capsh", f"--drop={drop}", "--")
    checks = {c["name"]: c for c in report["checks"]}  # type: ignore[union-attr, index]
    assert code == 1 and report["ok"] is False
    assert checks["privileges"]["status"] == "missing" and "run as root" in checks["privileges"]["detail"]
