"""The node registry in Redis behind ``dashboard --fleet``: records written, read, aged and forgotten."""

from __future__ import annotations

import time

from sentinel_ebpf.cluster import ClusterClient, RedisLeaseStore
from sentinel_ebpf.cluster.registry import FORGET_MS, STALE_MS, RedisNodes, publish, registry_key
from sentinel_ebpf.dashboard.fleet import fleet_view
from sentinel_ebpf.stats import NodeRecord
from tests.support.redisserver import RedisServer


def record(node: str, age_ms: int, passed: int) -> NodeRecord:
    now_ms = round(time.time() * 1000)
    return NodeRecord(node=node, health="up", version="0.1.0", rules_revision="r1", seen_ms=now_ms - age_ms,
                      resources={"web": {"pass": passed, "block": 1, "complete": passed, "error": 0,
                                         "concurrency": 0, "pass_qps": 5, "block_qps": 0}})  # fmt: skip


def test_records_are_read_aged_and_forgotten(redis_server: RedisServer) -> None:
    store = RedisLeaseStore(redis_server.url, "shop", 1.0)
    client = store.client()
    try:
        publish(client, "shop", record("a", 0, 10))
        publish(client, "shop", record("b", 200, 20))
        publish(client, "shop", record("stale", STALE_MS + 1000, 30))
        publish(client, "shop", record("gone", FORGET_MS + 1000, 40))
        publish(client, "other-app", record("c", 0, 50))
        nodes = RedisNodes(redis_server.url, "shop")
        got = {r.node: r for r in nodes.records()}
        assert sorted(got) == ["a", "b", "stale"]
        assert (got["a"].health, got["b"].health, got["stale"].health) == ("up", "up", "down")
        assert "no record from the node for 4 s" in (got["stale"].error or "")
        assert not client.hexists(registry_key("shop"), "gone")  # removed from Redis, not only hidden
        view = fleet_view(list(got.values()))
        assert view["resources"]["web"]["pass"] == 30 and view["resources"]["web"]["nodes"] == 2
        nodes.close()
    finally:
        store.close()


def test_a_cluster_client_registers_its_node(redis_server: RedisServer) -> None:
    store = RedisLeaseStore(redis_server.url, "shop", 1.0)
    client = ClusterClient(store, app="shop", node_id="n1", record=lambda node: record(node, 0, 7))
    try:
        client._publish()
        [rec] = RedisNodes(redis_server.url, "shop").records()
        assert (rec.node, rec.health, rec.resources["web"]["pass"]) == ("n1", "up", 7)
    finally:
        store.close()


def test_an_unreachable_registry_is_one_node_down_with_the_reason() -> None:
    [rec] = RedisNodes("redis://127.0.0.1:1", "shop", timeout_s=0.5).records()
    assert rec.health == "down" and rec.node == "registry redis://127.0.0.1:1"
    assert "Redis unreachable: ConnectionError" in (rec.error or "")
