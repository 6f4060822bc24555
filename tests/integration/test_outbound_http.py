"""Outbound HTTP requests on existing connections, judged at TC egress of the caller's host: a blocked
request (a limit, an open circuit) gets an immediate `503` built in the kernel, the server a RST."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from .daemon_helpers import Daemon
from .netns import NetnsPair

pytestmark = pytest.mark.kernel
FLAKY = Path(__file__).with_name("flakyserver.py")


def curl(pair: NetnsPair, path: str = "/api") -> tuple[str, float]:
    out = pair.run(pair.client, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{time_total}",
                   "--max-time", "10", f"http://{pair.server_ip}:8000{path}").stdout.split()  # fmt: skip
    return out[0], float(out[1])


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
        f"""
resources:
  - {{name: backend-api, match: {{direction: outbound, protocol: http, host: {pair.server_ip}/32, port: 8000,
     path: /api}}}}
flowRules:
  - {{resource: backend-api, threshold: 2}}
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


def test_outbound_breaker_cycle(fresh_netns_pair: NetnsPair) -> None:
    pair = fresh_netns_pair
    mode = start_backend(pair, "500")
    d = Daemon(
        pair,
        f"""
resources:
  - {{name: backend-api, match: {{direction: outbound, protocol: http, host: {pair.server_ip}/32, port: 8000,
     path: /api}}}}
circuitBreakerRules:
  - {{id: backend-5xx, resource: backend-api, strategy: 2, threshold: 3, minRequestAmount: 1, statIntervalMs: 10000,
     retryTimeoutMs: 1000, probeNum: 1}}
""",
        side="client",
    )
    try:
        assert [curl(pair)[0] for _ in range(3)] == ["500"] * 3  # the breaker opens on the third error
        refused = [curl(pair) for _ in range(5)]
        assert all(code == "503" for code, _ in refused), refused
        assert max(t for _, t in refused) < 0.05, refused  # at once, without the backend
        mode.write_text("ok")
        time.sleep(1.1)
        assert [curl(pair)[0] for _ in range(3)] == ["200"] * 3  # the probe closes it
        doc = d.stats()["resources"]["backend-api"]
        assert doc["circuit_breakers"] == [{"id": "backend-5xx", "state": "closed"}]
        assert doc["block_by_type"]["circuit_breaking"] == 5 and doc["error"] == 3
    finally:
        d.close()
