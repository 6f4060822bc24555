"""Redis side of cluster flow rules: the connection (``redis://``, ``rediss://``, ``unix://``, Redis Cluster)
and the lease script (``lease.lua``), one round trip per renewal for every cluster rule of the node."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry

from sentinel_ebpf.errors import SentinelError

LEASE_SCRIPT = (Path(__file__).with_name("lease.lua")).read_text()
KEY_PREFIX = "sentinel-ebpf"
_REPLY_FIELDS = 7


@dataclass(frozen=True)
class LeaseRequest:
    key: str  # the rule's name in the cluster: its id, or "<resource>#<index>"
    interval_ms: int
    threshold: float
    threshold_type: int  # 0 per node (x live nodes), 1 global
    target: int  # tokens the node wants to hold (its demand over the lease horizon)
    held: int  # unused tokens it holds
    held_window: int  # the server window they were leased in (-1: none); other windows' tokens are void
    debt: int  # passes beyond the tokens held, charged to the window
    demand: float  # requests per window this node expects (for the fair shares)


@dataclass(frozen=True)
class LeaseReply:
    window: int  # server ms // interval
    left_ms: int  # of the window, by the server's clock
    live_nodes: int
    limit: int  # the fleet's limit for the window
    share: int  # this node's max-min fair share of it
    grant: int  # tokens granted by this call (negative: given back)
    taken: int  # tokens this node has taken in the window


class LeaseStore(Protocol):
    def lease(self, node: str, ttl_ms: int, requests: list[LeaseRequest]) -> tuple[int, list[LeaseReply]]:
        """(server ms, one reply per request); raises redis.RedisError or OSError when Redis fails."""
        ...


def redacted(url: str) -> str:
    """The URL without its password, for logs and stats."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urllib.parse.urlunsplit(parts._replace(netloc=user + netloc))


def check_url(url: str) -> None:
    """SentinelError naming what is wrong with a ``--cluster`` URL."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise SentinelError(
            f"--cluster {redacted(url)!r}: the scheme must be redis://, rediss:// or unix:// "
            "(e.g. redis://10.0.0.5:6379/0, unix:///run/redis/redis.sock)"
        )
    if parts.scheme == "unix" and not parts.path:
        raise SentinelError(f"--cluster {redacted(url)!r}: unix:// needs a socket path (unix:///path.sock)")
    if parts.scheme != "unix" and not parts.hostname:
        raise SentinelError(f"--cluster {redacted(url)!r}: no host")


def connect(url: str, timeout_s: float) -> Any:
    """A client for ``url``: Redis Cluster when it lists several hosts (``redis://h1:7000,h2:7001``) or
    when the server says it is a cluster node, else a plain client. No retries: a failed call must
    fail within ``timeout_s`` so the node can fall back."""
    check_url(url)
    common: dict[str, Any] = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
    parts = urllib.parse.urlsplit(url)
    if "," in parts.netloc:
        auth, _, hosts = parts.netloc.rpartition("@")
        nodes = []
        for h in hosts.split(","):
            one = urllib.parse.urlsplit(f"//{h}")
            nodes.append(ClusterNode(one.hostname or "localhost", one.port or 6379))  # type: ignore[no-untyped-call]
        first = urllib.parse.urlunsplit(
            parts._replace(netloc=(auth + "@" if auth else "") + hosts.split(",")[0])
        )
        return _cluster(first, common, nodes)
    client = redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), **common)
    if parts.scheme != "unix":
        try:
            enabled = client.info("cluster").get("cluster_enabled") == 1
        except redis.RedisError:
            enabled = False  # not reachable yet: a plain client (a cluster needs several hosts listed then)
        if enabled:
            client.close()
            return _cluster(url, common, None)
    return client


def _cluster(url: str, common: dict[str, Any], nodes: list[ClusterNode] | None) -> RedisCluster:
    kw: dict[str, Any] = {**common, "retry": Retry(NoBackoff(), 0)}
    if nodes:
        kw["startup_nodes"] = nodes
    return RedisCluster.from_url(url, **kw)


class RedisLeaseStore:
    """Leases through ``lease.lua``. Keys: ``sentinel-ebpf:{APP}:RULE:nodes`` and ``...:win``; the app
    is the hash tag, so one app's keys live in one slot of a Redis Cluster."""

    def __init__(self, url: str, app: str, timeout_s: float, horizon_ms: int = 300) -> None:
        """``horizon_ms``: how far ahead of the window's pace a node may hold tokens (its lease horizon)."""
        self.url = url
        self.horizon_ms = horizon_ms
        self.app = app
        self.timeout_s = timeout_s
        self.calls = 0  # round trips made (each is one EVALSHA, or EVAL after a script cache miss)
        self._client: Any = None
        self._script: Any = None

    def _connected(self) -> Any:
        if self._client is None:
            self._client = connect(self.url, self.timeout_s)
            self._script = self._client.register_script(LEASE_SCRIPT)
        return self._script

    def keys(self, rule_key: str) -> tuple[str, str]:
        base = f"{KEY_PREFIX}:{{{self.app}}}:{rule_key}"
        return f"{base}:nodes", f"{base}:win"

    def lease(self, node: str, ttl_ms: int, requests: list[LeaseRequest]) -> tuple[int, list[LeaseReply]]:
        script = self._connected()
        keys: list[str] = []
        args: list[Any] = [node, ttl_ms, self.horizon_ms]
        for q in requests:
            keys.extend(self.keys(q.key))
            args.extend([q.interval_ms, repr(float(q.threshold)), q.threshold_type, q.target, q.held,
                         q.held_window, q.debt, f"{q.demand:.3f}"])  # fmt: skip
        self.calls += 1
        try:
            raw = script(keys=keys, args=args)
        except redis.exceptions.MovedError:
            self.close()  # a cluster node seen as a plain server (unreachable at the first connect): again
            raise
        values = [int(v) for v in raw]
        replies = [
            LeaseReply(*values[1 + i * _REPLY_FIELDS : 1 + (i + 1) * _REPLY_FIELDS])
            for i in range(len(requests))
        ]
        return values[0], replies

    def client(self) -> Any:
        """The Redis client (connected on first use), for the node registry (``cluster.registry``)."""
        self._connected()
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
