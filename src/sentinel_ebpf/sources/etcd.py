"""The etcd operations sentinel-ebpf needs, on one key: read it, write it (optionally compare-and-swap on
its revision), and watch it.

Client: etcd3gw (OpenStack's client for etcd's HTTP/JSON gRPC gateway, ``/v3/``): synchronous like the
daemon's threads, needs only ``requests`` (no grpcio), TLS through the ``requests`` session. Requests go
through its ``Etcd3Client`` (API path discovery, error mapping). Its own ``watch()`` is not used: when the
stream breaks its reader thread ends silently and the iterator waits forever, and it ignores cancelled
and compacted watches. The watch stream is read here instead, over the same client's session and URL,
with a read timeout, so every way the stream can end is seen and followed by a fresh read of the key.

Several endpoints: each operation tries them in turn, starting with the last one that answered.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import requests
from etcd3gw.client import Etcd3Client
from etcd3gw.exceptions import ConnectionFailedError, ConnectionTimeoutError, Etcd3Exception

from sentinel_ebpf.errors import SentinelError
from sentinel_ebpf.sources.url import EtcdTls, EtcdUrl

T = TypeVar("T")
REQUEST_TIMEOUT_S = 3.0  # one request to one endpoint (connect + answer)
# the reason inside requests' wrapped errors: "[Errno 111] Connection refused", "[SSL: ...] ..."
_REASON = re.compile(r"\[Errno -?\d+\] ([^\"'()]+)|(\[SSL: [A-Z0-9_]+\] [^\"'()]+)")
WATCH_IDLE_S = 30.0  # a watch stream silent this long is re-established (finds a half-open connection)


class EtcdError(SentinelError):
    """etcd answered with an error (permission denied, bad request...)."""


class EtcdUnavailable(EtcdError):
    """No endpoint could be reached (refused, timed out, TLS handshake failed)."""


class RevisionConflict(EtcdError):
    """A compare-and-swap write failed: the key is no longer at the expected revision."""

    def __init__(self, key: str, expected: int, current: int) -> None:
        self.expected, self.current = expected, current
        now = f"now at revision {current}" if current else "now absent"
        super().__init__(
            f"{key} changed since revision {expected} ({now}): nothing written; "
            "pull it, merge your change and push again"
        )


@dataclass(frozen=True)
class KeyState:
    """The key as read: ``value`` None when absent. ``mod_revision`` is the revision of its last write (0 when
    absent), ``revision`` the store's revision at the read (a watch continues from ``revision + 1``)."""

    value: bytes | None
    mod_revision: int
    revision: int


@dataclass(frozen=True)
class WatchEvent:
    value: bytes | None  # None: the key was deleted
    mod_revision: int


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


# HTTP answers of etcd's gateway that mean "not serving now" (gRPC Unavailable: a member stopping, no
# leader), not a refusal of the request: the endpoint counts as unreachable, like a refused connection.
_UNAVAILABLE_REASONS = ("Service Unavailable", "Bad Gateway", "Gateway Timeout", "Request Timeout")


def _unavailable(exc: Etcd3Exception) -> bool:
    detail = exc.detail_text or ""
    return (
        any(reason in exc.args for reason in _UNAVAILABLE_REASONS)
        or re.search(r'"code":\s*14\b', detail) is not None
    )


def _describe(exc: Exception) -> str:
    """The reason in a few words: requests' connection errors bury it in a pool and URL repr."""
    if isinstance(exc, (ConnectionTimeoutError, requests.Timeout)):
        return "timed out"
    detail = getattr(exc, "detail_text", None)
    found = _REASON.search(f"{exc} {detail}")
    if found:
        return (found.group(1) or found.group(2)).strip()
    text = str(exc) or type(exc).__name__
    if detail:
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            detail = json.loads(detail).get("error", detail)
        text = f"{text}: {detail}".strip()
    return text


class EtcdClient:
    def __init__(
        self,
        url: EtcdUrl,
        tls: EtcdTls | None = None,
        *,
        timeout_s: float = REQUEST_TIMEOUT_S,
        make_client: Callable[..., Etcd3Client] = Etcd3Client,
    ) -> None:
        tls = tls or EtcdTls()
        self.url = url
        self.timeout_s = timeout_s
        protocol = "https" if url.tls else "http"
        self._clients = []
        for host, port in url.endpoints:
            session = requests.Session()
            session.trust_env = False  # etcd is reached directly: no proxy from the environment
            if tls.cacert:
                session.verify = tls.cacert
            if tls.cert and tls.key:
                session.cert = (tls.cert, tls.key)
            self._clients.append(
                make_client(host=host, port=port, protocol=protocol, timeout=timeout_s, session=session)
            )
        self._names = url.endpoint_names()
        self._current = 0  # the endpoint that answered last
        self._response: requests.Response | None = None  # the watch stream being read

    def _call(self, op: Callable[[Etcd3Client], T]) -> T:
        errors = []
        for step in range(len(self._clients)):
            i = (self._current + step) % len(self._clients)
            try:
                result = op(self._clients[i])
            except (ConnectionFailedError, ConnectionTimeoutError, requests.RequestException) as exc:
                errors.append(f"{self._names[i]}: {_describe(exc)}")
                continue
            except Etcd3Exception as exc:
                if _unavailable(exc):  # (a member stopping answers 503 before it refuses connections)
                    errors.append(f"{self._names[i]}: {_describe(exc)}")
                    continue
                raise EtcdError(f"etcd at {self._names[i]}: {_describe(exc)}") from None
            self._current = i
            return result
        raise EtcdUnavailable(f"etcd unreachable ({'; '.join(errors)})")

    def get(self) -> KeyState:
        def op(c: Etcd3Client) -> dict[str, Any]:
            return c.post(c.get_url("/kv/range"), json={"key": _b64(self.url.key)})  # type: ignore[no-any-return]

        reply = self._call(op)
        revision = int(reply["header"]["revision"])
        kvs = reply.get("kvs") or []
        if not kvs:
            return KeyState(None, 0, revision)
        kv = kvs[0]
        return KeyState(base64.b64decode(kv.get("value", "")), int(kv["mod_revision"]), revision)

    def put(self, value: bytes, if_revision: int | None = None) -> int:
        """Write the key; with ``if_revision`` only if its last write is that revision (0: only if absent).
        Returns the new revision; raises RevisionConflict."""
        key = _b64(self.url.key)
        compare = []
        if if_revision is not None:
            compare = [{"key": key, "result": "EQUAL", "target": "MOD", "mod_revision": if_revision}]
        txn = {
            "compare": compare,
            "success": [{"request_put": {"key": key, "value": _b64(value)}}],
            "failure": [{"request_range": {"key": key}}],
        }
        reply: dict[str, Any] = self._call(lambda c: c.transaction(txn))  # type: ignore[arg-type,return-value]
        if not reply.get("succeeded"):
            kvs = (reply.get("responses") or [{}])[0].get("response_range", {}).get("kvs") or []
            current = int(kvs[0]["mod_revision"]) if kvs else 0
            raise RevisionConflict(str(self.url), if_revision or 0, current)
        return int(reply["header"]["revision"])

    # -- other keys: the fleet registry (sources.etcd_registry) ------------------------------------------
    def put_key(self, key: str, value: bytes, lease: int = 0) -> int:
        """Write ``key`` (attached to ``lease`` when given); the new revision."""
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = lease
        reply: dict[str, Any] = self._call(lambda c: c.post(c.get_url("/kv/put"), json=body))
        return int(reply["header"]["revision"])

    def get_prefix(self, prefix: str) -> list[tuple[str, bytes]]:
        """Every key under ``prefix`` with its value, in key order."""
        raw = prefix.encode()
        end = raw[:-1] + bytes([raw[-1] + 1]) if raw and raw[-1] < 0xFF else b"\0"
        body = {"key": _b64(raw), "range_end": _b64(end)}
        reply: dict[str, Any] = self._call(lambda c: c.post(c.get_url("/kv/range"), json=body))
        return [(base64.b64decode(kv["key"]).decode("utf-8", "replace"), base64.b64decode(kv.get("value", "")))
                for kv in reply.get("kvs") or []]  # fmt: skip

    def grant_lease(self, ttl_s: int) -> int:
        """A new lease of ``ttl_s`` seconds: its id."""
        reply: dict[str, Any] = self._call(lambda c: c.post(c.get_url("/lease/grant"), json={"TTL": ttl_s}))
        return int(reply["ID"])

    def keep_alive(self, lease: int) -> int:
        """Renew ``lease``: its TTL in seconds, 0 when etcd no longer has it (it expired)."""
        reply: dict[str, Any] = self._call(
            lambda c: c.post(c.get_url("/lease/keepalive"), json={"ID": lease})
        )
        return int((reply.get("result") or {}).get("TTL", 0))

    def watch(self, start_revision: int, idle_s: float = WATCH_IDLE_S) -> Iterator[WatchEvent]:
        """Changes of the key from ``start_revision`` on, as etcd sends them. Ends (without error) when the
        stream is silent for ``idle_s``, cancelled by etcd (compaction) or closed; raises EtcdUnavailable
        when it cannot be opened. The caller reads the key again and watches on."""
        create: dict[str, Any] = {
            "create_request": {"key": _b64(self.url.key), "start_revision": start_revision}
        }

        def op(c: Etcd3Client) -> requests.Response:
            resp = c.session.post(
                c.get_url("/watch"), json=create, stream=True, timeout=(self.timeout_s, idle_s)
            )
            if resp.status_code != 200:
                resp.close()
                raise Etcd3Exception(resp.text, resp.reason)
            return resp

        resp = self._response = self._call(op)
        try:
            for line in resp.iter_lines():
                if not line.strip():
                    continue
                result = json.loads(line).get("result", {})
                if result.get("canceled") or result.get("compact_revision"):
                    return
                for ev in result.get("events", []):
                    kv = ev["kv"]
                    deleted = ev.get("type") == "DELETE"
                    value = None if deleted else base64.b64decode(kv.get("value", ""))
                    yield WatchEvent(value, int(kv["mod_revision"]))
        except (requests.RequestException, ValueError, KeyError):
            return  # read timeout, reset, or a garbled line: the caller re-reads the key
        finally:
            self._response = None
            resp.close()

    def interrupt(self) -> None:
        """Wake a thread blocked reading the watch stream (from another thread)."""
        resp = self._response
        if resp is not None:
            with contextlib.suppress(Exception):
                resp.raw.connection.sock.shutdown(socket.SHUT_RDWR)
