"""Legitimate clients among hostile ones (issue 17's fuzzer): nginx behind the daemon, a seeded hostile
client (hostileclient.py: half-open SYN floods, spoofed requests of connections that do not exist and on
the last ACK of spoofed half-open handshakes, stalled and split request lines, garbage, resets, FIN with data, oversized heads, Expect: 100-continue, slowloris,
/api pipelined behind another request or a body in one segment) beside paced legitimate clients.

Checked: every legitimate request is admitted (the limits leave room for them); each /api request nginx
served was judged exactly once (pass count == nginx's count: nothing unjudged, nothing twice, no spoofed
segment spent the quota); when the traffic stops no concurrency is left and the in-flight map holds no
entry of a real client (only pending ones of the spoofed half-open handshakes, which the server still
has in SYN_RECV), and the data plane repaired nothing.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon_helpers import Daemon
from tests.support.netns import NetnsPair, Server
from tests.support.nginx import hello_nginx

pytestmark = pytest.mark.kernel
HERE = Path(__file__).parent
PORT = 8080
SECONDS = 8
API_QPS = 10  # legitimate /api; the hostile client adds at most 2 a second: 12 < 30
OTHER_QPS = 3
RULES = f"""
resources:
  - {{name: api, match: {{protocol: http, port: {PORT}, method: GET, path: /api}}}}
  - {{name: other, match: {{protocol: http, port: {PORT}, path: /other}}}}
flowRules:
  - {{resource: api, threshold: 30}}
isolationRules:
  - {{resource: other, threshold: 5}}
"""


def nginx_served(nginx: Server, request_line: str) -> int:
    log = nginx.workdir / "access.log"
    return sum(f'"{request_line}"' in ln for ln in log.read_text().splitlines()) if log.exists() else 0


def bpftool(*argv: str) -> Any:
    return json.loads(
        subprocess.run(["bpftool", "-j", *argv], capture_output=True, text=True, check=True).stdout
    )


def daemon_map(pair: NetnsPair, name: str) -> list[dict[str, Any]]:
    """The entries of map ``name`` of the program the daemon attached to the server's ingress (from BTF)."""
    out = pair.run(
        pair.server, "tc", "-j", "filter", "show", "dev", pair.server_if, "ingress", check=True
    ).stdout
    progs = [f["options"]["prog"]["id"] for f in json.loads(out) if "prog" in f.get("options", {})]
    assert len(progs) == 1, out
    ids = [m for m in bpftool("prog", "show", "id", str(progs[0]))["map_ids"]
           if bpftool("map", "show", "id", str(m))["name"] == name]  # fmt: skip
    assert len(ids) == 1, f"no single map {name!r} in program {progs[0]}"
    return bpftool("map", "dump", "id", str(ids[0]))  # type: ignore[no-any-return]


def saddr(key: dict[str, Any]) -> str:
    raw = key["saddr"]
    return socket.inet_ntoa(bytes(int(b, 0) if isinstance(b, str) else b for b in raw[:4]))


@pytest.mark.parametrize("seed", [1, 2])
def test_legitimate_clients_are_admitted_among_hostile_ones_and_nothing_leaks(
    fresh_netns_pair: NetnsPair, seed: int
) -> None:
    pair = fresh_netns_pair
    nginx = hello_nginx(pair, PORT)
    daemon = Daemon(pair, RULES)
    spoofed = f"10.200.{pair.subnet}.77"  # nobody answers ARP for it
    try:
        hostile = pair.popen(pair.client, sys.executable, str(HERE / "hostileclient.py"), pair.server_ip,
                             str(PORT), spoofed, str(SECONDS), str(seed), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
        legit = [
            pair.popen(pair.client, sys.executable, str(HERE / "httpload.py"), pair.server_ip, str(PORT), path,
                       str(SECONDS), "1000", str(qps), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for path, qps in (("/api", API_QPS), ("/other", OTHER_QPS))
        ]  # fmt: skip
        outs = [p.communicate(timeout=SECONDS + 60) for p in (hostile, *legit)]
        for p, (_, err) in zip((hostile, *legit), outs, strict=True):
            assert p.returncode == 0, err
        moves = json.loads(outs[0][0])
        api_legit, other_legit = (json.loads(out)["status"] for out, _ in outs[1:])

        # the mix really ran: every move at least once, and a flood of half-open handshakes
        assert {m for m in moves["moves"] if ":" not in m} == set(moves["all"]), moves
        assert api_legit.get("200", 0) >= API_QPS * SECONDS * 0.8, api_legit
        assert api_legit == {"200": api_legit["200"]}, f"/api refused: {api_legit}"
        assert other_legit == {"200": other_legit["200"]}, f"/other refused: {other_legit}"

        time.sleep(2)  # answers logged, FINs and RSTs seen
        doc = daemon.stats()
        api, other = doc["resources"]["api"], doc["resources"]["other"]
        served = nginx_served(nginx, "GET /api HTTP/1.1")
        left = [e["formatted"]["key"] for e in daemon_map(pair, "inflight")]
        real = [k for k in left if saddr(k) != spoofed]
        seen = json.dumps({"api": api, "other": other, "dataplane": doc["dataplane"], "served": served,
                           "hostile": moves["moves"], "inflight": real, "all_inflight": left})  # fmt: skip
        assert served == api_legit["200"] + moves["api"], seen
        assert api["pass"] == served and api["block"] == 0, seen  # each judged once, none unjudged
        assert api["concurrency"] == 0 and other["concurrency"] == 0, seen
        assert doc["dataplane"].get("concurrency_repaired", 0) == 0, seen
        assert not real, f"in-flight entries of real clients left behind: {seen}"
    finally:
        daemon.close()
