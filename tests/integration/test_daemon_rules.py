"""Each rule kind through the daemon, with real servers and clients in network namespaces."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sentinel_ebpf.daemon import request
from tests.support.daemon_helpers import Daemon
from tests.support.netns import NetnsPair
from tests.support.nginx import hello_nginx
from tests.support.wrk import parse_wrk

pytestmark = pytest.mark.kernel
SLOW = Path(__file__).with_name("flakyserver.py")


@pytest.fixture
def slow_server(fresh_netns_pair: NetnsPair) -> Iterator[NetnsPair]:
    pair = fresh_netns_pair
    proc = pair.popen(pair.server, sys.executable, str(SLOW), "8000", "/dev/null", "1.0")
    pair.wait_listening(pair.server, 8000, proc)
    yield pair


def curl_code(pair: NetnsPair, path: str, source: str | None = None) -> str:
    argv = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10"]
    if source:
        argv += ["--interface", source]
    return pair.run(pair.client, *argv, f"http://{pair.server_ip}:8000{path}", timeout=20).stdout


def test_isolation_caps_in_flight_requests_to_a_slow_handler(slow_server: NetnsPair) -> None:
    d = Daemon(
        slow_server,
        """
resources:
  - {name: slow, match: {protocol: http, port: 8000, path: /slow}}
isolationRules:
  - {resource: slow, threshold: 2}
""",
    )
    try:
        # one curl for the five, all started at once (five curl processes, each started through
        # `ip netns exec`, could start more than the handler's 1 s apart on a loaded machine)
        url = f"http://{slow_server.server_ip}:8000/slow"
        out = slow_server.run(slow_server.client, "curl", "-s", "-Z", "--parallel-immediate", "--parallel-max", "5",
                              "--max-time", "10", "-w", "%{http_code}\n", *(["-o", "/dev/null", url] * 5),
                              timeout=20).stdout  # fmt: skip
        codes = sorted(out.split())
        assert codes == ["200", "200", "429", "429", "429"], codes
        doc = d.stats()["resources"]["slow"]
        assert (doc["pass"], doc["block_by_type"]["isolation"], doc["concurrency"]) == (2, 3, 0)
        assert doc["avg_rt_ms"] >= 1000
    finally:
        d.close()


def test_hotspot_limits_one_client_address_not_another(slow_server: NetnsPair) -> None:
    pair = slow_server
    second = pair.client_ip.rsplit(".", 1)[0] + ".3"
    pair.run(pair.client, "ip", "addr", "add", f"{second}/24", "dev", pair.client_if, check=True)
    d = Daemon(
        pair,
        f"""
resources:
  - {{name: api, match: {{protocol: http, port: 8000, path: /}}}}
hotSpotParamRules:
  - {{resource: api, paramKey: remote_ip, metricType: 1, threshold: 3, durationInSec: 10,
     specificItems: [{{valKind: 1, valStr: "{second}", threshold: 100}}]}}
""",
    )
    try:
        first_codes = [curl_code(pair, "/", pair.client_ip) for _ in range(6)]
        second_codes = [curl_code(pair, "/", second) for _ in range(6)]
        assert first_codes == ["200"] * 3 + ["429"] * 3, first_codes
        assert second_codes == ["200"] * 6, second_codes
        assert d.stats()["resources"]["api"]["block_by_type"]["hotspot"] == 3
    finally:
        d.close()


def test_warm_up_ramps(fresh_netns_pair: NetnsPair) -> None:
    pair = fresh_netns_pair
    hello_nginx(pair, 8000)
    d = Daemon(
        pair,
        """
resources:
  - {name: api, match: {protocol: http, port: 8000, path: /}}
flowRules:
  - {resource: api, threshold: 60, tokenCalculateStrategy: 1, warmUpPeriodSec: 3, warmUpColdFactor: 3}
""",
    )
    try:
        # wrk offers far more than 60/s, so the rule binds in every second (blocks in each) and the passes
        # are the rule's rate, not the client's speed
        pair.run(
            pair.client,
            "wrk",
            "-t1",
            "-c2",
            "-d12s",
            f"http://{pair.server_ip}:8000/",
            timeout=60,
            check=True,
        )
        # the last whole second of load: the one before the second wrk ended in (the metric log is
        # written once a second, each line for a second that has ended)
        last = int(time.time()) * 1000 - 1000
        rows = d.wait_metric_second("api", last)
        seconds = [(p, b) for ts, p, b in rows if ts <= last][1:]  # whole seconds under load
        assert len(seconds) >= 6 and all(block > 0 for _, block in seconds), seconds
        passes = [p for p, _ in seconds]
        # cold at ~60/3, then up towards 60, never above it. Not "monotonic, 55+ in the last second": the
        # warm-up follows the passed QPS, so a second in which a loaded machine stalls wrk or nginx cools it
        # again (seen: 23, 29, 42, 18, 42; and 3, 23, 24, 24, 24, 31 ... 48 in 8 s while emulated kernels
        # booted beside it: 12 s of load leave room for the ramp after such stalls)
        assert passes[0] <= 30 and max(passes) >= 50 and max(passes) <= 61, passes
    finally:
        d.close()


def test_wrk_overload_and_reloads_without_failing_allowed_traffic(fresh_netns_pair: NetnsPair) -> None:
    pair = fresh_netns_pair
    hello_nginx(pair, 8000)
    rules = """
resources:
  - {name: limited, match: {protocol: http, port: 8000, path: /limited}}
  - {name: free, match: {protocol: http, port: 8000, path: /free}}
flowRules:
  - {resource: limited, threshold: LIMIT}
"""
    d = Daemon(pair, rules.replace("LIMIT", "20"))
    try:
        # wrk runs until the reloads are done (then SIGINT: it stops and prints its summary); the
        # free path's load runs long enough to cover them (checked below)
        wrk = pair.popen(pair.client, "wrk", "-t1", "-c4", "-d60s", f"http://{pair.server_ip}:8000/limited",
                         stdout=subprocess.PIPE, text=True)  # fmt: skip
        free = pair.popen(pair.client, sys.executable, str(Path(__file__).with_name("httpload.py")), pair.server_ip,
                          "8000", "/free", "8", stdout=subprocess.PIPE, text=True)  # fmt: skip
        deadline = time.monotonic() + 20
        while d.stats()["resources"].get("free", {}).get("pass", 0) == 0:  # the loads are under way
            assert free.poll() is None and time.monotonic() < deadline, "the free path's load did not start"
            time.sleep(0.05)
        for limit in (30, 20, 40, 20, 30):  # reloads through the file watch, each waited for
            seen = len(d.proc.stderr)
            tmp = d.rules.with_suffix(".tmp")
            tmp.write_text(rules.replace("LIMIT", str(limit)))
            tmp.replace(d.rules)
            d.wait_log(": applied", after=seen)
        assert wrk.poll() is None and free.poll() is None, "a load ended before the reloads did"
        wrk.send_signal(signal.SIGINT)
        out, _ = wrk.communicate(timeout=30)
        free_out, _ = free.communicate(timeout=30)
        load = parse_wrk(out)
        total, non2xx = load.requests, load.non2xx
        assert non2xx > total - non2xx > 0, out
        status = json.loads(free_out)["status"]
        assert set(status) == {"200"} and status["200"] > 50, status  # nothing failed on the free path
        doc = d.stats()["resources"]
        # wrk does not count requests still in flight when it stops (at most one per connection)
        assert 0 <= doc["limited"]["pass"] - (total - non2xx) <= 4 and doc["free"]["pass"] == status["200"]
        doc = request(d.socket, "rules")["document"]  # the last document is in force
        assert [(r["resource"], r["threshold"]) for r in doc["flowRules"]] == [("limited", 30)], doc
    finally:
        d.close()


def test_tcp_rule_refuses_excess_connections_with_a_reset(fresh_netns_pair: NetnsPair) -> None:
    pair = fresh_netns_pair
    pair.start_http_server(8000)
    d = Daemon(
        pair,
        """
resources:
  - {name: conns, match: {protocol: tcp, port: 8000}}
flowRules:
  - {resource: conns, threshold: 2, statIntervalInMs: 10000}
""",
    )
    try:
        url = f"http://{pair.server_ip}:8000/"
        exits = [pair.run(pair.client, "curl", "-s", "-o", "/dev/null", "--max-time", "5", url).returncode
                 for _ in range(5)]  # fmt: skip
        # 7: connection refused (the SYN answered with RST); 56: reset after connecting
        assert exits[:2] == [0, 0] and all(e in (7, 56) for e in exits[2:]), exits
        doc = d.stats()["resources"]["conns"]
        assert (doc["pass"], doc["block"], doc["block_by_type"]["flow"]) == (2, 3, 3), doc
    finally:
        d.close()


def test_unclassified_traffic_passes_and_is_counted_per_port(fresh_netns_pair: NetnsPair) -> None:
    pair = fresh_netns_pair
    server = pair.start_http_server(8000)
    d = Daemon(
        pair,
        """
resources:
  - {name: api, match: {protocol: http, port: 8000, path: /}}
flowRules:
  - {resource: api, threshold: 0}
""",
    )
    try:
        url = f"{pair.server_ip}:8000/"
        h2 = pair.run(
            pair.client, "curl", "-s", "--http2-prior-knowledge", "--max-time", "5", f"http://{url}"
        )
        tls = pair.run(pair.client, "curl", "-sk", "--max-time", "5", f"https://{url}")
        # both reached the server, which cannot speak them: its log has its HTTP/1 error for each (the
        # HTTP/2 preface "PRI * HTTP/2.0", a TLS ClientHello); curl then fails its own way (HTTP/2: 52 or
        # 55 as the server's close meets curl's SETTINGS frame; TLS: 35, no handshake)
        log = (server.workdir / "server.log").read_text()
        assert "PRI * HTTP/2.0" in log and "code 400" in log, log
        assert h2.returncode in (52, 55) and tls.returncode == 35, (h2, tls)
        assert curl_code(pair, "/") == "429"  # HTTP/1.1 is judged: threshold 0 blocks it
        doc = d.stats()
        assert doc["ports"]["8000"]["http2"] >= 1 and doc["ports"]["8000"]["tls"] >= 1, doc["ports"]
        assert (doc["resources"]["api"]["pass"], doc["resources"]["api"]["block"]) == (0, 1)
    finally:
        d.close()
