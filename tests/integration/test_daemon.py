"""`sentinel-ebpf run` end to end in network namespaces: enforcement, stats, metric log and Prometheus
agreeing with what clients saw, and nothing left after SIGTERM, or after kill -9 and `down` (reloads are in
test_daemon_reload.py)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from sentinel_ebpf.enforce.loader import TC_PRIORITY
from tests.support.background import sentinel_cli
from tests.support.daemon_helpers import LOAD, Daemon, load
from tests.support.netns import CLEAN_ENV, NetnsPair

pytestmark = pytest.mark.kernel
RULES = """
resources:
  - {name: limited, match: {protocol: http, port: 8000, path: /limited}}
  - {name: free, match: {protocol: http, port: 8000, path: /free}}
flowRules:
  - {resource: limited, threshold: THRESHOLD, statIntervalInMs: 1000}
"""


@pytest.fixture
def served(fresh_netns_pair: NetnsPair) -> Iterator[NetnsPair]:
    fresh_netns_pair.start_http_server(8000)
    yield fresh_netns_pair


@pytest.fixture
def daemon(served: NetnsPair) -> Iterator[Daemon]:
    with Daemon(served, RULES.replace("THRESHOLD", "5")) as d:
        yield d


def test_qps_rule_stats_metric_log_and_prometheus_agree(daemon: Daemon) -> None:
    pair = daemon.pair
    limited = load(pair, "/limited", 3.0)
    free = load(pair, "/free", 1.0)
    assert free["served"] > 20 and free["429"] == free["reset"] == free["error"] == 0, free  # untouched
    assert limited["429"] > limited["served"] > 0 and limited["reset"] == limited["error"] == 0, limited
    assert limited["served"] <= 5 * 4 + 1  # at most the threshold per second over the ~3 s window
    doc = daemon.stats()["resources"]
    assert doc["limited"]["pass"] == limited["served"] and doc["limited"]["block"] == limited["429"]
    assert doc["limited"]["block_by_type"]["flow"] == limited["429"]
    assert doc["free"]["pass"] == free["served"] and doc["free"]["block"] == 0
    scraped = daemon.scrape()
    assert (
        scraped[("limited", "pass")] == limited["served"] and scraped[("limited", "block")] == limited["429"]
    )
    # the metric log: one line per resource per completed second; the last second is written within ~2 s
    expected = {
        "limited": [doc["limited"]["pass"], doc["limited"]["block"]],
        "free": [doc["free"]["pass"], 0],
    }
    deadline = time.monotonic() + 5
    while (sums := _metric_log_sums(daemon)) != expected and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sums == expected


def _metric_log_sums(daemon: Daemon) -> dict[str, list[int]]:
    sums = {"limited": [0, 0], "free": [0, 0]}
    for resource, seconds in daemon.metric_log().items():
        for passed, blocked in seconds:
            sums[resource][0] += passed
            sums[resource][1] += blocked
    return sums


def _top_rows(out: str) -> dict[str, list[float]]:
    """resource -> [pass, block, complete, error] per second, from top's table."""
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in re.split(r"[│|]", line) if c.strip()]
        if len(cells) >= 5 and cells[0] in ("limited", "free"):
            rows[cells[0]] = [float(c) for c in cells[1:5]]
    return rows


def test_top_shows_rates(daemon: Daemon) -> None:
    """Paced clients (20/s to /limited with its 5/s rule, 10/s to /free) run throughout top's interval:
    top's rates must be those."""
    pair = daemon.pair
    loads = []
    for path, rate in (("/limited", 20), ("/free", 10)):
        argv = [sys.executable, str(LOAD), pair.server_ip, "8000", path, "12", "1000", str(rate)]
        loads.append(pair.popen(pair.client, *argv, stdout=subprocess.DEVNULL))
    deadline = time.monotonic() + 10
    while daemon.stats()["resources"]["free"]["pass"] < 5:  # both clients are under way
        assert time.monotonic() < deadline and all(p.poll() is None for p in loads), (
            "the clients did not start"
        )
        time.sleep(0.1)
    res = subprocess.run([*sentinel_cli(), "top", "--count", "1", "--interval", "3", "--control-socket",
                          daemon.socket], capture_output=True, text=True, timeout=60,
                         env={**CLEAN_ENV, "COLUMNS": "200"})  # fmt: skip
    assert all(p.poll() is None for p in loads), "a client stopped before top's interval ended"
    assert res.returncode == 0, res.stderr
    assert "per second" in res.stdout, res.stdout
    rows = _top_rows(res.stdout)
    limited_pass, limited_block = rows["limited"][:2]
    free_pass, free_block = rows["free"][:2]
    # over 3 s the 5/s rule lets 10 to 20 through (windows need not line up with top's); pacing is loose
    assert 3.0 <= limited_pass <= 7.0 and 10.0 <= limited_block <= 20.0, res.stdout
    assert 7.0 <= free_pass <= 13.0 and free_block == 0.0, res.stdout
    # each request is answered: complete follows pass (the handler is fast)
    assert abs(rows["free"][2] - free_pass) <= 1.0, res.stdout


def _tc_left(pair: NetnsPair) -> str:
    out = pair.run(pair.server, "tc", "qdisc", "show", "dev", pair.server_if).stdout
    for direction in ("ingress", "egress"):
        out += pair.run(pair.server, "tc", "filter", "show", "dev", pair.server_if, direction).stdout
    return out


def test_sigterm_leaves_nothing(daemon: Daemon) -> None:
    assert "clsact" in _tc_left(daemon.pair)
    daemon.proc.signal(signal.SIGTERM)
    assert daemon.proc.wait_exit(20) == 0
    left = _tc_left(daemon.pair)
    assert "clsact" not in left and "bpf" not in left, left
    assert not (daemon.dir / "state" / "state.json").exists()


def test_kill_9_then_down_leaves_nothing(daemon: Daemon) -> None:
    pair = daemon.pair
    daemon.proc.signal(signal.SIGKILL)
    daemon.proc.wait_exit(20)
    assert "clsact" in _tc_left(pair), "TC filters outlive a killed process (that is what down is for)"
    res = pair.run(pair.server, *sentinel_cli(), "down", "--state-dir", str(daemon.dir / "state"))
    assert res.returncode == 0, res.stderr
    assert "removed tc filter" in res.stdout and "removed clsact qdisc" in res.stdout
    left = _tc_left(pair)
    assert "clsact" not in left and "bpf" not in left, left
    again = pair.run(pair.server, *sentinel_cli(), "down", "--state-dir", str(daemon.dir / "state"))
    assert again.returncode == 0 and "nothing to remove" in again.stdout


def test_restart_after_kill_9_resumes_the_counters_and_leaves_nothing(served: NetnsPair) -> None:
    """kill -9 under load: the crashed daemon's TC programs keep enforcing the last rules, and counting,
    and no request fails; the next daemon adopts their maps, so every request is in its statistics
    (before, during and after the crash), and when it stops it removes the clsact qdisc the crashed one
    created."""
    rules = RULES.replace("THRESHOLD", "5")
    first = Daemon(served, rules)
    during: dict[str, int] = {}
    loader = threading.Thread(target=lambda: during.update(load(served, "/free", 1.5)))
    loader.start()
    time.sleep(0.5)
    first.proc.signal(signal.SIGKILL)
    first.proc.wait_exit(20)
    loader.join(60)
    assert during["served"] > 0 and during["429"] == during["reset"] == during["error"] == 0, during
    limited = load(served, "/limited", 1.0)
    assert limited["429"] > 0, "the last rules stay in force after a crash"
    new = "\n  - {name: new, match: {protocol: http, port: 8000, path: /new}}"
    second = Daemon(served, rules.replace("/free}}", "/free}}" + new))
    try:
        second.wait_log("taking over from a daemon that did not stop cleanly")
        second.wait_log("resumed the crashed daemon's statistics")
        after = load(served, "/free", 0.5)
        doc = second.stats()["resources"]
        assert doc["free"]["pass"] == during["served"] + after["served"], (during, after)
        assert (doc["limited"]["pass"], doc["limited"]["block"]) == (limited["served"], limited["429"])
        assert doc["new"]["pass"] == 0
        second.proc.signal(signal.SIGTERM)
        assert second.proc.wait_exit(20) == 0
    finally:
        second.close()
    left = _tc_left(served)
    assert "clsact" not in left and "bpf" not in left, left


def test_a_clsact_qdisc_that_was_there_stays_with_its_other_filters(served: NetnsPair) -> None:
    pair = served
    dev = pair.server_if
    pair.run(pair.server, "tc", "qdisc", "add", "dev", dev, "clsact", check=True)
    foreign = ("tc", "filter", "add", "dev", dev, "ingress", "prio", "7", "handle", "1", "bpf", "bytecode",
               "1,6 0 0 4294967295,", "classid", "1:1")  # fmt: skip
    pair.run(pair.server, *foreign, check=True)
    ours = f"pref {TC_PRIORITY} "
    for crash in (False, True):
        d = Daemon(pair, RULES.replace("THRESHOLD", "5"))
        try:
            assert ours in _tc_left(pair)
            if crash:
                d.proc.signal(signal.SIGKILL)
                d.proc.wait_exit(20)
                res = pair.run(pair.server, *sentinel_cli(), "down", "--state-dir", str(d.dir / "state"))
                assert res.returncode == 0 and "removed tc filter" in res.stdout, res
                assert "clsact" not in res.stdout, res.stdout  # not ours to remove
            else:
                d.proc.signal(signal.SIGTERM)
                assert d.proc.wait_exit(20) == 0
        finally:
            d.close()
        left = _tc_left(pair)
        assert "clsact" in left and "pref 7 bpf" in left and ours not in left, left
