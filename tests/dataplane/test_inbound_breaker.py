"""Circuit breakers in the kernel against the model: same requests, responses and clock; same verdicts
and the same state changes in the same order."""

from __future__ import annotations

import random

import pytest

from sentinel_ebpf.enforce import InboundDataplane
from sentinel_ebpf.model.sentinel import Entry
from sentinel_ebpf.rules import load_text
from tests.support.inbound import CLIENT, SERVER, Lockstep
from tests.support.packets import ACK, PSH, TC_ACT_OK, http_request, http_response, tcp_frame

pytestmark = pytest.mark.kernel
T0_MS = 1_700_000_000_000
NAMES = {0: "closed", 1: "half_open", 2: "open"}


class Backend(Lockstep):
    def __init__(self, dp: InboundDataplane, rules: str) -> None:
        head = "resources:\n  - {name: api, match: {protocol: http, port: 8080, path: /}}\n"
        super().__init__(dp, load_text(head + rules, "cb.yaml"), T0_MS)
        self.model_changes: list[tuple[str, str]] = []
        self.model.add_state_change_listener(self)  # type: ignore[arg-type]
        dp.state_changes()  # start consuming
        self.port = 20000
        self.open: dict[int, tuple[Entry, int]] = {}

    # model listener
    def on_transform_to_closed(self, prev: object, rule: object) -> None:
        self.model_changes.append((NAMES[int(prev)], "closed"))  # type: ignore[call-overload]

    def on_transform_to_open(self, prev: object, rule: object, snapshot: object) -> None:
        self.model_changes.append((NAMES[int(prev)], "open"))  # type: ignore[call-overload]

    def on_transform_to_half_open(self, prev: object, rule: object) -> None:
        self.model_changes.append((NAMES[int(prev)], "half_open"))  # type: ignore[call-overload]

    def request(self) -> bool:
        self.port += 1
        frame = tcp_frame(CLIENT, SERVER, self.port, 8080, flags=PSH | ACK, payload=http_request("GET", "/x"))
        res = self.ingress.test_run(frame)
        kernel = res.retval == TC_ACT_OK and res.data_out == frame
        entry = self.model.entry("api")
        assert kernel == entry.passed, f"at {self.clock.now_ms() - T0_MS} ms"
        if entry.passed:
            self.open[self.port] = (entry, self.clock.now_ms())
        return kernel

    def respond(self, port: int, status: int) -> None:
        frame = tcp_frame(SERVER, CLIENT, 8080, port, flags=PSH | ACK, payload=http_response(status))
        assert self.egress.test_run(frame).retval == TC_ACT_OK
        entry, start = self.open.pop(port)
        entry.exit(rt_ms=self.clock.now_ms() - start, error=status >= 500)

    def kernel_changes(self) -> list[tuple[str, str]]:
        return [(c.from_state, c.to_state) for c in self.dp.state_changes()]


def scenario(b: Backend, steps: int, seed: int, failing: range) -> None:
    rnd = random.Random(seed)
    now = 0
    for _ in range(steps):
        now += rnd.choice((3, 10, 40, 120))
        b.at(now)
        if b.open and rnd.random() < 0.5:
            port = rnd.choice(sorted(b.open))
            bad = now // 1000 in failing
            b.respond(port, 503 if bad and rnd.random() < 0.8 else 200)
        else:
            b.request()


@pytest.mark.parametrize(
    "rule",
    [
        "{resource: api, strategy: 1, retryTimeoutMs: 700, minRequestAmount: 5, statIntervalMs: 1000,"
        " statSlidingWindowBucketCount: 4, threshold: 0.5, probeNum: 2}",
        "{resource: api, strategy: 2, retryTimeoutMs: 500, minRequestAmount: 1, statIntervalMs: 2000, threshold: 4}",
        "{resource: api, strategy: 0, retryTimeoutMs: 600, minRequestAmount: 4, statIntervalMs: 1000,"
        " maxAllowedRtMs: 50, threshold: 0.5, probeNum: 0}",
    ],
    ids=["error_ratio", "error_count", "slow_ratio"],
)
def test_breaker_cycle_matches_the_model(dp: InboundDataplane, rule: str) -> None:
    b = Backend(dp, f"circuitBreakerRules:\n  - {rule}\n")
    scenario(b, 500, seed=11, failing=range(2, 5))
    kernel = b.kernel_changes()
    assert kernel == b.model_changes
    # the whole cycle happened: closed -> open -> half_open -> (open ->) ... -> closed
    assert (
        ("closed", "open") in kernel and ("open", "half_open") in kernel and ("half_open", "closed") in kernel
    )
    states = dp.breaker_states()["api"]
    assert len(states) == 1 and states[0].state == NAMES[int(b.model.breakers["api"][0].state)]


def test_probe_blocked_by_a_later_breaker_rolls_back(dp: InboundDataplane) -> None:
    b = Backend(
        dp,
        """circuitBreakerRules:
  - {id: first, resource: api, strategy: 2, retryTimeoutMs: 100, minRequestAmount: 1, statIntervalMs: 1000, threshold: 1}
  - {id: second, resource: api, strategy: 2, retryTimeoutMs: 5000, minRequestAmount: 1, statIntervalMs: 1000,
     threshold: 1}
""",
    )
    b.at(0)
    assert b.request()
    b.at(10)
    b.respond(next(iter(b.open)), 500)  # both breakers trip
    b.at(200)
    assert not b.request()  # first: Open -> HalfOpen (probe); second still Open blocks -> first rolls back
    kernel = b.kernel_changes()
    assert kernel == b.model_changes
    assert kernel[-2:] == [("open", "half_open"), ("half_open", "open")]
