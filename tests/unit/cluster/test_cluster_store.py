"""The lease script and connections against a real redis-server (Unix socket, loopback, Redis Cluster)."""

from __future__ import annotations

import math
import random
import time

import pytest
import redis
from redis.cluster import RedisCluster

from sentinel_ebpf.cluster.store import LeaseRequest, RedisLeaseStore, check_url, connect, redacted
from sentinel_ebpf.errors import SentinelError
from tests.support.redisserver import RedisClusterServers, RedisServer, free_port, require_redis

NO_PACING = 60_000  # a lease horizon as long as the tests' windows: all of a share at once


def ask(want: int, demand: float, *, threshold: float = 100, ttype: int = 1, debt: int = 0,
        interval_ms: int = 60000, key: str = "web#0", held: int = 0, window: int = -1) -> list[LeaseRequest]:  # fmt: skip
    # a 60 s window: the tests run inside one window (or wait for the next one on purpose)
    return [LeaseRequest(key, interval_ms, threshold, ttype, want + held, held, window, debt, demand)]


def test_fair_shares_and_the_global_cap(redis_server: RedisServer) -> None:
    store = RedisLeaseStore(redis_server.url, "app", 0.5, NO_PACING)
    _, [a] = store.lease("A", 5000, ask(80, demand=1000))
    assert (a.live_nodes, a.limit, a.share, a.grant) == (1, 100, 100, 80)  # alone: all of it
    _, [b] = store.lease("B", 5000, ask(30, demand=20))
    # B asks less than an even split: its share is its demand, A's the rest (max-min fairness)
    assert (b.live_nodes, b.share, b.grant) == (2, 20, 20)
    _, [a] = store.lease("A", 5000, ask(80, demand=1000))
    assert (a.share, a.grant, a.taken) == (80, 0, 80)  # at its share, and B's needs are kept for B
    _, [b] = store.lease("B", 5000, ask(30, demand=20))
    assert b.grant == 0  # at its share, nothing free beyond what is kept for A


def test_grants_are_paced_over_the_window(redis_server: RedisServer) -> None:
    store = RedisLeaseStore(redis_server.url, "app", 0.5, horizon_ms=6000)
    _, [r] = store.lease("A", 5000, ask(1000, demand=1000))
    # by the window's elapsed fraction plus one horizon (6 s of 60 s): never the whole limit at once
    pace = min(1.0, (60000 - r.left_ms + 6000) / 60000)
    assert abs(r.grant - 100 * pace) <= 1, (r, pace)
    _, [r2] = store.lease("A", 5000, ask(1000, demand=1000, held=r.grant, window=r.window))
    assert r2.grant <= 1  # nothing more until the window moves on


def test_near_a_windows_end_only_what_is_left_of_it_is_kept_for_the_others(redis_server: RedisServer) -> None:
    """A reserve nobody takes by the window's end is lost: the last renewals keep for another node what
    its demand needs until then, not a whole horizon's worth (the fleet admitted 2-5% under the limit)."""
    one_s = {"interval_ms": 1000}
    for attempt in range(5):  # a sleep that overshoots into the next window: again, in a fresh app
        store = RedisLeaseStore(redis_server.url, f"app{attempt}", 0.5, horizon_ms=300)
        _, [b] = store.lease("B", 5000, ask(0, demand=50, **one_s))  # B: a share of 50, nothing taken yet
        if b.left_ms <= 150:  # too late in this window to aim
            time.sleep((b.left_ms + 10) / 1000)
            continue
        time.sleep((b.left_ms - 80) / 1000)
        _, [a] = store.lease("A", 5000, ask(1000, demand=1000, **one_s))
        if a.left_ms < 300 and a.window == b.window:
            break
    else:
        pytest.fail(f"never 80 ms before a window's end: {a}, {b}")
    # B may still need 50/s for what is left of the window; A takes the rest
    assert a.grant == math.floor(100 - 50 * a.left_ms / 1000), a


def test_a_node_without_demand_does_not_hold_back_the_others(redis_server: RedisServer) -> None:
    store = RedisLeaseStore(redis_server.url, "app", 0.5, NO_PACING)
    store.lease("idle", 5000, ask(0, demand=0))
    _, [a] = store.lease("A", 5000, ask(500, demand=1000))
    assert (a.live_nodes, a.grant) == (2, 100)


def test_grants_never_exceed_the_limit_in_a_window(redis_server: RedisServer) -> None:
    store = RedisLeaseStore(redis_server.url, "app", 0.5, NO_PACING)
    rnd = random.Random(7)
    granted = 0
    for _ in range(200):
        node = f"n{rnd.randrange(8)}"
        _, [r] = store.lease(node, 5000, ask(rnd.randrange(40), demand=rnd.uniform(0, 300), threshold=1000))
        granted += r.grant
    assert granted == 1000  # demand far above the limit: all of it, never more


def test_debt_counts_against_the_window(redis_server: RedisServer) -> None:
    store = RedisLeaseStore(redis_server.url, "app", 0.5, NO_PACING)
    store.lease("A", 5000, ask(90, demand=100))
    _, [r] = store.lease("A", 5000, ask(0, demand=100, debt=7))
    assert r.taken == 97
    _, [r] = store.lease("A", 5000, ask(50, demand=100))
    assert r.grant == 3


def test_tokens_held_and_spare_ones_given_back(redis_server: RedisServer) -> None:
    store = RedisLeaseStore(redis_server.url, "app", 0.5, NO_PACING)
    _, [r] = store.lease("A", 5000, ask(60, demand=100))
    w = r.window
    # holding 20 of this window and wanting 30 in all: 10 more
    _, [r] = store.lease("A", 5000, [LeaseRequest("web#0", 60000, 100, 1, 30, 20, w, 0, 100)])
    assert (r.grant, r.taken) == (10, 70)
    # 20 held from an older window are held all the same (counted there): 10 more
    _, [r] = store.lease("A", 5000, [LeaseRequest("web#0", 60000, 100, 1, 30, 20, w - 1, 0, 100)])
    assert (r.grant, r.taken) == (10, 80)
    # demand fell: holding 50 while wanting 5, it gives 45 back, which another node can then take
    _, [r] = store.lease("A", 5000, [LeaseRequest("web#0", 60000, 100, 1, 5, 50, w, 0, 10)])
    assert (r.grant, r.taken) == (-45, 35)
    _, [b] = store.lease("B", 5000, ask(100, demand=1000))
    assert b.grant == 65


def test_per_node_threshold_times_live_nodes(redis_server: RedisServer) -> None:
    store = RedisLeaseStore(redis_server.url, "app", 0.5, NO_PACING)
    for node in ("A", "B", "C"):
        _, [r] = store.lease(node, 5000, ask(0, demand=0, ttype=0))
    assert (r.live_nodes, r.limit) == (3, 300)


def test_heartbeats_expire(redis_server: RedisServer) -> None:
    store = RedisLeaseStore(redis_server.url, "app", 0.5, NO_PACING)
    store.lease("gone", 200, ask(0, demand=0))
    _, [r] = store.lease("A", 200, ask(0, demand=0))
    assert r.live_nodes == 2
    time.sleep(0.3)
    _, [r] = store.lease("A", 200, ask(0, demand=0))
    assert r.live_nodes == 1
    nodes_key = store.keys("web#0")[0]
    assert redis.Redis(unix_socket_path=str(redis_server.socket)).hkeys(nodes_key) == [b"A"]


def test_a_new_window_starts_from_zero(redis_server: RedisServer) -> None:
    store = RedisLeaseStore(redis_server.url, "app", 0.5, NO_PACING)
    _, [r1] = store.lease("A", 5000, ask(1000, demand=1000, interval_ms=200))
    time.sleep(0.25)
    _, [r2] = store.lease("A", 5000, ask(1000, demand=1000, interval_ms=200))
    assert r2.window > r1.window and r1.grant == r2.grant == 100 and r2.taken == 100


def test_several_rules_in_one_round_trip_and_apps_apart(redis_server: RedisServer) -> None:
    store = RedisLeaseStore(redis_server.url, "app", 0.5, NO_PACING)
    other = RedisLeaseStore(redis_server.url, "other-app", 0.5, NO_PACING)
    _, replies = store.lease("A", 5000, ask(70, 100) + ask(5, 10, threshold=10, key="api"))
    assert [r.grant for r in replies] == [70, 5] and store.calls == 1
    _, [r] = other.lease("A", 5000, ask(100, 100))
    assert r.grant == 100  # another app shares nothing


def test_loopback_url_and_a_stopped_server() -> None:
    require_redis()
    with RedisServer(port=free_port()) as server:
        store = RedisLeaseStore(server.url, "app", 0.05, NO_PACING)
        assert store.lease("A", 5000, ask(10, 10))[1][0].grant == 10
        server.stop()
        start = time.monotonic()
        with pytest.raises(redis.ConnectionError):
            store.lease("A", 5000, ask(10, 10))
        assert time.monotonic() - start < 0.5  # no retries: the node can fall back at once
        server.start()
        assert store.lease("A", 5000, ask(10, 10))[1][0].live_nodes == 1  # reconnects by itself


def test_tls() -> None:
    require_redis()
    with RedisServer(port=free_port(), tls=True) as server:
        assert server.url.startswith("rediss://")
        store = RedisLeaseStore(server.url, "app", 0.5, NO_PACING)
        assert store.lease("A", 5000, ask(10, 10))[1][0].grant == 10
        store.close()


def test_a_paused_server_times_out_within_the_limit(redis_server: RedisServer) -> None:
    store = RedisLeaseStore(redis_server.url, "app", 0.05, NO_PACING)
    store.lease("A", 5000, ask(1, 1))
    redis_server.pause()
    try:
        start = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            store.lease("A", 5000, ask(1, 1))
        assert time.monotonic() - start < 0.3
    finally:
        redis_server.resume()


@pytest.mark.parametrize("listed", [True, False])
def test_redis_cluster(listed: bool) -> None:
    require_redis()
    with RedisClusterServers(3) as servers:
        url = servers.url if listed else f"redis://127.0.0.1:{servers.nodes[1].port}"
        assert isinstance(connect(url, 5.0), RedisCluster)  # several hosts, or detected from one
        store = RedisLeaseStore(url, "app", 5.0, NO_PACING)
        _, [r] = store.lease("A", 5000, ask(60, 100))
        _, [r] = store.lease("B", 5000, ask(60, 100))
        assert (r.live_nodes, r.grant) == (2, 40)
        store.close()


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://x:1", "scheme must be"),
        ("redis://", "no host"),
        ("unix://", "socket path"),
    ],
)
def test_bad_urls(url: str, reason: str) -> None:
    with pytest.raises(SentinelError, match=reason):
        check_url(url)


def test_redacted() -> None:
    assert redacted("redis://user:secret@h:1/0") == "redis://user:***@h:1/0"
    assert redacted("rediss://:secret@h:1") == "rediss://:***@h:1"
    assert redacted("unix:///x.sock") == "unix:///x.sock"
