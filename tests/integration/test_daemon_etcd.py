"""Rules from etcd reach a running daemon: new revisions are applied (checked by traffic and by
``stats --json``), an invalid one keeps the rules in force, an etcd outage changes nothing enforced, and
a daemon started while etcd is down enforces the cached revision, then follows etcd when it returns.

etcd runs inside the server namespace on its 127.0.0.1:2379, where the daemon (attached to the veth
only) reaches it; pushes run there too, through the CLI. For two daemons at once, etcd also listens on
the server's veth address, which the daemon in the client namespace uses.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from sentinel_ebpf.daemon import request
from sentinel_ebpf.stats import STALE_MS
from tests.support.background import sentinel_cli
from tests.support.daemon_helpers import LOAD, Daemon, load
from tests.support.etcd_server import EtcdServer
from tests.support.netns import NetnsPair

pytestmark = pytest.mark.kernel
KEY = "/sentinel/rules"
RULES = """
resources:
  - {name: limited, match: {protocol: http, port: 8000, path: /limited}}
flowRules:
  - {resource: limited, threshold: THRESHOLD, statIntervalInMs: 1000}
"""
RAW_PUT = (
    "import sys; from sentinel_ebpf.sources.etcd import EtcdClient; "
    "from sentinel_ebpf.sources.url import parse_etcd_url; "
    "print(EtcdClient(parse_etcd_url(sys.argv[1])).put(sys.stdin.buffer.read()))"
)


@pytest.fixture
def fleet(fresh_netns_pair: NetnsPair) -> Iterator[tuple[NetnsPair, EtcdServer]]:
    pair = fresh_netns_pair
    pair.start_http_server(8000)
    etcd = EtcdServer(pair.tmpdir, pair=pair).start()
    try:
        yield pair, etcd
    finally:
        etcd.stop()


@pytest.fixture
def following(fleet: tuple[NetnsPair, EtcdServer]) -> Iterator[tuple[NetnsPair, EtcdServer, int, Daemon]]:
    """The key at a first revision (threshold 5) and a daemon following it: the pair, etcd, that
    revision and the daemon."""
    pair, etcd = fleet
    r1 = push(pair, etcd, 5)
    with Daemon(pair, "", source=etcd.url(KEY)) as d:
        yield pair, etcd, r1, d


def push(pair: NetnsPair, etcd: EtcdServer, threshold: int) -> int:
    path = pair.tmpdir / f"push-{threshold}.yaml"
    path.write_text(RULES.replace("THRESHOLD", str(threshold)))
    res = pair.run(pair.server, *sentinel_cli(), "rules", "push", str(path), etcd.url(KEY))
    assert res.returncode == 0, res.stderr
    return int(re.search(r"revision (\d+)", res.stdout).group(1))  # type: ignore[union-attr]


def put_raw(pair: NetnsPair, etcd: EtcdServer, text: str) -> int:
    """Write without validation, as another tool (etcdctl) could."""
    res = pair.run(pair.server, sys.executable, "-c", RAW_PUT, etcd.url(KEY), input=text)
    assert res.returncode == 0, res.stderr
    return int(res.stdout)


def source(d: Daemon) -> dict[str, object]:
    src: dict[str, object] = d.stats()["rules_source"]
    return src


def wait_source(d: Daemon, timeout_s: float = 5.0, **want: object) -> dict[str, object]:
    """``rules_source`` once it shows ``want``: the log line of a reload comes just before the daemon
    records what it put in force."""
    deadline = time.monotonic() + timeout_s
    while True:
        src = source(d)
        if all(src[k] == v for k, v in want.items()) or time.monotonic() > deadline:
            assert {k: src[k] for k in want} == want, src
            return src
        time.sleep(0.05)


def test_revisions_reach_the_daemon_and_an_invalid_one_keeps_the_rules(
    following: tuple[NetnsPair, EtcdServer, int, Daemon],
) -> None:
    pair, etcd, r1, d = following
    src = source(d)
    assert (src["kind"], src["url"], src["revision"], src["from_cache"], src["etcd"]) == (
        "etcd", etcd.url(KEY), r1, False, "connected"
    )  # fmt: skip
    before = load(pair, "/limited", 1.2)
    assert 0 < before["served"] <= 12 and before["429"] > 0, before

    counted = d.stats()["resources"]["limited"]
    mark = len(d.proc.stderr)
    pushed_at = time.time()
    r2 = push(pair, etcd, 40)
    d.wait_log(f"@{r2}: applied", after=mark)
    src = wait_source(d, revision=r2)
    assert float(src["applied_at"]) >= pushed_at - 1  # type: ignore[arg-type]
    # the resource itself is unchanged (only its rule's threshold): its statistics go on, as after a file edit
    kept_counts = d.stats()["resources"]["limited"]
    assert (kept_counts["pass"], kept_counts["block"]) == (counted["pass"], counted["block"]), (
        counted,
        kept_counts,
    )
    time.sleep(1.1)  # a fresh window
    after = load(pair, "/limited", 1.0)
    assert after["served"] > before["served"] + 10, (before, after)

    mark = len(d.proc.stderr)
    r3 = put_raw(pair, etcd, RULES.replace("THRESHOLD", "-1"))
    d.wait_log(f"@{r3} is invalid; the rules in force stay", after=mark)
    problem = d.wait_log(f"{etcd.url(KEY)}@{r3}:", after=mark)  # each problem names the revision
    assert "threshold" in problem, problem
    time.sleep(1.1)
    kept = load(pair, "/limited", 1.0)
    assert kept["served"] > 20 and kept["429"] > 0, kept  # still 40/s
    src = source(d)
    assert (src["revision"], src["latest_revision"]) == (r2, r3)
    rules = request(d.socket, "rules")
    assert rules["rules_source"]["revision"] == r2 and rules["document"]["flowRules"][0]["threshold"] == 40


def test_etcd_outage_keeps_enforcing_and_a_restart_without_etcd_uses_the_cache(
    fleet: tuple[NetnsPair, EtcdServer],
) -> None:
    pair, etcd = fleet
    r1 = push(pair, etcd, 5)
    with Daemon(pair, "", source=etcd.url(KEY)) as d:
        mark = len(d.proc.stderr)
        etcd.stop()
        d.wait_log(f"the rules in force stay (revision {r1}); retrying with backoff", after=mark)
        out = load(pair, "/limited", 1.2)
        assert 0 < out["served"] <= 12 and out["429"] > 0, out
        assert source(d)["etcd"] == "unreachable"
        # several retries have failed by now (backoff from 0.2 s): the state change was logged once
        assert sum("retrying with backoff" in ln for ln in d.proc.stderr[mark:]) == 1, d.proc.stderr[mark:]

        mark = len(d.proc.stderr)
        etcd.start()
        d.wait_log("etcd answers again", after=mark)
        r2 = push(pair, etcd, 40)
        d.wait_log(f"@{r2}: applied", after=mark)
        wait_source(d, revision=r2, etcd="connected")
        d.proc.signal(signal.SIGTERM)
        assert d.proc.wait_exit(30) == 0

    etcd.stop()
    with Daemon(pair, "", source=etcd.url(KEY)) as d:  # the same state directory
        d.wait_log(f"enforcing the cached revision {r2}")
        src = source(d)
        assert (src["revision"], src["from_cache"], src["etcd"]) == (r2, True, "unreachable")
        time.sleep(1.1)
        cached = load(pair, "/limited", 1.0)
        assert 20 < cached["served"] <= 45 and cached["429"] > 0, cached  # 40/s, from the cache

        mark = len(d.proc.stderr)
        etcd.start()
        d.wait_log("etcd answers again", after=mark)
        d.wait_log(f"@{r2}: unchanged", after=mark)
        wait_source(d, from_cache=False, etcd="connected")
        r3 = push(pair, etcd, 5)
        d.wait_log(f"@{r3}: applied", after=mark)
        time.sleep(1.1)
        out = load(pair, "/limited", 1.0)
        assert 0 < out["served"] <= 7 and out["429"] > 0, out
        assert source(d)["revision"] == r3


def test_one_push_reaches_every_daemon_following_the_key(fresh_netns_pair: NetnsPair) -> None:
    pair = fresh_netns_pair
    pair.start_http_server(8000)
    web = pair.tmpdir / "client-www"
    web.mkdir()
    pair.popen(pair.client, sys.executable, "-m", "http.server", "--bind", "0.0.0.0", "--directory", str(web),
               "8000", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    pair.wait_listening(pair.client, 8000)
    etcd = EtcdServer(pair.tmpdir, pair=pair, also_on=pair.server_ip).start()
    try:
        push(pair, etcd, 5)
        daemons = [
            Daemon(pair, "", source=etcd.url(KEY), name="server-daemon"),
            Daemon(
                pair, "", source=f"etcd://{pair.server_ip}:2379{KEY}", side="client", name="client-daemon"
            ),
        ]
        try:
            marks = [len(d.proc.stderr) for d in daemons]
            r = push(pair, etcd, 40)
            for d, mark in zip(daemons, marks, strict=True):
                d.wait_log(f"@{r}: applied", after=mark)
                wait_source(d, revision=r, etcd="connected")
            time.sleep(1.1)  # a fresh window
            to_server = load(pair, "/limited", 1.0)  # judged by the server's daemon
            res = pair.run(pair.server, sys.executable, str(LOAD), pair.client_ip, "8000", "/limited", "1.0",
                           timeout=60)  # fmt: skip
            assert res.returncode == 0, res.stderr
            to_client = json.loads(res.stdout)["status"]  # judged by the client's daemon
            served_by_client = sum(n for k, n in to_client.items() if k not in ("429", "reset", "error"))
            assert 20 < to_server["served"] <= 45 and to_server["429"] > 0, to_server
            assert 20 < served_by_client <= 45 and to_client.get("429", 0) > 0, to_client
            # both registered beside the rules key: the dashboard's fleet view (--fleet etcd://...) sums
            # what they counted (each writes its record once a second)
            want = to_server["served"] + served_by_client
            deadline = time.monotonic() + 5
            while True:
                view = registry(pair, etcd)
                limited = view["resources"].get("limited", {})
                if limited.get("pass", 0) >= want or time.monotonic() > deadline:
                    break
                time.sleep(0.3)
            assert [n["health"] for n in view["nodes"]] == ["up", "up"], view
            assert view["same_rules"] and limited["nodes"] == 2, view
            assert limited["pass"] >= want and limited["block"] > 0, (view, want)
        finally:
            for d in daemons:
                d.close()
        time.sleep(STALE_MS / 1000 + 1)  # stopped: no more records; shown down until their lease ends
        view = registry(pair, etcd)
        assert [n["health"] for n in view["nodes"]] == ["down", "down"], view
    finally:
        etcd.stop()


REGISTRY = (
    "import json, sys; from sentinel_ebpf.dashboard.fleet import fleet_view; "
    "from sentinel_ebpf.sources.etcd import EtcdClient; from sentinel_ebpf.sources.etcd_registry import EtcdNodes; "
    "from sentinel_ebpf.sources.url import parse_etcd_url; u = parse_etcd_url(sys.argv[1]); "
    "print(json.dumps(fleet_view(EtcdNodes(EtcdClient(u), u.key).records())))"
)


def registry(pair: NetnsPair, etcd: EtcdServer) -> dict[str, Any]:
    """The fleet view the dashboard shows for ``--fleet`` the rules key's URL (read in the server's
    namespace, where etcd listens)."""
    res = pair.run(pair.server, sys.executable, "-c", REGISTRY, etcd.url(KEY))
    assert res.returncode == 0, res.stderr
    view: dict[str, Any] = json.loads(res.stdout)
    return view


def test_a_dashboard_edit_is_written_to_etcd_with_a_compare_and_swap(
    following: tuple[NetnsPair, EtcdServer, int, Daemon],
) -> None:
    pair, etcd, r1, d = following
    rules = request(d.socket, "rules")
    assert rules["editable"] and rules["writes_to"] == etcd.url(KEY)
    document, base = rules["document"], rules["revision"]
    document["flowRules"][0]["threshold"] = 40
    reply = request(d.socket, "apply", document=document, base=base, timeout_s=15)
    assert reply["applied"] and reply["etcd_revision"] > r1, reply
    # in force when apply answered, and the key holds it: etcd stays the one source of the rules
    src = source(d)
    assert src["revision"] == reply["etcd_revision"]
    pulled = pair.run(pair.server, *sentinel_cli(), "rules", "pull", etcd.url(KEY))
    assert pulled.returncode == 0 and "threshold: 40" in pulled.stdout, pulled
    time.sleep(1.1)  # a fresh window
    assert load(pair, "/limited", 1.0)["served"] > 20
    # an edit based on the rules before: refused, nothing written
    document["flowRules"][0]["threshold"] = 7
    stale = request(d.socket, "apply", document=document, base=base, timeout_s=15)
    assert stale["conflict"] and not stale["applied"], stale
    assert source(d)["revision"] == reply["etcd_revision"]
