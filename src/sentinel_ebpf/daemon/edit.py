"""Rule edits over the control socket (``check`` and ``apply``), for the dashboard.

An edit is a whole rules document in this project's format (as ``{"cmd": "rules"}`` returns it) and the
revision it was based on. ``check`` validates it as a reload would (the rules, then what the kernel can
enforce) and lists every problem with its section, index and field. ``apply`` does that, refuses when the
rules in force are no longer the base revision (compare-and-swap: two editors cannot overwrite each
other), writes the rules file atomically and reloads it: the file stays the one source of the rules, so a
later SIGHUP or file change does not undo the edit. If the reload still fails (the kernel refused), the
previous file is put back. Comments and formatting of the old file are not kept.

When the daemon reads its rules from etcd, ``apply`` writes the key instead, as YAML, with a
compare-and-swap on the key's revision in force (``rules push --if-revision``): a change written by anyone
else since is a conflict. The daemon's watch then applies the new revision like any other; ``apply``
waits for it (``ETCD_APPLY_WAIT_S``) and says whether it is in force.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import yaml

from sentinel_ebpf.daemon.reload import ReloadResult
from sentinel_ebpf.enforce import CompileError
from sentinel_ebpf.errors import SentinelError
from sentinel_ebpf.rules import RulesError, RuleSet, load_data
from sentinel_ebpf.rules.dump import to_project

EDIT_SOURCE = "edit"  # the file name problems of an edit carry
ETCD_APPLY_WAIT_S = 8.0  # an edit written to etcd is in force when the daemon's watch applied it


class EtcdTarget(Protocol):
    """What the editor needs of the daemon's etcd source (``sources.etcd_source.EtcdSource``)."""

    url: str

    def describe(self) -> dict[str, Any]: ...

    def put(self, value: bytes, if_revision: int) -> int: ...


# compiler problems start with "flowRules[2] (id): field ..." (see enforce/compile/)
_COMPILE_WHERE = re.compile(r"^(?P<section>[A-Za-z]+)\[(?P<index>\d+)\][^:]*: (?P<rest>.*)$", re.S)
_FIELD_WORD = re.compile(r"^(?:[a-z]+ )?(?P<field>[a-z][A-Za-z]+)\b")


def revision(rules: RuleSet | None) -> str:
    """A short fingerprint of a rule set (of its canonical document)."""
    if rules is None:
        return ""
    canonical = json.dumps(to_project(rules, defaults=True), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def compile_problem(text: str, fields: dict[str, set[str]]) -> dict[str, Any]:
    """A compiler problem as a located one when its text says where."""
    m = _COMPILE_WHERE.match(text)
    if m is None:
        return {"section": None, "index": None, "field": None, "reason": text}
    section, rest = m["section"], m["rest"]
    word = _FIELD_WORD.match(rest)
    field = word["field"] if word and word["field"] in fields.get(section, set()) else None
    return {"section": section, "index": int(m["index"]), "field": field, "reason": text}


class RulesEditor:
    """``path`` is the rules file (None: the built-in example, which is not editable); the callables give
    the rule set in force, compile a rule set (raising CompileError) and reload the file on the daemon's
    loop."""

    def __init__(
        self,
        path: str | None,
        in_force: Callable[[], RuleSet | None],
        compile_rules: Callable[[RuleSet], object],
        reload: Callable[[], ReloadResult],
        etcd: EtcdTarget | None = None,
    ) -> None:
        self.etcd = etcd
        self.path = path
        self.in_force = in_force
        self.compile_rules = compile_rules
        self.reload = reload
        self._lock = threading.Lock()  # one edit at a time
        self._revision: tuple[RuleSet | None, str] = (None, "")  # (rule set, its revision): computed once

    def revision(self) -> str:
        """The revision of the rule set in force (cached per rule set: ``stats`` reports it every second)."""
        rules = self.in_force()
        cached, rev = self._revision
        if rules is not cached:
            rev = revision(rules)
            self._revision = (rules, rev)
        return rev

    def describe(self) -> dict[str, Any]:
        why = (
            None
            if self.path or self.etcd
            else "the built-in example is not editable: run the daemon with -r FILE"
        )
        return {"revision": self.revision(), "editable": why is None, "not_editable": why,
                "writes_to": self.etcd.url if self.etcd else self.path}  # fmt: skip

    def handle(self, cmd: str, request: dict[str, Any]) -> dict[str, Any]:
        document = request.get("document")
        if not isinstance(document, dict):
            raise SentinelError("'document' must be a rules document (a JSON object, as 'rules' returns it)")
        if cmd == "check":
            problems = self.problems(document)
            return {"valid": not problems, "problems": problems}
        return self.apply(document, request.get("base"))

    def problems(self, document: dict[str, Any]) -> list[dict[str, Any]]:
        """Every problem of ``document``: validation first, then what the kernel cannot enforce."""
        try:
            rules = load_data(document, EDIT_SOURCE)
        except RulesError as exc:
            return [_located(p.as_dict()) for p in exc.problems]
        try:
            self.compile_rules(rules)
        except CompileError as exc:
            fields = _section_fields()
            return [compile_problem(p, fields) for p in exc.problems]
        return []

    def apply(self, document: dict[str, Any], base: object) -> dict[str, Any]:
        if not self.path and not self.etcd:
            raise SentinelError(self.describe()["not_editable"])
        with self._lock:
            current = self.revision()
            if base != current:
                reason = (f"the rules in force changed (revision {current}, your edit is based on {base}): "
                          "load them again and redo the edit")  # fmt: skip
                return {"applied": False, "conflict": True, "revision": current,
                        "problems": [_located({"reason": reason})]}  # fmt: skip
            problems = self.problems(document)
            if problems:
                return {"applied": False, "conflict": False, "revision": current, "problems": problems}
            if self.etcd is not None:
                return self._apply_to_etcd(self.etcd, document, current)
            assert self.path is not None
            path = Path(self.path)
            old = path.read_bytes()
            _replace(path, _serialize(document, path))
            result = self.reload()
            if not result.accepted:
                _replace(path, old)
                return {"applied": False, "conflict": False, "revision": current,
                        "problems": [_located({"reason": p}) for p in result.problems]}  # fmt: skip
            return {"applied": True, "changed": result.changed, "revision": revision(result.rules),
                    "conflict": False, "problems": []}  # fmt: skip

    def _apply_to_etcd(self, etcd: EtcdTarget, document: dict[str, Any], current: str) -> dict[str, Any]:
        from sentinel_ebpf.sources.etcd import EtcdError, RevisionConflict  # etcd3gw: only when used

        def refused(reason: str, conflict: bool = False) -> dict[str, Any]:
            return {"applied": False, "conflict": conflict, "revision": current,
                    "problems": [_located({"reason": reason})]}  # fmt: skip

        src = etcd.describe()
        in_force = src.get("revision")
        if not isinstance(in_force, int) or src.get("from_cache"):
            return refused(f"{etcd.url}: the daemon enforces rules cached while etcd was unreachable; "
                           "edit when it follows etcd again")  # fmt: skip
        data = yaml.safe_dump(document, sort_keys=False, allow_unicode=True).encode()
        try:
            written = etcd.put(data, if_revision=in_force)
        except RevisionConflict as exc:
            return refused(f"{exc}: load the rules again and redo the edit", conflict=True)
        except EtcdError as exc:
            return refused(f"not written: {exc}")
        deadline = time.monotonic() + ETCD_APPLY_WAIT_S
        while time.monotonic() < deadline:
            src = etcd.describe()
            if isinstance(src.get("revision"), int) and src["revision"] >= written:
                break
            time.sleep(0.05)
        else:
            return refused(f"written to {etcd.url} at revision {written}, but not in force after "
                           f"{ETCD_APPLY_WAIT_S:g} s (see the daemon's log)")  # fmt: skip
        if src["revision"] != written:  # a later write (someone else's) is in force already
            return refused(f"written at revision {written}, then replaced by revision {src['revision']}",
                           conflict=True)  # fmt: skip
        return {"applied": True, "changed": True, "revision": self.revision(), "conflict": False,
                "problems": [], "etcd_revision": written}  # fmt: skip


def _located(p: dict[str, Any]) -> dict[str, Any]:
    return {"section": p.get("section"), "index": p.get("index"), "field": p.get("field"),
            "reason": p["reason"]}  # fmt: skip


def _section_fields() -> dict[str, set[str]]:
    from sentinel_ebpf.rules.dump import FIELDS

    return {section: {f.key for f in specs} for section, specs in FIELDS.items()}


def _serialize(document: dict[str, Any], path: Path) -> bytes:
    if path.suffix == ".json":
        return (json.dumps(document, indent=2) + "\n").encode()
    header = "# written by sentinel-ebpf (a dashboard edit); the previous comments are not kept\n"
    return (header + yaml.safe_dump(document, sort_keys=False, allow_unicode=True)).encode()


def _replace(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (a temporary file in the same directory, then rename),
    keeping the file's mode."""
    mode = path.stat().st_mode & 0o7777
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
