"""``--on-breaker-change``: commands run in order, off the daemon's loop, and never outlive a stop."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sentinel_ebpf.daemon import hooks
from sentinel_ebpf.daemon.hooks import BreakerHooks
from sentinel_ebpf.stats import BreakerTransition


def test_each_transition_runs_the_command_in_order_with_its_variables(tmp_path: Path) -> None:
    out = tmp_path / "out"
    h = BreakerHooks(f'echo "$SENTINEL_RESOURCE $SENTINEL_BREAKER $SENTINEL_FROM $SENTINEL_TO" >> {out}')
    h.submit(BreakerTransition("web", "cb1", "closed", "open"))
    h.submit(BreakerTransition("web", "cb1", "open", "half_open"))
    h.stop()  # waits for the queued commands
    assert out.read_text().splitlines() == ["web cb1 closed open", "web cb1 open half_open"]


def test_a_hung_command_and_what_it_started_are_killed_at_stop(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setattr(hooks, "HOOK_STOP_GRACE_S", 0.5)
    pid_file = tmp_path / "pid"
    h = BreakerHooks(f"sleep 60 & echo $! > {pid_file}; wait")
    h.submit(BreakerTransition("web", "cb1", "closed", "open"))
    deadline = time.monotonic() + 10
    while not (pid_file.exists() and pid_file.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.02)
    child = int(pid_file.read_text())
    started = time.monotonic()
    h.stop()
    assert time.monotonic() - started < 5
    assert not running(child)  # the hook's own child went with it (its process group)


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan killed may wait a moment for init to reap it)."""
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return False
        if state in ("Z", "X"):
            return False
        time.sleep(0.05)
    return True
