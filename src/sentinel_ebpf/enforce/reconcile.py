"""Concurrency that always comes back: the control plane's periodic reconciliation of in-flight counts.

The data plane takes a concurrency slot when a SYN or request passes and gives it back at the
connection's FIN or RST or the response. Two things escape that: an in-flight entry whose connection is
gone without a close this host saw (half-open connections that timed out, SYN cookies, a lost FIN), and
an entry the LRU evicted (its count is never given back). Each run:

1. asks the kernel (program ``reconcile``, through BPF_PROG_TEST_RUN) to release every in-flight entry
   older than ``grace_ns`` whose connection has no socket while the server's listener is there;
2. compares each resource's concurrency with what the in-flight entries (and outbound connections)
   account for, and corrects a difference seen unchanged in two runs in a row (a difference seen once may
   be a request starting or ending while the maps were read).

Both are counted in the data-plane counter ``concurrency_repaired`` (``stats --json`` "dataplane").
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sentinel_ebpf._types import (
    FlowKey,
    FlowKind,
    Inflight,
    InflightQueue,
    InflightState,
    OutConn,
    ReconcileOp,
    ReconcileReq,
    SentinelLimits,
)

if TYPE_CHECKING:
    from sentinel_ebpf.enforce.dataplane import InboundDataplane

RECONCILE_GRACE_NS = 10_000_000_000  # a connection this young may still be completing its handshake
RECONCILE_PERIOD_NS = 5_000_000_000  # how often the daemon runs it (InboundDataplane.tick)
INBOUND_NODE = 0  # resource id 0 in a RECONCILE_ADJUST request: Sentinel's inbound node


@dataclass
class ReconcileReport:
    released: int = 0  # in-flight entries of connections that are gone
    adjusted: dict[int, int] = field(default_factory=dict)  # resource id (0: inbound node) -> delta applied


class Reconciler:
    """One per InboundDataplane; keeps the differences seen by the previous run."""

    def __init__(self, dp: InboundDataplane) -> None:
        self.dp = dp
        self._prog = dp.obj.program("reconcile")
        self._pending: dict[int, int] = {}

    def _request(self, req: ReconcileReq) -> int:
        return self._prog.test_run(bytes(req)).retval

    def run(self, grace_ns: int = RECONCILE_GRACE_NS) -> ReconcileReport:
        report = ReconcileReport()
        inflight = self.dp.maps.inflight
        for key, value in list(inflight.items()):
            entry = Inflight.from_buffer_copy(value)
            fk = FlowKey.from_buffer_copy(key)
            if fk.kind == FlowKind.FLOW_KIND_OUT_REQUEST:
                continue
            req = ReconcileReq(key=fk, grace_ns=grace_ns, op=ReconcileOp.RECONCILE_RELEASE)
            if entry.active == InflightState.INFLIGHT_IDLE:
                self._request(req)  # an idle entry of a connection that is gone goes too
            elif self._request(req) == 1:
                report.released += 1
        self._repair_drift(report)
        return report

    def _expected(self) -> tuple[Counter[int], int]:
        """Concurrency the maps account for, per resource, and for the inbound node."""
        per_resource: Counter[int] = Counter()
        inbound = 0
        queues = self.dp.maps.inflight_queue
        for key, value in self.dp.maps.inflight.items():
            entry = Inflight.from_buffer_copy(value)
            if entry.active == InflightState.INFLIGHT_ACTIVE:
                per_resource[entry.resource] += 1
                inbound += entry.inbound
                if entry.q_tail != entry.q_head:  # requests pipelined behind it
                    raw = queues.get(key)
                    for i in range(entry.q_head, entry.q_tail) if raw is not None else ():
                        queued = InflightQueue.from_buffer_copy(raw).q[i % SentinelLimits.SE_QUEUED_MAX]
                        per_resource[queued.resource] += 1
                        inbound += queued.inbound
        for _, value in self.dp.maps.out_conns.items():
            per_resource[OutConn.from_buffer_copy(value).resource] += 1
        return per_resource, inbound

    def _counts(self) -> dict[int, int]:
        counts = {rid: int(st.concurrency) for rid, st in self.dp.raw_stats_all().items()}
        counts[INBOUND_NODE] = int(self.dp.inbound_stats().concurrency)
        return counts

    def _repair_drift(self, report: ReconcileReport) -> None:
        before = self._counts()
        per_resource, inbound = self._expected()
        after = self._counts()
        drift: dict[int, int] = {}
        for rid, count in after.items():
            if before.get(rid) != count:
                continue  # traffic moved while the maps were read: no conclusion this time
            expected = inbound if rid == INBOUND_NODE else per_resource.get(rid, 0)
            if count != expected:
                drift[rid] = count - expected
        for rid, diff in drift.items():
            if self._pending.get(rid) == diff:
                req = ReconcileReq(resource=rid, delta=-diff, op=ReconcileOp.RECONCILE_ADJUST)
                if self._request(req) == 0:
                    report.adjusted[rid] = -diff
        self._pending = {rid: diff for rid, diff in drift.items() if rid not in report.adjusted}
