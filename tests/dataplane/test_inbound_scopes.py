"""Inbound resources scoped to local addresses (match.address): one port, several servers (a node's pods,
each reached at its own address), each governed by its own resources; the most specific scope that holds
a connection's local address governs it, resources naming no address govern the rest."""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sentinel_ebpf.enforce import InboundDataplane
from sentinel_ebpf.host import cgroup2_mount
from sentinel_ebpf.rules import RuleSet, load_text
from tests.support.packets import (
    ACK,
    PSH,
    SYN,
    SYN_OPTIONS,
    TC_ACT_OK,
    http_request,
    http_response,
    tcp_frame,
)

pytestmark = pytest.mark.kernel("inbound")

CLIENT = "10.200.9.1"
POD_A, POD_B, OTHER = "10.200.1.2", "10.200.2.2", "10.200.3.2"
SCOPED = f"""
resources:
  - {{name: rest, match: {{protocol: http, port: 8080, path: /}}}}
  - {{name: pod-a, match: {{protocol: http, port: 8080, path: /, address: {POD_A}}}}}
  - {{name: pod-b, match: {{protocol: http, port: 8080, path: /, address: {POD_B}}}}}
  - {{name: pods-a-api, match: {{protocol: http, port: 8080, path: /api, address: {POD_A}/32}}}}
flowRules:
  - {{resource: pod-a, threshold: 2}}
  - {{resource: pods-a-api, threshold: 0}}
"""


def rules(text: str) -> RuleSet:
    return load_text(text, "test.yaml")


class Client:
    def __init__(self, dp: InboundDataplane) -> None:
        self.dp = dp
        self.sport = 30000

    def request(self, dst: str, path: str = "/", port: int = 8080, src: str = CLIENT) -> bool:
        """A request on a new connection to ``dst``: True when it went on to the server unchanged."""
        self.sport += 1
        frame = tcp_frame(
            src, dst, self.sport, port, flags=PSH | ACK, seq=1000, payload=http_request("GET", path)
        )
        res = self.dp.obj.program("tc_ingress").test_run(frame)
        return res.retval == TC_ACT_OK and res.data_out == frame

    def respond(self, src: str, port: int = 8080, dst: str = CLIENT) -> None:
        """The server's response on the last connection."""
        frame = tcp_frame(src, dst, port, self.sport, flags=PSH | ACK, seq=5000, ack=1000 + 40,
                          payload=http_response(200))  # fmt: skip
        assert self.dp.obj.program("tc_egress").test_run(frame).retval == TC_ACT_OK

    def syn(self, dst: str, port: int = 9000) -> int:
        self.sport += 1
        frame = tcp_frame(CLIENT, dst, self.sport, port, flags=SYN, seq=7000, ack=0, options=SYN_OPTIONS)
        return self.dp.obj.program("tc_ingress").test_run(frame).retval


def passes(dp: InboundDataplane) -> dict[str, tuple[int, int]]:
    return {s.name: (s.passed, s.blocked) for s in dp.resource_stats() if s.passed or s.blocked}


def test_each_address_of_one_port_is_governed_by_its_own_resources(dp: InboundDataplane) -> None:
    dp.apply(dp.compile(rules(SCOPED)))
    c = Client(dp)
    assert [c.request(POD_A) for _ in range(4)] == [True, True, False, False]  # pod A's limit: 2
    assert all(c.request(POD_B) for _ in range(5))  # pod B: its own resource, no limit
    assert all(c.request(OTHER) for _ in range(3))  # no scope holds it: the resource naming no address
    assert not c.request(POD_A, "/api/x")  # pod A's longer route, blocked
    assert c.request(POD_B, "/api/x")  # pod B has no /api route: its / takes it
    assert passes(dp) == {"pod-a": (2, 2), "pods-a-api": (0, 1), "pod-b": (6, 0), "rest": (3, 0)}


def test_a_response_completes_the_request_in_its_own_scope(dp: InboundDataplane) -> None:
    doc = SCOPED + "isolationRules:\n  - {resource: pod-b, threshold: 1}\n"
    dp.apply(dp.compile(rules(doc)))
    c = Client(dp)
    assert c.request(POD_B)
    assert not c.request(POD_B)  # one in flight at pod B
    assert c.request(OTHER)  # the other scopes are not concerned
    c.respond(OTHER)
    assert not c.request(POD_B)  # a response from another address does not complete pod B's request
    c.sport -= 3  # back to pod B's admitted connection
    c.respond(POD_B)
    c.sport += 3
    assert c.request(POD_B)
    stats = {s.name: s for s in dp.resource_stats()}
    assert stats["pod-b"].complete == 1 and stats["rest"].complete == 1


def test_the_most_specific_scope_wins_whatever_the_order(dp: InboundDataplane) -> None:
    doc = """
resources:
  - {name: wide, match: {protocol: http, port: 8080, address: 10.200.0.0/16}}
  - {name: narrow, match: {protocol: http, port: 8080, address: 10.200.2.0/24}}
  - {name: one, match: {protocol: http, port: 8080, address: 10.200.2.2}}
  - {name: v6, match: {protocol: http, port: 8080, address: "fd00:200::/64"}}
"""
    dp.apply(dp.compile(rules(doc)))
    c = Client(dp)
    for dst in (POD_B, "10.200.2.9", "10.200.7.1", "10.201.0.1"):
        assert c.request(dst)
    assert c.request("fd00:200::5", src="fd00:200::1")
    assert c.request("fd00:201::5", src="fd00:200::1")  # in no scope, and no resource names no address
    assert passes(dp) == {"one": (1, 0), "narrow": (1, 0), "wide": (1, 0), "v6": (1, 0)}
    assert dp.port_counters(8080)["no_route"] == 0  # out of every scope: not the port's business at all


def test_tcp_resources_count_connections_per_address(dp: InboundDataplane) -> None:
    doc = f"""
resources:
  - {{name: conns-a, match: {{protocol: tcp, port: 9000, address: {POD_A}}}}}
  - {{name: conns-b, match: {{protocol: tcp, port: 9000, address: {POD_B}}}}}
flowRules:
  - {{resource: conns-a, threshold: 1}}
"""
    dp.apply(dp.compile(rules(doc)))
    c = Client(dp)
    assert c.syn(POD_A) == TC_ACT_OK
    assert c.syn(POD_A) != TC_ACT_OK  # pod A's second connection this second: refused
    assert c.syn(POD_B) == TC_ACT_OK and c.syn(POD_B) == TC_ACT_OK
    assert c.syn(OTHER) == TC_ACT_OK  # no scope: not counted
    assert passes(dp) == {"conns-a": (1, 1), "conns-b": (2, 0)}


def test_a_reload_moves_a_scope_to_another_address(dp: InboundDataplane) -> None:
    dp.apply(dp.compile(rules(SCOPED)))
    c = Client(dp)
    assert c.request(POD_A) and c.request(POD_A) and not c.request(POD_A)
    moved = SCOPED.replace(POD_A, OTHER)
    assert dp.apply(dp.compile(rules(moved)))
    before = passes(dp).get("rest", (0, 0))
    assert c.request(POD_A)  # in no scope now but the one for every address
    assert passes(dp).get("rest") == (before[0] + 1, 0), passes(dp)
    assert [c.request(OTHER) for _ in range(3)] == [True, True, False]  # the limit went with the address
    assert not c.request(OTHER, "/api")


def test_a_scope_governs_its_address_alone(dp: InboundDataplane) -> None:
    """Like a server block of nginx that listens on an address: a scope whose routes do not match a
    request leaves it unjudged, the resources naming no address do not take it (no_route counts it)."""
    doc = f"""
resources:
  - {{name: rest, match: {{protocol: http, port: 8080, path: /}}}}
  - {{name: a-api, match: {{protocol: http, port: 8080, path: /api, address: {POD_A}}}}}
"""
    dp.apply(dp.compile(rules(doc)))
    c = Client(dp)
    assert c.request(POD_A, "/other") and c.request(POD_A, "/api") and c.request(POD_B, "/other")
    assert passes(dp) == {"a-api": (1, 0), "rest": (1, 0)}
    assert dp.port_counters(8080)["no_route"] == 1


@pytest.fixture
def servers_in_cgroups() -> Iterator[tuple[int, list[str]]]:
    """Two listeners on one port in two new cgroups (paths below the cgroup2 root): 127.0.0.1 in the
    first, 127.0.0.3 in the second. Sockets keep the cgroup of the process that made them."""
    root = cgroup2_mount()
    assert root is not None, "cgroup2 is not mounted"
    # tests/ci_cleanup.sh naming (sentinel-test-<pid>-<hex>): removed if this process dies first
    paths = [f"/sentinel-test-{os.getpid()}-{secrets.token_hex(4)}" for _ in range(2)]
    port = 20000 + os.getpid() % 20000
    procs: list[subprocess.Popen[str]] = []
    try:
        for path, addr in zip(paths, ("127.0.0.1", "127.0.0.3"), strict=True):
            full = Path(root) / path.lstrip("/")
            full.mkdir()
            listen = (f"import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
                      f"s.bind(('{addr}', {port})); s.listen(); print('ready', flush=True); sys.stdin.read()")  # fmt: skip
            proc = subprocess.Popen(
                ["sh", "-c", f'echo $$ > {full}/cgroup.procs && exec "$0" -c "$1"', sys.executable, listen],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            procs.append(proc)
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield port, paths
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                (Path(root) / path.lstrip("/")).rmdir()


def test_servers_in_two_cgroups_on_one_port_are_governed_apart(
    dp: InboundDataplane, servers_in_cgroups: tuple[int, list[str]]
) -> None:
    port, (cg_a, cg_b) = servers_in_cgroups
    doc = f"""
resources:
  - {{name: conns-a, match: {{protocol: tcp, port: {port}, cgroup: "{cg_a}"}}}}
  - {{name: web-b, match: {{protocol: http, port: {port}, cgroup: "{cg_b}"}}}}
  - {{name: web-rest, match: {{protocol: http, port: {port}}}}}
flowRules:
  - {{resource: conns-a, threshold: 1}}
  - {{resource: web-b, threshold: 2}}
"""
    dp.apply(dp.compile(rules(doc)))
    c = Client(dp)
    local = {"src": "127.0.0.2"}
    assert [c.syn("127.0.0.1", port) for _ in range(2)][1] != TC_ACT_OK  # server A's connections: 1
    assert c.syn("127.0.0.3", port) == TC_ACT_OK  # server B has no TCP resource
    assert [c.request("127.0.0.3", port=port, **local) for _ in range(3)] == [True, True, False]
    # server A's socket is not in B's cgroup; A's own scope has no HTTP resource: not judged
    assert c.request("127.0.0.1", port=port, **local)
    assert c.request("127.0.0.4", port=port, **local)  # no socket at all: no cgroup scope holds
    assert passes(dp) == {"conns-a": (1, 1), "web-b": (2, 1), "web-rest": (1, 0)}
