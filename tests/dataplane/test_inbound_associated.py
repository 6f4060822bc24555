"""Flow rules with ``relationStrategy: 1`` (AssociatedResource) in the kernel: a resource is limited by the
traffic of another one (its ``refResource``), compared arrival by arrival with the reference model."""

from __future__ import annotations

import pytest
from test_inbound import Harness

from sentinel_ebpf.enforce import InboundDataplane
from tests.support.inbound import rules

pytestmark = pytest.mark.kernel

RULES = """
resources:
  - {name: writes, match: {protocol: http, port: 8080, method: POST, path: /orders}}
  - {name: reads, match: {protocol: http, port: 8080, method: GET, path: /orders}}
flowRules:
  # reads are refused while writes run above 3 per second (Sentinel's example: protect writes)
  - {resource: reads, threshold: 3, relationStrategy: 1, refResource: writes, statIntervalInMs: 1000}
"""


def test_associated_resource_limits_by_the_other_resources_traffic(dp: InboundDataplane) -> None:
    h = Harness(dp, rules(RULES))
    verdicts: list[tuple[str, bool]] = []

    def arrive(ms: float, method: str) -> None:
        h.at(ms)
        passed = h.request(method, "/orders")
        model = h.model.entry("reads" if method == "GET" else "writes").passed
        assert passed == model, f"{method} at {ms} ms: kernel {passed}, model {model}"
        verdicts.append((method, passed))

    for i in range(5):  # 5 reads in a second while writes are quiet: all pass (their own rate is not it)
        arrive(i * 10, "GET")
    for i in range(5):  # writes are never limited by the rule (it is the reads')
        arrive(1100 + i * 10, "POST")
    for i in range(2):  # 5 writes in this second > 3: reads refused
        arrive(1200 + i * 10, "GET")
    for i in range(2):  # two seconds later the writes have left the window: reads pass again
        arrive(3300 + i * 10, "GET")
    assert verdicts == [("GET", True)] * 5 + [("POST", True)] * 5 + [("GET", False)] * 2 + [("GET", True)] * 2
    stats = {s.name: s for s in dp.resource_stats()}
    assert (stats["reads"].passed, stats["reads"].blocked, stats["reads"].block_by_type["flow"]) == (7, 2, 2)
    assert (stats["writes"].passed, stats["writes"].blocked) == (5, 0)
