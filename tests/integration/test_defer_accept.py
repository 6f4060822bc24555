"""Deferred accept: a refused first request costs the server no connection at all; with SYN cookies too
(the connection is then made from the cookie in the ACK that carries the first request: that request is
judged like any other, not passed as a segment of a connection that does not exist)."""

from __future__ import annotations

import pytest

from tests.support.daemon_helpers import Daemon
from tests.support.inbound import BLOCK_API
from tests.support.netns import NetnsPair
from tests.support.nginx import hello_nginx

pytestmark = pytest.mark.kernel


def tcp_mib(pair: NetnsPair) -> dict[str, int]:
    """The server namespace's TCP counters (/proc/net/snmp and netstat's TcpExt)."""
    out: dict[str, int] = {}
    for f in ("/proc/net/snmp", "/proc/net/netstat"):
        lines = pair.run(pair.server, "cat", f, check=True).stdout.splitlines()
        for head, values in zip(lines[::2], lines[1::2], strict=True):
            names, nums = head.split()[1:], values.split()[1:]
            prefix = head.split(":")[0]
            out.update({f"{prefix}{n}": int(v) for n, v in zip(names, nums, strict=True)})
    return out


@pytest.mark.parametrize("cookies", [False, True], ids=["synqueue", "syncookies"])
@pytest.mark.parametrize("defer", [True, False], ids=["deferred", "not-deferred"])
def test_refused_first_requests_never_become_connections(
    fresh_netns_pair: NetnsPair, defer: bool, cookies: bool
) -> None:
    pair = fresh_netns_pair
    if cookies:  # every SYN answered with a cookie, no handshake kept: as under a SYN flood
        pair.run(pair.server, "sysctl", "-qw", "net.ipv4.tcp_syncookies=2", check=True)
    nginx = hello_nginx(pair, 8080)
    d = Daemon(pair, BLOCK_API + ("reject: {deferAccept: true}\n" if defer else ""))
    try:
        url = f"http://{pair.server_ip}:8080"
        before = tcp_mib(pair)
        codes = pair.run(pair.client, "curl", "-s", "-m", "10", *[x for _ in range(20) for x in ("-o", "/dev/null", f"{url}/api")],
                         "-w", "%{http_code}\\n", timeout=60).stdout.split()  # fmt: skip
        after = tcp_mib(pair)
        assert codes == ["429"] * 20
        if cookies:  # a SYN cookie per connection curl made
            assert after["TcpExtSyncookiesSent"] - before["TcpExtSyncookiesSent"] == (20 if defer else 1)
        opened = after["TcpPassiveOpens"] - before["TcpPassiveOpens"]
        # deferred: each refused first request resets its pending handshake, and curl connects again;
        # not deferred: the refusals keep curl's one connection
        assert opened == (0 if defer else 1), (
            opened,
            after["TcpExtEmbryonicRsts"] - before["TcpExtEmbryonicRsts"],
        )
        if defer:
            assert d.stats()["ports"]["8080"]["deferred_ack"] >= 20
        # an allowed request still works, deferred or not
        ok = pair.run(
            pair.client, "curl", "-s", "-m", "10", "-o", "/dev/null", "-w", "%{http_code}", f"{url}/ok"
        )
        assert ok.stdout == "200"
        log = (nginx.workdir / "access.log").read_text()
        assert "/api" not in log and log.count("/ok") == 1
    finally:
        d.close()
