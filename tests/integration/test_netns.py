"""The namespace fixture library itself: addresses, servers, and cleanup also when a test fails."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support.curl import curl_argv
from tests.support.netns import IFNAMSIZ, NetnsError, NetnsPair

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


def netns_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


def test_pair_is_reachable_and_removed_even_on_failure() -> None:
    pair = NetnsPair()
    with pytest.raises(RuntimeError, match="boom"), pair:
        assert len(pair.client_if) <= IFNAMSIZ and len(pair.server_if) <= IFNAMSIZ
        assert f"{os.getpid():x}" in pair.client and f"{os.getpid():x}" in pair.client_if
        assert netns_exists(pair.client) and netns_exists(pair.server)
        web = pair.start_http_server(8000)
        res = pair.run(pair.client, *curl_argv(f"http://{pair.server_ip}:8000/"))
        assert res.returncode == 0 and "hello" in res.stdout, res
        res = pair.run(pair.client, *curl_argv(f"http://[{pair.server_ip6}]:8000/"))
        assert res.returncode == 0 and "hello" in res.stdout, res
        # the host namespace sees neither the veth ends nor the addresses
        host = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout
        assert pair.client_if not in host and pair.server_ip not in host
        tmp = pair.tmpdir
        raise RuntimeError("boom")
    assert not netns_exists(pair.client) and not netns_exists(pair.server)
    assert web.proc.poll() is not None, "server left running"
    assert not tmp.exists()


def test_two_pairs_get_different_subnets() -> None:
    with NetnsPair() as a, NetnsPair() as b:
        assert a.subnet != b.subnet and a.client != b.client and a.client_if != b.client_if
        # isolated: a's client cannot reach b's server
        res = a.run(a.client, *curl_argv(f"http://{b.server_ip}:9/", max_time_s=2), timeout=10)
        assert res.returncode == 7, res  # no route: "Couldn't connect to server"
    for ns in (a.client, a.server, b.client, b.server):
        assert not netns_exists(ns)


class _BrokenIpv6Pair(NetnsPair):
    @property
    def server_ip6(self) -> str:
        return "fd00:200:zz::2"  # not an address: `ip -6 addr add` fails like on a host without IPv6


def test_ipv6_setup_failure_is_loud_and_cleans_up() -> None:
    """A pair whose IPv6 cannot be set up fails to create (the tests never lose their IPv6 half quietly)."""
    pair = _BrokenIpv6Pair()
    with pytest.raises(NetnsError, match="IPv6 setup failed"):
        pair.create()
    assert not netns_exists(pair.client) and not netns_exists(pair.server)
    assert not pair.ipv6
