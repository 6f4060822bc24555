"""One request sequence per rule kind through the daemon (hotspot, circuit breaker, system), with no
wall-clock rate in it: the counts decide, so it holds on an emulated guest too (the kernel matrix runs
it on Debian 12's 6.1; flow and isolation are the demo smoke's)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from sentinel_ebpf.daemon import request
from tests.support.daemon_helpers import Daemon
from tests.support.netns import NetnsPair

pytestmark = pytest.mark.kernel
FLAKY = Path(__file__).with_name("flakyserver.py")
RULES = """
resources:
  - {name: hot, match: {protocol: http, port: 8000, path: /h}}
  - {name: slow, match: {protocol: http, port: 8000, path: /slow}}
  - {name: err, match: {protocol: http, port: 8001, path: /}}
hotSpotParamRules:
  - {id: per-user, resource: hot, paramKey: "query:user", metricType: QPS, threshold: 2, durationInSec: 30}
circuitBreakerRules:
  - {id: err-count, resource: err, strategy: 2, threshold: 3, minRequestAmount: 1, statIntervalMs: 60000,
     retryTimeoutMs: 60000}
systemRules:
  - {id: inflight, metricType: Concurrency, triggerCount: 2}
"""


def codes(pair: NetnsPair, *urls: str, parallel: bool = False) -> list[str]:
    args = ["--parallel", "--parallel-immediate", "--parallel-max", str(len(urls))] if parallel else []
    targets = [x for u in urls for x in ("-o", "/dev/null", f"http://{pair.server_ip}{u}")]
    out = pair.run(pair.client, "curl", "-s", "--max-time", "30", *args, *targets, "-w", "%{http_code}\n",
                   timeout=60).stdout  # fmt: skip
    return out.split()


def test_hotspot_breaker_and_system_rules_each_refuse_what_they_should(fresh_netns_pair: NetnsPair) -> None:
    pair = fresh_netns_pair
    ok, failing = pair.tmpdir / "ok", pair.tmpdir / "failing"
    ok.write_text("ok")
    failing.write_text("500")
    servers = [pair.popen(pair.server, sys.executable, str(FLAKY), "8000", str(ok), "3"),
               pair.popen(pair.server, sys.executable, str(FLAKY), "8001", str(failing))]  # fmt: skip
    for port, proc in zip((8000, 8001), servers, strict=True):
        pair.wait_listening(pair.server, port, proc)
    d = Daemon(pair, RULES)
    try:
        # hotspot: 2 per 30 s for each value of ?user; another value has its own budget
        assert codes(pair, *[":8000/h?user=a"] * 3, ":8000/h?user=b") == ["200", "200", "429", "200"]
        # circuit breaker: the backend's 500s open it after 3 errors; then the kernel refuses at once
        got = codes(pair, *[":8001/"] * 8)
        assert got[:3] == ["500"] * 3 and got[-3:] == ["429"] * 3, got
        # system: at most 2 requests in flight on the host's inbound resources (/slow answers after 3 s)
        slow = sorted(codes(pair, *[":8000/slow"] * 4, parallel=True))
        assert slow.count("200") >= 1 and slow.count("429") >= 1 and "000" not in slow, slow
        stats = request(d.socket, "stats")["resources"]
        assert stats["hot"]["block_by_type"]["hotspot"] == 1
        assert stats["err"]["block_by_type"]["circuit_breaking"] == got.count("429")
        assert [b["state"] for b in stats["err"]["circuit_breakers"]] == ["open"]
        assert stats["slow"]["block_by_type"]["system"] == slow.count("429")
        assert backend_requests(failing) == got.count("500")  # refused requests never reached it
    finally:
        d.close()
        for proc in servers:
            proc.kill()
            proc.wait()


def backend_requests(mode: Path) -> int:
    log = Path(f"{mode}.requests")
    return len(log.read_text().splitlines()) if log.exists() else 0
