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
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from sentinel_ebpf._types import BlockType, ResStats, SentinelLimits
from sentinel_ebpf.cluster.store import LeaseReply, LeaseRequest
from sentinel_ebpf.enforce.adaptive import window_sum
from sentinel_ebpf.rules.flow import ClusterThresholdType, FlowRule

log = logging.getLogger("sentinel_ebpf.cluster")
BUCKET_MS = int(SentinelLimits.SE_BUCKET_MS)
RENEW_S = 0.1  # how often a node renews its leases
HORIZON_S = 0.3  # a lease covers this much of the node's demand (three renewals)
DEMAND_WEIGHT = 0.5  # weight of the newest renewal period in the demand estimate
DEMAND_WEIGHT_FALLING = 0.75  # when it is lower: a node whose demand left frees its share sooner
# The estimate stays at least the rate over the last span expected to hold DEMAND_FLOOR_REQUESTS requests,
# within DEMAND_FLOOR_MS: a light node's 100 ms periods hold 0, 1 or 2 of its requests, and the smoothed
# rate alone dipped with every empty one (its share and lease with it); a busy node's span is one period,
# so its estimate still falls within a few renewals when its demand leaves.
DEMAND_FLOOR_REQUESTS = 10
DEMAND_FLOOR_MS = 1000
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


@dataclass(eq=False, repr=False)
class RuleLease:
    """The threshold source of one cluster rule (``enforce.adaptive.ThresholdSource``).

    ``state(now_ms)``: ``cluster``, ``joining`` (no contact yet) or ``fallback`` (ClusterClient)."""

    key: str
    resource: str
    rule: FlowRule
    interval_ms: int
    read: Callable[[], ResStats]
    state: Callable[[int], str]
    account: Account | None = field(default=None, init=False)
    demand_qps: float = field(default=0.0, init=False)
    _fast_qps: float = field(default=0.0, init=False)  # the smoothed rate of the renewal periods
    _last_count: tuple[int, int] | None = field(default=None, init=False)  # (ms, demand_count)
    # (ms, demand_count) of the last DEMAND_FLOOR_MS
    _counts: deque[tuple[int, int]] = field(default_factory=deque, init=False)
    # the cluster's view, from the last reply
    live_nodes: int = field(default=1, init=False)
    limit: int = field(default=0, init=False)
    share: int = field(default=0, init=False)
    fallback: bool = field(default=False, init=False)

    # -- renewal (the cluster thread) ------------------------------------------------------------
    def request(self, st: ResStats, now_ms: int) -> LeaseRequest:
        self._estimate(demand_count(st), now_ms)
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

    def take_over(self, old: RuleLease) -> None:
        """A changed rule keeps the tokens, the demand and the cluster's view of the one it replaces."""
        self.account, self.demand_qps, self._fast_qps = old.account, old.demand_qps, old._fast_qps
        self._last_count, self._counts = old._last_count, old._counts
        self.live_nodes, self.limit, self.share = old.live_nodes, old.limit, old.share

    def _estimate(self, count: int, now_ms: int) -> None:
        """Demand: the renewal periods' rate smoothed (rises within a few renewals, falls faster), and not
        below the rate over the span the last estimate expects DEMAND_FLOOR_REQUESTS in (one renewal
        period for a busy node, up to DEMAND_FLOOR_MS for a light one)."""
        if self._last_count is not None and now_ms > self._last_count[0]:
            rate = (count - self._last_count[1]) * 1000 / (now_ms - self._last_count[0])
            weight = DEMAND_WEIGHT if rate >= self._fast_qps else DEMAND_WEIGHT_FALLING
            self._fast_qps += weight * (rate - self._fast_qps)
        self._last_count = (now_ms, count)
        span_ms = min(DEMAND_FLOOR_MS, DEMAND_FLOOR_REQUESTS * 1000 / max(self.demand_qps, 1e-3))
        counts = self._counts
        counts.append((now_ms, count))
        while len(counts) > 2 and now_ms - counts[1][0] >= DEMAND_FLOOR_MS:
            counts.popleft()
        # the newest sample at least span_ms old (else the oldest kept)
        anchor_ms, anchor = next(((ms, c) for ms, c in reversed(counts) if now_ms - ms >= span_ms), counts[0])
        floor = (count - anchor) * 1000 / (now_ms - anchor_ms) if now_ms > anchor_ms else 0.0
        self.demand_qps = max(self._fast_qps, floor)

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
