"""System rules (with BBR), isolation, rule check order, statistics, reloads."""

from __future__ import annotations

from collections.abc import Callable

from sentinel_ebpf.model import BlockType, ManualClock, Sentinel, SystemMetrics
from sentinel_ebpf.model.stat import ResourceStat
from sentinel_ebpf.model.system import bbr_allows, check_rule
from sentinel_ebpf.rules import RuleSet
from sentinel_ebpf.rules.system import AdaptiveStrategy, MetricType, SystemRule

MakeRuleSet = Callable[..., RuleSet]  # the make_ruleset fixture (conftest.py)

NOW = 1_700_000_000_000


def test_system_concurrency() -> None:
    inbound = ResourceStat()
    r = SystemRule(MetricType.Concurrency, 0.5)
    res = check_rule(r, inbound, SystemMetrics(), NOW)
    assert res.passed and res.snapshot == 0.0
    inbound.on_pass(NOW, 1)
    res = check_rule(r, inbound, SystemMetrics(), NOW)
    assert not res.passed and res.snapshot == 1.0 and res.message == "system concurrency check blocked"


def test_system_load_and_cpu() -> None:
    inbound = ResourceStat()
    for mt, field in ((MetricType.Load, "load1"), (MetricType.CpuUsage, "cpu_usage")):
        r = SystemRule(mt, 0.5)
        assert check_rule(r, inbound, SystemMetrics(), NOW).passed  # not read yet
        over = SystemMetrics(**{field: 0.8})
        assert not check_rule(r, inbound, over, NOW).passed
        bbr = SystemRule(mt, 0.5, strategy=AdaptiveStrategy.BBR)
        assert check_rule(bbr, inbound, over, NOW).passed  # BBR: concurrency 0 is fine
        assert not check_rule(SystemRule(mt, 0.5, strategy=AdaptiveStrategy.Unset), inbound, over, NOW).passed


def test_bbr_check() -> None:
    inbound = ResourceStat()
    for _ in range(3):
        inbound.on_pass(NOW, 1)
    assert not bbr_allows(inbound, NOW)  # 3 in flight, nothing completed yet
    inbound.on_complete(NOW, 1, 100, False)
    inbound.on_complete(NOW, 1, 100, False)
    # concurrency 1 now: allowed regardless
    assert bbr_allows(inbound, NOW)
    for _ in range(5):
        inbound.on_pass(NOW, 1)
    # 6 in flight > maxComplete (2 per bucket -> 4/s) * minRt 100 ms / 1000 = 0.4
    assert not bbr_allows(inbound, NOW)


def test_system_qps_and_avg_rt(make_ruleset: MakeRuleSet) -> None:
    clock = ManualClock(NOW)
    s = Sentinel(make_ruleset(systemRules=[{"metricType": "InboundQPS", "triggerCount": 3}]), clock=clock)
    assert [s.entry("a").passed for _ in range(4)] == [True, True, True, False]
    assert s.entry("a", inbound=False).passed  # only inbound traffic is checked
    s = Sentinel(make_ruleset(systemRules=[{"metricType": "AvgRT", "triggerCount": 50}]), clock=clock)
    s.entry("a").exit(rt_ms=60)
    e = s.entry("a")
    assert e.block_type is BlockType.BLOCK_SYSTEM and e.block is not None and e.block.snapshot == 60.0


def test_isolation(make_ruleset: MakeRuleSet) -> None:
    s = Sentinel(make_ruleset(isolationRules=[{"resource": "abc", "threshold": 10}]))
    entries = [s.entry("abc") for _ in range(11)]
    assert [e.passed for e in entries] == [True] * 10 + [False]
    assert entries[-1].block_type is BlockType.BLOCK_ISOLATION
    entries[0].exit()
    assert s.entry("abc").passed
    assert not s.entry("abc", batch=2).passed


def test_check_order_first_block_wins(make_ruleset: MakeRuleSet) -> None:
    rs = make_ruleset(
        systemRules=[{"metricType": "Concurrency", "triggerCount": 3}],
        flowRules=[{"resource": "r", "threshold": 2}],
        isolationRules=[{"resource": "r", "threshold": 1}],
        hotSpotParamRules=[
            {
                "resource": "r",
                "paramKey": "remote_ip",
                "threshold": 0,
                "metricType": "QPS",
                "durationInSec": 1,
            }
        ],
        circuitBreakerRules=[
            {"resource": "r", "strategy": 2, "threshold": 1, "retryTimeoutMs": 1000, "statIntervalMs": 1000}
        ],
    )
    s = Sentinel(rs)
    # hotspot threshold 0 blocks every parameterised request, but isolation and flow come first
    e1 = s.entry("r", param="1.2.3.4")
    assert e1.block_type is BlockType.BLOCK_HOTSPOT
    e2 = s.entry("r")
    assert e2.passed  # no parameter: hotspot skipped
    assert s.entry("r").block_type is BlockType.BLOCK_ISOLATION  # 1 in flight
    e2.exit(error=True)  # trips the circuit breaker (ErrorCount 1)
    e3 = s.entry("r")  # flow: 1 + 1 <= 2 passes, isolation: 0 in flight, breaker open
    assert e3.block_type is BlockType.BLOCK_CIRCUIT_BREAKING
    s1 = Sentinel(rs)
    s1.entry("r").exit()
    s1.entry("r").exit()
    assert s1.entry("r").block_type is BlockType.BLOCK_FLOW  # before isolation and the breaker
    s2 = Sentinel(rs)
    s2.node("r").concurrency = 0
    s2.inbound_node.concurrency = 5
    assert s2.entry("r").block_type is BlockType.BLOCK_SYSTEM


def test_blocked_entry_exit_is_noop_and_stats_json(make_ruleset: MakeRuleSet) -> None:
    clock = ManualClock(NOW)
    s = Sentinel(
        make_ruleset(
            flowRules=[{"resource": "r", "threshold": 1}],
            circuitBreakerRules=[
                {
                    "id": "cb",
                    "resource": "r",
                    "strategy": 1,
                    "threshold": 0.5,
                    "retryTimeoutMs": 1000,
                    "statIntervalMs": 1000,
                }
            ],
        ),
        clock=clock,
    )
    ok = s.entry("r")
    blocked = s.entry("r")
    blocked.exit(rt_ms=5, error=True)
    clock.advance(20)
    ok.exit(error=False)
    assert s.stats_json() == {
        "resources": {
            "r": {
                "pass": 1,
                "block": 1,
                "complete": 1,
                "error": 0,
                "concurrency": 0,
                "avg_rt_ms": 20.0,
                "block_by_type": {
                    "flow": 1,
                    "isolation": 0,
                    "circuit_breaking": 0,
                    "system": 0,
                    "hotspot": 0,
                },
                "circuit_breakers": [{"id": "cb", "state": "closed"}],
                "source": "kernel",
            }
        }
    }
    st = s.stats("r")
    assert st.pass_qps == 1.0 and st.block_qps == 1.0 and st.window_avg_rt_ms == 20.0


def test_reload_keeps_unchanged_rule_state(make_ruleset: MakeRuleSet) -> None:
    rs1 = make_ruleset(flowRules=[{"resource": "r", "threshold": 2, "controlBehavior": 1}])
    s = Sentinel(rs1)
    assert s.entry("r").passed
    assert not s.load(rs1)  # unchanged: no-op
    (fc,) = s.flow["r"]
    rs2 = make_ruleset(
        flowRules=[
            {"resource": "r", "threshold": 2, "controlBehavior": 1},
            {"resource": "r", "threshold": 100},
        ]
    )
    assert s.load(rs2)
    assert s.flow["r"][0] is fc  # same controller, same throttling state
    assert not s.entry("r").passed  # still spaced from the first pass


def test_deterministic_given_the_clock(make_ruleset: MakeRuleSet) -> None:
    rs = make_ruleset(
        flowRules=[{"resource": "r", "threshold": 5, "tokenCalculateStrategy": 1, "warmUpPeriodSec": 2}],
        hotSpotParamRules=[
            {
                "resource": "r",
                "paramKey": "remote_ip",
                "threshold": 2,
                "metricType": "QPS",
                "durationInSec": 1,
            }
        ],
    )

    def run() -> list[tuple[bool, int | None]]:
        clock = ManualClock(NOW)
        s = Sentinel(rs, clock=clock)
        out = []
        for i in range(200):
            clock.advance(37)
            e = s.entry("r", param=f"10.0.0.{i % 3}")
            out.append((e.passed, e.block_type))
            e.exit(rt_ms=i % 7)
        return out

    assert run() == run()
