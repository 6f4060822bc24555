"""What the dashboard shows, gathered from the daemons' control sockets and the host (no HTTP here).

Each ``--control-socket`` is one daemon of this host. The host's ``doctor`` report is run once, in the
background, at start (it loads and attaches probe programs for a moment, so it is not run per request).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sentinel_ebpf.daemon.control import ControlError, request
from sentinel_ebpf.dashboard.fleet import LocalSockets, NodeSource, fleet_view
from sentinel_ebpf.rules.dump import FIELDS

Ask = Callable[..., dict[str, Any]]


class BackendError(Exception):
    """A request the dashboard cannot serve; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def rule_schema() -> dict[str, list[dict[str, Any]]]:
    """The editable columns of each rule kind: key, type, default and enum names."""
    out: dict[str, list[dict[str, Any]]] = {
        "resources": [
            {"key": "name", "kind": "str", "default": None, "enum": None},
            {"key": "match", "kind": "any", "default": None, "enum": None},
        ]
    }
    for section, specs in FIELDS.items():
        out[section] = [
            {
                "key": s.key,
                "kind": s.kind,
                "default": s.default if isinstance(s.default, (int, float, str, bool)) else None,
                "enum": [e.name for e in s.enum] if s.enum is not None else None,
            }
            for s in specs
            if s.key not in ("regex", "paramIndex")
        ]
    return out


@dataclass
class DoctorCache:
    """The host's doctor report, computed once in a background thread."""

    run: Callable[[], dict[str, Any]]
    _report: dict[str, Any] | None = None
    _error: str | None = None

    def start(self) -> DoctorCache:
        threading.Thread(target=self._compute, name="doctor", daemon=True).start()
        return self

    def _compute(self) -> None:
        try:
            self._report = self.run()
        except Exception as exc:  # shown on the page: e.g. not root, no libbpf
            self._error = f"doctor failed: {exc}"

    def summary(self) -> dict[str, Any]:
        if self._error is not None:
            return {"state": "failed", "error": self._error}
        if self._report is None:
            return {"state": "running"}
        r = self._report
        missing = [c for c in r["checks"] if c["status"] != "ok"]
        return {
            "state": "done", "kernel": r["kernel"], "arch": r["arch"], "ok": r["ok"],
            "features": r["features"], "not_ok": missing,
        }  # fmt: skip


def run_doctor() -> dict[str, Any]:
    from sentinel_ebpf.doctor import run_checks

    return run_checks().as_dict()


class Backend:
    """The daemons (by index into ``sockets``) and the host."""

    def __init__(
        self, sockets: list[str], doctor: DoctorCache, ask: Ask = request, fleet: NodeSource | None = None
    ) -> None:
        if not sockets:
            raise ValueError("at least one control socket is needed")
        self.sockets = sockets
        self.doctor = doctor
        self.ask = ask
        self.fleet_source = fleet or LocalSockets(sockets, ask)

    def fleet(self) -> dict[str, Any]:
        return fleet_view(self.fleet_source.records())

    def _socket(self, daemon: int) -> str:
        if not 0 <= daemon < len(self.sockets):
            raise BackendError(
                404, f"no daemon {daemon}: there are {len(self.sockets)} (0 to {len(self.sockets) - 1})"
            )
        return self.sockets[daemon]

    def _ask(self, daemon: int, cmd: str, timeout_s: float = 10.0, **args: Any) -> dict[str, Any]:
        try:
            reply = self.ask(self._socket(daemon), cmd, timeout_s=timeout_s, **args)
        except ControlError as exc:
            raise BackendError(502, str(exc)) from None
        reply.pop("ok", None)
        return reply

    def daemons(self) -> list[dict[str, Any]]:
        out = []
        for i, path in enumerate(self.sockets):
            entry: dict[str, Any] = {"id": i, "socket": path}
            try:
                self.ask(path, "stats", timeout_s=2.0)
                entry["up"] = True
            except ControlError as exc:
                entry.update(up=False, error=str(exc))
            out.append(entry)
        return out

    def stats(self, daemon: int) -> dict[str, Any]:
        return self._ask(daemon, "stats")

    def metrics(self, daemon: int, since_ms: int) -> dict[str, Any]:
        return self._ask(daemon, "metrics", since=since_ms)

    def rules(self, daemon: int) -> dict[str, Any]:
        doc = self._ask(daemon, "rules")
        doc["schema"] = rule_schema()
        return doc

    def check(self, daemon: int, document: Any) -> dict[str, Any]:
        return self._ask(daemon, "check", document=_document(document))

    def apply(self, daemon: int, document: Any, base: Any) -> dict[str, Any]:
        if not isinstance(base, str):
            raise BackendError(400, "'base' must be the revision the edit started from (a string)")
        return self._ask(daemon, "apply", timeout_s=20.0, document=_document(document), base=base)


def _document(document: Any) -> dict[str, Any]:
    if not isinstance(document, dict):
        raise BackendError(400, "'document' must be a rules document (a JSON object)")
    return document
