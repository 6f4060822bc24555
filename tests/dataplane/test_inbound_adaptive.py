"""WarmUp and MemoryAdaptive flow rules: kernel enforcement with control-plane thresholds vs the model."""

from __future__ import annotations

import pytest

from sentinel_ebpf.enforce import InboundDataplane
from sentinel_ebpf.model.clock import ManualClock
from sentinel_ebpf.model.sentinel import Sentinel
from sentinel_ebpf.model.system import SystemMetrics
from sentinel_ebpf.rules import load_text
from tests.support.inbound import CLIENT, SERVER
from tests.support.packets import SYN, TC_ACT_OK, tcp_frame

pytestmark = pytest.mark.kernel
T0_MS = 1_700_000_000_000


class FakeMemory:
    def __init__(self) -> None:
        self.value: int | None = None

    def memory_bytes(self) -> int | None:
        return self.value


def drive(dp: InboundDataplane, text: str, arrivals_per_s: int, seconds: int,
          memory: FakeMemory | None = None, mem_at: dict[int, int] | None = None) -> list[int]:  # fmt: skip
    """Arrivals at a steady rate to kernel and model; returns passes per second; asserts equal verdicts."""
    rs = load_text(text, "adaptive.yaml")
    clock = ManualClock(T0_MS)
    metrics = SystemMetrics()
    model = Sentinel(rs, clock=clock, system_metrics=metrics)
    if memory is not None:
        dp.memory = memory
    dp.set_clock_ns(clock.now_ns())
    dp.apply(dp.compile(rs))
    ingress = dp.obj.program("tc_ingress")
    per_second = []
    step_ms = 1000 / arrivals_per_s
    port = 10000
    for sec in range(seconds):
        if memory is not None and mem_at and sec in mem_at:
            memory.value = metrics.memory = mem_at[sec]
        passed = 0
        for k in range(arrivals_per_s):
            clock.set_ns(int((T0_MS + sec * 1000 + k * step_ms) * 1_000_000))
            dp.set_clock_ns(clock.now_ns())
            dp.tick()  # the daemon's timer, here before every arrival
            port += 1
            kernel = ingress.test_run(tcp_frame(CLIENT, SERVER, port, 8080, flags=SYN)).retval == TC_ACT_OK
            model_pass = model.entry("svc").passed
            assert kernel == model_pass, f"second {sec}, arrival {k}"
            passed += kernel
        per_second.append(passed)
    return per_second


def test_warm_up_ramps_like_the_model(dp: InboundDataplane) -> None:
    per_second = drive(
        dp,
        """
resources:
  - {name: svc, match: {protocol: tcp, port: 8080}}
flowRules:
  - {resource: svc, threshold: 40, tokenCalculateStrategy: 1, warmUpPeriodSec: 5, warmUpColdFactor: 3}
""",
        arrivals_per_s=80,
        seconds=10,
    )
    # cold start at threshold / coldFactor (13.3/s), rising every second, then the threshold itself
    assert per_second[0] == 13 and per_second[-4:] == [40] * 4
    assert per_second == sorted(per_second) and len(set(per_second)) >= 6


def test_memory_adaptive_follows_the_water_marks(dp: InboundDataplane) -> None:
    mem = FakeMemory()
    per_second = drive(
        dp,
        """
resources:
  - {name: svc, match: {protocol: tcp, port: 8080}}
flowRules:
  - {resource: svc, threshold: 1, tokenCalculateStrategy: 2, lowMemUsageThreshold: 30, highMemUsageThreshold: 10,
     memLowWaterMarkBytes: 1024, memHighWaterMarkBytes: 2048}
""",
        arrivals_per_s=50,
        seconds=4,
        memory=mem,
        mem_at={0: 512, 1: 1536, 2: 4096, 3: 1024},
    )
    assert per_second == [30, 20, 10, 30]
