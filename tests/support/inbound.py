"""What the inbound tests share: the ends of the dataplane tier's crafted connections, rules from text
(and the one limit on GET /api that many tests of both tiers put in front of their requests), and the
kernel and the reference model run in lockstep."""

from __future__ import annotations

from typing import Any

from sentinel_ebpf.enforce import InboundDataplane
from sentinel_ebpf.model.clock import ManualClock
from sentinel_ebpf.model.sentinel import Sentinel
from sentinel_ebpf.rules import RuleSet, load_text

# Loopback addresses: crafted frames never reach a socket (the tier loads without socket lookup).
CLIENT, SERVER = "127.0.0.2", "127.0.0.1"


def rules(text: str) -> RuleSet:
    """A rules document given inline in a test (problems name it ``test.yaml``)."""
    return load_text(text, "test.yaml")


def limit_api(threshold: int) -> str:
    """Rules text: one resource, ``GET /api`` on port 8080, with a flow rule of ``threshold`` per second."""
    return f"""
resources:
  - {{name: api, match: {{protocol: http, port: 8080, method: GET, path: /api}}}}
flowRules:
  - {{resource: api, threshold: {threshold}}}
"""


BLOCK_API = limit_api(0)  # every GET /api refused
API = b"GET /api HTTP/1.1\r\nHost: svc\r\n\r\n"
OTHER = b"GET /other HTTP/1.1\r\nHost: svc\r\n\r\n"


class Lockstep:
    """The kernel's programs (BPF_PROG_TEST_RUN) and the reference model, with the rules applied to both
    and one clock: ``at(ms)`` moves both to ``t0_ms + ms``, so a test states its arrivals once and compares
    the kernel's verdicts with the model's."""

    def __init__(self, dp: InboundDataplane, rs: RuleSet, t0_ms: int, **model_options: Any) -> None:
        self.dp = dp
        self.t0_ms = t0_ms
        self.clock = ManualClock(t0_ms)
        self.model = Sentinel(rs, clock=self.clock, **model_options)
        dp.apply(dp.compile(rs))
        self.ingress = dp.obj.program("tc_ingress")
        self.egress = dp.obj.program("tc_egress")

    def at(self, ms: float) -> None:
        self.clock.set_ns(int(self.t0_ms * 1_000_000 + ms * 1_000_000))
        self.dp.set_clock_ns(self.clock.now_ns())

    def at_ns(self, ns: int) -> None:
        """``at`` in exact nanoseconds (a float of ms since the epoch has a 256 ns grain)."""
        self.clock.set_ns(self.t0_ms * 1_000_000 + ns)
        self.dp.set_clock_ns(self.clock.now_ns())
