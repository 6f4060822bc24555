"""Rule edits of a daemon that reads its rules from etcd: written to the key with a compare-and-swap on
the revision in force, in force once the daemon's watch applied them (``daemon.edit``)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from sentinel_ebpf.daemon import edit
from sentinel_ebpf.daemon.edit import RulesEditor
from sentinel_ebpf.daemon.reload import ReloadResult
from sentinel_ebpf.rules import RuleSet, load_data
from sentinel_ebpf.rules.dump import to_project
from sentinel_ebpf.sources.etcd import EtcdUnavailable, RevisionConflict

DOC = {
    "resources": [{"name": "web", "match": {"protocol": "http", "port": 8000, "path": "/"}}],
    "flowRules": [{"resource": "web", "threshold": 5}],
}


class FakeEtcd:
    """The key, and the daemon's watch applying what is written (unless ``applies`` is False)."""

    url = "etcd://127.0.0.1:2379/rules"

    def __init__(self) -> None:
        self.revision = 10
        self.from_cache = False
        self.rules: RuleSet = load_data(DOC, "etcd")
        self.puts: list[tuple[bytes, int]] = []
        self.applies = True
        self.fail: Exception | None = None

    def describe(self) -> dict[str, Any]:
        return {"revision": self.revision, "from_cache": self.from_cache}

    def put(self, value: bytes, if_revision: int) -> int:
        if self.fail is not None:
            raise self.fail
        self.puts.append((value, if_revision))
        if self.applies:
            self.revision += 1
            self.rules = load_data(yaml.safe_load(value), "etcd")
        return 11


def editor(etcd: FakeEtcd) -> RulesEditor:
    def no_reload() -> ReloadResult:
        raise AssertionError("an etcd edit is applied by the watch, not by a file reload")

    return RulesEditor(None, lambda: etcd.rules, lambda rs: None, no_reload, etcd=etcd)


def edited(threshold: int) -> dict[str, Any]:
    doc = to_project(load_data(DOC, "x"))
    doc["flowRules"][0]["threshold"] = threshold
    return doc


def test_an_edit_is_written_with_a_compare_and_swap_and_reported_in_force() -> None:
    etcd = FakeEtcd()
    ed = editor(etcd)
    assert ed.describe()["editable"] and ed.describe()["writes_to"] == FakeEtcd.url
    base = ed.revision()
    reply = ed.apply(edited(40), base)
    assert reply["applied"] and reply["etcd_revision"] == 11 and reply["revision"] != base
    [(value, if_revision)] = etcd.puts
    assert if_revision == 10 and yaml.safe_load(value)["flowRules"][0]["threshold"] == 40


def test_someone_elses_write_is_a_conflict_and_problems_write_nothing() -> None:
    etcd = FakeEtcd()
    ed = editor(etcd)
    etcd.fail = RevisionConflict(FakeEtcd.url, 10, 12)
    reply = ed.apply(edited(40), ed.revision())
    assert (
        reply["conflict"]
        and not reply["applied"]
        and "load the rules again" in reply["problems"][0]["reason"]
    )
    etcd.fail = None
    reply = ed.apply(edited(-1), ed.revision())
    assert not reply["applied"] and reply["problems"][0]["field"] == "threshold" and etcd.puts == []


def test_cached_rules_unreachable_etcd_and_a_write_never_applied_are_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    etcd = FakeEtcd()
    ed = editor(etcd)
    etcd.from_cache = True
    assert "cached while etcd was unreachable" in ed.apply(edited(40), ed.revision())["problems"][0]["reason"]
    etcd.from_cache = False
    etcd.fail = EtcdUnavailable("etcd unreachable (127.0.0.1:2379: refused)")
    assert "not written: etcd unreachable" in ed.apply(edited(40), ed.revision())["problems"][0]["reason"]
    etcd.fail = None
    etcd.applies = False
    monkeypatch.setattr(edit, "ETCD_APPLY_WAIT_S", 0.2)
    reply = ed.apply(edited(40), ed.revision())
    assert (
        not reply["applied"]
        and "written to etcd://127.0.0.1:2379/rules at revision 11, but not in force"
        in (reply["problems"][0]["reason"])
    )
