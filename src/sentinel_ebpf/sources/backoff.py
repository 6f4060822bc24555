"""Retry delays: exponential with jitter, capped, reset after a success."""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    def __init__(
        self,
        first_s: float = 0.2,
        max_s: float = 5.0,
        factor: float = 2.0,
        jitter: float = 0.2,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if not 0 < first_s <= max_s or factor < 1 or not 0 <= jitter < 1:
            raise ValueError("backoff needs 0 < first_s <= max_s, factor >= 1 and 0 <= jitter < 1")
        self.first_s, self.max_s, self.factor, self.jitter = first_s, max_s, factor, jitter
        self._rand = rand
        self._next_s = first_s

    def next_s(self) -> float:
        """The delay before the next attempt: grows by ``factor`` up to ``max_s``, +-``jitter`` of itself so
        daemons that lost etcd together do not come back in step."""
        base = self._next_s
        self._next_s = min(self.max_s, base * self.factor)
        return base * (1 - self.jitter + 2 * self.jitter * self._rand())

    def reset(self) -> None:
        self._next_s = self.first_s
