"""Cluster flow rules: several daemons, each in its own network namespaces with its own nginx and client,
sharing one threshold through a real redis-server on a Unix socket (namespaces share the filesystem)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from sentinel_ebpf.cluster.registry import RedisNodes
from sentinel_ebpf.dashboard.fleet import fleet_view
from tests.support.daemon_helpers import Daemon
from tests.support.netns import NetnsPair
from tests.support.nginx import hello_nginx
from tests.support.redisserver import RedisServer, require_redis
from tests.support.slowproxy import SlowProxy

pytestmark = pytest.mark.kernel
LOAD = Path(__file__).with_name("httpload.py")
THRESHOLD = 60  # per second, for the whole fleet
RULES = f"""
resources:
  - {{name: web, match: {{protocol: http, port: 8080, path: /}}}}
flowRules:
  - {{id: web-global, resource: web, threshold: {THRESHOLD}, clusterMode: true,
     clusterConfig: {{thresholdType: 1, fallbackToLocalWhenFail: true}}}}
"""


@dataclass
class Node:
    pair: NetnsPair
    daemon: Daemon

    def stats(self) -> dict[str, Any]:
        return self.daemon.stats()

    def passed(self) -> int:
        return int(self.stats()["resources"]["web"]["pass"])

    def cluster(self) -> dict[str, Any]:
        return self.stats()["cluster"]  # type: ignore[no-any-return]

    def load(self, seconds: float, rate: float) -> subprocess.Popen[str]:
        return self.pair.popen(self.pair.client, sys.executable, str(LOAD), self.pair.server_ip, "8080", "/",
                               str(seconds), "1000000", str(rate), stdout=subprocess.PIPE, text=True)  # fmt: skip


def pass_rate(node: Node, seconds: float) -> float:
    """Passes per second over about ``seconds``, after half a second to settle."""
    time.sleep(0.5)
    t0, p0 = time.monotonic(), node.passed()
    time.sleep(seconds)
    t1, p1 = time.monotonic(), node.passed()
    return (p1 - p0) / (t1 - t0)


def results(proc: subprocess.Popen[str]) -> dict[str, int]:
    out, _ = proc.communicate(timeout=60)
    return json.loads(out)["status"]  # type: ignore[no-any-return]


def start_nodes(stack: contextlib.ExitStack, url: str, app: str, count: int = 3) -> list[Node]:
    """``count`` nodes (namespace pair, nginx, daemon) on one --cluster URL and --app, once each sees them
    all live; closed by ``stack``."""
    nodes = []
    for _ in range(count):
        pair = stack.enter_context(NetnsPair())
        hello_nginx(pair, 8080)
        daemon = Daemon(pair, RULES, "--cluster", url, "--app", app)
        stack.callback(daemon.close)
        nodes.append(Node(pair, daemon))
    deadline = time.monotonic() + 10
    while any(n.cluster()["rules"][0]["live_nodes"] != count for n in nodes):
        assert time.monotonic() < deadline, [n.cluster() for n in nodes]
        time.sleep(0.2)
    return nodes


def app_name(request: pytest.FixtureRequest) -> str:
    return f"it-{request.node.name[:20]}-{time.monotonic_ns() % 10**6}"


def logged_at(line: str) -> float:
    """The wall-clock time of a daemon log line (its asctime, local time, to the millisecond)."""
    return datetime.strptime(" ".join(line.split()[:2]), "%Y-%m-%d %H:%M:%S,%f").timestamp()


@pytest.fixture
def fleet(request: pytest.FixtureRequest) -> Iterator[tuple[RedisServer, list[Node]]]:
    """Redis and three nodes on it."""
    require_redis()
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(RedisServer())
        yield redis, start_nodes(stack, redis.url, app_name(request))


def test_a_global_limit_holds_under_skewed_load(fleet: tuple[RedisServer, list[Node]]) -> None:
    redis, nodes = fleet
    seconds = 6.0
    rates = (300, 20, 10)  # one hot node, two light ones (each under an even third of 60)
    before = [n.passed() for n in nodes]
    procs = [n.load(seconds, rate) for n, rate in zip(nodes, rates, strict=True)]
    time.sleep(seconds / 2)
    shares = [n.cluster()["rules"][0]["share"] for n in nodes]
    outcomes = [results(p) for p in procs]
    passed = [n.passed() - b for n, b in zip(nodes, before, strict=True)]
    served = [o.get("200", 0) for o in outcomes]
    sent = [sum(o.values()) for o in outcomes]
    total = sum(passed)
    # the fleet admits the threshold per second (not 3x it, as three local rules would)
    assert THRESHOLD * seconds * 0.85 <= total <= THRESHOLD * seconds * 1.15, (passed, sent)
    assert served == passed, (served, passed)  # what the kernel counted is what the clients got
    # fairness: the light nodes get (nearly) all they ask for, the hot one the rest
    for i in (1, 2):
        assert passed[i] >= 0.85 * sent[i], (passed, sent)
    # max-min fair shares of the window's 60 (floored), each from its node's last renewal (the demand
    # estimates move a little between them): the light nodes' demands (about 20 and 10), the rest to the hot one
    assert abs(sum(shares) - THRESHOLD) <= 6 and shares[0] >= max(shares[1:]) and min(shares) > 0, shares
    assert passed[0] >= THRESHOLD * seconds - sent[1] - sent[2] - 0.15 * THRESHOLD * seconds, (passed, sent)
    view = nodes[0].cluster()
    assert view["state"] == "cluster"
    rule = view["rules"][0]
    assert (rule["rule"], rule["live_nodes"], rule["limit"], rule["fallback"]) == ("web-global", 3, 60, False)
    # every node registered itself: the dashboard's fleet view (--fleet) sums what the nodes counted
    registry = RedisNodes(redis.url, view["app"])
    time.sleep(1.5)  # the records are rewritten once a second: now they hold the load's last passes
    fleet_doc = fleet_view(registry.records())
    assert sorted((n["node"], n["health"]) for n in fleet_doc["nodes"]) == sorted(
        (n.cluster()["node"], "up") for n in nodes
    )
    assert fleet_doc["resources"]["web"]["pass"] == sum(n.passed() for n in nodes)
    assert fleet_doc["resources"]["web"]["nodes"] == 3 and fleet_doc["same_rules"]


def test_redis_stopped_then_back(fleet: tuple[RedisServer, list[Node]]) -> None:
    redis, nodes = fleet
    hot = nodes[0]
    proc = hot.load(9.0, 250)
    try:
        time.sleep(2.0)
        marks = [len(n.daemon.proc.stderr) for n in nodes]
        stopped = time.time()
        redis.stop()
        for n, mark in zip(nodes, marks, strict=True):
            line = n.daemon.wait_log(
                "Redis unreachable, enforcing 20 per 1000 ms locally", timeout=5, after=mark
            )
            assert logged_at(line) - stopped < 1.0, (line, stopped)  # each node, within a second
        outage = pass_rate(hot, 2.0)
        # still enforcing, locally: its share 60 / 3 live nodes = 20 per second, not everything nor nothing
        assert 12 <= outage <= 30, outage
        view = hot.cluster()
        assert view["state"] == "fallback" and view["rules"][0]["fallback"] is True
        assert view["rules"][0]["local_threshold"] == 20
        marks = [len(n.daemon.proc.stderr) for n in nodes]
        redis.start()
        for n, mark in zip(nodes, marks, strict=True):
            n.daemon.wait_log("back in the cluster", timeout=5, after=mark)
        back = pass_rate(hot, 2.0)
        # the only node with demand gets the whole global threshold again
        assert 0.8 * THRESHOLD <= back <= 1.2 * THRESHOLD, back
        assert hot.cluster()["rules"][0]["live_nodes"] == 3
    finally:
        results(proc)


def test_without_fallback_the_rules_requests_pass_while_redis_is_away(fresh_netns_pair: NetnsPair) -> None:
    require_redis()
    pair = fresh_netns_pair
    hello_nginx(pair, 8080)
    rules = RULES.replace("fallbackToLocalWhenFail: true", "fallbackToLocalWhenFail: false")
    with RedisServer() as redis:
        # a lease call on this busy machine may take more than the default 50 ms; without fallback a slow
        # call would let everything pass, which is not what this test looks at (Redis stopped is)
        daemon = Daemon(pair, rules, "--cluster", redis.url, "--app", f"it-nofallback-{time.monotonic_ns()}",
                        "--cluster-timeout", "1000")  # fmt: skip
        node = Node(pair, daemon)
        try:
            proc = node.load(6.0, 150)
            try:
                renewals = node.cluster()["renewals"]
                # in the cluster: limited. A sample that spans a window boundary may also hold the tokens
                # leased at the end of the window before (up to one lease horizon, 0.3 s of the 150/s
                # demand): at most (2.0 x 60 + 45) / 2.0 = 82.5 per second, far below the 150 offered
                assert pass_rate(node, 2.0) <= THRESHOLD * 1.4
                view = node.cluster()
                assert (view["state"], view["last_error"]) == ("cluster", None), view
                assert view["renewals"] > renewals  # leased all along
                mark = len(daemon.proc.stderr)
                redis.stop()
                daemon.wait_log("letting its requests pass (fallbackToLocalWhenFail is false)", 5, mark)
                assert pass_rate(node, 1.5) >= 150 * 0.8  # everything offered passes, nothing is blocked
            finally:
                results(proc)
        finally:
            daemon.close()


def test_a_slow_redis_is_left_for_local_enforcement_and_rejoined(request: pytest.FixtureRequest) -> None:
    """Redis answers, but later than the lease call's 50 ms: every node falls back within a second and
    enforces its share locally, then rejoins by itself once Redis is fast again."""
    require_redis()
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(RedisServer())
        proxy = stack.enter_context(SlowProxy(redis.socket))
        nodes = start_nodes(stack, proxy.url, app_name(request), count=2)
        hot = nodes[0]
        proc = hot.load(9.0, 250)
        try:
            time.sleep(1.5)
            assert [n.cluster()["state"] for n in nodes] == ["cluster", "cluster"]
            marks = [len(n.daemon.proc.stderr) for n in nodes]
            slowed = time.time()
            proxy.delay_s = 0.08
            for n, mark in zip(nodes, marks, strict=True):
                line = n.daemon.wait_log("Redis unreachable, enforcing 30 per 1000 ms locally", 5, mark)
                assert logged_at(line) - slowed < 1.0, (line, slowed)
            view = hot.cluster()
            assert view["state"] == "fallback" and view["last_error"], view
            assert view["rules"][0]["local_threshold"] == 30
            outage = pass_rate(hot, 2.0)
            assert 20 <= outage <= 40, outage  # its share, 60 / 2 live nodes, locally
            marks = [len(n.daemon.proc.stderr) for n in nodes]
            proxy.delay_s = 0.0
            for n, mark in zip(nodes, marks, strict=True):
                n.daemon.wait_log("back in the cluster", timeout=5, after=mark)
            assert 0.8 * THRESHOLD <= pass_rate(hot, 2.0) <= 1.2 * THRESHOLD
        finally:
            results(proc)
