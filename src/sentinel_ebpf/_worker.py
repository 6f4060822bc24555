"""One background thread of the daemon and the event that asks it to stop."""

from __future__ import annotations

import threading
from collections.abc import Callable


class Worker:
    """A daemon thread looping until ``stopping`` is set; ``stop`` sets it and waits a bounded time.

    The thresholds ticker, the TLS observer, the etcd watch and registrar and the cluster client each run
    one such loop. The wait is bounded so that a loop stuck in a call cannot hold up the daemon's exit
    (the thread is a daemon thread and dies with the process).
    """

    def __init__(self, name: str, join_timeout_s: float) -> None:
        self.name = name
        self.join_timeout_s = join_timeout_s
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, target: Callable[[], None]) -> None:
        self._thread = threading.Thread(target=target, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=self.join_timeout_s)
            self._thread = None
