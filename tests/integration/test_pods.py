"""One daemon in a node's host namespace governs two servers on the same port in two pod namespaces,
each by its own resources (match.address: the pod's IP), as a DaemonSet with host networking would: it
attaches to each pod's own eth0 (``-i eth0@NETNS``), where the pod's sockets are looked up and its
refusals answered. Clients in the host namespace reach the pods over their veth pairs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.background import sentinel_cli
from tests.support.daemon_helpers import Daemon
from tests.support.netns import PodsNode
from tests.support.nginx import hello_nginx

pytestmark = pytest.mark.kernel
LOAD = Path(__file__).with_name("httpload.py")


@pytest.fixture
def node() -> Iterator[PodsNode]:
    with PodsNode(pods=2) as n:
        for pod in n.pods:
            hello_nginx(n, 8080, ns=pod)
        yield n


def rules(node: PodsNode) -> str:
    return f"""
resources:
  - {{name: pod-a, match: {{protocol: http, port: 8080, address: {node.pod_ip(0)}}}}}
  - {{name: pod-b, match: {{protocol: http, port: 8080, address: {node.pod_ip(1)}}}}}
flowRules:
  - {{resource: pod-a, threshold: 5}}
  - {{resource: pod-b, threshold: 1000}}
"""


def start(node: PodsNode) -> Daemon:
    a, b = (f"{node.pod_if}@{pod}" for pod in node.pods)
    return Daemon(node, rules(node), "-i", b, side="client", iface=a)


def loads(node: PodsNode, seconds: float, rate: float) -> list[dict[str, int]]:
    procs = [
        node.popen(
            node.client,
            sys.executable,
            str(LOAD),
            node.pod_ip(i),
            "8080",
            "/",
            str(seconds),
            "100000",
            str(rate),
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    return [json.loads(p.communicate(timeout=60)[0])["status"] for p in procs]


def tc_left(node: PodsNode) -> str:
    out = ""
    for pod in node.pods:
        out += node.run(pod, "tc", "qdisc", "show", "dev", node.pod_if).stdout
        for direction in ("ingress", "egress"):
            out += node.run(pod, "tc", "filter", "show", "dev", node.pod_if, direction).stdout
    return out


def test_two_pods_on_one_port_are_limited_separately(node: PodsNode) -> None:
    daemon = start(node)
    try:
        assert "clsact" in tc_left(node)
        a, b = loads(node, 3.0, 40)
        stats = daemon.stats()["resources"]
        # pod A: 5 per second of the 40 offered, refused with 429 in the connection; pod B: everything
        assert 10 <= a.get("200", 0) <= 22 and a.get("429", 0) >= 90 and set(a) <= {"200", "429"}, a
        assert b.get("200", 0) >= 110 and set(b) == {"200"}, b
        assert (stats["pod-a"]["pass"], stats["pod-a"]["block"]) == (a["200"], a["429"]), stats["pod-a"]
        assert (stats["pod-b"]["pass"], stats["pod-b"]["block"]) == (b["200"], 0), stats["pod-b"]
        daemon.proc.signal(signal.SIGTERM)
        assert daemon.proc.wait_exit(20) == 0
        left = tc_left(node)
        assert "clsact" not in left and "bpf" not in left, left  # removed from inside both pods
    finally:
        daemon.close()


def test_kill_9_then_down_removes_what_was_attached_in_the_pods(node: PodsNode) -> None:
    daemon = start(node)
    try:
        daemon.proc.signal(signal.SIGKILL)
        daemon.proc.wait_exit(20)
        assert tc_left(node).count("clsact") == 2
        res = node.run(node.client, *sentinel_cli(), "down", "--state-dir", str(daemon.dir / "state"))
        assert res.returncode == 0, res.stderr
        for pod in node.pods:
            assert f"removed clsact qdisc {node.pod_if}@{pod}" in res.stdout, res.stdout
        left = tc_left(node)
        assert "clsact" not in left and "bpf" not in left, left
    finally:
        daemon.close()


def test_pods_matched_by_a_pattern_are_attached_as_they_come(node: PodsNode) -> None:
    """``-i 'eth0@<pods>*'``: the pods there at the start, and one made later (its host-side veth's link
    event makes the daemon look again), are governed; one that goes away is forgotten."""
    pattern = f"{node.pod_if}@{node.pod_name(0)[:-1]}*"
    pod_c = f"  - {{name: pod-c, match: {{protocol: http, port: 8080, address: {node.pod_ip(2)}}}}}\n"
    doc = (
        rules(node).replace("flowRules:\n", pod_c + "flowRules:\n") + "  - {resource: pod-c, threshold: 5}\n"
    )
    daemon = Daemon(node, doc, side="client", iface=pattern)
    try:
        assert tc_left(node).count("clsact") == 2
        mark = len(daemon.proc.stderr)
        pod = node.add_pod()
        daemon.wait_log(f"attached to {node.pod_if}@{pod}", timeout=15, after=mark)
        hello_nginx(node, 8080, ns=pod)
        res = node.run(
            node.client, sys.executable, str(LOAD), node.pod_ip(2), "8080", "/", "2", "100000", "40"
        )
        seen = json.loads(res.stdout)["status"]
        assert 5 <= seen.get("200", 0) <= 15 and seen.get("429", 0) >= 50, seen  # pod C's own limit: 5/s
        assert daemon.stats()["resources"]["pod-c"]["pass"] == seen["200"]
        mark = len(daemon.proc.stderr)
        node.run(node.client, "ip", "link", "del", node.host_if(2), check=True)  # the pod's veth goes
        daemon.wait_log(f"detached from {node.pod_if}@{pod}", timeout=15, after=mark)
    finally:
        daemon.close()


def test_a_missing_pod_namespace_or_interface_is_named(node: PodsNode) -> None:
    for value, expect in ((f"eth0@{node.client}-gone", "no network namespace"),
                          (f"eth9@{node.pods[0]}", "no interface 'eth9'")):  # fmt: skip
        doc = node.tmpdir / "rules.yaml"
        doc.write_text(rules(node))
        res = node.run(node.client, *sentinel_cli(), "run", "-r", str(doc), "-i", value, "--state-dir",
                       str(node.tmpdir / "state"), "--control-socket", str(node.tmpdir / "control.sock"),
                       "--metrics-addr", "", timeout=60)  # fmt: skip
        assert res.returncode != 0 and expect in res.stderr + res.stdout, (res.stdout, res.stderr)
