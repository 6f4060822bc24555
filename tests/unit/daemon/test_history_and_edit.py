"""The per-second history behind ``metrics`` and rule edits behind ``check``/``apply`` (no kernel)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from daemon_fakes import rules
from test_daemon_handlers import TCP_AND_HTTP, _buckets, daemon

from sentinel_ebpf._types import BlockType
from sentinel_ebpf.daemon import Daemon, DaemonConfig
from sentinel_ebpf.daemon.collector import SecondCollector
from sentinel_ebpf.daemon.edit import compile_problem, revision
from sentinel_ebpf.daemon.history import History, Point
from sentinel_ebpf.errors import SentinelError
from sentinel_ebpf.stats import BreakerTransition, SecondCounts


def _point(t: int, passed: int, concurrency: int = 0) -> Point:
    return Point(SecondCounts(t, passed, 0, passed, 0, 1, concurrency=concurrency))


def test_history_keeps_the_last_seconds_sparse_and_answers_since() -> None:
    h = History(seconds=3)
    for t in range(10_000, 15_000, 1000):
        h.record(t, {"a": _point(t, t // 1000), "idle": _point(t, 0)})
    h.record(12_000, {"a": _point(12_000, 99)})  # a second again: ignored
    doc = h.since(0)
    assert (doc["from_ms"], doc["to_ms"], doc["step_ms"]) == (12_000, 15_000, 1000)
    assert [p["t"] for p in doc["resources"]["a"]] == [12_000, 13_000, 14_000]
    assert [p["pass"] for p in doc["resources"]["a"]] == [12, 13, 14]
    assert "idle" not in doc["resources"]  # a second of zeros has no point
    newer = h.since(14_000)
    assert newer["from_ms"] == 14_000 and [p["t"] for p in newer["resources"]["a"]] == [14_000]
    assert h.since(15_000) == {"step_ms": 1000, "from_ms": 15_000, "to_ms": 15_000, "resources": {},
                               "transitions": []}  # fmt: skip
    with pytest.raises(ValueError, match="whole second"):
        h.record(15_500, {})


def test_history_keeps_a_point_for_requests_in_flight_and_transitions_within_the_window() -> None:
    h = History(seconds=2)
    h.transition(9_500, BreakerTransition("a", "cb1", "closed", "open"))
    h.record(10_000, {"a": _point(10_000, 0, concurrency=2)})
    h.transition(10_400, BreakerTransition("a", "cb1", "open", "half_open"))
    h.record(11_000, {})
    doc = h.since(0)
    assert doc["resources"]["a"][0]["concurrency"] == 2
    # the window is [10,000, 12,000): the transition at 9,500 is older
    assert doc["transitions"] == [{"t": 10_400, "resource": "a", "breaker": "cb1", "from": "open",
                                   "to": "half_open"}]  # fmt: skip
    assert h.since(10_500)["transitions"] == []


def test_collected_seconds_feed_the_history_with_blocks_by_kind(tmp_path: Path) -> None:
    d, dp = daemon(tmp_path, TCP_AND_HTTP)
    api = d.dp.compiled.resource_id("GET:/api|v1")  # type: ignore[union-attr]
    st = _buckets([(5_000, 2, 3, 2, 40)])
    dp.buckets[api] = st
    now = [5_100]
    seconds = SecondCollector(lambda: now[0])
    st.total_block = st.block_by_type[int(BlockType.BLOCK_FLOW)] = 1  # blocked before
    d._collect_seconds(seconds)  # baseline of the block counters (nothing complete yet)
    st.total_block = 4
    st.block_by_type[int(BlockType.BLOCK_FLOW)] = 3
    st.block_by_type[int(BlockType.BLOCK_HOTSPOT)] = 1
    now[0] = 6_200
    d._collect_seconds(seconds)  # no metric log configured: the history is still fed
    doc = d.handle({"cmd": "metrics", "since": 0})
    (p,) = doc["resources"]["GET:/api|v1"]
    assert (p["t"], p["pass"], p["block"], p["complete"], p["avg_rt_ms"]) == (
        seconds.epoch(5_000),
        2,
        3,
        2,
        20,
    )
    assert p["block_by_type"] == {"flow": 2, "isolation": 0, "circuit_breaking": 0, "system": 0, "hotspot": 1}
    assert "conns" not in doc["resources"]
    with pytest.raises(SentinelError, match="'since' must be a non-negative integer"):
        d.handle({"cmd": "metrics", "since": "yesterday"})


def test_breaker_transitions_seen_by_the_daemon_reach_the_history(tmp_path: Path) -> None:
    d, _ = daemon(tmp_path, rules("5"))
    before = round(time.time() * 1000)
    for listener in d.listeners:
        listener(BreakerTransition("api", "cb", "closed", "open"))
    (t,) = d.handle({"cmd": "metrics"})["transitions"]
    assert t["to"] == "open" and before <= t["t"] <= round(time.time() * 1000)


@contextmanager
def serving_reloads(d: Daemon) -> Iterator[None]:
    """The daemon's loop, reduced to what ``apply`` waits for."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            if d._reload_requested:
                d.reload()
            time.sleep(0.005)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join(5)


def _document(d: Daemon) -> tuple[dict[str, object], str]:
    doc = d.handle({"cmd": "rules"})
    return doc["document"], doc["revision"]


def test_a_valid_edit_is_written_and_put_in_force(tmp_path: Path) -> None:
    d, dp = daemon(tmp_path, rules("5"))
    document, base = _document(d)
    document["flowRules"][0]["threshold"] = 40  # type: ignore[index]
    assert d.handle({"cmd": "check", "document": document}) == {"valid": True, "problems": []}
    with serving_reloads(d):
        reply = d.handle({"cmd": "apply", "document": document, "base": base})
    assert reply["applied"] and reply["changed"] and reply["problems"] == []
    assert dp.threshold() == 40
    assert reply["revision"] == d.handle({"cmd": "rules"})["revision"] != base
    on_disk = yaml.safe_load((tmp_path / "rules.yaml").read_text())
    assert on_disk["flowRules"][0]["threshold"] == 40  # the file stays the source: a SIGHUP keeps the edit


def test_an_invalid_edit_lists_every_problem_by_field_and_changes_nothing(tmp_path: Path) -> None:
    d, dp = daemon(tmp_path, rules("5"))
    text = (tmp_path / "rules.yaml").read_text()
    document, base = _document(d)
    flow = document["flowRules"][0]  # type: ignore[index]
    flow["threshold"] = -1
    flow["controlBehavior"] = "Sometimes"
    reply = d.handle({"cmd": "apply", "document": document, "base": base})
    assert not reply["applied"] and not reply["conflict"]
    located = {(p["section"], p["index"], p["field"]) for p in reply["problems"]}
    assert located == {("flowRules", 0, "threshold"), ("flowRules", 0, "controlBehavior")}
    assert (tmp_path / "rules.yaml").read_text() == text and dp.threshold() == 5
    assert d.handle({"cmd": "check", "document": document})["problems"] == reply["problems"]


def test_an_edit_based_on_an_old_revision_is_refused(tmp_path: Path) -> None:
    d, dp = daemon(tmp_path, rules("5"))
    document, base = _document(d)
    (tmp_path / "rules.yaml").write_text(rules("7"))  # someone else changed the rules meanwhile
    d.reload()
    document["flowRules"][0]["threshold"] = 40  # type: ignore[index]
    reply = d.handle({"cmd": "apply", "document": document, "base": base})
    assert reply["conflict"] and not reply["applied"] and "changed" in reply["problems"][0]["reason"]
    assert dp.threshold() == 7 and "threshold: 7" in (tmp_path / "rules.yaml").read_text()


def test_what_the_kernel_cannot_enforce_is_located_too(tmp_path: Path) -> None:
    d, dp = daemon(tmp_path, rules("5"))
    document, base = _document(d)
    document["flowRules"][0]["statIntervalInMs"] = 1250  # type: ignore[index]
    reply = d.handle({"cmd": "apply", "document": document, "base": base})
    (p,) = reply["problems"]
    assert (p["section"], p["index"], p["field"]) == ("flowRules", 0, "statIntervalInMs")
    assert not reply["applied"] and dp.threshold() == 5


def test_a_reload_refused_after_writing_puts_the_old_file_back(tmp_path: Path) -> None:
    d, dp = daemon(tmp_path, rules("5"))
    text = (tmp_path / "rules.yaml").read_text()
    document, base = _document(d)
    document["flowRules"][0]["threshold"] = 40  # type: ignore[index]
    dp.fail_apply = SentinelError("map flow_rules: update: no space left")
    with serving_reloads(d):
        reply = d.handle({"cmd": "apply", "document": document, "base": base})
    assert not reply["applied"] and "no space left" in reply["problems"][0]["reason"]
    assert (tmp_path / "rules.yaml").read_text() == text and dp.threshold() == 5


def test_the_built_in_example_is_not_editable(tmp_path: Path) -> None:
    d = Daemon(DaemonConfig(rules=None, state_dir=str(tmp_path / "state")))
    assert d.editor.describe()["editable"] is False
    with pytest.raises(SentinelError, match="built-in example is not editable"):
        d.editor.apply({}, "")


def test_compile_problems_without_a_known_field_stay_on_the_rule() -> None:
    fields = {"flowRules": {"threshold", "refResource"}}
    assert (
        compile_problem("flowRules[3] (x): refResource 'y' is not a declared resource", fields)["field"]
        == "refResource"
    )
    p = compile_problem("flowRules[3] (x): Throttling with AssociatedResource is not supported", fields)
    assert (p["section"], p["index"], p["field"]) == ("flowRules", 3, None)
    assert compile_problem("something global", fields)["section"] is None
    assert revision(None) == ""


def test_stats_name_the_version_and_the_revision_in_force(tmp_path: Path) -> None:
    from sentinel_ebpf import __version__

    d, _ = daemon(tmp_path, rules("5"))
    stats = d.handle({"cmd": "stats"})
    assert stats["version"] == __version__ and stats["revision"] == d.handle({"cmd": "rules"})["revision"]
    (tmp_path / "rules.yaml").write_text(rules("9"))
    d.reload()
    assert d.handle({"cmd": "stats"})["revision"] not in ("", stats["revision"])


def test_observed_resources_get_what_their_counters_gained_each_sample() -> None:
    from sentinel_ebpf.daemon.history import ObservedDeltas
    from sentinel_ebpf.stats import ResourceStats

    d = ObservedDeltas()
    first = d.step(1000, [ResourceStats("tls", passed=10, complete=10, rt_sum_ms=50.0, source="tls_trace")])
    assert first["tls"].counts.is_zero()  # the first sight is the baseline
    p = d.step(2000, [ResourceStats("tls", passed=14, complete=13, error=1, rt_sum_ms=80.0)])["tls"].counts
    assert (p.second_ms, p.pass_qps, p.complete_qps, p.error_qps, p.avg_rt_ms) == (2000, 4, 3, 1, 10)
    reset = d.step(3000, [ResourceStats("tls", passed=2, complete=2, rt_sum_ms=4.0)])["tls"].counts
    assert (reset.pass_qps, reset.avg_rt_ms) == (2, 2)  # counters restarted (a reload): counted from zero
