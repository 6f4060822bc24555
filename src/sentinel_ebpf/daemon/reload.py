"""Deciding what a reload does: a valid rules file goes in force atomically, anything else keeps the
rules in force and says every reason.

The data plane is injected (anything with ``compile`` and ``apply``), so the decision is tested without
a kernel.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from sentinel_ebpf.enforce import CompileError
from sentinel_ebpf.enforce.compile import CompiledInbound
from sentinel_ebpf.errors import SentinelError
from sentinel_ebpf.rules import RulesError, RuleSet, load_file

log = logging.getLogger("sentinel_ebpf.daemon")


class Dataplane(Protocol):
    def compile(self, rules: RuleSet) -> CompiledInbound: ...

    def apply(self, compiled: CompiledInbound) -> bool: ...


@dataclass(frozen=True)
class ReloadResult:
    """``rules`` is the rule set now in force when the file was accepted (changed or not), else None."""

    accepted: bool
    changed: bool = False
    problems: tuple[str, ...] = ()
    rules: RuleSet | None = None

    def as_dict(self) -> dict[str, object]:
        return {"applied": self.changed, "accepted": self.accepted, "problems": list(self.problems)}


def reload_rules(
    path: str,
    dp: Dataplane,
    *,
    load: Callable[[str], RuleSet] = load_file,
    prepare: Callable[[RuleSet], None] | None = None,
) -> ReloadResult:
    """Load, validate, compile and apply ``path``. ``prepare`` runs before the switch (e.g. attaching
    hooks the new rules need); if it or ``apply`` fails, the rules in force stay (``apply`` is atomic)."""
    try:
        rules = load(path)
        compiled = dp.compile(rules)
    except (RulesError, CompileError) as exc:
        problems = tuple(str(p) for p in exc.problems) or (str(exc),)
        log.error("%s is invalid; the rules in force stay:\n  %s", path, "\n  ".join(problems))
        return ReloadResult(accepted=False, problems=problems)
    try:
        if prepare is not None:
            prepare(rules)
        changed = dp.apply(compiled)
    except (SentinelError, OSError) as exc:
        log.error("%s: %s; the rules in force stay", path, exc)
        return ReloadResult(accepted=False, problems=(str(exc),))
    log.info("%s: %s", path, "applied" if changed else "unchanged")
    return ReloadResult(accepted=True, changed=changed, rules=rules)
