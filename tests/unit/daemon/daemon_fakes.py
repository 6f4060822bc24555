"""A data plane that records what it was asked to do, for the daemon's unit tests."""

from __future__ import annotations

from sentinel_ebpf.enforce import CompiledInbound, compile_inbound
from sentinel_ebpf.rules import RuleSet

RULES = """
resources:
  - {name: api, match: {protocol: http, port: 8000, path: /api}}
flowRules:
  - {resource: api, threshold: THRESHOLD, statIntervalInMs: INTERVAL}
"""


def rules(threshold: str = "5", interval: str = "1000") -> str:
    return RULES.replace("THRESHOLD", threshold).replace("INTERVAL", interval)


class FakeDataplane:
    """The compiler for real; ``apply`` keeps what is in force, like the kernel's generation switch."""

    def __init__(self) -> None:
        self.compiled = CompiledInbound()
        self.applied: list[CompiledInbound] = []
        self.fail_apply: Exception | None = None

    def compile(self, ruleset: RuleSet) -> CompiledInbound:
        return compile_inbound(ruleset, {r.key: r.id for r in self.compiled.resources})

    def apply(self, compiled: CompiledInbound) -> bool:
        if self.fail_apply is not None:
            raise self.fail_apply
        if compiled == self.compiled:
            return False
        self.compiled = compiled
        self.applied.append(compiled)
        return True

    def threshold(self) -> float:
        return self.compiled.resources[0].flow[0].threshold_milli / 1000
