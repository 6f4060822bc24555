"""Where the daemon's rules come from. The runner asks a source for the document to load now
(``current``), applies it like any reload, and tells the source what went in force (``in_force``); a
source says when it has something new (``changed``) and may wake the daemon's loop for it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from sentinel_ebpf.rules import RuleSet
from sentinel_ebpf.stats import NodeRecord


@dataclass(frozen=True)
class Version:
    """One version of the rules document. ``label`` names it in logs and problems (a path, or
    ``etcd://.../KEY@REVISION``); ``load`` parses and validates it (raises RulesError)."""

    label: str
    load: Callable[[], RuleSet]
    revision: int | None = None
    from_cache: bool = False
    document: str | None = None  # the raw text, for sources that cache it


class Registrar(Protocol):
    """Writes this node's record into a fleet registry from its own thread until closed."""

    def start(self) -> None: ...

    def close(self) -> None: ...


class RulesSource(Protocol):
    url: str

    def start(self, wake: Callable[[], None]) -> None:
        """Begin following the source; ``wake()`` (from any thread) when something new arrived."""

    def current(self) -> Version:
        """What to load now; from here on ``changed`` reports only what arrives later."""

    def changed(self) -> bool:
        """Cheap, called by the daemon's loop: is there something newer than the last ``current``?"""

    def in_force(self, version: Version) -> None:
        """``version`` was accepted (applied, or identical to the rules in force)."""

    def describe(self) -> dict[str, Any]:
        """For ``stats --json`` and the control socket: source, revision in force, when applied."""

    def close(self) -> None: ...

    def registrar(self, node_id: str, record: Callable[[str], NodeRecord]) -> Registrar | None:
        """This node's registration in the fleet registry beside the rules (etcd), or None (a file)."""
