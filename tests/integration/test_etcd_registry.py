"""The fleet registry in etcd (``dashboard --fleet etcd://HOST:PORT/KEY``): daemons that read their rules
from an etcd key register under KEY/nodes/ with a lease; the dashboard's node source reads, ages and
drops them. A real etcd (Debian's etcd-server) on loopback ports of the host's namespace; the daemon's
own registration is in test_daemon_etcd.py."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sentinel_ebpf.dashboard.fleet import fleet_view
from sentinel_ebpf.sources.etcd import EtcdClient
from sentinel_ebpf.sources.etcd_registry import EtcdNodes, EtcdRegistrar, nodes_prefix
from sentinel_ebpf.sources.url import parse_etcd_url
from sentinel_ebpf.stats import STALE_MS, NodeRecord
from tests.support.etcd_server import EtcdServer

KEY = "/sentinel/rules"


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    with EtcdServer(tmp_path) as server:
        yield server


def client(etcd: EtcdServer) -> EtcdClient:
    return EtcdClient(parse_etcd_url(etcd.url(KEY)))


def record(node: str, age_ms: int = 0, passed: int = 7) -> NodeRecord:
    now_ms = round(time.time() * 1000)
    return NodeRecord(node=node, health="up", version="0.1.0", rules_revision="3", seen_ms=now_ms - age_ms,
                      resources={"web": {"pass": passed, "block": 0, "complete": passed, "error": 0,
                                         "concurrency": 0, "pass_qps": 1, "block_qps": 0}})  # fmt: skip


def test_nodes_register_and_are_read_aged_and_summed(etcd: EtcdServer) -> None:
    c = client(etcd)
    EtcdRegistrar(c, KEY, "a", lambda n: record(n, 0, 10)).publish()
    EtcdRegistrar(c, KEY, "b", lambda n: record(n, 0, 20)).publish()
    EtcdRegistrar(c, KEY, "stale", lambda n: record(n, STALE_MS + 1000, 30)).publish()
    c.put_key(nodes_prefix(KEY) + "garbled", b"{not json")
    c.put_key("/sentinel/rules2/nodes/other", b"{}")  # another key's fleet
    got = {r.node: r for r in EtcdNodes(c, KEY).records()}
    assert sorted(got) == ["a", "b", "garbled", "stale"]
    assert [got[n].health for n in ("a", "b", "garbled", "stale")] == ["up", "up", "down", "down"]
    assert "unreadable record in etcd" in (got["garbled"].error or "")
    assert "no record from the node for 4 s" in (got["stale"].error or "")
    view = fleet_view(list(got.values()))
    assert view["resources"]["web"]["pass"] == 30 and view["resources"]["web"]["nodes"] == 2


def test_a_record_goes_with_its_lease_and_comes_back_on_a_new_one(etcd: EtcdServer) -> None:
    c = client(etcd)
    reg = EtcdRegistrar(c, KEY, "n1", record, ttl_s=2)
    reg.publish()
    first = reg.lease
    reg.publish()  # renewed, not a new lease per write
    assert reg.lease == first and [r.node for r in EtcdNodes(c, KEY).records()] == ["n1"]
    deadline = time.monotonic() + 10
    while EtcdNodes(c, KEY).records() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert EtcdNodes(c, KEY).records() == [], "etcd kept the record after its lease expired"
    reg.publish()  # a node that lost etcd longer than its lease registers again
    assert reg.lease != first and [r.node for r in EtcdNodes(c, KEY).records()] == ["n1"]


def test_the_registrar_thread_writes_every_second_and_stops(etcd: EtcdServer) -> None:
    c = client(etcd)
    seen: list[int] = []

    def rec(node: str) -> NodeRecord:
        seen.append(1)
        return record(node, 0, len(seen))

    reg = EtcdRegistrar(c, KEY, "n1", rec, every_ms=200)
    reg.start()
    time.sleep(1.1)
    reg.close()
    written = len(seen)
    assert 3 <= written <= 7, written
    [node] = EtcdNodes(c, KEY).records()
    assert node.resources["web"]["pass"] == written
    time.sleep(0.5)
    assert len(seen) == written  # stopped


def test_an_unreachable_registry_is_one_node_down_with_the_reason() -> None:
    c = EtcdClient(parse_etcd_url("etcd://127.0.0.1:1/sentinel/rules"), timeout_s=0.5)
    [rec] = EtcdNodes(c, KEY).records()
    assert rec.health == "down" and rec.node == "registry etcd://127.0.0.1:1/sentinel/rules"
    assert "etcd unreachable" in (rec.error or "")
