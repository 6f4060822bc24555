"""The configured set of interfaces (`run -i`), and keeping attachments right as interfaces come and go."""

from __future__ import annotations

import pytest

from sentinel_ebpf.daemon.links import LinkSet, reconcile
from sentinel_ebpf.errors import SentinelError


class FakeDataplane:
    def __init__(self) -> None:
        self.present: dict[str, int] = {}
        self.on: dict[str, int] = {}
        self.calls: list[str] = []

    def attach(self, ifname: str) -> None:
        if ifname not in self.present:
            raise OSError(19, "No such device")
        self.on[ifname] = self.present[ifname]
        self.calls.append(f"attach {ifname}")

    def detach(self, ifname: str) -> None:
        del self.on[ifname]
        self.calls.append(f"detach {ifname}")

    def attached(self) -> list[tuple[str, int, bool]]:
        return [(n, i, True) for n, i in self.on.items()]


UP = {"lo", "eth0", "veth1", "veth2", "br0"}


def up(name: str) -> bool:
    return name in UP


def test_default_is_every_interface_that_is_up() -> None:
    present = {"lo": 1, "eth0": 2, "eth1": 3, "veth1": 4}
    assert LinkSet([]).wanted(present, up) == ["lo", "eth0", "veth1"]


def test_patterns_match_up_interfaces_and_literal_names_attach_even_when_down() -> None:
    present = {"lo": 1, "eth0": 2, "eth1": 3, "veth1": 4, "veth9": 5, "vethx": 6}
    links = LinkSet(["veth[0-8]", "eth1"])
    assert links.wanted(present, up) == ["eth1", "veth1"]  # eth1 is down, named literally
    links.check_literals(present)
    with pytest.raises(SentinelError, match=r"no interface named eth7 .*quote a pattern such as 'veth\*'"):
        LinkSet(["eth7", "veth*"]).check_literals(present)


def test_new_interfaces_are_attached_and_gone_ones_forgotten() -> None:
    dp = FakeDataplane()
    links = LinkSet(["veth*"])
    dp.present = {"lo": 1, "veth1": 4}
    assert reconcile(dp, links, dp.present, up) == ["attached to veth1"]
    assert reconcile(dp, links, dp.present, up) == []  # nothing changed: nothing done
    dp.present = {"lo": 1, "veth1": 4, "veth2": 7, "veth3": 8}  # veth3 is down: not yet
    assert reconcile(dp, links, dp.present, up) == ["attached to veth2"]
    UP.add("veth3")
    try:
        assert reconcile(dp, links, dp.present, up) == ["attached to veth3"]
    finally:
        UP.discard("veth3")
    dp.present = {"lo": 1, "veth2": 7, "veth3": 8}
    assert reconcile(dp, links, dp.present, up) == ["detached from veth1 (ifindex 4): the interface is gone"]
    assert sorted(dp.on) == ["veth2", "veth3"]


def test_a_name_reused_by_a_new_interface_is_attached_again() -> None:
    dp = FakeDataplane()
    links = LinkSet(["veth*"])
    dp.present = {"veth1": 4}
    reconcile(dp, links, dp.present, up)
    dp.present = {"veth1": 9}  # deleted and created again between two events
    assert reconcile(dp, links, dp.present, up) == [
        "detached from veth1 (ifindex 4): the interface is gone",
        "attached to veth1",
    ]
    assert dp.on == {"veth1": 9}


def test_an_interface_that_vanishes_while_being_attached_is_skipped() -> None:
    dp = FakeDataplane()
    links = LinkSet([])
    listed = {"lo": 1, "veth2": 7}
    dp.present = {"lo": 1}  # veth2 listed, then gone before attach
    assert reconcile(dp, links, listed, up) == ["attached to lo"]
    assert dp.on == {"lo": 1}


def test_l3_devices_are_skipped_by_patterns_and_refused_by_name(caplog: pytest.LogCaptureFixture) -> None:
    types = {"lo": 772, "eth0": 1, "wg0": 65534, "tun0": 65534, "gre1": 778}
    present = {name: i for i, name in enumerate(types, 1)}
    links = LinkSet([])
    with caplog.at_level("INFO", logger="sentinel_ebpf.daemon"):
        assert links.wanted(present, lambda n: True, types.get) == ["lo", "eth0"]
        assert links.wanted(present, lambda n: True, types.get) == ["lo", "eth0"]
    skipped = [r.getMessage() for r in caplog.records if "L3 device" in r.getMessage()]
    assert (
        len(skipped) == 3 and "not attached to wg0: an L3 device (link type 65534)" in skipped[0]
    )  # once each
    LinkSet(["eth0", "lo"]).check_literals(present, types.get)
    with pytest.raises(
        SentinelError, match=r"wg0 \(link type 65534\): an L3 device without an Ethernet header"
    ):
        LinkSet(["eth0", "wg0"]).check_literals(present, types.get)


def test_interfaces_of_other_namespaces_are_named_literally_and_followed_like_others() -> None:
    from sentinel_ebpf import netns

    assert netns.split("eth0@pod-a") == ("eth0", "pod-a")
    assert netns.split("eth0@/proc/42/ns/net") == ("eth0", "/proc/42/ns/net")
    assert netns.split("eth0") == ("eth0", None) and netns.split("eth0@") == ("eth0@", None)
    links = LinkSet(["veth*", "eth0@pod-a", "eth0@cni-*"])
    assert links.namespaced == ["eth0@pod-a", "eth0@cni-*"]
    assert links.wanted({"eth0@cni-1": 3, "eth1@cni-1": 4, "eth0@pod-b": 5}, up) == ["eth0@cni-1"]
    dp = FakeDataplane()
    dp.present = {"lo": 1, "veth1": 4, "eth0@pod-a": 2}  # ifindex 2 inside the pod
    assert reconcile(dp, links, dp.present, up) == ["attached to veth1", "attached to eth0@pod-a"]
    dp.present = {"lo": 1, "veth1": 4}  # the pod is gone
    assert reconcile(dp, links, dp.present, up) == [
        "detached from eth0@pod-a (ifindex 2): the interface is gone"
    ]
    with pytest.raises(SentinelError, match="no network namespace 'se-no-such-ns'"):
        LinkSet(["eth0@se-no-such-ns"]).check_literals({"lo": 1})
