"""Interfaces created after the daemon starts (a container's veth) are attached and enforced; deleted,
they are forgotten without error; the daemon's exit, or `down` after a crash, leaves no filter anywhere."""

from __future__ import annotations

import contextlib
import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.background import sentinel_cli
from tests.support.daemon_helpers import Daemon
from tests.support.netns import IP, NetnsPair, SubnetEnds, _reserve_subnet, _run, unique_token

pytestmark = pytest.mark.kernel
RULES = """
resources:
  - {name: web, match: {protocol: http, port: 8000, path: /}}
flowRules:
  - {resource: web, threshold: 2, statIntervalInMs: 1000}
"""


class Container(SubnetEnds):
    """A namespace joined to the server namespace by a new veth pair (``nv<token>h`` on the server side):
    what starting a container does to a host."""

    def __init__(self, pair: NetnsPair) -> None:
        token = unique_token()
        self.pair = pair
        self.ns = f"nv-{token}"
        self.host_if, self.inner_if = f"nv{token}h", f"nv{token}c"
        self.subnet, self._lock = _reserve_subnet()
        self.created = False

    def create(self) -> Container:
        _run([IP, "netns", "add", self.ns])
        self.created = True
        _run([IP, "link", "add", self.inner_if, "netns", self.ns, "type", "veth", "peer", "name", self.host_if,
              "netns", self.pair.server])  # fmt: skip
        _run(self.pair.cmd(self.ns, IP, "addr", "add", f"{self.client_ip}/24", "dev", self.inner_if))
        _run(self.pair.cmd(self.ns, IP, "link", "set", self.inner_if, "up"))
        _run(self.pair.cmd(self.pair.server, IP, "addr", "add", f"{self.server_ip}/24", "dev", self.host_if))
        _run(self.pair.cmd(self.pair.server, IP, "link", "set", self.host_if, "up"))
        return self

    def remove_link(self) -> None:
        _run(self.pair.cmd(self.pair.server, IP, "link", "del", self.host_if))

    def destroy(self) -> None:
        if self.created:
            with contextlib.suppress(Exception):
                _run([IP, "netns", "del", self.ns])
            self.created = False
        self._lock.close()

    def statuses(self, n: int) -> list[str]:
        url = f"http://{self.server_ip}:8000/"
        out = []
        for _ in range(n):
            res = self.pair.run(
                self.ns, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", url
            )
            out.append(res.stdout)
        return out


@pytest.fixture
def container(fresh_netns_pair: NetnsPair) -> Iterator[Container]:
    fresh_netns_pair.start_http_server(8000)
    c = Container(fresh_netns_pair)
    try:
        yield c
    finally:
        c.destroy()


def links_of(pair: NetnsPair) -> list[str]:
    out = pair.run(pair.server, IP, "-j", "link", "show", check=True).stdout
    return [link["ifname"] for link in json.loads(out)]


def tc_left(pair: NetnsPair) -> dict[str, str]:
    """Per interface of the server namespace: our filters and clsact qdiscs still there."""
    left = {}
    for name in links_of(pair):
        out = pair.run(pair.server, "tc", "qdisc", "show", "dev", name).stdout
        out = "clsact" if "clsact" in out else ""
        for direction in ("ingress", "egress"):
            out += pair.run(pair.server, "tc", "filter", "show", "dev", name, direction).stdout
        if out:
            left[name] = out
    return left


def test_a_veth_created_after_start_is_attached_enforced_and_forgotten_when_deleted(
    container: Container,
) -> None:
    pair = container.pair
    d = Daemon(pair, RULES, "-i", "nv*")  # the helper's own -i names the pair's veth
    try:
        container.create()
        d.wait_log(f"attached to {container.host_if}", timeout=10)
        assert (
            "bpf" in pair.run(pair.server, "tc", "filter", "show", "dev", container.host_if, "ingress").stdout
        )
        codes = container.statuses(4)
        assert codes[:2] == ["200", "200"] and "429" in codes[2:], codes  # threshold 2 a second
        assert d.stats()["resources"]["web"]["block"] >= 1
        container.remove_link()
        d.wait_log(f"detached from {container.host_if}", timeout=10)
        state = json.loads((d.dir / "state" / "state.json").read_text())
        assert [a["ifname"] for a in state["attachments"]] == [pair.server_if]
        d.proc.signal(signal.SIGTERM)
        assert d.proc.wait_exit(20) == 0
        errors = [ln for ln in d.proc.stderr if " ERROR " in ln or "Traceback" in ln or "cannot" in ln]
        assert not errors, errors
        assert tc_left(pair) == {}
    finally:
        d.close()


def test_down_after_a_crash_removes_filters_from_interfaces_attached_later(container: Container) -> None:
    pair = container.pair
    d = Daemon(pair, RULES, "-i", "nv*")
    try:
        container.create()
        d.wait_log(f"attached to {container.host_if}", timeout=10)
        d.proc.signal(signal.SIGKILL)
        d.proc.wait_exit(20)
        assert container.host_if in tc_left(pair)
        res = pair.run(pair.server, *sentinel_cli(), "down", "--state-dir", str(d.dir / "state"))
        assert res.returncode == 0, res.stderr
        assert f"clsact qdisc {container.host_if}" in res.stdout  # the state file listed it
        assert tc_left(pair) == {}
    finally:
        d.close()


def test_l3_devices_are_left_out_by_a_pattern_and_refused_by_name(
    fresh_netns_pair: NetnsPair, tmp_path: Path
) -> None:
    pair = fresh_netns_pair
    tun = f"nt{unique_token()}"[:15]
    _run(pair.cmd(pair.server, IP, "tuntap", "add", "dev", tun, "mode", "tun"))
    try:
        _run(pair.cmd(pair.server, IP, "link", "set", tun, "up"))
        d = Daemon(pair, RULES, "-i", "nt*")
        try:
            d.wait_log(f"not attached to {tun}: an L3 device (link type 65534) has no Ethernet header", 10)
            assert tun not in tc_left(pair)
            assert all(
                tun not in line for line in d.proc.stderr if "attached to" in line and "not" not in line
            )
            d.proc.signal(signal.SIGTERM)
            d.proc.wait_exit(20)
        finally:
            d.close()
        assert tc_left(pair) == {}
        rules = tmp_path / "rules.yaml"
        rules.write_text(RULES)
        res = pair.run(pair.server, *sentinel_cli(), "run", "-r", str(rules), "-i", tun, "--metrics-addr", "",
                       "--state-dir", str(tmp_path / "state"), "--control-socket", str(tmp_path / "c.sock"),
                       "--log-dir", "")  # fmt: skip
        assert res.returncode == 1, (res.stdout, res.stderr)
        assert f"{tun} (link type 65534): an L3 device without an Ethernet header" in res.stderr
        assert tc_left(pair) == {}
    finally:
        _run(pair.cmd(pair.server, IP, "link", "del", tun))
