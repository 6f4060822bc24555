"""``tls: true`` resources: the daemon counts HTTPS requests it cannot read on the wire by tracing OpenSSL.

A Python HTTPS server (``httpechoserver.py``) in the server namespace, curl in the client namespace, the
daemon on the server side with one tls resource per path prefix next to a plain HTTP resource the kernel
governs. ``stats --json`` must count what curl did, marked ``"source": "tls_trace"``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon_helpers import Daemon
from tests.support.netns import NetnsPair

from .test_http_trace import make_cert

pytestmark = pytest.mark.kernel

ECHO = Path(__file__).with_name("httpechoserver.py")
RULES = """
resources:
  - {name: plain-api, match: {protocol: http, port: 8200, path: /bytes}}
  - {name: tls-bytes, match: {protocol: http, port: 8643, path: /bytes, tls: true}}
  - {name: tls-fail, match: {protocol: http, port: 8643, path: /fail, method: GET, tls: true}}
flowRules:
  - {resource: plain-api, threshold: 1000, statIntervalInMs: 1000}
"""


@pytest.fixture
def https_server(fresh_netns_pair: NetnsPair) -> Iterator[NetnsPair]:
    pair = fresh_netns_pair
    cert, key = make_cert(pair.tmpdir)
    proc = pair.popen(pair.server, sys.executable, str(ECHO), "8200", "8643", str(cert), str(key),
                      stdin=subprocess.DEVNULL)  # fmt: skip
    pair.wait_listening(pair.server, 8643, proc)
    yield pair


def curl(pair: NetnsPair, url: str) -> str:
    res = pair.run(
        pair.client, "curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", url
    )
    return res.stdout


def test_tls_resources_count_what_curl_did(https_server: NetnsPair) -> None:
    pair = https_server
    d = Daemon(pair, RULES)
    try:
        d.wait_log("observing tls resources on ports 8643")
        base = f"https://{pair.server_ip}:8643"
        codes = [curl(pair, f"{base}/bytes/{n}") for n in (10, 2000, 70000)]
        codes += [curl(pair, f"{base}/fail/5"), curl(pair, f"{base}/fail/6"), curl(pair, f"{base}/other")]
        assert codes == ["200", "200", "200", "503", "503", "404"]
        assert curl(pair, f"http://{pair.server_ip}:8200/bytes/3") == "200"

        def counted() -> dict[str, dict[str, object]] | None:
            res = d.stats()["resources"]
            return res if res["tls-fail"]["complete"] == 2 and res["tls-bytes"]["complete"] == 3 else None

        res = d.proc.wait_until(counted, 15, "the tls resources' counts")
        assert res["tls-bytes"] | {"avg_rt_ms": 0} == res["tls-bytes"] | {
            "pass": 3, "block": 0, "complete": 3, "error": 0, "concurrency": 0, "avg_rt_ms": 0,
            "source": "tls_trace",
        }  # fmt: skip
        assert res["tls-bytes"]["avg_rt_ms"] > 0
        assert (res["tls-fail"]["pass"], res["tls-fail"]["error"], res["tls-fail"]["source"]) == (
            2,
            2,
            "tls_trace",
        )
        assert res["plain-api"]["pass"] == 1 and res["plain-api"]["source"] == "kernel"
        scraped = d.scrape()  # Prometheus: the same counts
        assert scraped[("tls-bytes", "pass")] == 3 and scraped[("tls-fail", "pass")] == 2

        table = subprocess.run(
            [*d.proc.argv[: d.proc.argv.index("run")], "stats", "--control-socket", d.socket],
            capture_output=True, text=True, timeout=20, env={**os.environ, "COLUMNS": "200"},
        )  # fmt: skip
        assert "tls-bytes (tls, observed)" in table.stdout, table.stdout + table.stderr
    finally:
        d.close()
