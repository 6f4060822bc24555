"""Reload decisions and file watching, with a data plane that records what it was asked to do."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from daemon_fakes import FakeDataplane, rules

from sentinel_ebpf.daemon.reload import reload_rules
from sentinel_ebpf.daemon.watch import FileWatcher
from sentinel_ebpf.errors import BpfMapError
from sentinel_ebpf.rules import RuleSet


@pytest.fixture
def dp() -> FakeDataplane:
    return FakeDataplane()


def test_a_valid_file_is_applied_and_an_unchanged_one_is_a_no_op(tmp_path: Path, dp: FakeDataplane) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(rules("5"))
    first = reload_rules(str(path), dp)
    assert (first.accepted, first.changed, first.problems) == (True, True, ())
    assert first.rules is not None and first.rules.resources[0].name == "api" and dp.threshold() == 5
    again = reload_rules(str(path), dp)
    assert (again.accepted, again.changed) == (True, False) and len(dp.applied) == 1
    path.write_text(rules("40"))
    assert reload_rules(str(path), dp).changed and dp.threshold() == 40
    # the resource kept its id, so the kernel keeps its statistics
    assert dp.applied[0].resources[0].id == dp.applied[1].resources[0].id


def test_an_invalid_file_keeps_the_rules_in_force_and_logs_every_problem(
    tmp_path: Path, dp: FakeDataplane, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(rules("5"))
    reload_rules(str(path), dp)
    path.write_text(rules("-1") + "  - {resource: nowhere, threshold: 1}\n")
    with caplog.at_level(logging.ERROR):
        result = reload_rules(str(path), dp)
    assert not result.accepted and not result.changed and result.rules is None
    assert len(result.problems) == 2, result.problems
    assert any("threshold" in p for p in result.problems) and any("nowhere" in p for p in result.problems)
    assert "the rules in force stay" in caplog.text and all(p in caplog.text for p in result.problems)
    assert len(dp.applied) == 1 and dp.threshold() == 5


def test_rules_the_kernel_cannot_enforce_keep_the_rules_in_force(tmp_path: Path, dp: FakeDataplane) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(rules("5"))
    reload_rules(str(path), dp)
    path.write_text(rules("5", interval="1200"))
    result = reload_rules(str(path), dp)
    assert not result.accepted and "multiple of 500" in result.problems[0] and dp.threshold() == 5


def test_a_missing_file_keeps_the_rules_in_force(tmp_path: Path, dp: FakeDataplane) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(rules("5"))
    reload_rules(str(path), dp)
    path.unlink()
    result = reload_rules(str(path), dp)
    assert not result.accepted and str(path) in result.problems[0] and dp.threshold() == 5


def test_a_kernel_failure_while_applying_keeps_the_rules_in_force(tmp_path: Path, dp: FakeDataplane) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(rules("5"))
    reload_rules(str(path), dp)
    path.write_text(rules("40"))
    dp.fail_apply = BpfMapError("map res_conf: update", 7)
    result = reload_rules(str(path), dp)
    assert not result.accepted and "res_conf" in result.problems[0] and dp.threshold() == 5
    assert result.as_dict() == {"applied": False, "accepted": False, "problems": list(result.problems)}


def test_prepare_runs_before_the_switch_and_its_failure_stops_it(tmp_path: Path, dp: FakeDataplane) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(rules("5"))
    seen: list[int] = []

    def prepare(ruleset: RuleSet) -> None:
        seen.append(len(dp.applied))
        raise OSError(13, "Permission denied", "/sys/fs/cgroup")

    result = reload_rules(str(path), dp, prepare=prepare)
    assert seen == [0] and not result.accepted and "Permission denied" in result.problems[0]
    assert dp.applied == []


def test_watcher_sees_rewrites_renames_and_removal_once_each(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("a: 1\n")
    w = FileWatcher(str(path))
    assert not w.changed()
    path.write_text("a: 22\n")
    assert w.changed() and not w.changed()
    new = tmp_path / "rules.yaml.new"
    new.write_text("a: 33\n")
    new.replace(path)  # an editor's save, or a ConfigMap swap
    assert w.changed() and not w.changed()
    path.unlink()
    assert w.changed() and not w.changed()
    path.write_text("a: 1\n")
    assert w.changed()


def test_watcher_mark_absorbs_what_is_being_loaded(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("a: 1\n")
    w = FileWatcher(str(path))
    path.write_text("a: 2\n")
    w.mark()
    assert not w.changed()
    st = path.stat()
    path.write_text("a: 3\n")  # same size, same mtime: only SIGHUP will pick this up
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert not w.changed()
