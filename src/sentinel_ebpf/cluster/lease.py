"""One cluster flow rule on one node: its lease of tokens, its demand, and the threshold the kernel gets.

The kernel judges every request on the spot with its Reject check: ``passes in the sliding window + 1 <=
threshold``. To make it spend exactly the tokens this node holds, the threshold written is

    passes in the window now - passes leaving the window before the next write + tokens left

where tokens left = tokens leased in the server's current window - passes since that window began for
this node. Passes beyond the lease (a write that came late) are owed and charged to the next lease, so
the fleet's count stays right. In fallback the threshold is the node's share of the rule, as a plain
local rule, or unlimited when ``fallbackToLocalWhenFail`` is false.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

from sentinel_ebpf._types import BlockType, ResStats, SentinelLimits
from sentinel_ebpf.cluster.store import LeaseReply, LeaseRequest
from sentinel_ebpf.inbound.adaptive import window_sum
from sentinel_ebpf.rules.flow import ClusterThresholdType, FlowRule

log = logging.getLogger("sentinel_ebpf.cluster")
BUCKET_MS = int(SentinelLimits.SE_BUCKET_MS)
RENEW_S = 0.1  # how often a node renews its leases
HORIZON_S = 0.3  # a lease covers this much of the node's demand (three renewals)
DEMAND_WEIGHT = 0.5  # weight of the newest renewal period in the demand estimate
DEMAND_WEIGHT_FALLING = 0.75  # when it is lower: a node whose demand left frees its share sooner
LOOKAHEAD_MS = 10  # passes leaving the window this soon are taken off the next threshold
MIN_LEASE = 1  # tokens an idle node holds, so its first request is not refused for want of a lease
UNLIMITED = 1e15  # "let the rule's requests pass"
_FLOW = int(BlockType.BLOCK_FLOW)
_PASS = "pass"  # a Python keyword: read with getattr


@dataclass(frozen=True)
class Account:
    """Tokens of one server window, replaced as a whole (read by the threshold writer, another thread)."""

    window: int
    granted: int  # tokens taken in the window (grants and paid debt)
    base_pass: int  # the resource's total_pass when this node's window began


def expiring_passes(st: ResStats, now_ms: int, interval_ms: int, within_ms: int) -> int:
    """Passes of the oldest bucket in the kernel's window when it leaves the window within ``within_ms``."""
    cur = now_ms - now_ms % BUCKET_MS
    if cur + BUCKET_MS > now_ms + within_ms:
        return 0
    oldest = cur + BUCKET_MS - interval_ms
    return sum(int(getattr(b, _PASS)) for b in st.buckets if b.start_ms == oldest and oldest >= 0)


def demand_count(st: ResStats) -> int:
    """Requests that reached the rule: passed, or refused by a flow rule."""
    return int(st.total_pass) + int(st.block_by_type[_FLOW])


class RuleLease:
    """The threshold source of one cluster rule (``inbound.adaptive.ThresholdSource``)."""

    def __init__(self, key: str, resource: str, rule: FlowRule, interval_ms: int,
                 read: Callable[[], ResStats], state: Callable[[int], str]) -> None:  # fmt: skip
        """``state(now_ms)``: ``cluster``, ``joining`` (no contact yet) or ``fallback`` (ClusterClient)."""
        self.key = key
        self.resource = resource
        self.rule = rule
        self.interval_ms = interval_ms
        self.read = read
        self.state = state
        self.account: Account | None = None
        self.demand_qps = 0.0
        self._last_count: tuple[int, int] | None = None  # (ms, demand_count)
        # the cluster's view, from the last reply
        self.live_nodes = 1
        self.limit = 0
        self.share = 0
        self.fallback = False

    # -- renewal (the cluster thread) ------------------------------------------------------------
    def request(self, st: ResStats, now_ms: int) -> LeaseRequest:
        count = demand_count(st)
        if self._last_count is not None and now_ms > self._last_count[0]:
            rate = (count - self._last_count[1]) * 1000 / (now_ms - self._last_count[0])
            weight = DEMAND_WEIGHT if rate >= self.demand_qps else DEMAND_WEIGHT_FALLING
            self.demand_qps += weight * (rate - self.demand_qps)
        self._last_count = (now_ms, count)
        left = self.tokens_left(st)
        target = max(MIN_LEASE, math.ceil(self.demand_qps * HORIZON_S - 1e-6))
        # for the fair shares: the window's demand and the tokens the node holds as a buffer, which
        # matter most to a light node
        demand = self.demand_qps * self.interval_ms / 1000 + target
        return LeaseRequest(
            key=self.key, interval_ms=self.interval_ms, threshold=self.rule.threshold,
            threshold_type=int(self.rule.cluster_config.threshold_type), target=target, held=max(0, left),
            held_window=self.account.window if self.account else -1, debt=max(0, -left), demand=demand,
        )  # fmt: skip

    def seen_requests(self) -> bool:
        """Requests reached the rule since the last renewal (or the node holds no tokens to spare)."""
        if self._last_count is None:
            return True
        return demand_count(self.read()) != self._last_count[1] or self.demand_qps >= 1.0

    def on_reply(self, st: ResStats, asked: LeaseRequest, reply: LeaseReply) -> None:
        """Take the reply to ``asked`` (made with ``st``, the statistics read just before)."""
        self.live_nodes, self.limit, self.share = reply.live_nodes, reply.limit, reply.share
        acc = self.account
        if acc is None or acc.window != reply.window:
            # a new window: the tokens held go on (counted in their window), the debt is paid now
            self.account = Account(reply.window, asked.held + reply.grant, int(st.total_pass))
        else:
            self.account = Account(acc.window, acc.granted + reply.grant + asked.debt, acc.base_pass)

    def forget_window(self) -> None:
        """After fallback: passes made meanwhile were not leased and are not owed."""
        self.account = None

    def tokens_left(self, st: ResStats) -> int:
        acc = self.account
        if acc is None:
            return 0
        return acc.granted - (int(st.total_pass) - acc.base_pass)

    # -- threshold (the daemon's threshold writer) -------------------------------------------------
    def local_share(self) -> float:
        """Fallback threshold: the node's share of the rule, by the live nodes last seen."""
        if self.rule.cluster_config.threshold_type is ClusterThresholdType.AvgLocal:
            return self.rule.threshold
        return self.rule.threshold / max(1, self.live_nodes)

    def allowed(self, now_ms: int) -> float:
        state = self.state(now_ms)
        if (state == "fallback") != self.fallback:
            self.fallback = state == "fallback"
            if self.fallback:
                what = (f"enforcing {self.local_share():g} per {self.interval_ms} ms locally (threshold "
                        f"{self.rule.threshold:g}, {self.live_nodes} live nodes last seen)"
                        if self.rule.cluster_config.fallback_to_local_when_fail
                        else "letting its requests pass (fallbackToLocalWhenFail is false)")  # fmt: skip
                log.warning("cluster rule %s of %s: Redis unreachable, %s", self.key, self.resource, what)
            else:
                log.info("cluster rule %s of %s: back in the cluster (%d live nodes)", self.key,
                         self.resource, self.live_nodes)  # fmt: skip
        if self.fallback:
            return self.fallback_threshold()
        if state == "joining" or self.account is None:
            return self.local_share()  # until the first lease: the node's share as a local rule
        st = self.read()
        window = window_sum(st, now_ms, self.interval_ms)
        leaving = expiring_passes(st, now_ms, self.interval_ms, LOOKAHEAD_MS)
        return float(max(0, window - leaving + self.tokens_left(st)))

    def fallback_threshold(self) -> float:
        return self.local_share() if self.rule.cluster_config.fallback_to_local_when_fail else UNLIMITED

    def status(self) -> dict[str, object]:
        acc = self.account
        return {
            "rule": self.key,
            "resource": self.resource,
            "threshold": self.rule.threshold,
            "threshold_type": self.rule.cluster_config.threshold_type.name,
            "live_nodes": self.live_nodes,
            "limit": self.limit,
            "share": self.share,
            "share_ratio": round(self.share / self.limit, 4) if self.limit else 0.0,
            "granted": acc.granted if acc else 0,
            "demand_qps": round(self.demand_qps, 1),
            "fallback": self.fallback,
            "local_threshold": self.fallback_threshold() if self.fallback else None,
        }
