"""`sentinel-ebpf doctor` against the machine it runs on."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernel("probes")
DOCTOR = [sys.executable, "-m", "sentinel_ebpf", "doctor", "--json"]


def _doctor(*prefix: str) -> tuple[int, dict[str, object]]:
    argv = [*prefix, "-c", shlex.join(DOCTOR)] if prefix else DOCTOR
    res = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    return res.returncode, json.loads(res.stdout)


def test_doctor_reports_this_machine() -> None:
    code, report = _doctor()
    checks = {c["name"]: c for c in report["checks"]}  # type: ignore[union-attr, index]
    assert code == 0 and report["ok"] is True
    for name in ("hook tp_btf", "hook raw_tp", "BPF_PROG_TEST_RUN", "hook cgroup/connect4", "map ringbuf"):
        assert checks[name]["status"] == "ok", checks[name]
    # kprobes attach through the kprobe PMU (or tracefs' kprobe_events); without both they cannot work
    kprobe_pmu = Path("/sys/bus/event_source/devices/kprobe").exists()
    tracefs = any(
        Path(p, "kprobe_events").exists() for p in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
    )
    if not kprobe_pmu and not tracefs:
        assert checks["hook kprobe"]["status"] == "missing"
    for name in ("hook kprobe", "hook fentry", "hook lsm"):
        assert checks[name]["status"] in ("ok", "missing") and checks[name]["detail"]
    features = {f["name"]: f for f in report["features"]}  # type: ignore[union-attr, index]
    assert features["trace (TCP connection tracer)"]["available"]


@pytest.mark.skipif(shutil.which("capsh") is None, reason="capsh (libcap2-bin) not installed")
def test_doctor_without_privileges_fails_clearly() -> None:
    drop = "cap_sys_admin,cap_bpf,cap_perfmon,cap_net_admin"
    code, report = _doctor("capsh", f"--drop={drop}", "--")
    checks = {c["name"]: c for c in report["checks"]}  # type: ignore[union-attr, index]
    assert code == 1 and report["ok"] is False
    assert checks["privileges"]["status"] == "missing" and "run as root" in checks["privileges"]["detail"]
