"""The local control socket: one JSON request line, one JSON reply line, then the connection closes.

Requests: ``{"cmd": "stats"}``, ``{"cmd": "rules"}``, ``{"cmd": "reload"}``, ``{"cmd": "metrics", "since":
T}``, ``{"cmd": "check"|"apply", "document": {...}, "base": REVISION}``. Replies carry ``"ok"`` and
either the payload or ``"error"``. The socket is created with mode 0600 (root only), in a directory
that only the daemon's user controls (``private_dir``); a symbolic link, a non-socket or another user's
socket at its path is refused, never replaced.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import socketserver
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sentinel_ebpf import __version__
from sentinel_ebpf.daemon.private_dir import UnsafePathError, open_private_dir, owner_name
from sentinel_ebpf.errors import BpfKeyError, SentinelError
from sentinel_ebpf.outputs.stats_json import stats_document
from sentinel_ebpf.rules.dump import to_project

if TYPE_CHECKING:
    from sentinel_ebpf.daemon.runner import Daemon

log = logging.getLogger("sentinel_ebpf.control")
DEFAULT_SOCKET = "/run/sentinel-ebpf/control.sock"
MAX_REQUEST_BYTES = 4 << 20  # a rules document for check/apply

Handler = Callable[[dict[str, Any]], dict[str, Any]]


class ControlError(SentinelError):
    """The daemon could not be asked (not running, no permission) or answered with an error."""


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    handler: Handler


class _RequestHandler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        line = self.rfile.readline(MAX_REQUEST_BYTES)
        try:
            request = json.loads(line)
            if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
                raise ValueError("a request is an object with a string 'cmd'")
            reply = {"ok": True, **self.server.handler(request)}
        except Exception as exc:  # every failure is an answer, never a dead connection
            reply = {"ok": False, "error": str(exc)}
        self.wfile.write(json.dumps(reply).encode() + b"\n")


class ControlServer:
    def __init__(self, path: str, handler: Handler) -> None:
        self.path = Path(path)
        fd = open_private_dir(self.path.parent, "control socket directory")
        assert fd is not None
        os.close(fd)
        _check_socket_path(self.path)
        if self.path.exists():
            if _answers(str(self.path)):
                raise ControlError(
                    f"another daemon listens at {self.path}: stop it or use another --control-socket"
                )
            self.path.unlink()  # a socket left by a crashed daemon
        old = os.umask(0o177)  # the socket is born 0600: no window where others may connect
        try:
            self._server = _Server(str(self.path), _RequestHandler)
        finally:
            os.umask(old)
        self._server.handler = handler
        self._thread = threading.Thread(target=self._server.serve_forever, name="control", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _check_socket_path(path: Path) -> None:
    """Refuse a symbolic link, a file that is not a socket, or another user's socket at ``path``."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePathError(f"control socket {path} is a symbolic link: refusing to follow it (remove it)")
    if not stat.S_ISSOCK(st.st_mode):
        raise UnsafePathError(f"control socket {path} exists and is not a socket: refusing to replace it")
    if st.st_uid != os.geteuid():
        raise UnsafePathError(
            f"control socket {path} is owned by {owner_name(st.st_uid)}, not by {owner_name(os.geteuid())}: "
            f"refusing it (remove it, or use another --control-socket)"
        )


def _answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(path)
        except OSError:
            return False
    return True


def request(path: str, cmd: str, timeout_s: float = 10.0, **args: Any) -> dict[str, Any]:
    """Ask the daemon; ControlError says what went wrong and what to do."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        sock.connect(path)
        sock.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except FileNotFoundError:
        raise ControlError(f"no daemon at {path} (start one with `sentinel-ebpf run`)") from None
    except ConnectionRefusedError:
        raise ControlError(f"no daemon listening at {path} (a stale socket?)") from None
    except PermissionError:
        raise ControlError(f"permission denied on {path}: the control socket is root-only") from None
    except OSError as exc:
        raise ControlError(f"talking to the daemon at {path}: {exc}") from None
    finally:
        sock.close()
    try:
        reply = json.loads(data)
    except ValueError:
        raise ControlError(f"the daemon at {path} sent an unreadable reply") from None
    if not reply.get("ok"):
        raise ControlError(f"the daemon refused {cmd!r}: {reply.get('error', 'no reason given')}")
    return dict(reply)


# -- what the daemon answers -------------------------------------------------------------------------------


def handle_request(d: Daemon, request: dict[str, Any]) -> dict[str, Any]:
    """A control socket request to the daemon ``d`` (run on the control thread)."""
    dp = d.dp
    if dp is None:
        raise SentinelError("the daemon is stopping")
    cmd = request["cmd"]
    if cmd == "stats":
        doc = stats_document(d.resource_stats())
        doc["dataplane"] = dp.counters()
        doc["ports"] = _port_counters(d)
        doc["loaded_at"] = d.loaded_at
        doc["rules_source"] = d.source.describe()
        if d.ticker is not None:
            t = d.ticker
            doc["threshold_ticks"] = {"ticks": t.ticks, "late": t.late, "failed": t.failures,
                                      "max_late_ms": t.max_late_ns // 1_000_000}  # fmt: skip
        doc["version"] = __version__
        doc["revision"] = d.editor.revision()
        if d.cluster is not None:
            doc["cluster"] = d.cluster.status()
        return doc
    if cmd == "rules":
        return {
            "file": d.rules_path,
            "rules_source": d.source.describe(),
            "loaded_at": d.loaded_at,
            "resources": [r.name for r in dp.compiled.resources],
            "document": to_project(d.rules) if d.rules is not None else None,
            **d.editor.describe(),
        }
    if cmd == "reload":
        return d.request_reload().as_dict()
    if cmd == "metrics":
        return d.history.since(_int_arg(request, "since"))
    if cmd in ("check", "apply"):
        return d.editor.handle(cmd, request)
    raise SentinelError(f"unknown command {cmd!r} (stats, rules, reload, metrics, check, apply)")


def _port_counters(d: Daemon) -> dict[str, dict[str, int]]:
    """Traffic on each protected port that passed unclassified (TLS, HTTP/2, split request lines)."""
    assert d.dp is not None
    out = {}
    for p in d.dp.compiled.ports:
        try:
            out[str(p.port)] = d.dp.port_counters(p.port)
        except BpfKeyError:
            continue  # nothing counted on that port yet
    return out


def _int_arg(request: dict[str, Any], name: str) -> int:
    value = request.get(name, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise SentinelError(f"{name!r} must be a non-negative integer (epoch milliseconds), got {value!r}")
    return value
