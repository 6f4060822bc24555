"""The fleet's node registry in Redis, for the dashboard's fleet view (``dashboard --fleet redis://...``).

Every daemon that runs with ``--cluster`` writes its node record (``dashboard.fleet.NodeRecord``: health,
version, rules revision, per-resource counts) once a second into one hash per app,
``sentinel-ebpf:{APP}:registry`` (field: the node id, value: the record as JSON). One key under the app's
hash tag, so it lives in the same Redis Cluster slot as the app's leases. Records not rewritten for
``STALE_MS`` are shown as down, and removed after ``FORGET_MS`` (a node that stopped, or lost Redis).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import Any

import redis
from redis.exceptions import RedisClusterException

from sentinel_ebpf.cluster.store import KEY_PREFIX, connect, redacted
from sentinel_ebpf.stats import FORGET_MS, PUBLISH_EVERY_MS, STALE_MS, NodeRecord, read_node_record

__all__ = ["FORGET_MS", "PUBLISH_EVERY_MS", "STALE_MS", "RedisNodes", "publish", "registry_key"]


def registry_key(app: str) -> str:
    return f"{KEY_PREFIX}:{{{app}}}:registry"


def publish(client: Any, app: str, record: NodeRecord) -> None:
    key = registry_key(app)
    client.hset(key, record.node, json.dumps(asdict(record)))
    client.pexpire(key, FORGET_MS)


class RedisNodes:
    """``dashboard.fleet.NodeSource``: the records the daemons of ``app`` wrote to Redis."""

    def __init__(self, url: str, app: str, timeout_s: float = 2.0, client: Any = None) -> None:
        self.url = url
        self.app = app
        self._client = client if client is not None else connect(url, timeout_s)

    def records(self) -> list[NodeRecord]:
        now_ms = round(time.time() * 1000)
        key = registry_key(self.app)
        try:
            entries = self._client.hgetall(key)
        except (redis.RedisError, RedisClusterException, OSError) as exc:
            return [NodeRecord(node=f"registry {redacted(self.url)}", health="down", seen_ms=now_ms,
                               error=f"Redis unreachable: {type(exc).__name__}: {exc}")]  # fmt: skip
        out = []
        for node, raw in sorted(entries.items()):
            name = node.decode() if isinstance(node, bytes) else str(node)
            rec = read_node_record(name, raw, now_ms, "Redis")
            if rec is None:
                self._client.hdel(key, node)
                continue
            out.append(rec)
        return out

    def close(self) -> None:
        self._client.close()
