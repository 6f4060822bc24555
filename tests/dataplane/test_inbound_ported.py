"""sentinel-golang's own test cases (SENTINEL.md), ported to the kernel where they do not need a batch > 1."""

from __future__ import annotations

import pytest

from sentinel_ebpf.enforce import InboundDataplane
from sentinel_ebpf.rules import load_text
from tests.support.inbound import CLIENT, SERVER
from tests.support.packets import ACK, PSH, SYN, TC_ACT_OK, http_request, http_response, tcp_frame

pytestmark = pytest.mark.kernel


class K:
    def __init__(self, dp: InboundDataplane, rules: str) -> None:
        self.dp = dp
        dp.apply(dp.compile(load_text(rules, "ported.yaml")))
        self.port = 10000

    def at(self, ms: int) -> None:
        self.dp.set_clock_ns(ms * 1_000_000)

    def syn(self) -> bool:
        self.port += 1
        return (
            self.dp.obj.program("tc_ingress")
            .test_run(tcp_frame(CLIENT, SERVER, self.port, 8080, flags=SYN))
            .retval
            == 0
        )

    def request(self) -> tuple[bool, int]:
        self.port += 1
        frame = tcp_frame(CLIENT, SERVER, self.port, 8080, flags=PSH | ACK, payload=http_request("GET", "/"))
        res = self.dp.obj.program("tc_ingress").test_run(frame)
        return res.retval == TC_ACT_OK and res.data_out == frame, self.port

    def respond(self, port: int, status: int = 200) -> None:
        frame = tcp_frame(SERVER, CLIENT, 8080, port, flags=PSH | ACK, payload=http_response(status))
        assert self.dp.obj.program("tc_egress").test_run(frame).retval == TC_ACT_OK


TCP = "resources:\n  - {name: r, match: {protocol: tcp, port: 8080}}\n"
HTTP = "resources:\n  - {name: r, match: {protocol: http, port: 8080, path: /}}\n"


def test_leap_array_bucket_of_an_instant(dp: InboundDataplane) -> None:
    k = K(dp, TCP)
    k.at(1576296044907)  # index 9, bucket start 1576296044500
    assert k.syn()
    b = dp.raw_stats(dp.compiled.resource_id("r")).buckets[9]
    assert (b.start_ms, getattr(b, "pass")) == (1576296044500, 1)


def test_isolation_threshold_10(dp: InboundDataplane) -> None:
    k = K(dp, TCP + "isolationRules:\n  - {resource: r, threshold: 10}\n")
    k.at(1_000_000)
    assert [k.syn() for _ in range(11)] == [True] * 10 + [False]


def test_throttling_interval_10000_threshold_50(dp: InboundDataplane) -> None:
    k = K(
        dp,
        TCP + "flowRules:\n  - {resource: r, threshold: 50, controlBehavior: 1, statIntervalInMs: 10000}\n",
    )
    k.at(1_000_000)
    assert k.syn()
    assert [k.syn() for _ in range(10)] == [False] * 10  # queue 0: all wait, so all blocked
    k.at(1_000_200)  # one cost (10000 ms / 50) later
    assert [k.syn(), k.syn()] == [True, False]


def test_throttling_queue_2000_ms(dp: InboundDataplane) -> None:
    k = K(dp, TCP + "flowRules:\n  - {resource: r, threshold: 50, controlBehavior: 1, statIntervalInMs: 10000,"
                    " maxQueueingTimeMs: 2000}\n")  # fmt: skip
    k.at(1_000_000)
    assert k.syn()
    # waits of 200, 400, ... 2000 ms are admitted (virtual queue); the rest would wait longer
    assert [k.syn() for _ in range(20)] == [True] * 10 + [False] * 10
    assert dp.resource_stats()[0].flow_wait_total == 10


def _open_breaker(k: K, rt_bad: bool) -> None:
    """Trip the breaker with 10 bad completions, then let retryTimeout (100 ms) pass."""
    for i in range(10):
        k.at(1_000_000 + i)
        ok, port = k.request()
        assert ok
        if rt_bad:
            k.at(1_000_100 + i)  # rt 100 ms > maxAllowedRtMs 50
        k.respond(port, 200 if rt_bad else 500)
    assert k.dp.breaker_states()["r"][0].state == "open"


def _opened(dp: InboundDataplane, rule: str, rt_bad: bool) -> K:
    """HTTP's resource with one breaker rule (``rule``: its fields but ``resource``), opened at 1,000,000 ms."""
    k = K(dp, HTTP + f"circuitBreakerRules:\n  - {{resource: r, {rule}}}\n")
    k.at(1_000_000)
    _open_breaker(k, rt_bad=rt_bad)
    return k


def test_probe_num_10_needs_10_good_probes(dp: InboundDataplane) -> None:
    k = _opened(dp, "strategy: 1, threshold: 0.5, minRequestAmount: 10, statIntervalMs: 10000, retryTimeoutMs: 100,"
                    " probeNum: 10", rt_bad=False)  # fmt: skip
    k.at(1_000_200)
    for i in range(10):
        ok, port = k.request()
        assert ok
        k.respond(port, 200)
        expected = "closed" if i == 9 else "half_open"
        assert dp.breaker_states()["r"][0].state == expected, i


@pytest.mark.parametrize(("rt_ms", "after"), [(60, "open"), (10, "closed")])
def test_slow_rule_half_open_outcome(dp: InboundDataplane, rt_ms: int, after: str) -> None:
    k = _opened(dp, "strategy: 0, maxAllowedRtMs: 50, threshold: 0.5, minRequestAmount: 10, statIntervalMs: 10000,"
                    " retryTimeoutMs: 100", rt_bad=True)  # fmt: skip
    k.at(1_000_300)
    ok, port = k.request()
    assert ok and dp.breaker_states()["r"][0].state == "half_open"
    k.at(1_000_300 + rt_ms)
    k.respond(port)
    assert dp.breaker_states()["r"][0].state == after


def test_probe_num_2_good_then_bad(dp: InboundDataplane) -> None:
    k = _opened(dp, "strategy: 1, threshold: 0.5, minRequestAmount: 10, statIntervalMs: 10000, retryTimeoutMs: 100,"
                    " probeNum: 2", rt_bad=False)  # fmt: skip
    k.at(1_000_200)
    ok1, p1 = k.request()
    ok2, p2 = k.request()
    assert ok1 and ok2
    k.respond(p1, 200)
    assert dp.breaker_states()["r"][0].state == "half_open"
    k.respond(p2, 503)
    assert dp.breaker_states()["r"][0].state == "open"
