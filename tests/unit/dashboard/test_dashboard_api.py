"""The dashboard's HTTP API and its security checks, against a control socket served by a fake daemon
(no kernel, no root)."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sentinel_ebpf.cli.dashboard_cmd import read_token
from sentinel_ebpf.daemon.control import ControlServer
from sentinel_ebpf.dashboard import Backend, DashboardServer, DoctorCache
from sentinel_ebpf.dashboard.server import parse_listen

TOKEN = "a-test-token-0123456789"


@dataclass
class FakeDaemon:
    asked: list[dict[str, Any]] = field(default_factory=list)

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        self.asked.append(req)
        cmd = req["cmd"]
        if cmd == "stats":
            return {
                "resources": {"api": {"pass": 3}},
                "dataplane": {"packets": 1},
                "ports": {},
                "loaded_at": 1.0,
            }
        if cmd == "metrics":
            return {
                "step_ms": 1000,
                "from_ms": req["since"],
                "to_ms": 5000,
                "resources": {},
                "transitions": [],
            }
        if cmd == "rules":
            return {"file": "r.yaml", "loaded_at": 1.0, "document": {}, "revision": "abc", "editable": True}
        if cmd == "apply":
            return {"applied": True, "revision": "def", "problems": [], "base_seen": req["base"]}
        if cmd == "check":
            return {"valid": False, "problems": [{"section": "flowRules", "index": 0, "field": "threshold",
                                                  "reason": "must be >= 0"}]}  # fmt: skip
        raise ValueError(f"unknown {cmd}")


@dataclass
class Setup:
    server: DashboardServer
    daemon: FakeDaemon

    def call(
        self, method: str, path: str, body: Any = None, **headers: str
    ) -> tuple[int, Any, http.client.HTTPResponse]:
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=10)
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        conn.close()
        ctype = resp.getheader("Content-Type", "")
        return resp.status, json.loads(raw) if ctype == "application/json" else raw, resp

    def post(self, path: str, body: Any, **headers: str) -> tuple[int, Any]:
        h = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}", **headers}
        status, doc, _ = self.call("POST", path, body, **{k: v for k, v in h.items() if v})
        return status, doc


def _start(tmp_path: Path, token: str | None) -> Iterator[Setup]:
    fake = FakeDaemon()
    control = ControlServer(str(tmp_path / "control.sock"), fake.handle)
    doctor = DoctorCache(
        lambda: {"kernel": "6.18", "arch": "x86_64", "ok": True, "checks": [], "features": []}
    )
    backend = Backend([str(tmp_path / "control.sock"), str(tmp_path / "nobody.sock")], doctor.start())
    server = DashboardServer(backend, "127.0.0.1:0", token).start()
    try:
        yield Setup(server, fake)
    finally:
        server.close()
        control.close()


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Setup]:
    yield from _start(tmp_path, TOKEN)


@pytest.fixture
def readonly(tmp_path: Path) -> Iterator[Setup]:
    yield from _start(tmp_path, None)


def test_the_page_and_its_assets_are_served_with_a_strict_policy(app: Setup) -> None:
    status, body, resp = app.call("GET", "/")
    assert status == 200 and b'<script src="/static/app.js"' in body
    csp = resp.getheader("Content-Security-Policy", "")
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert resp.getheader("X-Content-Type-Options") == "nosniff"
    status, body, resp = app.call("GET", "/static/vendor/uPlot.iife.min.js")
    assert (
        status == 200
        and b"uPlot" in body
        and resp.getheader("Content-Type", "").startswith("text/javascript")
    )
    assert app.call("GET", "/static/../server.py")[0] == 404
    assert app.call("GET", "/etc/passwd")[0] == 404


def test_reads_are_proxied_to_the_chosen_daemon(app: Setup) -> None:
    status, doc, resp = app.call("GET", "/api/daemons/0/stats")
    assert status == 200 and doc["resources"]["api"]["pass"] == 3 and "ok" not in doc
    assert resp.getheader("Cache-Control") == "no-store"
    status, doc, _ = app.call("GET", "/api/daemons/0/metrics?since=3000")
    assert (
        status == 200 and doc["from_ms"] == 3000 and app.daemon.asked[-1] == {"cmd": "metrics", "since": 3000}
    )
    status, doc, _ = app.call("GET", "/api/daemons/0/rules")
    assert doc["revision"] == "abc" and "threshold" in [c["key"] for c in doc["schema"]["flowRules"]]
    assert "Reject" in next(c for c in doc["schema"]["flowRules"] if c["key"] == "controlBehavior")["enum"]
    status, doc, _ = app.call("GET", "/api/overview")
    assert [d["up"] for d in doc["daemons"]] == [True, False] and "no daemon" in doc["daemons"][1]["error"]
    assert doc["edits_enabled"] and not doc["token_required"]


def test_bad_reads_say_what_is_wrong(app: Setup) -> None:
    status, doc, _ = app.call("GET", "/api/daemons/1/stats")
    assert status == 502 and "no daemon at" in doc["error"]
    status, doc, _ = app.call("GET", "/api/daemons/7/stats")
    assert status == 404 and "no daemon 7" in doc["error"]
    status, doc, _ = app.call("GET", "/api/daemons/0/metrics?since=-4")
    assert status == 400 and "since" in doc["error"]


def test_a_get_never_changes_state(app: Setup) -> None:
    for path in ("/api/daemons/0/rules/apply", "/api/daemons/0/rules/check", "/api/daemons/0/apply"):
        assert app.call("GET", path)[0] == 404
    assert not [a for a in app.daemon.asked if a["cmd"] in ("apply", "check")]


def test_an_edit_with_the_token_is_passed_on_with_its_base(app: Setup) -> None:
    status, doc = app.post("/api/daemons/0/rules/apply", {"document": {"flowRules": []}, "base": "abc"})
    assert status == 200 and doc["applied"] and doc["base_seen"] == "abc"
    assert app.daemon.asked[-1] == {"cmd": "apply", "document": {"flowRules": []}, "base": "abc"}
    status, doc = app.post("/api/daemons/0/rules/check", {"document": {}})
    assert status == 200 and doc["problems"][0]["field"] == "threshold"


@pytest.mark.parametrize(
    ("headers", "status", "says"),
    [
        ({"Authorization": ""}, 401, "token"),
        ({"Authorization": "Bearer wrong-token-0123456789"}, 401, "token"),
        ({"Content-Type": "text/plain"}, 415, "application/json"),
        ({"Origin": "http://evil.example"}, 403, "cross-origin"),
    ],
)
def test_edits_refused_without_token_json_or_same_origin(
    app: Setup, headers: dict[str, str], status: int, says: str
) -> None:
    got, doc = app.post("/api/daemons/0/rules/apply", {"document": {}, "base": "abc"}, **headers)
    assert got == status and says in doc["error"]
    assert not [a for a in app.daemon.asked if a["cmd"] == "apply"]


def test_same_origin_posts_pass(app: Setup) -> None:
    origin = f"http://127.0.0.1:{app.server.port}"
    got, _ = app.post("/api/daemons/0/rules/apply", {"document": {}, "base": "abc"}, Origin=origin)
    assert got == 200


def test_a_dashboard_without_token_is_read_only(readonly: Setup) -> None:
    assert readonly.call("GET", "/api/daemons/0/stats")[0] == 200
    got, doc = readonly.post("/api/daemons/0/rules/apply", {"document": {}, "base": "abc"})
    assert got == 403 and "--token-file" in doc["error"]
    assert not readonly.call("GET", "/api/overview")[1]["edits_enabled"]


def test_loopback_answers_only_loopback_host_names(app: Setup) -> None:
    for host in ("localhost:8719", "127.0.0.1", "[::1]:8719"):
        assert app.call("GET", "/api/daemons/0/stats", Host=host)[0] == 200
    status, doc, _ = app.call("GET", "/api/daemons/0/stats", Host="rebound.example:8719")
    assert status == 421 and "loopback" in doc["error"]


def test_off_loopback_every_api_request_needs_the_token(app: Setup) -> None:
    app.server.loopback = False  # as if bound to a public address (tests stay on loopback)
    assert app.call("GET", "/")[0] == 200  # the page holds nothing secret
    assert app.call("GET", "/api/daemons/0/stats", Host="node1.example:8719")[0] == 401
    assert app.call("GET", "/api/daemons/0/stats", Authorization=f"Bearer {TOKEN}")[0] == 200
    with pytest.raises(ValueError, match="needs a token"):
        DashboardServer(app.server.backend, "0.0.0.0:0", None)


def test_doctor_summary(app: Setup) -> None:
    for _ in range(100):
        doc = app.call("GET", "/api/doctor")[1]
        if doc["state"] != "running":
            break
    assert doc["state"] == "done" and doc["kernel"] == "6.18" and doc["ok"]


def test_listen_and_token_file_checks(tmp_path: Path) -> None:
    assert parse_listen("[::1]:8719") == ("::1", 8719) and parse_listen(":80") == ("127.0.0.1", 80)
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_listen("8719")
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o644)
    with pytest.raises(ValueError, match="readable by others"):
        read_token(str(token))
    token.chmod(0o600)
    assert read_token(str(token)) == TOKEN
    token.write_text("short")
    with pytest.raises(ValueError, match="at least 16"):
        read_token(str(token))


def test_fleet_lists_every_daemon_given(app: Setup) -> None:
    status, doc, _ = app.call("GET", "/api/fleet")
    assert status == 200 and [n["health"] for n in doc["nodes"]] == ["down", "down"]
    assert "older version" in doc["nodes"][0]["error"] and "no daemon" in doc["nodes"][1]["error"]


def test_the_command_serves_until_sigterm_and_refuses_bad_setups(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import urllib.request

    argv = [sys.executable, "-m", "sentinel_ebpf", "dashboard", "--no-doctor", "--control-socket",
            str(tmp_path / "none.sock")]  # fmt: skip
    bad = subprocess.run([*argv, "--listen", "0.0.0.0:0"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "needs a token: pass --token-file" in bad.stderr
    bad = subprocess.run([*argv, "--token-file", str(tmp_path / "missing")], capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert bad.returncode == 2 and "--token-file" in bad.stderr and "No such file" in bad.stderr
    proc = subprocess.Popen([*argv, "--listen", "127.0.0.1:0"], stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "dashboard at http://127.0.0.1:" in line and "read-only" in line, line
        url = line.split("dashboard at ")[1].split()[0]
        with urllib.request.urlopen(url, timeout=10) as resp:
            assert resp.status == 200 and b"sentinel-ebpf" in resp.read()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
