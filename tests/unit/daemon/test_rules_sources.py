"""Rules sources without etcd: URL parsing, backoff, the cache, and the etcd source following a fake
client (reads, watch events, outages), down to the daemon's reload and its control answers."""

from __future__ import annotations

import contextlib
import logging
import queue
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from daemon_fakes import FakeDataplane, rules
from etcd3gw.exceptions import Etcd3Exception

from sentinel_ebpf.daemon import Daemon, DaemonConfig
from sentinel_ebpf.daemon.runner import open_source
from sentinel_ebpf.daemon.watch import FileSource
from sentinel_ebpf.rules import RulesError
from sentinel_ebpf.sources.backoff import Backoff
from sentinel_ebpf.sources.cache import CACHE_NAME, CachedRules, RulesCache
from sentinel_ebpf.sources.etcd import EtcdClient, EtcdError, EtcdUnavailable, KeyState, WatchEvent
from sentinel_ebpf.sources.etcd_source import EtcdSource
from sentinel_ebpf.sources.url import EtcdTls, EtcdUrl, EtcdUrlError, check_tls, is_etcd_url, parse_etcd_url

URL = "etcd://127.0.0.1:2379/sentinel/rules"


# -- URLs --------------------------------------------------------------------------------------------
def test_urls_name_endpoints_and_one_key() -> None:
    u = parse_etcd_url("etcd://h1:2379,h2,[fd00::1]:12379,[::1]/sentinel/rules%3Fv2")
    assert u.endpoints == (("h1", 2379), ("h2", 2379), ("fd00::1", 12379), ("::1", 2379))
    assert u.key == "/sentinel/rules?v2" and not u.tls
    assert str(u) == "etcd://h1:2379,h2:2379,[fd00::1]:12379,[::1]:2379/sentinel/rules%3Fv2"
    assert parse_etcd_url(str(u)) == u
    s = parse_etcd_url("ETCDS://10.0.0.1:2379/a")
    assert s.tls and s.key == "/a" and str(s) == "etcds://10.0.0.1:2379/a"
    assert is_etcd_url("etcd://x/k") and is_etcd_url("etcds://x/k")
    assert not is_etcd_url("rules.yaml") and not is_etcd_url("etcd.yaml") and not is_etcd_url("http://x/k")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("etcd://h:2379", "names no key"),
        ("etcd://h:2379/", "names no key"),
        ("etcd:///key", "names no endpoint"),
        ("etcd://h:0/k", "bad port"),
        ("etcd://h:70000/k", "bad port"),
        ("etcd://h:ab/k", "bad port"),
        ("etcd://h1,,h2/k", "bad endpoint ''"),
        ("etcd://h_1/k", "bad endpoint 'h_1'"),
        ("etcd://[::1/k", "IPv6 is written"),
        ("etcd://h/k?x=1", "no query or fragment"),
        ("http://h/k", "not an etcd URL"),
    ],
)
def test_malformed_urls_say_what_is_wrong(url: str, reason: str) -> None:
    with pytest.raises(EtcdUrlError, match=reason) as info:
        parse_etcd_url(url)
    assert repr(url) in str(info.value)


def test_tls_files_need_etcds_and_a_certificate_needs_its_key() -> None:
    plain, tls = parse_etcd_url("etcd://h/k"), parse_etcd_url("etcds://h/k")
    check_tls(plain, EtcdTls())
    check_tls(tls, EtcdTls())  # the system's CAs, no client certificate
    check_tls(tls, EtcdTls("ca.pem", "c.pem", "c.key"))
    with pytest.raises(EtcdUrlError, match="need an etcds:// URL"):
        check_tls(plain, EtcdTls(cacert="ca.pem"))
    with pytest.raises(EtcdUrlError, match="go together"):
        check_tls(tls, EtcdTls(cert="c.pem"))


# -- backoff -----------------------------------------------------------------------------------------
def test_backoff_doubles_up_to_its_cap_and_resets() -> None:
    b = Backoff(first_s=0.2, max_s=5.0, jitter=0.2, rand=lambda: 0.5)  # 0.5: no jitter
    assert [round(b.next_s(), 3) for _ in range(7)] == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    b.reset()
    assert b.next_s() == pytest.approx(0.2)


def test_backoff_jitter_stays_within_its_fraction() -> None:
    low = Backoff(first_s=1.0, max_s=1.0, jitter=0.2, rand=lambda: 0.0)
    high = Backoff(first_s=1.0, max_s=1.0, jitter=0.2, rand=lambda: 0.999999)
    assert low.next_s() == pytest.approx(0.8) and high.next_s() == pytest.approx(1.2, abs=1e-5)
    with pytest.raises(ValueError):
        Backoff(first_s=2.0, max_s=1.0)


# -- cache -------------------------------------------------------------------------------------------
def test_cache_round_trip_is_private_and_per_key(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = RulesCache(str(tmp_path / "state"))
    assert cache.read("/sentinel/rules") is None  # nothing yet, silently
    entry = CachedRules(URL, "/sentinel/rules", 7, 1_700_000_000.5, rules("5"))
    cache.write(entry)
    assert cache.read("/sentinel/rules") == entry
    assert stat.S_IMODE(cache.path.stat().st_mode) == 0o600
    assert sorted(p.name for p in cache.path.parent.iterdir()) == [CACHE_NAME]  # no temporary left
    with caplog.at_level(logging.WARNING):
        assert cache.read("/other/key") is None
        cache.path.write_text('{"url": "x", "revision": "seven"')
        assert cache.read("/sentinel/rules") is None
    assert "holds key /sentinel/rules, not /other/key" in caplog.text and "unreadable" in caplog.text


# -- the etcd source over a fake client ----------------------------------------------------------------
class FakeEtcd:
    """One key in a store with revisions; ``down()`` makes every call fail until ``up()``."""

    def __init__(self, value: str | None = None) -> None:
        self.revision = 1
        self.value: bytes | None = None
        self.mod_revision = 0
        self.reachable = True
        self.gets = 0
        self.events: queue.Queue[WatchEvent | None] = queue.Queue()
        if value is not None:
            self.put(value)

    def put(self, value: str | bytes | None) -> int:
        self.revision += 1
        self.value = value.encode() if isinstance(value, str) else value
        self.mod_revision = self.revision if value is not None else 0
        self.events.put(WatchEvent(self.value, self.revision))
        return self.revision

    def down(self) -> None:
        self.reachable = False
        self.events.put(None)  # the stream breaks

    def up(self) -> None:
        self.reachable = True

    def get(self) -> KeyState:
        self.gets += 1
        if not self.reachable:
            raise EtcdUnavailable("etcd unreachable (127.0.0.1:2379: Connection refused)")
        while not self.events.empty():  # a watch starts after this read
            self.events.get_nowait()
        return KeyState(self.value, self.mod_revision, self.revision)

    def watch(self, start_revision: int, idle_s: float = 30.0) -> Iterator[WatchEvent]:
        while True:
            ev = self.events.get()
            if ev is None:
                return
            yield ev

    def interrupt(self) -> None:
        self.events.put(None)


def source(tmp_path: Path, etcd: FakeEtcd) -> EtcdSource:
    return EtcdSource(
        parse_etcd_url(URL), None, str(tmp_path / "state"), client=etcd,  # type: ignore[arg-type]
        backoff=Backoff(first_s=0.01, max_s=0.02),
    )  # fmt: skip


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


@contextlib.contextmanager
def watching(tmp_path: Path, etcd: FakeEtcd) -> Iterator[EtcdSource]:
    """A source with the key's revision in force and its watch thread past its first read; closed after."""
    src = source(tmp_path, etcd)
    src.in_force(src.current())
    src.start(lambda: None)
    try:
        wait_for(lambda: etcd.gets >= 2, "the watch thread's first read")
        yield src
    finally:
        src.close()


def test_start_reads_the_key_and_an_accepted_revision_is_cached(tmp_path: Path) -> None:
    etcd = FakeEtcd(rules("5"))
    src = source(tmp_path, etcd)
    v = src.current()
    assert (v.label, v.revision, v.from_cache) == (f"{URL}@2", 2, False)
    assert v.load().flow_rules[0].threshold == 5
    src.in_force(v)
    cached = src.cache.read("/sentinel/rules")
    assert cached is not None and (cached.revision, cached.document, cached.url) == (2, rules("5"), URL)
    assert src.describe() == {
        "kind": "etcd", "url": URL, "revision": 2, "applied_at": src.applied_at, "from_cache": False,
        "etcd": "connected", "latest_revision": 2,
    }  # fmt: skip


def test_start_without_the_key_or_without_etcd_and_cache_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(EtcdError, match=r"the key does not exist .*rules push FILE etcd://"):
        source(tmp_path, FakeEtcd()).current()
    etcd = FakeEtcd(rules("5"))
    etcd.down()
    with pytest.raises(EtcdUnavailable, match=r"Connection refused.*no cached rules in .*rules-cache\.json"):
        source(tmp_path, etcd).current()


def test_start_while_etcd_is_down_uses_the_cache_then_follows_etcd(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    etcd = FakeEtcd(rules("5"))
    first = source(tmp_path, etcd)
    first.in_force(first.current())
    etcd.down()
    src = source(tmp_path, etcd)
    with caplog.at_level(logging.INFO):
        v = src.current()
        assert (v.revision, v.from_cache, v.load().flow_rules[0].threshold) == (2, True, 5)
        src.in_force(v)
        assert src.describe()["from_cache"] is True and src.describe()["etcd"] == "unreachable"
        wakes: list[int] = []
        src.start(lambda: wakes.append(1))
        try:
            time.sleep(0.1)  # several failed retries: the state was logged once, at start
            assert not src.changed()
            etcd.up()
            wait_for(src.changed, "the same revision, now confirmed by etcd")
            again = src.current()
            assert (again.revision, again.from_cache) == (2, False) and wakes
            src.in_force(again)
            assert src.describe()["from_cache"] is False and src.describe()["etcd"] == "connected"
        finally:
            src.close()
    assert caplog.text.count("enforcing the cached revision 2") == 1
    assert "etcd answers again" in caplog.text
    assert "retrying with backoff" not in caplog.text  # unreachable already at start: said once there


def test_watch_events_are_offered_once_and_an_outage_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    etcd = FakeEtcd(rules("5"))
    with watching(tmp_path, etcd) as src:
        time.sleep(0.05)
        assert not src.changed()  # the revision in force: nothing new
        r = etcd.put(rules("40"))
        wait_for(src.changed, "the watched revision")
        v = src.current()
        assert v.revision == r and v.load().flow_rules[0].threshold == 40 and not src.changed()
        with caplog.at_level(logging.INFO):
            etcd.down()
            wait_for(lambda: src.state == "unreachable", "the outage")
            gets = etcd.gets
            wait_for(lambda: etcd.gets >= gets + 3, "retries with backoff")
            etcd.value, etcd.mod_revision, etcd.revision = rules("7").encode(), 9, 9  # changed meanwhile
            etcd.up()
            wait_for(src.changed, "the revision written during the outage")
        assert src.current().revision == 9
        assert caplog.text.count("retrying with backoff") == 1
        assert caplog.text.count("etcd answers again") == 1
        assert "the rules in force stay (revision 2)" in caplog.text


def test_deleted_and_undecodable_revisions_are_invalid_and_said_once(tmp_path: Path) -> None:
    etcd = FakeEtcd(rules("5"))
    with watching(tmp_path, etcd) as src:
        r = etcd.put(None)
        wait_for(src.changed, "the deletion")
        with pytest.raises(RulesError, match=rf"{URL}@{r}: the key was deleted at revision {r}"):
            src.current().load()
        etcd.down()
        etcd.up()  # a re-read finds it still absent, at another store revision: nothing new
        wait_for(lambda: src.state == "connected" and etcd.gets >= 3, "the re-read")
        time.sleep(0.05)
        assert not src.changed()
        r = etcd.put(b"\xff\xfe rules")
        wait_for(src.changed, "the undecodable revision")
        with pytest.raises(RulesError, match=rf"{URL}@{r}: not UTF-8 text"):
            src.current().load()


# -- the daemon with an etcd source ------------------------------------------------------------------
def test_daemon_applies_revisions_and_an_invalid_one_keeps_the_rules(tmp_path: Path) -> None:
    etcd = FakeEtcd(rules("5"))
    d = Daemon(DaemonConfig(rules=URL, state_dir=str(tmp_path / "state")))
    assert isinstance(d.source, EtcdSource)
    d.source = source(tmp_path, etcd)
    dp = FakeDataplane()
    dp.outbound_attached = False  # type: ignore[attr-defined]
    dp.sockops_attached = False  # type: ignore[attr-defined]
    d.dp = dp  # type: ignore[assignment]
    assert d.reload().accepted and dp.threshold() == 5
    etcd.put(rules("40"))
    d.source._offer(etcd.value, etcd.revision)  # what the watch thread does
    assert d.source.changed() and d.reload().changed and dp.threshold() == 40
    bad = etcd.put(rules("-1"))
    d.source._offer(etcd.value, bad)
    result = d.reload()
    assert not result.accepted and dp.threshold() == 40
    assert any(p.startswith(f"{URL}@{bad}:") and "threshold" in p for p in result.problems), result.problems
    described = d.source.describe()
    assert (described["revision"], described["latest_revision"]) == (3, bad)
    cached = d.source.cache.read("/sentinel/rules")
    assert cached is not None and cached.revision == 3  # the invalid revision is never cached
    answer = d.handle({"cmd": "rules"})
    assert answer["rules_source"]["revision"] == 3 and answer["document"]["flowRules"][0]["threshold"] == 40


def test_open_source_picks_by_url_and_checks_tls(tmp_path: Path) -> None:
    assert isinstance(open_source(DaemonConfig(rules=str(tmp_path / "r.yaml"))), FileSource)
    assert isinstance(open_source(DaemonConfig(rules=None)), FileSource)  # the built-in example
    etcd = open_source(DaemonConfig(rules="etcds://h1,h2:4001/k", etcd_tls=EtcdTls("ca.pem")))
    assert isinstance(etcd, EtcdSource) and etcd.target == EtcdUrl((("h1", 2379), ("h2", 4001)), "/k", True)
    with pytest.raises(EtcdUrlError, match="need an etcds:// URL"):
        open_source(DaemonConfig(rules="etcd://h/k", etcd_tls=EtcdTls("ca.pem")))


def test_file_source_reports_the_path_and_when_it_was_applied(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(rules("5"))
    src = FileSource(str(path))
    v = src.current()
    assert (v.label, v.revision, v.load().flow_rules[0].threshold) == (str(path), None, 5)
    assert src.describe()["applied_at"] is None
    src.in_force(v)
    assert src.describe() == {"kind": "file", "url": str(path), "revision": None,
                              "applied_at": src.applied_at, "from_cache": False}  # fmt: skip
    assert not src.changed()
    path.write_text(rules("40"))
    assert src.changed()


class AnsweringGateway:
    """An etcd gateway whose every request is answered with an HTTP error (etcd3gw's mapping of it)."""

    def __init__(self, detail: str, reason: str, **_: object) -> None:
        self.detail, self.reason = detail, reason

    def get_url(self, path: str) -> str:
        return path

    def post(self, url: str, json: object = None) -> object:
        raise Etcd3Exception(self.detail, self.reason)


@pytest.mark.parametrize(
    ("detail", "reason", "unreachable"),
    [
        ('{"error":"etcdserver: server stopped","code":14}', "Service Unavailable", True),
        ('{"error":"etcdserver: no leader","code":14}', "Internal Server Error", True),
        ("upstream timed out", "Gateway Timeout", True),
        ("", "Request Timeout", True),  # (seen while a member stops)
        ('{"error":"etcdserver: permission denied","code":7}', "Forbidden", False),
    ],
)
def test_an_answer_that_etcd_is_not_serving_counts_as_unreachable(
    detail: str, reason: str, unreachable: bool
) -> None:
    """A member that is stopping answers 503 before it refuses connections: one outage, one state
    (unreachable), not an error and then unreachable, each logged; a refusal stays an error."""
    client = EtcdClient(
        parse_etcd_url("etcd://h1,h2/k"), make_client=lambda **kw: AnsweringGateway(detail, reason)
    )
    with pytest.raises(EtcdUnavailable if unreachable else EtcdError) as caught:
        client.get()
    assert (type(caught.value) is EtcdUnavailable) == unreachable
