"""``run --on-breaker-change CMD``: the command run for each circuit breaker transition.

Commands run one at a time, in transition order, on their own thread (never on the daemon's loop), each
in its own process group with ``SENTINEL_RESOURCE``, ``SENTINEL_BREAKER``, ``SENTINEL_FROM`` and
``SENTINEL_TO`` set. One that runs longer than ``HOOK_TIMEOUT_S`` is killed with whatever it started;
at stop, one still running after ``HOOK_STOP_GRACE_S`` is killed too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import subprocess
import threading

from sentinel_ebpf.stats import BreakerTransition

log = logging.getLogger("sentinel_ebpf.daemon")
HOOK_TIMEOUT_S = 30.0  # a breaker hook command running longer is killed (with its process group)
HOOK_STOP_GRACE_S = 5.0  # at stop, a hook still running after this is killed


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a hook's process group (it is the leader of its own session), then reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        log.error("breaker hook (pid %d) did not die", proc.pid)


class BreakerHooks:
    def __init__(self, command: str) -> None:
        self.command = command
        self._queue: queue.Queue[BreakerTransition | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen[bytes] | None = None  # the command running now

    def submit(self, change: BreakerTransition) -> None:
        """Queue the command for ``change`` (the thread starts with the first transition)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="breaker-hook", daemon=True)
            self._thread.start()
        self._queue.put(change)

    def _run(self) -> None:
        while (change := self._queue.get()) is not None:
            env = {**os.environ, "SENTINEL_RESOURCE": change.resource, "SENTINEL_BREAKER": change.breaker_id,
                   "SENTINEL_FROM": change.from_state, "SENTINEL_TO": change.to_state}  # fmt: skip
            try:
                # its own process group: a hook that hangs is killed with whatever it started
                hook = subprocess.Popen(["/bin/sh", "-c", self.command], env=env, stdin=subprocess.DEVNULL,
                                        start_new_session=True)  # fmt: skip
            except OSError as exc:
                log.error("breaker hook %r: %s", self.command, exc)
                continue
            self._proc = hook
            try:
                rc = hook.wait(timeout=HOOK_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                _kill_group(hook)
                log.error("breaker hook %r: still running after %g s: killed", self.command, HOOK_TIMEOUT_S)
                continue
            finally:
                self._proc = None
            if rc:
                log.error("breaker hook %r exited with %d", self.command, rc)

    def stop(self) -> None:
        """Let the queued commands run for up to ``HOOK_STOP_GRACE_S``, then kill the one running."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(timeout=HOOK_STOP_GRACE_S)
        hook = self._proc
        if self._thread.is_alive() and hook is not None:  # a hook still running: end it, and its children
            log.warning("stopping: breaker hook still running after %g s: killed", HOOK_STOP_GRACE_S)
            _kill_group(hook)
            self._thread.join(timeout=HOOK_STOP_GRACE_S)
        self._thread = None
