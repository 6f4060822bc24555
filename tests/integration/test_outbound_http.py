"""Outbound HTTP requests on existing connections, judged at TC egress of the caller's host: a blocked
request (a limit, an open circuit) gets an immediate `503` built in the kernel, in the caller's stream on
its kept keep-alive connection (or with Connection: close and a RST to the server when it cannot be)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from tests.support.daemon_helpers import Daemon
from tests.support.guarded import KEEPALIVE_CLIENT, Guarded
from tests.support.netns import NetnsPair
from tests.support.wrk import wrk

pytestmark = pytest.mark.kernel
FLAKY = Path(__file__).with_name("flakyserver.py")


def curl(pair: NetnsPair, path: str = "/api") -> tuple[str, float]:
    out = pair.run(pair.client, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{time_total}",
                   "--max-time", "10", f"http://{pair.server_ip}:8000{path}").stdout.split()  # fmt: skip
    return out[0], float(out[1])


def backend_requests(mode: Path) -> int:
    """How many requests the flaky backend received (it logs each)."""
    log = Path(f"{mode}.requests")
    return len(log.read_text().splitlines()) if log.exists() else 0


def backend_api(pair: NetnsPair) -> str:
    """Rules with the resource ``backend-api``: the client's HTTP requests to the backend's /api."""
    return f"""
resources:
  - {{name: backend-api, match: {{direction: outbound, protocol: http, host: {pair.server_ip}/32, port: 8000,
     path: /api}}}}
"""


def start_backend(pair: NetnsPair, mode: str) -> Path:
    mode_file = pair.tmpdir / "mode"
    mode_file.write_text(mode)
    proc = pair.popen(pair.server, sys.executable, str(FLAKY), "8000", str(mode_file))
    pair.wait_listening(pair.server, 8000, proc)
    return mode_file


def test_outbound_flow_limit_answers_503(fresh_netns_pair: NetnsPair) -> None:
    pair = fresh_netns_pair
    start_backend(pair, "ok")
    d = Daemon(
        pair,
        backend_api(pair)
        + """flowRules:
  - {resource: backend-api, threshold: 2}
""",
        side="client",
    )
    try:
        codes = [curl(pair)[0] for _ in range(4)]
        assert codes == ["200", "200", "503", "503"], codes
        assert curl(pair, "/other")[0] == "200"  # another path of the same server is not a resource
        doc = d.stats()["resources"]["backend-api"]
        assert (doc["pass"], doc["block"], doc["complete"]) == (2, 2, 2)
    finally:
        d.close()


STRATEGIES = {
    "error_count": ("500", "strategy: 2, threshold: 3, minRequestAmount: 1"),
    "error_ratio": ("500", "strategy: 1, threshold: 0.5, minRequestAmount: 3"),
    "slow_ratio": ("slow", "strategy: 0, maxAllowedRtMs: 100, threshold: 0.5, minRequestAmount: 3"),
}

# long enough for the whole refused phase (curl x5, a Python client, wrk for 1 s) on a loaded machine
RETRY_MS = 5000

REQUESTS_CLIENT = """
import sys, time, requests
t0 = time.perf_counter()
r = requests.get(sys.argv[1], timeout=10)
print(r.status_code, time.perf_counter() - t0)
"""


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_outbound_breaker_cycle(fresh_netns_pair: NetnsPair, strategy: str) -> None:
    pair = fresh_netns_pair
    failing, rule = STRATEGIES[strategy]
    mode = start_backend(pair, failing)
    transitions = pair.tmpdir / "transitions"
    d = Daemon(
        pair,
        backend_api(pair)
        + f"""circuitBreakerRules:
  - {{id: backend-{strategy}, resource: backend-api, {rule}, statIntervalMs: 10000, statSlidingWindowBucketCount: 10,
     retryTimeoutMs: {RETRY_MS}, probeNum: 1}}
""",
        "--on-breaker-change",
        f'echo "$SENTINEL_RESOURCE $SENTINEL_BREAKER $SENTINEL_FROM $SENTINEL_TO" >> {transitions}',
        side="client",
    )
    url = f"http://{pair.server_ip}:8000/api"
    try:
        # the backend answers 500 (or 200 after 0.3 s): three such answers open it
        assert [curl(pair)[0] for _ in range(3)] == ["200" if strategy == "slow_ratio" else "500"] * 3
        opened = time.monotonic()  # the third answer opened it before curl returned
        seen = backend_requests(mode)
        refused = [curl(pair) for _ in range(5)]
        assert [code for code, _ in refused] == ["503"] * 5, refused
        # at once, without the backend: it never saw them (time: a loose bound)
        assert backend_requests(mode) == seen
        assert max(t for _, t in refused) < 1.0, refused  # machine stalls aside; the count above is the proof
        # a Python requests client and wrk see the same
        out = pair.run(pair.client, sys.executable, "-c", REQUESTS_CLIENT, url).stdout.split()
        assert out[0] == "503" and float(out[1]) < 1.0, out
        load = wrk(pair, url, 1, 2, threads=1)
        assert load.requests > 50 and load.non2xx == load.requests, load.output
        assert backend_requests(mode) == seen
        assert time.monotonic() < opened + RETRY_MS / 1000, "the refused phase outlasted the retry timeout"
        mode.write_text("ok")
        time.sleep(max(0.0, opened + RETRY_MS / 1000 + 0.1 - time.monotonic()))
        assert [curl(pair)[0] for _ in range(3)] == ["200"] * 3  # the probe closes it
        doc = d.stats()["resources"]["backend-api"]
        assert doc["circuit_breakers"] == [{"id": f"backend-{strategy}", "state": "closed"}]
        # --on-breaker-change ran for each transition, in order, with the resource and breaker named
        expected = [
            f"backend-api backend-{strategy} {t}"
            for t in ("closed open", "open half_open", "half_open closed")
        ]
        deadline = time.monotonic() + 10
        while (lines := transitions.read_text().splitlines() if transitions.exists() else []) != expected:
            assert time.monotonic() < deadline, lines
            time.sleep(0.05)
    finally:
        d.close()


KEPT_RULES = """
resources:
  - {{name: ok, match: {{direction: outbound, protocol: http, host: {host}/32, port: 8080, path: /ok}}}}
  - {{name: limited, match: {{direction: outbound, protocol: http, host: {host}/32, port: 8080, path: /limited}}}}
flowRules:
  - {{resource: limited, threshold: 0}}
"""


@pytest.mark.parametrize("loopback", [False, True], ids=["veth", "lo"])
def test_a_blocked_request_gets_its_503_on_the_callers_kept_connection(
    fresh_netns_pair: NetnsPair, loopback: bool
) -> None:
    """Python's http.client calling a dependency on one keep-alive connection, through a veth (the data
    plane on the caller's side) and on loopback (the dependency on the same host): each blocked request
    gets the kernel's 503 at once and the same connection (the same local port) carries the next request;
    the dependency serves the allowed ones on that one connection and never sees a blocked one, nor a
    reset."""
    pair = fresh_netns_pair
    daemon = None
    if loopback:  # the data plane on lo, caller and dependency beside it
        server = Guarded(pair, KEPT_RULES.format(host="127.0.0.1"), iface="lo")
        ns, host = pair.server, "127.0.0.1"
    else:
        server = Guarded(pair, "", iface="-")
        ns, host = pair.client, pair.server_ip
    try:
        if not loopback:
            daemon = Daemon(pair, KEPT_RULES.format(host=host), side="client")
        res = pair.run(ns, sys.executable, "-c", KEEPALIVE_CLIENT, host, timeout=60)
        assert res.returncode == 0, res.stderr
        answers = json.loads(res.stdout)
        counters = daemon.stats()["dataplane"] if daemon else None
        events = server.stop(connections=1)
    finally:
        server.stop()
        if daemon:
            daemon.close()
    assert [status for status, _, _ in answers] == [200, 503, 200, 503, 503, 200], answers
    assert len({port for _, port, _ in answers}) == 1, f"the caller reconnected: {answers}"
    lengths = {503: len("Service Unavailable (sentinel-ebpf)\n"), 200: len("served GET /ok HTTP/1.1\n")}
    assert all(length == lengths[status] for status, _, length in answers), answers
    conns = [e for e in events if isinstance(e, dict) and "requests" in e]
    assert conns == [{"requests": ["GET /ok HTTP/1.1"] * 3, "reset": False}]
    if counters is None:
        counters = next(e for e in events if isinstance(e, dict) and "counters" in e)["counters"]
    assert (counters["reply_kept"], counters["reply_closed"]) == (3, 0)
