"""The fleet view: node records from the daemons' control sockets, sums per resource (no kernel)."""

from __future__ import annotations

from typing import Any

from sentinel_ebpf.daemon.control import ControlError
from sentinel_ebpf.dashboard.fleet import LocalSockets, NodeRecord, fleet_view


def _res(passed: int, blocked: int, concurrency: int = 0) -> dict[str, Any]:
    return {"pass": passed, "block": blocked, "complete": passed, "error": 0, "concurrency": concurrency}


def fake_ask(path: str, cmd: str, timeout_s: float = 10.0, **args: Any) -> dict[str, Any]:
    if path == "down.sock":
        raise ControlError("no daemon at down.sock (start one with `sentinel-ebpf run`)")
    if path == "old.sock":
        return {"resources": {"api": {"pass": 1}}, "to_ms": 0}  # a daemon without these fields
    n = 1 if path == "a.sock" else 2
    if cmd == "stats":
        return {"resources": {"api": _res(10 * n, n, concurrency=n), "db": _res(n, 0)}, "version": "0.1.0",
                "revision": "r1", "loaded_at": 100.0}  # fmt: skip
    assert cmd == "metrics" and args["since"] > 0
    # the last complete second is 9,000; an older one must not be taken for it
    return {"step_ms": 1000, "from_ms": 7000, "to_ms": 10_000, "transitions": [],
            "resources": {"api": [{"t": 8000, "pass": 99, "block": 99}, {"t": 9000, "pass": 5 * n, "block": n}]}}  # fmt: skip


def test_local_daemons_are_nodes_and_their_resources_are_summed() -> None:
    view = fleet_view(LocalSockets(["a.sock", "b.sock", "down.sock", "old.sock"], fake_ask).records())
    health = {n["node"]: (n["health"], n["version"], n["rules_revision"]) for n in view["nodes"]}
    assert health["a.sock"] == health["b.sock"] == ("up", "0.1.0", "r1")
    assert health["down.sock"][0] == health["old.sock"][0] == "down"
    errors = {n["node"]: n["error"] for n in view["nodes"]}
    assert "no daemon" in errors["down.sock"] and "older version" in errors["old.sock"]
    assert view["resources"]["api"] == {"pass": 30, "block": 3, "complete": 30, "error": 0, "concurrency": 3,
                                        "pass_qps": 15, "block_qps": 3, "nodes": 2}  # fmt: skip
    assert view["resources"]["db"]["pass"] == 3 and view["resources"]["db"]["pass_qps"] == 0
    assert view["same_rules"]


def test_nodes_with_other_rules_are_flagged() -> None:
    records = [NodeRecord("a", "up", rules_revision="r1"), NodeRecord("b", "up", rules_revision="r2"),
               NodeRecord("c", "down", rules_revision="r3")]  # fmt: skip
    assert not fleet_view(records)["same_rules"]
    assert fleet_view(records[:1] + records[2:])["same_rules"]  # a node that is down does not count
