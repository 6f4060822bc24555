"""A request sent in IP fragments does not reach nginx past a limit: nginx behind the daemon, a client that
makes its TCP connection by hand (fragclient.py) and sends the same request whole or fragmented.

TC runs before the stack reassembles fragments, so nothing there can judge a fragmented request; the
first fragment is dropped (without it the stack cannot rebuild the segment), unless the rules say
`reject.incomplete: pass`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from itertools import count
from pathlib import Path

import pytest

from tests.support.daemon_helpers import Daemon
from tests.support.inbound import API, BLOCK_API
from tests.support.netns import NetnsPair, Server
from tests.support.nginx import hello_nginx

pytestmark = pytest.mark.kernel
CLIENT = Path(__file__).with_name("fragclient.py")
PORTS = count(31000)


@pytest.fixture(scope="module")
def guarded() -> Iterator[tuple[NetnsPair, Server, Daemon]]:
    with NetnsPair("fg") as pair:
        nginx = hello_nginx(pair, 8080)
        route_to_client(pair)
        with Daemon(pair, BLOCK_API) as daemon:
            yield pair, nginx, daemon


def spoofed(pair: NetnsPair) -> str:
    return f"10.200.{pair.subnet}.77"


def route_to_client(pair: NetnsPair) -> None:
    """The server's segments to the hand-made client's address go to the client's interface, whose stack
    does not have that address (it drops them, and never resets the connection)."""
    mac = pair.run(pair.client, "cat", f"/sys/class/net/{pair.client_if}/address", check=True).stdout
    pair.run(pair.server, "ip", "neigh", "replace", spoofed(pair), "lladdr", mac.strip(), "dev",
             pair.server_if, check=True)  # fmt: skip


def send(pair: NetnsPair, mode: str, request: bytes) -> dict[str, object]:
    macs = [
        pair.run(ns, "cat", f"/sys/class/net/{iface}/address", check=True).stdout.strip()
        for ns, iface in ((pair.client, pair.client_if), (pair.server, pair.server_if))
    ]
    res = pair.run(pair.client, sys.executable, str(CLIENT), pair.client_if, *macs, spoofed(pair),
                   pair.server_ip, "8080", str(next(PORTS)), mode, repr(request), timeout=30)  # fmt: skip
    assert res.returncode == 0, res.stderr
    out: dict[str, object] = json.loads(res.stdout)
    assert out["handshake"], out
    return out


def served(nginx: Server) -> list[str]:
    log = nginx.workdir / "access.log"
    return log.read_text().splitlines() if log.exists() else []


def test_a_request_in_fragments_never_reaches_nginx(guarded: tuple[NetnsPair, Server, Daemon]) -> None:
    pair, nginx, daemon = guarded
    # the same hand-made connection, the request whole: judged, refused in the stream
    assert str(send(pair, "whole", API)["answer"]).startswith("HTTP/1.1 429"), "the client must work"
    before, fragments = len(served(nginx)), daemon.stats()["ports"]["8080"]["fragment"]
    assert send(pair, "fragments", API)["answer"] == ""
    assert served(nginx)[before:] == [], "nginx served a fragmented request"
    assert daemon.stats()["ports"]["8080"]["fragment"] > fragments


def test_an_allowed_request_in_fragments_is_dropped_too(guarded: tuple[NetnsPair, Server, Daemon]) -> None:
    """The first fragment's bytes cannot be read whole, whatever they hold: the cost of the rule, stated."""
    pair, nginx, _ = guarded
    ok = API.replace(b"/api", b"/ok")
    assert str(send(pair, "whole", ok)["answer"]).startswith("HTTP/1.1 200")
    before = len(served(nginx))
    assert send(pair, "fragments", ok)["answer"] == ""
    assert served(nginx)[before:] == []


def test_a_request_whose_headers_lie_outside_the_linear_data_is_judged(fresh_netns_pair: NetnsPair) -> None:
    """A frame of 4 KiB or more sent through AF_PACKET reaches the server's interface with only its Ethernet
    header in the skb's linear data (the rest in pages): on a veth with a jumbo MTU, a client in a
    container with CAP_NET_RAW can send such frames, as can NICs that split headers. The IP and TCP
    headers are pulled in and the request judged (before, the packet passed as malformed, unjudged)."""
    pair = fresh_netns_pair
    for ns, iface in ((pair.client, pair.client_if), (pair.server, pair.server_if)):
        pair.run(ns, "ip", "link", "set", iface, "mtu", "9000", check=True)
    nginx = hello_nginx(pair, 8080)
    route_to_client(pair)
    with Daemon(pair, BLOCK_API) as daemon:
        big = API.replace(b"\r\n\r\n", b"\r\nX-Pad: " + b"p" * 5000 + b"\r\n\r\n")
        answer = str(send(pair, "whole", big)["answer"])
        assert not [line for line in served(nginx) if '"GET /api ' in line], "nginx served /api"
        assert answer == "", answer  # refused: a segment over SE_REPLY_REQUEST_MAX (1,536) gets a reset
        assert daemon.stats()["resources"]["api"]["block"] == 1
        assert daemon.stats()["dataplane"]["rst_sent"] == 1
