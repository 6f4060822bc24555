"""Clocks for the reference model. Everything in the model reads time only through a ``Clock``."""

from __future__ import annotations

import time
from typing import Protocol

NS_PER_MS = 1_000_000
# A realistic default start: sentinel-golang's algorithms treat 0 as "never happened".
DEFAULT_START_MS = 1_700_000_000_000


class Clock(Protocol):
    def now_ms(self) -> int: ...

    def now_ns(self) -> int: ...


class SystemClock:
    """Wall-clock time, for using the model in a real process."""

    def now_ms(self) -> int:
        return time.time_ns() // NS_PER_MS

    def now_ns(self) -> int:
        return time.time_ns()


class ManualClock:
    """A clock that only moves when told to (tests, replaying traces against the kernel)."""

    def __init__(self, start_ms: int = DEFAULT_START_MS) -> None:
        self._ns = start_ms * NS_PER_MS

    def now_ms(self) -> int:
        return self._ns // NS_PER_MS

    def now_ns(self) -> int:
        return self._ns

    def advance(self, ms: float = 0, ns: int = 0) -> None:
        step = int(ms * NS_PER_MS) + ns
        if step < 0:
            raise ValueError("use set_ms() to move a clock backwards")
        self._ns += step

    def set_ms(self, ms: int) -> None:
        self._ns = ms * NS_PER_MS

    def set_ns(self, ns: int) -> None:
        self._ns = ns
