"""Cluster rules in the data plane's dynamic thresholds (enforce.adaptive), without a kernel."""

from __future__ import annotations

from collections.abc import Callable

from sentinel_ebpf._types import ResStats
from sentinel_ebpf.enforce.adaptive import AdaptiveThresholds, HostMemory
from sentinel_ebpf.enforce.compile import KFlowRule, compile_inbound
from sentinel_ebpf.rules import load_text

RULES = """
resources:
  - {name: web, match: {protocol: http, port: 8080, path: /}}
flowRules:
  - {resource: web, threshold: 50}
  - {id: fleet, resource: web, threshold: 100, clusterMode: true}
"""


class Source:
    def __init__(self, value: float) -> None:
        self.value = value

    def allowed(self, now_ms: int) -> float:
        return self.value


def test_cluster_rules_are_dynamic_and_take_their_threshold_from_the_cluster() -> None:
    compiled = compile_inbound(load_text(RULES, "r.yaml"), {}, 0)
    web = compiled.resources[0]
    assert [f.dynamic for f in web.flow] == [False, True]
    stats = ResStats()
    asked: list[tuple[str, int, float]] = []

    def external(name: str, index: int, f: KFlowRule, read: Callable[[], ResStats]) -> Source:
        assert read() is stats and f.source is not None
        asked.append((name, index, f.source.threshold))
        return Source(12.5)

    adaptive = AdaptiveThresholds(compiled, lambda rid: stats, memory=HostMemory(), external=external)
    assert asked == [("web", 1, 100.0)]
    assert adaptive.thresholds(0) == {(web.id, 1): 12500}  # x 1000, as the kernel map holds it
    # an unchanged rule keeps its source across a reload
    AdaptiveThresholds(compiled, lambda rid: stats, memory=HostMemory(), previous=adaptive, external=external)
    assert len(asked) == 1


def test_without_a_cluster_a_cluster_rule_is_a_local_rule() -> None:
    compiled = compile_inbound(load_text(RULES, "r.yaml"), {}, 0)
    adaptive = AdaptiveThresholds(compiled, lambda rid: ResStats(), memory=HostMemory())
    assert adaptive.thresholds(0) == {(compiled.resources[0].id, 1): 100000}
