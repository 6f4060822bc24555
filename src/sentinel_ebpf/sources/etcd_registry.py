"""The fleet's node registry in etcd, for daemons that read their rules from etcd (``dashboard --fleet
etcd://HOST:PORT/KEY``), as ``cluster.registry`` is for daemons with ``--cluster`` in Redis.

Every daemon run with ``-r etcd://.../KEY`` writes its node record (``stats.NodeRecord`` as JSON) once a
second to ``KEY/nodes/NODE``, attached to a lease of ``FORGET_MS`` that each write renews: a node that
stops, or loses etcd, is shown down after ``STALE_MS`` and etcd removes its record when the lease
expires. The registry is beside the rules key, so the URL the daemons read their rules from names their
fleet.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict

from sentinel_ebpf._worker import Worker
from sentinel_ebpf.sources.etcd import EtcdClient, EtcdError
from sentinel_ebpf.stats import FORGET_MS, PUBLISH_EVERY_MS, NodeRecord, read_node_record

log = logging.getLogger("sentinel_ebpf.daemon")


def nodes_prefix(key: str) -> str:
    return key.rstrip("/") + "/nodes/"


class EtcdRegistrar:
    """Writes this node's record under ``nodes_prefix(key)`` every ``every_ms``, from its own thread."""

    def __init__(
        self,
        client: EtcdClient,
        key: str,
        node_id: str,
        record: Callable[[str], NodeRecord],
        *,
        every_ms: int = PUBLISH_EVERY_MS,
        ttl_s: int = FORGET_MS // 1000,
    ) -> None:
        self.client, self.key, self.node_id, self.record = client, key, node_id, record
        self.every_ms, self.ttl_s = every_ms, ttl_s
        self.lease = 0
        self.failing = False
        self._worker = Worker("etcd-registry", join_timeout_s=5)

    def start(self) -> None:
        self._worker.start(self._run)

    def publish(self) -> None:
        """One write of the record, on a lease renewed here (a new one when etcd has let it expire)."""
        if not self.lease or self.client.keep_alive(self.lease) <= 0:
            self.lease = self.client.grant_lease(self.ttl_s)
        rec = self.record(self.node_id)
        self.client.put_key(
            nodes_prefix(self.key) + self.node_id, json.dumps(asdict(rec)).encode(), self.lease
        )

    def _run(self) -> None:
        while not self._worker.stopping.is_set():
            try:
                self.publish()
                if self.failing:
                    log.info("fleet registry in etcd: node record written again")
                self.failing = False
            except EtcdError as exc:  # etcd down: the rules source says so; logged once here
                if not self.failing:
                    log.warning("fleet registry in etcd: node record not written: %s", exc)
                self.failing = True
            except Exception:
                log.exception("fleet registry in etcd: node record not written")
            self._worker.stopping.wait(self.every_ms / 1000)

    def close(self) -> None:
        """Stop writing; the record stays until its lease expires (the dashboard shows the node down)."""
        self._worker.stop()


class EtcdNodes:
    """``dashboard.fleet.NodeSource``: the records the daemons of one rules key wrote to etcd."""

    def __init__(self, client: EtcdClient, key: str) -> None:
        self.client, self.key = client, key

    def records(self) -> list[NodeRecord]:
        now_ms = round(time.time() * 1000)
        prefix = nodes_prefix(self.key)
        try:
            entries = self.client.get_prefix(prefix)
        except EtcdError as exc:
            return [NodeRecord(node=f"registry {self.client.url}", health="down", seen_ms=now_ms,
                               error=f"etcd unreachable: {exc}")]  # fmt: skip
        out = []
        for key, raw in entries:
            rec = read_node_record(key.removeprefix(prefix), raw, now_ms, "etcd")
            if rec is not None:  # (older than FORGET_MS: its lease is about to go)
                out.append(rec)
        return out

    def close(self) -> None:
        pass
