"""A background command whose stdout and stderr lines are collected as they come, with bounded waits.

Used for long-running CLI commands (``sentinel-ebpf trace``, later ``run``): wait for a readiness line on
stderr instead of sleeping, wait for output lines matching a predicate, stop with a signal, and always reap
the process on teardown.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .netns import CLEAN_ENV, TIMEOUT_SCALE

T = TypeVar("T")


class LineProcess:
    def __init__(self, argv: Sequence[str], **kw: Any) -> None:
        self.argv = list(argv)
        kw.setdefault("env", CLEAN_ENV)
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            start_new_session=True,
            **kw,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._cv = threading.Condition()
        self._open = 2
        self._threads = [
            threading.Thread(target=self._read, args=(s, into), daemon=True)
            for s, into in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr))
        ]
        for t in self._threads:
            t.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self, stream: Any, into: list[str]) -> None:
        for line in stream:
            with self._cv:
                into.append(line.rstrip("\n"))
                self._cv.notify_all()
        with self._cv:
            self._open -= 1
            self._cv.notify_all()

    def describe(self) -> str:
        with self._cv:
            return (
                f"{' '.join(self.argv)} (pid {self.pid}, returncode {self.proc.poll()})\n"
                f"--- stdout ---\n"
                + "\n".join(self.stdout[-50:])
                + "\n--- stderr ---\n"
                + "\n".join(self.stderr[-50:])
            )

    def wait_until(self, check: Callable[[], T | None], timeout: float, what: str) -> T:
        """Wait until ``check()`` (called under the lock, on each new line) returns something not None."""
        timeout *= TIMEOUT_SCALE
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                result = check()
                if result is not None:
                    return result
                if self._open == 0:
                    raise AssertionError(f"process ended before {what}:\n{self.describe()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout}s waiting for {what}:\n{self.describe()}")
                self._cv.wait(left)

    def wait_stderr(self, prefix: str, timeout: float = 30) -> str:
        return self.wait_until(
            lambda: next((ln for ln in self.stderr if ln.startswith(prefix)), None),
            timeout,
            f"stderr line {prefix!r}",
        )

    def wait_stdout(self, match: Callable[[str], bool], timeout: float = 15, what: str = "output") -> str:
        return self.wait_until(lambda: next((ln for ln in self.stdout if match(ln)), None), timeout, what)

    def wait_exit(self, timeout: float = 15) -> int:
        timeout *= TIMEOUT_SCALE
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout}s:\n{self.describe()}") from None
        for t in self._threads:
            t.join(timeout)
        return rc

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def close(self) -> None:
        """Kill (if still running) and reap; then the readers see EOF and the pipes are closed."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        for t in self._threads:
            t.join(5)
        if any(t.is_alive() for t in self._threads):
            # closing a pipe another thread is blocked reading would hang this thread too: leave it, say why
            raise AssertionError(
                f"{' '.join(self.argv)}: exited, but a process it left behind still holds its output open"
            )
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def sentinel_cli() -> list[str]:
    """argv prefix for the installed ``sentinel-ebpf`` command (next to this Python, else ``-m``)."""
    script = Path(sys.executable).with_name("sentinel-ebpf")
    if script.exists():
        return [str(script)]
    found = shutil.which("sentinel-ebpf")
    return [found] if found else [sys.executable, "-m", "sentinel_ebpf"]
