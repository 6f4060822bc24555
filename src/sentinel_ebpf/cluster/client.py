"""The daemon's cluster client: renews the leases of every cluster rule in force from its own thread.

Each renewal is one Redis round trip (``lease.lua``) for all of the node's cluster rules; it is also the
node's heartbeat. Renewals run every ``renew_s`` (100 ms) while the rules see requests, every
``idle_renew_ms`` (300 ms) otherwise; after each one, and right after each of the
kernel's 500 ms bucket boundaries, ``refresh`` rewrites the thresholds in the kernel (the daemon's
``dp.tick()``). A call that fails, or answers after ``slow_ms``, does not count as contact; without
contact for ``fallback_after_ms`` past the renewal the node's pace made due (an idle node's heartbeat
comes ``idle_renew_ms - renew_s`` later than a busy node's renewal) every cluster rule falls back
(``RuleLease.allowed``), and the first good call brings them back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis
from redis.exceptions import RedisClusterException

from sentinel_ebpf._types import ResStats
from sentinel_ebpf._worker import Worker
from sentinel_ebpf.cluster.lease import BUCKET_MS, RENEW_S, RuleLease
from sentinel_ebpf.cluster.registry import PUBLISH_EVERY_MS, publish
from sentinel_ebpf.cluster.store import LeaseStore, redacted
from sentinel_ebpf.enforce.compile import KFlowRule
from sentinel_ebpf.errors import SentinelError
from sentinel_ebpf.stats import NodeRecord, default_node_id

log = logging.getLogger("sentinel_ebpf.cluster")
SLOW_MS = 50  # Redis slower than this counts as unreachable
FALLBACK_AFTER_MS = 250  # without contact this long past the renewal due, rules fall back (two missed)
HEARTBEAT_TTL_MS = 1000  # a node not heard from for this long is no longer counted live
IDLE_RENEW_MS = 300  # a node whose cluster rules see no requests renews (its heartbeat) this often


def _monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class ClusterClient:
    def __init__(
        self,
        store: LeaseStore,
        *,
        url: str = "",
        app: str = "",
        node_id: str | None = None,
        refresh: Callable[[], None] = lambda: None,
        now_ms: Callable[[], int] = _monotonic_ms,
        renew_s: float = RENEW_S,
        slow_ms: int = SLOW_MS,
        fallback_after_ms: int = FALLBACK_AFTER_MS,
        ttl_ms: int = HEARTBEAT_TTL_MS,
        idle_renew_ms: int = IDLE_RENEW_MS,
        record: Callable[[str], NodeRecord] | None = None,
    ) -> None:
        """``record(node_id)``: this node's record for the fleet registry, written every
        ``PUBLISH_EVERY_MS`` when given (``cluster.registry``)."""
        self.store = store
        self.url = url
        self.app = app
        self.node_id = node_id or default_node_id()
        self.refresh = refresh
        self.now_ms = now_ms
        self.renew_s = renew_s
        self.slow_ms = slow_ms
        self.fallback_after_ms = fallback_after_ms
        self.ttl_ms = ttl_ms
        self.idle_renew_ms = idle_renew_ms
        self.record = record
        self._next_publish_ms = 0
        self._last_renew_ms: int | None = None
        self._pace_ms = round(
            renew_s * 1000
        )  # how often this node renews now (busy: renew_s; idle: more rarely)
        self.active: tuple[RuleLease, ...] = ()
        self._by_key: dict[str, RuleLease] = {}
        self.started_ms = now_ms()
        self.last_ok_ms: int | None = None
        self.last_error: str | None = None
        self.renewals = 0
        self._worker = Worker("cluster", join_timeout_s=5)

    # -- the data plane's side ----------------------------------------------------------------------
    def thresholds(self, resource: str, index: int, f: KFlowRule, read: Callable[[], ResStats]) -> RuleLease:
        """``enforce.adaptive.ExternalThresholds``: the lease of a cluster rule (a changed rule keeps the
        tokens and demand of the one it replaces)."""
        rule = f.source
        assert rule is not None
        key = rule.id or f"{resource}#{index}"
        lease = RuleLease(key, resource, rule, f.interval_ms, read, self.state)
        old = self._by_key.get(key)
        if old is not None and old.interval_ms == lease.interval_ms:
            lease.take_over(old)
        self._by_key[key] = lease
        return lease

    def track(self, sources: Iterable[object]) -> None:
        """The threshold sources in force (after every apply): the cluster rules among them are renewed."""
        self.active = tuple(s for s in sources if isinstance(s, RuleLease))
        self._by_key = {lease.key: lease for lease in self.active}

    def state(self, now_ms: int) -> str:
        """``cluster`` (contact within fallback_after_ms), ``joining`` (no contact yet, just started) or
        ``fallback``."""
        if self.last_ok_ms is not None:
            grace_ms = self.fallback_after_ms + self._pace_ms - round(self.renew_s * 1000)
            return "cluster" if now_ms - self.last_ok_ms <= grace_ms else "fallback"
        return "joining" if now_ms - self.started_ms <= self.fallback_after_ms else "fallback"

    # -- renewals -----------------------------------------------------------------------------------
    def renew(self) -> bool:
        """One round trip for every active cluster rule; True when Redis answered in time."""
        leases = self.active
        if not leases:
            return True
        now_ms = self.now_ms()
        if self.state(now_ms) == "fallback":
            for lease in leases:
                lease.forget_window()  # passes made in fallback were not leased and are not owed
        stats = [lease.read() for lease in leases]
        asked = [lease.request(st, now_ms) for lease, st in zip(leases, stats, strict=True)]
        start = time.monotonic()
        try:
            _, replies = self.store.lease(self.node_id, self.ttl_ms, asked)
        except (redis.RedisError, RedisClusterException, OSError, SentinelError) as exc:
            self._failed(f"{type(exc).__name__}: {exc}")
            return False
        elapsed_ms = (time.monotonic() - start) * 1000
        self.renewals += 1
        for lease, st, q, reply in zip(leases, stats, asked, replies, strict=True):
            lease.on_reply(st, q, reply)
        if elapsed_ms > self.slow_ms:
            self._failed(f"answered in {elapsed_ms:.0f} ms (more than {self.slow_ms} ms)")
            return False
        if self.last_error is not None:
            log.info("cluster: Redis %s answers again", redacted(self.url))
            self.last_error = None
        self.last_ok_ms = now_ms
        return True

    def _failed(self, reason: str) -> None:
        if self.last_error is None:
            log.warning("cluster: Redis %s: %s", redacted(self.url), reason)
        self.last_error = reason

    def start(self) -> ClusterClient:
        # "joining" counts from here: attaching the data plane after construction takes a while
        self.started_ms = self.now_ms()
        self._worker.start(self._run)
        return self

    def due(self, now_ms: int) -> bool:
        """Renew now? Always while any rule sees requests (or has never been leased), else every
        ``idle_renew_ms`` (the heartbeat): an idle node's lease does not change. One map read per rule.
        Sets the pace ``state`` allows for: an idle node is not in fallback for its heartbeat's longer gap."""
        busy = any(lease.account is None or lease.seen_requests() for lease in self.active)
        self._pace_ms = (
            round(self.renew_s * 1000) if busy else max(self.idle_renew_ms, round(self.renew_s * 1000))
        )
        return busy or self._last_renew_ms is None or now_ms - self._last_renew_ms >= self.idle_renew_ms

    def _run(self) -> None:
        next_renew = 0.0
        while not self._worker.stopping.is_set():
            if time.monotonic() >= next_renew:
                next_renew = time.monotonic() + self.renew_s
                try:
                    if self.due(self.now_ms()):
                        self._last_renew_ms = self.now_ms()
                        self.renew()
                except Exception:  # the thread must go on: rules fall back while it fails
                    log.exception("cluster: renewal failed")
            try:
                self.refresh()
            except Exception:
                log.exception("cluster: writing thresholds failed")
            self._publish()
            to_boundary_s = (BUCKET_MS - self.now_ms() % BUCKET_MS + 1) / 1000
            self._worker.stopping.wait(max(0.0, min(next_renew - time.monotonic(), to_boundary_s)))

    def _publish(self) -> None:
        """This node's record into the registry, once a second; a failure only skips this one."""
        now_ms = self.now_ms()
        if self.record is None or now_ms < self._next_publish_ms:
            return
        self._next_publish_ms = now_ms + PUBLISH_EVERY_MS
        client = getattr(self.store, "client", None)
        if client is None:
            return
        try:
            publish(client(), self.app, self.record(self.node_id))
        except (redis.RedisError, RedisClusterException, OSError, SentinelError) as exc:
            log.debug("cluster: node record not written: %s", exc)
        except Exception:
            log.exception("cluster: node record not written")

    def stop(self) -> None:
        self._worker.stop()
        close = getattr(self.store, "close", None)
        if close is not None:
            close()

    def status(self) -> dict[str, Any]:
        """For ``stats --json``: the connection and every cluster rule's view."""
        now_ms = self.now_ms()
        return {
            "redis": redacted(self.url),
            "app": self.app,
            "node": self.node_id,
            "state": self.state(now_ms),
            "last_error": self.last_error,
            "renewals": self.renewals,
            "rules": [lease.status() for lease in self.active],
        }
