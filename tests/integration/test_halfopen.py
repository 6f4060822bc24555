"""Concurrency that always comes back: hundreds of half-open connections (their SYN-ACKs unanswered)
take no slot of an isolation rule, so legitimate clients keep being admitted (issue 17)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.netns import NetnsPair

pytestmark = pytest.mark.kernel
HERE = Path(__file__).parent
PORT = 8090
HALF_OPEN = 300
CLIENTS = 20

RULES = f"""
resources:
  - {{name: conns, match: {{protocol: tcp, port: {PORT}}}}}
isolationRules:
  - {{resource: conns, threshold: 4}}
"""

CONNECT = f"""
import socket, sys
ok = 0
for _ in range({CLIENTS}):
    try:
        with socket.create_connection((sys.argv[1], {PORT}), timeout=5) as c:
            c.sendall(b"hello")
            ok += 1
    except OSError as e:
        print("refused:", e, file=sys.stderr)
print(ok)
"""


def test_half_open_connections_do_not_starve_legitimate_clients(fresh_netns_pair: NetnsPair) -> None:
    pair = fresh_netns_pair
    rules = pair.tmpdir / "rules.yaml"
    rules.write_text(RULES)
    server = pair.popen(pair.server, sys.executable, str(HERE / "halfopen_server.py"), str(rules),
                        pair.server_if, str(PORT), stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert server.stdout is not None
    try:
        assert server.stdout.readline().strip() == '"ready"'
        spoofed = f"10.200.{pair.subnet}.77"  # nobody answers ARP for it: SYN-ACKs are dropped
        sent = pair.run(pair.client, sys.executable, str(HERE / "rawsyn.py"), spoofed, pair.server_ip,
                        str(PORT), str(HALF_OPEN))  # fmt: skip
        assert sent.stdout.strip() == str(HALF_OPEN)
        legit = pair.run(pair.client, sys.executable, "-c", CONNECT, pair.server_ip, timeout=60)
        assert legit.stdout.strip() == str(CLIENTS), legit.stderr
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
        out, _ = server.communicate(timeout=30)
    final = json.loads(out.strip().splitlines()[-1])
    passed, blocked, concurrency = final["stats"]["conns"]
    assert passed >= HALF_OPEN + CLIENTS and blocked == 0, final
    assert concurrency == 0, "every legitimate connection gave its slot back; the half-open ones took none"
