"""System rules in the kernel against the reference model: the same request/response timeline, one clock."""

from __future__ import annotations

import random

import pytest

from sentinel_ebpf.enforce import InboundDataplane
from sentinel_ebpf.model.sentinel import Entry
from sentinel_ebpf.model.system import SystemMetrics
from sentinel_ebpf.rules import load_text
from tests.support.inbound import CLIENT, SERVER, Lockstep
from tests.support.packets import ACK, PSH, TC_ACT_OK, http_request, http_response, tcp_frame

pytestmark = pytest.mark.kernel

T0_MS = 1_700_000_000_000
RESOURCES = """
resources:
  - {name: a, match: {protocol: http, port: 8080, path: /a}}
  - {name: b, match: {protocol: http, port: 8080, path: /b}}
"""


class Timeline(Lockstep):
    """Requests and responses fed to the kernel and to the model at the same instants."""

    def __init__(self, dp: InboundDataplane, system_rules: str, metrics: SystemMetrics | None = None) -> None:
        rs = load_text(RESOURCES + "systemRules:\n" + system_rules, "sys.yaml")
        self.metrics = metrics or SystemMetrics()
        super().__init__(dp, rs, T0_MS, system_metrics=self.metrics)
        dp.set_system_metrics(self.metrics.load1, self.metrics.cpu_usage)
        self.open: dict[int, Entry] = {}
        self.next_port = 20000

    def request(self, path: str) -> tuple[bool, bool]:
        """(kernel passed, model passed); a passed request stays open under its client port."""
        self.next_port += 1
        frame = tcp_frame(
            CLIENT, SERVER, self.next_port, 8080, flags=PSH | ACK, payload=http_request("GET", path)
        )
        res = self.ingress.test_run(frame)
        kernel = res.retval == TC_ACT_OK and res.data_out == frame
        entry = self.model.entry(path.strip("/"))
        if entry.passed:
            self.open[self.next_port] = entry
        return kernel, entry.passed

    def respond(self, port: int, status: int = 200) -> None:
        frame = tcp_frame(SERVER, CLIENT, 8080, port, flags=PSH | ACK, payload=http_response(status))
        assert self.egress.test_run(frame).retval == TC_ACT_OK
        self.open.pop(port).exit(error=status >= 500)


def _run(t: Timeline, steps: int, seed: int) -> list[bool]:
    rnd = random.Random(seed)
    verdicts = []
    now = 0
    for i in range(steps):
        now += rnd.choice((5, 20, 60, 150, 400))
        t.at(now)
        if t.open and rnd.random() < 0.45:
            t.respond(rnd.choice(sorted(t.open)), rnd.choice((200, 200, 503)))
            continue
        kernel, model = t.request(rnd.choice(("/a", "/b")))
        assert kernel == model, f"step {i} at {now} ms: kernel {kernel}, model {model}"
        verdicts.append(kernel)
    return verdicts


@pytest.mark.parametrize(
    ("rule", "metrics"),
    [
        ("  - {metricType: 3, triggerCount: 6}\n", None),  # InboundQPS
        ("  - {metricType: 2, triggerCount: 3}\n", None),  # Concurrency
        ("  - {metricType: 1, triggerCount: 150}\n", None),  # AvgRT
        ("  - {metricType: 0, triggerCount: 1.5}\n", SystemMetrics(load1=3.0)),  # Load, no BBR: all blocked
        ("  - {metricType: 0, triggerCount: 1.5, strategy: 1}\n", SystemMetrics(load1=3.0)),  # Load + BBR
        ("  - {metricType: 4, triggerCount: 0.5, strategy: 1}\n", SystemMetrics(cpu_usage=0.9)),  # CPU + BBR
        ("  - {metricType: 0, triggerCount: 1.5}\n", SystemMetrics()),  # Load not read yet: passes
    ],
    ids=["qps", "concurrency", "avg_rt", "load", "load_bbr", "cpu_bbr", "load_unread"],
)
def test_system_rule_matches_the_model(
    dp: InboundDataplane, rule: str, metrics: SystemMetrics | None
) -> None:
    t = Timeline(dp, rule, metrics)
    verdicts = _run(t, 160, seed=7)
    kernel = dp.inbound_stats()
    model = t.model.inbound_node
    assert kernel.total_pass == sum(verdicts) and kernel.total_block == len(verdicts) - sum(verdicts)
    assert kernel.concurrency == model.concurrency
    by_type = {s.name: s.block_by_type["system"] for s in dp.resource_stats()}
    assert sum(by_type.values()) == kernel.total_block


def test_system_rules_show_both_outcomes(dp: InboundDataplane) -> None:
    """The scenario exercises blocking and passing, so the comparison above is not vacuous."""
    for rule, metrics in (("  - {metricType: 3, triggerCount: 6}\n", None),
                          ("  - {metricType: 2, triggerCount: 3}\n", None),
                          ("  - {metricType: 1, triggerCount: 150}\n", None),
                          ("  - {metricType: 0, triggerCount: 1.5, strategy: 1}\n", SystemMetrics(load1=3.0))):  # fmt: skip
        dp.clear()
        verdicts = _run(Timeline(dp, rule, metrics), 160, seed=7)
        assert 0 < sum(verdicts) < len(verdicts), rule
