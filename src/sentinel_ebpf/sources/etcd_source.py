"""``run -r etcd://HOST:PORT/KEY``: rules from one etcd key, followed by a watch.

A background thread reads the key, then watches it from the next revision; each new revision is offered
to the daemon's loop (which it wakes), and the loop applies it like a file reload. When the watch stream
ends (idle, compaction, etcd restarting) the thread reads the key again and watches on; when etcd cannot
be reached it retries with backoff and the rules in force stay. Every accepted revision is cached in the
state directory, so a daemon started while etcd is down enforces the last one (``from_cache``).
Changes of connection state are logged once each.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from sentinel_ebpf._worker import Worker
from sentinel_ebpf.rules import Problem, RulesError, RuleSet, load_text
from sentinel_ebpf.sources.backoff import Backoff
from sentinel_ebpf.sources.base import Version
from sentinel_ebpf.sources.cache import CachedRules, RulesCache
from sentinel_ebpf.sources.etcd import WATCH_IDLE_S, EtcdClient, EtcdError, EtcdUnavailable
from sentinel_ebpf.sources.etcd_registry import EtcdRegistrar
from sentinel_ebpf.sources.url import EtcdTls, EtcdUrl
from sentinel_ebpf.stats import NodeRecord

log = logging.getLogger("sentinel_ebpf.daemon")
QUICK_WATCH_S = 1.0  # a watch that ends sooner than this is retried after a backoff, not at once


def document_version(url: str, value: bytes | None, revision: int, *, from_cache: bool = False) -> Version:
    """The version of ``url``'s key at ``revision`` (``value`` None: deleted then)."""
    label = f"{url}@{revision}"
    if value is None:
        reason = f"the key was deleted at revision {revision}; write a rules document there (rules push)"
        return Version(label, _fails(label, reason), revision, from_cache)
    try:
        text = value.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return Version(label, _fails(label, f"not UTF-8 text (byte {exc.start})"), revision, from_cache)
    return Version(label, lambda: load_text(text, label), revision, from_cache, text)


def read_version(url: EtcdUrl, tls: EtcdTls | None = None) -> Version:
    """The document in ``url``'s key now, as the daemon would load it. Raises EtcdError (unreachable,
    no such key)."""
    kv = EtcdClient(url, tls).get()
    if kv.value is None:
        raise EtcdError(f"{url}: the key does not exist (etcd revision {kv.revision})")
    return document_version(str(url), kv.value, kv.mod_revision)


def _fails(label: str, reason: str) -> Callable[[], RuleSet]:
    def load() -> RuleSet:
        raise RulesError([Problem(file=label, reason=reason)])

    return load


class EtcdSource:
    def __init__(
        self,
        url: EtcdUrl,
        tls: EtcdTls | None,
        state_dir: str,
        *,
        client: EtcdClient | None = None,
        idle_s: float = WATCH_IDLE_S,
        backoff: Backoff | None = None,
    ) -> None:
        self.target = url
        self.url = str(url)
        self.tls = tls
        self.client = client or EtcdClient(url, tls)
        self.cache = RulesCache(state_dir)
        self.idle_s = idle_s
        self.backoff = backoff or Backoff()  # while etcd cannot be reached
        # while watches end as soon as they start (etcd cancelling them): no busy loop
        self.churn = Backoff(first_s=min(QUICK_WATCH_S / 2, self.backoff.max_s), max_s=self.backoff.max_s)
        self.state = "connecting"  # connected | unreachable | error
        self._lock = threading.Lock()
        self._latest: Version | None = None
        self._seq = self._taken = 0
        self._deleted = False  # the latest offer says the key is absent
        self._in_force: Version | None = None
        self.applied_at: float | None = None
        self._wake: Callable[[], None] = lambda: None
        self._worker = Worker("etcd-watch", join_timeout_s=5)

    # -- RulesSource ----------------------------------------------------------------------------------
    def start(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        self._worker.start(self._follow)

    def current(self) -> Version:
        if self._latest is None:
            self._latest = self._first()
        with self._lock:
            self._taken = self._seq
            return self._latest

    def changed(self) -> bool:
        return self._seq != self._taken

    def in_force(self, version: Version) -> None:
        self._in_force = version
        self.applied_at = time.time()
        if version.from_cache or version.revision is None or version.document is None:
            return
        entry = CachedRules(self.url, self.target.key, version.revision, self.applied_at, version.document)
        try:
            self.cache.write(entry)
        except OSError as exc:  # enforcement goes on; only a later start without etcd would miss it
            log.error("cannot write the rules cache %s: %s", self.cache.path, exc)

    def describe(self) -> dict[str, Any]:
        v, latest = self._in_force, self._latest
        return {
            "kind": "etcd",
            "url": self.url,
            "revision": v.revision if v else None,
            "applied_at": self.applied_at,
            "from_cache": v.from_cache if v else False,
            "etcd": self.state,
            "latest_revision": latest.revision if latest else None,
        }

    def registrar(self, node_id: str, record: Callable[[str], NodeRecord]) -> EtcdRegistrar:
        """This node's record under the rules key's ``nodes/`` (its own client: the watch thread's is busy)."""
        return EtcdRegistrar(EtcdClient(self.target, self.tls), self.target.key, node_id, record)

    def put(self, value: bytes, if_revision: int) -> int:
        """Write the key if its last write is ``if_revision`` (the dashboard's edits); the new revision."""
        return self.client.put(value, if_revision=if_revision)

    def close(self) -> None:
        self._worker.stopping.set()  # before the interrupt: the woken watch must see it
        self.client.interrupt()
        self._worker.stop()

    # -- reading etcd ---------------------------------------------------------------------------------
    def _first(self) -> Version:
        """The document to start with: etcd's, or the cache's when etcd cannot be reached."""
        try:
            kv = self.client.get()
        except EtcdUnavailable as exc:
            cached = self.cache.read(self.target.key)
            if cached is None:
                raise EtcdUnavailable(
                    f"{self.url}: {exc}, and no cached rules in {self.cache.path}: cannot start without "
                    "rules (start etcd, or check the endpoints and TLS options)"
                ) from None
            self.state = "unreachable"
            log.warning("%s: %s; enforcing the cached revision %d (from %s, applied %s) until etcd answers",
                        self.url, exc, cached.revision, cached.url,
                        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(cached.applied_at)))  # fmt: skip
            return document_version(self.url, cached.document.encode(), cached.revision, from_cache=True)
        self.state = "connected"
        if kv.value is None:
            raise EtcdError(
                f"{self.url}: the key does not exist (etcd revision {kv.revision}); write a rules document "
                f"there first: sentinel-ebpf rules push FILE {self.url}"
            )
        return document_version(self.url, kv.value, kv.mod_revision)

    def _follow(self) -> None:
        while not self._worker.stopping.is_set():
            try:
                kv = self.client.get()
                self._set_state("connected", f"at revision {kv.revision}")
                self._offer(kv.value, kv.mod_revision if kv.value is not None else kv.revision)
                started = time.monotonic()
                for ev in self.client.watch(kv.revision + 1, self.idle_s):
                    if self._worker.stopping.is_set():
                        return
                    self._offer(ev.value, ev.mod_revision)
                if time.monotonic() - started < QUICK_WATCH_S:
                    self._worker.stopping.wait(self.churn.next_s())
                else:  # a watch that held: etcd works, the next failure starts the backoff afresh
                    self.churn.reset()
                    self.backoff.reset()
            except EtcdUnavailable as exc:
                self._set_state("unreachable", str(exc))
                self._worker.stopping.wait(self.backoff.next_s())
            except EtcdError as exc:
                self._set_state("error", str(exc))
                self._worker.stopping.wait(self.backoff.next_s())
            except Exception:  # never end silently: the daemon would stop following etcd
                log.exception("%s: following the key failed; retrying", self.url)
                self._worker.stopping.wait(self.backoff.next_s())

    def _offer(self, value: bytes | None, revision: int) -> None:
        with self._lock:
            latest = self._latest
            if latest is not None and not latest.from_cache:
                if value is None and self._deleted:
                    return  # still absent (a re-read gives the store's revision): said once
                if latest.revision == revision:
                    return
            self._latest = document_version(self.url, value, revision)
            self._deleted = value is None
            self._seq += 1
        self._wake()

    def _set_state(self, state: str, detail: str) -> None:
        if state == self.state:
            return
        before, self.state = self.state, state
        v = self._in_force
        held = f"revision {v.revision}{' (from the cache)' if v.from_cache else ''}" if v else "none yet"
        if state == "unreachable":
            log.warning("%s: %s; the rules in force stay (%s); retrying with backoff", self.url, detail, held)
        elif state == "error":
            log.error("%s: %s; the rules in force stay (%s); retrying with backoff", self.url, detail, held)
        elif before != "connecting":
            log.info("%s: etcd answers again (%s); following the key", self.url, detail)
