"""Traffic this host only forwards is none of its business (issue 17): a SYN to a protected port of
another host, routed through the server's namespace, is neither judged nor answered; the same SYN to a
local listener is. Unless a resource names that host's address (match.address): a gateway governs the
connections to the servers behind it."""

from __future__ import annotations

import pytest

from tests.support.daemon_helpers import Daemon
from tests.support.netns import NetnsPair

pytestmark = pytest.mark.kernel
PORT = 8000
RULES = f"""
resources:
  - {{name: conns, match: {{protocol: tcp, port: {PORT}}}}}
flowRules:
  - {{resource: conns, threshold: 0}}
"""
CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
    print("connected")
except OSError as e:
    print(type(e).__name__)
"""


def forward_other(pair: NetnsPair) -> str:
    """The server's namespace forwards 10.201.S.0/24 into a blackhole (what it is given is dropped); the
    client routes it there. Returns an address of that network."""
    pair.run(pair.server, "sysctl", "-qw", "net.ipv4.ip_forward=1", check=True)
    pair.run(pair.server, "ip", "route", "add", "blackhole", f"10.201.{pair.subnet}.0/24", check=True)
    pair.run(
        pair.client, "ip", "route", "add", f"10.201.{pair.subnet}.0/24", "via", pair.server_ip, check=True
    )
    return f"10.201.{pair.subnet}.99"


def test_a_forwarded_syn_is_neither_judged_nor_answered(fresh_netns_pair: NetnsPair) -> None:
    pair = fresh_netns_pair
    pair.start_http_server(PORT)
    other = forward_other(pair)
    d = Daemon(pair, RULES)
    try:
        forwarded = pair.run(pair.client, "python3", "-c", CONNECT, other, str(PORT), "1").stdout.strip()
        assert forwarded == "TimeoutError", "the forwarded SYN was answered (by the data plane's reset)"
        doc = d.stats()
        conns = doc["resources"]["conns"]
        assert (conns["pass"], conns["block"]) == (0, 0), conns
        assert doc["ports"][str(PORT)]["no_socket"] >= 1, doc["ports"]
        # addressed to this host: judged (threshold 0) and refused
        local = pair.run(pair.client, "python3", "-c", CONNECT, pair.server_ip, str(PORT), "5").stdout.strip()
        assert local == "ConnectionRefusedError"
        assert d.stats()["resources"]["conns"]["block"] == 1
    finally:
        d.close()


def test_a_forwarded_syn_to_an_address_a_resource_names_is_judged(fresh_netns_pair: NetnsPair) -> None:
    pair = fresh_netns_pair
    other = forward_other(pair)
    rules = RULES.replace(f"port: {PORT}}}", f"port: {PORT}, address: {other}}}")
    d = Daemon(pair, rules)
    try:
        refused = pair.run(pair.client, "python3", "-c", CONNECT, other, str(PORT), "5").stdout.strip()
        assert refused == "ConnectionRefusedError", "judged (threshold 0) and answered by the data plane"
        conns = d.stats()["resources"]["conns"]
        assert (conns["pass"], conns["block"]) == (0, 1), conns
    finally:
        d.close()
