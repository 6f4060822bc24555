"""``Closing``: what a resource freed by ``close()`` needs to be used with ``with``."""

from __future__ import annotations

from typing import TypeVar

_C = TypeVar("_C", bound="Closing")


class Closing:
    """A resource that ``close()`` frees; ``with`` gives the resource itself and closes it on leaving,
    exception or not. Subclasses define ``close`` (and may start something in their own ``__enter__``)."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
