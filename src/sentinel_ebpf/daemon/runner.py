"""`sentinel-ebpf run`: load, validate, attach, enforce; reload on change; report; detach on exit."""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any, cast

from sentinel_ebpf.daemon.collector import SecondCollector, SecondsReport
from sentinel_ebpf.daemon.control import DEFAULT_SOCKET, ControlServer, handle_request
from sentinel_ebpf.daemon.demo import DEFAULT_RULES, DemoServer
from sentinel_ebpf.daemon.edit import EtcdTarget, RulesEditor
from sentinel_ebpf.daemon.history import History
from sentinel_ebpf.daemon.hooks import BreakerHooks
from sentinel_ebpf.daemon.links import LinkSet, LinkWatcher, interfaces, reconcile
from sentinel_ebpf.daemon.reload import ReloadResult, reload_rules
from sentinel_ebpf.daemon.resume import crashed_state, resume_or_none, write_state
from sentinel_ebpf.daemon.sampling import CpuSampler, load1, process_memory_bytes
from sentinel_ebpf.daemon.state import DEFAULT_STATE_DIR, State, remove_state
from sentinel_ebpf.daemon.ticker import Ticker
from sentinel_ebpf.daemon.tls_observer import TlsObserver
from sentinel_ebpf.daemon.watch import FileSource
from sentinel_ebpf.enforce import InboundDataplane
from sentinel_ebpf.enforce.adaptive import AdaptiveThresholds
from sentinel_ebpf.errors import SentinelError
from sentinel_ebpf.outputs.metric_log import MetricLogWriter
from sentinel_ebpf.outputs.prometheus import (
    MetricsServer,
    MetricsSnapshot,
    SentinelCollector,
    start_http_server,
)
from sentinel_ebpf.rules import RuleSet
from sentinel_ebpf.sources.base import Registrar, RulesSource
from sentinel_ebpf.sources.url import EtcdTls, check_tls, is_etcd_url, parse_etcd_url
from sentinel_ebpf.stats import BreakerTransition, NodeRecord, ResourceStats, default_node_id, node_record

if TYPE_CHECKING:
    from sentinel_ebpf.cluster import ClusterClient

log = logging.getLogger("sentinel_ebpf.daemon")
STATE_POLL_S = 0.1  # circuit breaker transitions are read this often
WATCH_S = 0.05  # the loop wakes at least this often to look for reload requests and file changes
RELOAD_WAIT_S = 8.0  # a `reload` request waits this long for the loop (clients wait 10 s by default)


@dataclass
class DaemonConfig:
    rules: str | None = None  # a file or etcd://HOST/KEY; None: the built-in example and its demo server
    interfaces: list[str] = field(default_factory=list)  # empty: every up interface (lo only for the demo)
    metrics_addr: str | None = "127.0.0.1:9464"
    log_dir: str | None = "/var/log/sentinel-ebpf"
    app: str = "sentinel-ebpf"
    control_socket: str = DEFAULT_SOCKET
    state_dir: str = DEFAULT_STATE_DIR
    on_breaker_change: str | None = None  # a shell command run on each transition (SENTINEL_* variables)
    hotspot_keys: int | None = None  # hotspot values tracked at once (None: SE_HOT_VALUES_MAX)
    etcd_tls: EtcdTls | None = None  # client TLS files for etcds:// rules
    cluster: str | None = None  # Redis URL shared by the fleet for cluster flow rules (keys under `app`)
    cluster_timeout_ms: int | None = None  # a slower lease call is no contact (None: cluster.client.SLOW_MS)


class Stop(BaseException):
    """Raised from the SIGTERM/SIGINT handler. A BaseException: a signal that lands while the loop is
    inside logging (or any ``except Exception``) must not be swallowed there."""


def open_source(config: DaemonConfig) -> RulesSource:
    """The rules file, or the etcd key of an ``etcd://``/``etcds://`` URL (EtcdUrlError when malformed)."""
    if config.rules is not None and is_etcd_url(config.rules):
        url = parse_etcd_url(config.rules)
        check_tls(url, config.etcd_tls or EtcdTls())
        from sentinel_ebpf.sources.etcd_source import EtcdSource  # etcd3gw and requests: only when used

        return EtcdSource(url, config.etcd_tls, config.state_dir)
    return FileSource(config.rules or str(DEFAULT_RULES))


class Daemon:
    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.rules_path = config.rules or str(DEFAULT_RULES)
        self.dp: InboundDataplane | None = None
        self.demo: DemoServer | None = None
        self.metrics: MetricsServer | None = None
        self.control: ControlServer | None = None
        self.metric_log: MetricLogWriter | None = None
        self.state_counts: Counter[BreakerTransition] = Counter()
        self.cpu = CpuSampler()
        self.cpu_ratio: float | None = None
        self._reload_requested = False
        self._reload_lock = threading.Lock()
        self._wake = threading.Event()  # set by a control-socket reload request
        self._reload_waiters: list[queue.Queue[ReloadResult]] = []
        self.source = open_source(config)
        self._state_written = False  # only then is the state file ours to remove
        self.loaded_at = 0.0
        self.rules: RuleSet | None = None  # the rule set in force
        self.protocols: dict[str, str] = {}
        self.listeners: list[Callable[[BreakerTransition], None]] = []
        self.hooks = BreakerHooks(config.on_breaker_change) if config.on_breaker_change else None
        self.tls: TlsObserver | None = None  # counts of tls resources, from the HTTP tracer
        # The threshold timer runs on its own thread; it and reloads change the data plane under this lock.
        self._dp_lock = threading.Lock()
        self.ticker: Ticker | None = None
        self.links = LinkSet([])
        self.link_watcher: LinkWatcher | None = None
        self._links_changed = threading.Event()
        self.history = History()  # the last minutes per second, for `metrics` (dashboard, top)
        self.report = SecondsReport(self.history)
        self.listeners.append(lambda c: self.history.transition(round(time.time() * 1000), c))
        self.editor = RulesEditor(
            None if config.rules is None or is_etcd_url(config.rules) else config.rules,
            lambda: self.rules,
            lambda rs: self._dp().compile(rs),
            self.request_reload,
            etcd=cast(EtcdTarget, self.source) if config.rules and is_etcd_url(config.rules) else None,
        )
        self.cluster: ClusterClient | None = None  # leases of cluster flow rules (--cluster)
        self.registrar: Registrar | None = None  # this node's record in etcd (rules from etcd)

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> None:
        version = self.source.current()
        rules = version.load()  # invalid at start: the caller reports and exits 1
        crashed = self._crashed_state()
        self.dp = self._resume(crashed) or InboundDataplane(hotspot_values=self.config.hotspot_keys)
        if self.config.cluster:
            self._join_cluster(self.config.cluster)
        compiled = self.dp.compile(rules)
        self.dp.apply(compiled)
        self._in_force(rules)
        self.source.in_force(version)
        self.ticker = Ticker(self.dp.tick, self._dp_lock).start()
        if self.cluster is not None:
            self.cluster.track(self.dp.adaptive.calculators.values())
            self.cluster.start()
        # before attaching: a daemon already listening there must not lose its filters to this one
        self.control = ControlServer(self.config.control_socket, self.handle)
        if self.config.rules is None:
            self.demo = DemoServer()
            log.info(
                "built-in example: demo server on http://127.0.0.1:18080/ (/ at 5 QPS, /slow 2 at a time)"
            )
        self.links = LinkSet(self.config.interfaces or (["lo"] if self.config.rules is None else []))
        present = interfaces(self.links.namespaced)
        self.links.check_literals(present)
        inherited = {a.ifname for a in crashed.attachments if a.created_qdisc} if crashed else set()
        try:
            for name in self.links.wanted(present):
                self.dp.attach(name)  # replaces filters a crashed daemon left (same handle and priority)
                if name in inherited:
                    self.dp.adopt_qdisc(name)
                log.info("attached to %s", name)
        finally:
            self._write_state()
        # interfaces that appear (or come up) from now on; one made since the scan above is seen now
        try:
            self.link_watcher = LinkWatcher(self._on_link_change).start()
        except SentinelError as exc:
            log.warning("%s: interfaces that appear from now on will not be attached", exc)
        self._sync_links()
        self._attach_outbound_if_needed(rules)
        if self.config.log_dir:
            self.metric_log = MetricLogWriter(self.config.log_dir, self.config.app)
        if self.config.metrics_addr:
            host, _, port = self.config.metrics_addr.rpartition(":")
            collector = SentinelCollector(self.metrics_snapshot)
            self.metrics = start_http_server(collector, int(port), host or "127.0.0.1")
            log.info("Prometheus metrics at %s", self.metrics.url)
        log.info("enforcing %s (%d resources); control socket %s", version.label,
                 len(compiled.resources), self.config.control_socket)  # fmt: skip
        self.source.start(self._wake.set)
        node_id = self.cluster.node_id if self.cluster is not None else default_node_id()
        self.registrar = self.source.registrar(node_id, self._node_record)
        if self.registrar is not None:  # rules from etcd: the fleet registry beside them
            self.registrar.start()
            log.info("fleet registry: node %s under %s", node_id, self.source.url)

    def _join_cluster(self, url: str) -> None:
        # redis only when used: every CLI command imports this module
        from sentinel_ebpf.cluster import ClusterClient, RedisLeaseStore
        from sentinel_ebpf.cluster.client import FALLBACK_AFTER_MS, SLOW_MS
        from sentinel_ebpf.cluster.lease import HORIZON_S
        from sentinel_ebpf.cluster.store import redacted

        assert self.dp is not None
        slow_ms = self.config.cluster_timeout_ms or SLOW_MS
        store = RedisLeaseStore(url, self.config.app, slow_ms / 1000, round(HORIZON_S * 1000))
        self.cluster = ClusterClient(store, url=url, app=self.config.app, refresh=self._refresh_thresholds,
                                     record=self._node_record,
                                     slow_ms=slow_ms, fallback_after_ms=FALLBACK_AFTER_MS - SLOW_MS + slow_ms)  # fmt: skip
        self.dp.external_thresholds = self.cluster.thresholds
        # a resumed data plane made its threshold sources before it knew of the cluster
        self.dp.adaptive = AdaptiveThresholds(self.dp.compiled, self.dp.raw_stats, self.dp.memory,
                                              external=self.cluster.thresholds)  # fmt: skip
        log.info("cluster flow rules through Redis %s (app %r, node %s)", redacted(url), self.config.app,
                 self.cluster.node_id)  # fmt: skip

    def _node_record(self, node_id: str) -> NodeRecord:
        """This daemon's record for the fleet registry (the cluster or etcd registry thread, once a second)."""
        now_ms = round(time.time() * 1000)
        return node_record(node_id, self.handle({"cmd": "stats"}), self.history.since(now_ms - 3000), now_ms)

    def _refresh_thresholds(self) -> None:
        """Rewrite the kernel's dynamic thresholds now (the cluster thread, after a lease or a bucket)."""
        with self._dp_lock:
            if self.dp is not None:
                self.dp.tick()

    def run(self) -> None:
        """Until SIGTERM/SIGINT: tick thresholds, sample the host, reload, write the metric log."""

        def on_stop(signum: int, frame: FrameType | None) -> None:
            raise Stop

        def on_hup(signum: int, frame: FrameType | None) -> None:
            self._reload_requested = True

        old = {s: signal.signal(s, on_stop) for s in (signal.SIGTERM, signal.SIGINT)}
        old[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_hup)
        try:
            self.start()
            assert self.dp is not None
            seconds = SecondCollector(self.dp.now_ms)
            last_slow = next_poll = 0.0
            while True:
                now = time.monotonic()
                if now >= next_poll:
                    next_poll = now + STATE_POLL_S
                    self._note_state_changes()
                # A control-socket reload wakes the loop at once; SIGHUP and an edit of the file (one
                # stat per wake-up) are seen within WATCH_S.
                if self._reload_requested or self.source.changed():
                    self.reload()
                if self._links_changed.is_set():
                    self._sync_links()
                if now - last_slow >= 1.0:
                    last_slow = now
                    self.cpu_ratio = self.cpu.sample()
                    self.dp.set_system_metrics(load1(), self.cpu_ratio)
                    self._collect_seconds(seconds)
                self._wake.wait(max(0.0, min(WATCH_S, next_poll - time.monotonic())))
                self._wake.clear()
        except Stop:
            log.info("stopping")
        finally:
            self.close()
            for sig, handler in old.items():
                signal.signal(sig, handler)

    def close(self) -> None:
        if self.registrar is not None:
            self.registrar.close()
            self.registrar = None
        self.source.close()
        if self.link_watcher is not None:
            self.link_watcher.stop()
            self.link_watcher = None
        if self.ticker is not None:
            self.ticker.stop()
            self.ticker = None
        if self.cluster is not None:
            self.cluster.stop()
            self.cluster = None
        if self.tls is not None:
            self.tls.stop()
            self.tls = None
        if self.hooks is not None:
            self.hooks.stop()
        for closer in (self.control, self.metrics, self.demo, self.metric_log):
            if closer is not None:
                try:
                    closer.close()
                except Exception as exc:  # keep going: the data plane must still be detached
                    log.warning("closing %s: %s", type(closer).__name__, exc)
        self.control = self.metrics = self.demo = self.metric_log = None
        if self.dp is not None:
            self.dp.close()  # detaches TC filters, removes qdiscs we created, closes cgroup links
            self.dp = None
        if self._state_written:  # a daemon that failed to start leaves another's (or a crash's) record
            remove_state(self.config.state_dir)
            self._state_written = False

    def _on_link_change(self) -> None:
        self._links_changed.set()
        self._wake.set()

    def _sync_links(self) -> None:
        """Attach to interfaces of the configured set that appeared, forget those that went (daemon loop)."""
        assert self.dp is not None
        self._links_changed.clear()
        changes = reconcile(self.dp, self.links)
        if changes:
            self._write_state()  # first: what is attached is on record before anyone reads the log
        for change in changes:
            log.info("%s", change)

    def _attach_outbound_if_needed(self, rules: RuleSet) -> None:
        assert self.dp is not None
        if not self.dp.outbound_attached and any(
            not r.match.inbound and r.match.protocol == "tcp" for r in rules.resources
        ):
            self.dp.attach_outbound()
            log.info("judging outbound connect() at the cgroup2 root")
        if not self.dp.sockops_attached and any(
            r.match.inbound and r.match.protocol == "tcp" for r in rules.resources
        ):
            try:
                self.dp.attach_sockops()
                log.info("TCP resources' connections take their concurrency slot when established (sock_ops)")
            except SentinelError as e:
                log.warning("%s: connections take their concurrency slot at the SYN", e)

    # -- reload ---------------------------------------------------------------------------------------
    def reload(self) -> ReloadResult:
        """Apply the rules file if it is valid; otherwise keep the rules in force and log every problem.
        Runs on the daemon's loop (the only thread that changes the data plane)."""
        assert self.dp is not None
        with self._reload_lock:  # requests arriving from here on get the next reload
            self._reload_requested = False
            waiters, self._reload_waiters = self._reload_waiters, []
        version = self.source.current()
        with self._dp_lock:
            result = reload_rules(
                version.label, self.dp, load=lambda _: version.load(), prepare=self._attach_outbound_if_needed
            )
            if self.cluster is not None:
                self.cluster.track(self.dp.adaptive.calculators.values())
        if result.rules is not None:
            self._in_force(result.rules, changed=result.changed)
            self.source.in_force(version)
            if result.changed and self._state_written:
                self._write_state()  # what a daemon taking over after a crash adopts
        for waiter in waiters:
            waiter.put(result)
        return result

    def request_reload(self, timeout_s: float = RELOAD_WAIT_S) -> ReloadResult:
        """Ask the daemon's loop to reload and wait for the outcome (from another thread)."""
        waiter: queue.Queue[ReloadResult] = queue.Queue(maxsize=1)
        with self._reload_lock:
            self._reload_waiters.append(waiter)
            self._reload_requested = True
        self._wake.set()
        try:
            return waiter.get(timeout=timeout_s)
        except queue.Empty:
            raise SentinelError(f"the reload did not finish within {timeout_s:g} s") from None

    def _in_force(self, rules: RuleSet, changed: bool = True) -> None:
        self.rules = rules
        self.protocols = {r.name: r.match.protocol for r in rules.resources}
        if changed:
            self.loaded_at = time.time()
            tls = [r for r in rules.resources if r.match.tls]
            keys = frozenset((r.name, r.match.key()) for r in tls)
            if self.tls is None or self.tls.keys != keys:
                if self.tls is not None:
                    self.tls.stop()
                self.tls = TlsObserver(tls).start()

    # -- outputs --------------------------------------------------------------------------------------
    def _crashed_state(self) -> State | None:
        return crashed_state(self.config.state_dir)

    def _resume(self, crashed: State | None) -> InboundDataplane | None:
        return resume_or_none(crashed, self.config.hotspot_keys)

    def _write_state(self) -> None:
        assert self.dp is not None
        write_state(self.config.state_dir, self.dp, self.rules)
        self._state_written = True

    def _dp(self) -> InboundDataplane:
        if self.dp is None:
            raise SentinelError("the daemon is not running")
        return self.dp

    def add_state_listener(self, listener: Callable[[BreakerTransition], None]) -> None:
        """Call ``listener`` (on the daemon's thread) for every circuit breaker transition."""
        self.listeners.append(listener)

    def _note_state_changes(self) -> None:
        assert self.dp is not None
        for change in self.dp.state_changes():
            self.state_counts[change] += 1
            log.warning("circuit breaker %s of %s: %s -> %s", change.breaker_id, change.resource,
                        change.from_state, change.to_state)  # fmt: skip
            for listener in self.listeners:
                try:
                    listener(change)
                except Exception:
                    log.exception("state change listener %r failed", listener)
            if self.hooks is not None:
                self.hooks.submit(change)

    def _collect_seconds(self, seconds: SecondCollector) -> None:
        """Each completed second: the history's points and the metric log's lines."""
        if self.dp is not None:
            tls = self.tls.stats() if self.tls is not None else []
            self.report.collect(seconds, self.dp.raw_stats_bytes(), self.dp.compiled.resources, self.protocols,
                                tls, self.metric_log)  # fmt: skip

    def metrics_snapshot(self) -> MetricsSnapshot:
        resources = self.resource_stats()
        return MetricsSnapshot(resources, dict(self.state_counts), self.cpu_ratio, process_memory_bytes())

    def resource_stats(self) -> list[ResourceStats]:
        """Every resource: the kernel's counts, then the tls resources' (observed by tracing)."""
        kernel = self.dp.resource_stats() if self.dp else []
        return kernel + (self.tls.stats() if self.tls is not None else [])

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """Control socket requests (run on the control thread)."""
        return handle_request(self, request)
