"""Problems found while loading a rules document, and the one exception that carries them.

Exception tree::

    RulesError                 the document was rejected; ``.problems`` lists every problem found
    RulesFileError(RulesError) the file could not be read at all (missing, unreadable, not UTF-8)

Validation never stops at the first problem: every problem in a document is collected, then the whole
document is rejected if there is at least one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sentinel_ebpf.errors import SentinelError


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a rules document.

    ``section`` is the array the rule sits in (``flowRules``, ``resources``, ``spec.rules``...), ``index``
    its position there, ``rule_id`` its ``id`` (or resource name) when it has one, ``field`` the offending
    key (dotted for nested keys), ``line`` the 1-based source line when the parser knows it.
    """

    file: str
    reason: str
    section: str | None = None
    index: int | None = None
    rule_id: str | None = None
    field: str | None = None
    line: int | None = None

    def location(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
        parts = [where]
        if self.section is not None:
            parts.append(self.section if self.index is None else f"{self.section}[{self.index}]")
        if self.rule_id:
            parts.append(f"{'name' if self.section == 'resources' else 'id'}={self.rule_id!r}")
        if self.field:
            parts.append(self.field)
        return ": ".join(parts)

    def __str__(self) -> str:
        return f"{self.location()}: {self.reason}"

    def as_dict(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "section": self.section,
            "index": self.index,
            "id": self.rule_id,
            "field": self.field,
            "reason": self.reason,
        }


@dataclass
class RulesError(SentinelError):
    """A rules document was rejected. ``problems`` holds every problem, in document order."""

    problems: list[Problem] = field(default_factory=list)

    def __str__(self) -> str:
        n = len(self.problems)
        head = f"{n} problem{'s' if n != 1 else ''} in rules"
        return head + "".join(f"\n  {p}" for p in self.problems)


class RulesFileError(RulesError):
    """The file itself could not be read (missing, a directory, permission denied, not UTF-8)."""
