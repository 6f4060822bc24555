"""One cluster rule's lease and threshold, and the client's cluster/fallback states, without Redis."""

from __future__ import annotations

import logging

import pytest

from sentinel_ebpf._types import ResStats
from sentinel_ebpf.cluster.client import ClusterClient
from sentinel_ebpf.cluster.lease import UNLIMITED, RuleLease, expiring_passes
from sentinel_ebpf.cluster.store import LeaseReply, LeaseRequest
from sentinel_ebpf.rules.flow import ClusterConfig, ClusterThresholdType, FlowRule


def stats(buckets: dict[int, int], total_pass: int = 0, flow_blocks: int = 0) -> ResStats:
    """``buckets``: bucket start ms -> passes."""
    st = ResStats()
    for i, (start, n) in enumerate(sorted(buckets.items())):
        st.buckets[i].start_ms = start
        setattr(st.buckets[i], "pass", n)
    st.total_pass = total_pass
    st.block_by_type[1] = flow_blocks
    return st


def rule(threshold: float = 100, ttype: ClusterThresholdType = ClusterThresholdType.Global,
         fallback: bool = True) -> FlowRule:  # fmt: skip
    return FlowRule("web", threshold, cluster_mode=True, cluster_config=ClusterConfig(ttype, fallback))


def reply(window: int = 7, grant: int = 0, live: int = 1, share: int = 0) -> LeaseReply:
    return LeaseReply(window, 500, live, 100, share, grant, grant)


def test_expiring_passes_only_near_the_boundary() -> None:
    st = stats({9000: 40, 9500: 30})  # a 1 s window at now in [9500, 10000): buckets 9000 and 9500
    assert expiring_passes(st, 9700, 1000, 10) == 0  # the 9000 bucket leaves at 10000, later than 9710
    assert expiring_passes(st, 9995, 1000, 10) == 40
    assert expiring_passes(st, 9995, 2000, 10) == 0  # a 2 s window: 8500 leaves, it holds nothing


def test_threshold_spends_exactly_the_tokens_left() -> None:
    st = stats({9000: 40, 9500: 30}, total_pass=500)
    lease = RuleLease("web#0", "web", rule(), 1000, lambda: st, lambda now: "cluster")
    q = lease.request(st, 9600)
    lease.on_reply(st, q, reply(grant=25))
    # the kernel admits while window passes < threshold: 70 in the window, 25 tokens -> 95
    assert lease.allowed(9700) == 95
    # 10 more passes (the kernel counted them in its window and total): 15 tokens left
    setattr(st.buckets[1], "pass", 40)
    st.total_pass = 510
    assert lease.allowed(9700) == 80 + 15
    # just before 10000 the 9000 bucket (40) is about to leave: taken off at once
    assert lease.allowed(9995) == 80 - 40 + 15


def test_debt_is_charged_and_a_new_window_starts_from_the_passes_seen() -> None:
    st = stats({}, total_pass=100)
    lease = RuleLease("web#0", "web", rule(), 1000, lambda: st, lambda now: "cluster")
    lease.on_reply(st, lease.request(st, 0), reply(window=7, grant=10))
    st.total_pass = 113  # 3 passes beyond the lease (a late threshold write)
    q = lease.request(st, 100)
    assert (q.debt, lease.tokens_left(st)) == (3, -3)
    lease.on_reply(st, q, reply(window=7, grant=5))
    assert lease.tokens_left(st) == 5  # the debt was paid, the grant is there
    st.total_pass = 116
    lease.on_reply(st, lease.request(st, 200), reply(window=8, grant=20))
    # a new window: passes before it belong to the old one, the 2 tokens still held go on
    assert lease.tokens_left(st) == 2 + 20


def test_demand_and_want_follow_the_traffic() -> None:
    st = stats({}, total_pass=0)
    lease = RuleLease("web#0", "web", rule(), 1000, lambda: st, lambda now: "cluster")
    for now in (0, 300, 600, 900):
        assert lease.request(st, now).target == 1  # idle: a single token, so a first request is not refused
    st.total_pass, st.block_by_type[1] = 50, 50  # 100 requests in 100 ms, half refused: demand 1000/s
    q = lease.request(st, 1000)
    assert lease.demand_qps == pytest.approx(500)  # half way to 1000 (DEMAND_WEIGHT 0.5)
    assert q.target == 150  # 0.3 s of demand
    # for the fair shares: demand per 1 s window, plus the tokens it wants to hold
    assert q.demand == pytest.approx(500 + 150)
    lease.request(st, 1100)  # nothing in the next 100 ms: the estimate falls faster than it rises
    assert lease.demand_qps == pytest.approx(500 * 0.25)
    lease.request(st, 1200)  # a busy node's floor spans one renewal: it does not hold the estimate up
    assert lease.demand_qps == pytest.approx(500 * 0.25 * 0.25)


def test_a_light_steady_demand_keeps_its_estimate() -> None:
    """10 requests a second land 0, 1 or 2 to a 100 ms renewal: the smoothed rate alone fell below 2 a
    second (and the node's share and lease with it); the estimate stays near 10 and the lease at 3."""
    st = stats({}, total_pass=0)
    lease = RuleLease("web#0", "web", rule(), 1000, lambda: st, lambda now: "cluster")
    per_period = [1, 0, 2, 1, 0, 0, 2, 1, 2, 1] * 5
    seen: list[tuple[float, int]] = []
    for i, n in enumerate(per_period):
        st.total_pass += n
        q = lease.request(st, 100 * (i + 1))
        seen.append((lease.demand_qps, q.target))
    assert min(d for d, _ in seen[10:]) >= 8, seen
    assert min(t for _, t in seen[10:]) >= 3, seen  # 0.3 s of 10/s
    end = 100 * len(per_period)
    for now in range(end + 100, end + 1100, 100):  # the traffic stops: gone from the estimate in 1 s
        lease.request(st, now)
    assert lease.demand_qps < 1


@pytest.mark.parametrize(
    ("ttype", "fallback", "expected"),
    [
        (ClusterThresholdType.Global, True, 25.0),  # 100 / 4 live nodes last seen
        (ClusterThresholdType.AvgLocal, True, 100.0),  # the threshold is per node already
        (ClusterThresholdType.Global, False, UNLIMITED),  # let the rule's requests pass
    ],
)
def test_fallback_threshold(ttype: ClusterThresholdType, fallback: bool, expected: float,
                            caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    st = stats({}, total_pass=0)
    state = ["cluster"]
    lease = RuleLease("web#0", "web", rule(100, ttype, fallback), 1000, lambda: st, lambda now: state[0])
    lease.on_reply(st, lease.request(st, 0), reply(grant=7, live=4))
    assert lease.allowed(0) == 7
    state[0] = "fallback"
    with caplog.at_level(logging.INFO, "sentinel_ebpf.cluster"):
        assert lease.allowed(1) == expected
        assert lease.status()["fallback"] is True
        state[0] = "cluster"
        assert lease.allowed(2) == 7
    assert [r.levelname for r in caplog.records] == ["WARNING", "INFO"]
    assert "Redis unreachable" in caplog.records[0].message
    assert "back in the cluster" in caplog.records[1].message


class FakeStore:
    def __init__(self) -> None:
        self.fail: Exception | None = None
        self.delay_s = 0.0
        self.asked: list[list[LeaseRequest]] = []

    def lease(self, node: str, ttl_ms: int, requests: list[LeaseRequest]) -> tuple[int, list[LeaseReply]]:
        import time

        self.asked.append(requests)
        if self.fail is not None:
            raise self.fail
        time.sleep(self.delay_s)
        grants = [max(0, q.target - q.held) for q in requests]
        return 0, [LeaseReply(1, 500, 2, 100, 50, g, g) for g in grants]


def test_client_states_joining_cluster_fallback_and_back() -> None:
    import redis

    from sentinel_ebpf.enforce.compile import KFlowRule

    now = [1000]
    store = FakeStore()
    client = ClusterClient(store, now_ms=lambda: now[0], fallback_after_ms=250)
    st = stats({}, total_pass=0)
    f = KFlowRule(1, 0, 1000, 0, 0, 0, True, rule(100))
    lease = client.thresholds("web", 0, f, lambda: st)
    client.track([lease, object()])
    assert client.active == (lease,)
    assert client.state(now[0]) == "joining" and lease.allowed(now[0]) == 100  # local, until the first lease
    assert client.renew() and client.state(now[0]) == "cluster"
    assert lease.allowed(now[0]) == 1  # the idle node's single token
    store.fail = redis.ConnectionError("refused")
    now[0] += 100
    assert not client.renew()
    assert client.state(now[0]) == "cluster"  # one failed renewal: still within fallback_after_ms
    now[0] += 200
    assert not client.renew()
    assert client.state(now[0]) == "fallback" and lease.allowed(now[0]) == 50  # 100 / 2 live nodes
    st.total_pass = 40  # passes in fallback: not leased, so not owed when the node comes back
    store.fail = None
    now[0] += 100
    assert client.renew() and client.state(now[0]) == "cluster"
    assert store.asked[-1][0].debt == 0
    assert lease.allowed(now[0]) == store.asked[-1][0].target > 1  # the new lease, sized by the demand
    # a slow answer is a failure too
    store.delay_s = 0.06
    now[0] += 300
    assert not client.renew() and client.state(now[0]) == "fallback"
    assert "more than 50 ms" in (client.last_error or "")


def test_changed_rule_keeps_its_tokens() -> None:
    from sentinel_ebpf.enforce.compile import KFlowRule

    store = FakeStore()
    client = ClusterClient(store, now_ms=lambda: 0)
    st = stats({}, total_pass=0)
    first = client.thresholds("web", 0, KFlowRule(1, 0, 1000, 0, 0, 0, True, rule(100)), lambda: st)
    client.track([first])
    client.renew()
    second = client.thresholds("web", 0, KFlowRule(1, 0, 1000, 0, 0, 0, True, rule(200)), lambda: st)
    assert second is not first and second.account == first.account and second.rule.threshold == 200


def test_tokens_held_go_on_into_the_next_window() -> None:
    st = stats({}, total_pass=0)
    lease = RuleLease("web#0", "web", rule(1000), 1000, lambda: st, lambda now: "cluster")
    lease.on_reply(st, lease.request(st, 0), reply(window=7, grant=50))
    st.total_pass = 30
    q = lease.request(st, 100)
    assert (q.held, q.held_window) == (20, 7)
    lease.on_reply(st, q, reply(window=8, grant=5))
    # counted in window 7 and not spent yet: still this node's, with the new grant
    assert lease.tokens_left(st) == 25


def test_an_idle_node_renews_less_often() -> None:
    from sentinel_ebpf.enforce.compile import KFlowRule

    now = [0]
    client = ClusterClient(FakeStore(), now_ms=lambda: now[0], idle_renew_ms=300)
    st = stats({}, total_pass=0)
    lease = client.thresholds("web", 0, KFlowRule(1, 0, 1000, 0, 0, 0, True, rule(100)), lambda: st)
    client.track([lease])
    assert client.due(now[0])  # never renewed
    client._last_renew_ms = now[0]
    client.renew()
    now[0] = 100
    assert not client.due(now[0])  # no request since: the lease stands, the heartbeat can wait
    st.block_by_type[1] = 1  # a request reached the rule
    assert client.due(now[0])
    st.block_by_type[1] = 0
    now[0] = 300
    assert client.due(now[0])  # the heartbeat


def test_an_idle_node_does_not_fall_back_between_its_heartbeats() -> None:
    """An idle node renews every 300 ms: it is not in fallback 250 ms after its last renewal (it flapped,
    logging "Redis unreachable" and "back in the cluster" every 300 ms), but a heartbeat that fails is."""
    import redis

    from sentinel_ebpf.enforce.compile import KFlowRule

    now = [0]
    store = FakeStore()
    client = ClusterClient(store, now_ms=lambda: now[0], fallback_after_ms=250, idle_renew_ms=300)
    st = stats({}, total_pass=0)
    lease = client.thresholds("web", 0, KFlowRule(1, 0, 1000, 0, 0, 0, True, rule(100)), lambda: st)
    client.track([lease])
    assert client.due(now[0]) and client.renew()
    client._last_renew_ms = now[0]
    for now[0] in (100, 200, 290):
        assert not client.due(now[0])
        assert client.state(now[0]) == "cluster" and not lease.fallback and lease.allowed(now[0]) >= 0
    store.fail = redis.ConnectionError("refused")
    now[0] = 300
    assert client.due(now[0]) and not client.renew()
    client._last_renew_ms = now[0]
    now[0] = 460
    assert not client.due(now[0]) and client.state(now[0]) == "fallback"
    # a busy node keeps the shorter bound: two missed renewals
    store.fail = None
    assert client.renew()
    st.block_by_type[1] = 5
    assert client.due(now[0])
    now[0] += 260
    assert client.state(now[0]) == "fallback"


def test_joining_counts_from_the_start_of_the_renewals_not_from_construction() -> None:
    now = [1000]
    client = ClusterClient(FakeStore(), now_ms=lambda: now[0], fallback_after_ms=250)
    now[0] += 400  # the daemon attaches its programs between making the client and starting it
    assert client.state(now[0]) == "fallback"
    client.start()
    try:
        assert client.state(now[0]) == "joining"
    finally:
        client.stop()
