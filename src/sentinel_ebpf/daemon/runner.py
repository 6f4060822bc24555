"""`sentinel-ebpf run`: load, validate, attach, enforce; reload on change; report; detach on exit."""

from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import struct
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from sentinel_ebpf._types import ResStats
from sentinel_ebpf.daemon.collector import SecondCollector, second_counts
from sentinel_ebpf.daemon.control import DEFAULT_SOCKET, ControlServer
from sentinel_ebpf.daemon.demo import DEFAULT_RULES, DemoServer
from sentinel_ebpf.daemon.reload import ReloadResult, reload_rules
from sentinel_ebpf.daemon.resume import inbound_record, resume
from sentinel_ebpf.daemon.sampling import CpuSampler, load1, process_memory_bytes
from sentinel_ebpf.daemon.state import DEFAULT_STATE_DIR, Attachment, State, alive, remove_state
from sentinel_ebpf.daemon.tls_observer import TlsObserver
from sentinel_ebpf.daemon.watch import FileWatcher
from sentinel_ebpf.errors import BpfKeyError, SentinelError
from sentinel_ebpf.inbound import InboundDataplane
from sentinel_ebpf.outputs.metric_log import MetricItem, MetricLogWriter, classification_of
from sentinel_ebpf.outputs.prometheus import (
    MetricsServer,
    MetricsSnapshot,
    SentinelCollector,
    start_http_server,
)
from sentinel_ebpf.outputs.stats_json import stats_document
from sentinel_ebpf.rules import RuleSet, load_file
from sentinel_ebpf.rules.dump import to_project
from sentinel_ebpf.stats import ResourceStats, StateChange

log = logging.getLogger("sentinel_ebpf.daemon")
TICK_S = 0.1
# concurrency, total_pass, total_block, total_complete, total_error: contiguous in struct res_stats
_TOTALS = struct.Struct("<qQQQQ")
_TOTALS_AT = ResStats.concurrency.offset
assert ResStats.total_error.offset == _TOTALS_AT + 32
WATCH_S = 0.05  # the loop wakes at least this often to look for reload requests and file changes
RELOAD_WAIT_S = 8.0  # a `reload` request waits this long for the loop (clients wait 10 s by default)


@dataclass
class DaemonConfig:
    rules: str | None = None  # None: the built-in example (and its demo server)
    interfaces: list[str] = field(default_factory=list)  # empty: every up interface (lo only for the demo)
    metrics_addr: str | None = "127.0.0.1:9464"
    log_dir: str | None = "/var/log/sentinel-ebpf"
    app: str = "sentinel-ebpf"
    control_socket: str = DEFAULT_SOCKET
    state_dir: str = DEFAULT_STATE_DIR
    on_breaker_change: str | None = None  # a shell command run on each transition (SENTINEL_* variables)
    hotspot_keys: int | None = None  # hotspot values tracked at once (None: SE_HOT_VALUES_MAX)


class Stop(BaseException):
    """Raised from the SIGTERM/SIGINT handler. A BaseException: a signal that lands while the loop is
    inside logging (or any ``except Exception``) must not be swallowed there."""


def up_interfaces() -> list[str]:
    """Every interface that is administratively up, loopback included."""
    names = []
    for _, name in socket.if_nameindex():
        try:
            flags = int(Path(f"/sys/class/net/{name}/flags").read_text(), 16)
        except (OSError, ValueError):
            continue
        if flags & 0x1:  # IFF_UP
            names.append(name)
    return names


def load_rules(path: str) -> RuleSet:
    """Read and validate; RulesError/RulesFileError carry every problem."""
    return load_file(path)


class Daemon:
    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.rules_path = config.rules or str(DEFAULT_RULES)
        self.dp: InboundDataplane | None = None
        self.demo: DemoServer | None = None
        self.metrics: MetricsServer | None = None
        self.control: ControlServer | None = None
        self.metric_log: MetricLogWriter | None = None
        self.state_counts: Counter[StateChange] = Counter()
        self.cpu = CpuSampler()
        self.cpu_ratio: float | None = None
        self._reload_requested = False
        self._reload_lock = threading.Lock()
        self._wake = threading.Event()  # set by a control-socket reload request
        # (data-plane ms, {resource id: (concurrency, pass, block, complete, error)}) of recent seconds
        self._totals_seen: list[tuple[int, dict[int, tuple[int, ...]]]] = []
        self._reload_waiters: list[queue.Queue[ReloadResult]] = []
        self.watcher = FileWatcher(self.rules_path)
        self._state_written = False  # only then is the state file ours to remove
        self.loaded_at = 0.0
        self.rules: RuleSet | None = None  # the rule set in force
        self.protocols: dict[str, str] = {}
        self.listeners: list[Callable[[StateChange], None]] = []
        # hook commands run one at a time, in transition order, off the daemon's loop
        self._hook_queue: queue.Queue[StateChange | None] = queue.Queue()
        self._hook_thread: threading.Thread | None = None
        self.tls: TlsObserver | None = None  # counts of tls resources, from the HTTP tracer

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> None:
        self.watcher.mark()
        rules = load_rules(self.rules_path)  # invalid at start: the caller reports and exits 1
        crashed = self._crashed_state()
        self.dp = self._resume(crashed) or InboundDataplane(hotspot_values=self.config.hotspot_keys)
        compiled = self.dp.compile(rules)
        for note in compiled.notes:
            log.warning("%s", note)
        self.dp.apply(compiled)
        self._in_force(rules)
        # before attaching: a daemon already listening there must not lose its filters to this one
        self.control = ControlServer(self.config.control_socket, self.handle)
        if self.config.rules is None:
            self.demo = DemoServer()
            log.info(
                "built-in example: demo server on http://127.0.0.1:18080/ (/ at 5 QPS, /slow 2 at a time)"
            )
        interfaces = self.config.interfaces or (["lo"] if self.config.rules is None else up_interfaces())
        inherited = {a.ifname for a in crashed.attachments if a.created_qdisc} if crashed else set()
        try:
            for name in interfaces:
                self.dp.attach(name)  # replaces filters a crashed daemon left (same handle and priority)
                if name in inherited:
                    self.dp.adopt_qdisc(name)
                log.info("attached to %s", name)
        finally:
            self._write_state()
        self._attach_outbound_if_needed(rules)
        if self.config.log_dir:
            self.metric_log = MetricLogWriter(self.config.log_dir, self.config.app)
        if self.config.metrics_addr:
            host, _, port = self.config.metrics_addr.rpartition(":")
            collector = SentinelCollector(self.metrics_snapshot)
            self.metrics = start_http_server(collector, int(port), host or "127.0.0.1")
            log.info("Prometheus metrics at %s", self.metrics.url)
        log.info("enforcing %s (%d resources); control socket %s", self.rules_path,
                 len(compiled.resources), self.config.control_socket)  # fmt: skip

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
            last_slow = next_tick = 0.0
            while True:
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + TICK_S
                    self.dp.tick()
                    self._note_state_changes()
                # A control-socket reload wakes the loop at once; SIGHUP and an edit of the file (one
                # stat per wake-up) are seen within WATCH_S.
                if self._reload_requested or self.watcher.changed():
                    self.reload()
                if now - last_slow >= 1.0:
                    last_slow = now
                    self.cpu_ratio = self.cpu.sample()
                    self.dp.set_system_metrics(load1(), self.cpu_ratio)
                    self._write_metric_log(seconds)
                self._wake.wait(max(0.0, min(WATCH_S, next_tick - time.monotonic())))
                self._wake.clear()
        except Stop:
            log.info("stopping")
        finally:
            self.close()
            for sig, handler in old.items():
                signal.signal(sig, handler)

    def close(self) -> None:
        if self.tls is not None:
            self.tls.stop()
            self.tls = None
        if self._hook_thread is not None:
            self._hook_queue.put(None)
            self._hook_thread.join(timeout=30)
            self._hook_thread = None
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
        self.watcher.mark()
        result = reload_rules(
            self.rules_path, self.dp, load=load_rules, prepare=self._attach_outbound_if_needed
        )
        if result.rules is not None:
            self._in_force(result.rules, changed=result.changed)
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
        """The record of a daemon that did not stop cleanly (this one removes the clsact qdiscs it created
        when it stops), or None."""
        old = State.read(self.config.state_dir)
        if old is None:
            return None
        if old.pid != os.getpid() and alive(old.pid):
            raise SentinelError(f"another daemon (pid {old.pid}) uses {self.config.state_dir}: stop it first")
        log.warning("taking over from a daemon that did not stop cleanly (pid %d)", old.pid)
        return old

    def _resume(self, crashed: State | None) -> InboundDataplane | None:
        """The crashed daemon's maps, still used by its TC programs, so counting goes on (None: start afresh)."""
        if crashed is None:
            return None
        try:
            dp = resume(crashed, self.config.hotspot_keys)
        except SentinelError as exc:
            log.warning("statistics start from zero: cannot resume the crashed daemon's maps: %s", exc)
            return None
        log.info("resumed the crashed daemon's statistics, windows and in-flight requests (%d resources)",
                 len(dp.compiled.resources))  # fmt: skip
        return dp

    def _write_state(self) -> None:
        assert self.dp is not None
        state = State(os.getpid(), [Attachment(n, i, c) for n, i, c in self.dp.attached()])
        if self.rules is not None:
            state.inbound = inbound_record(self.dp, self.rules)
        state.write(self.config.state_dir)
        self._state_written = True

    def add_state_listener(self, listener: Callable[[StateChange], None]) -> None:
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
            if self.config.on_breaker_change:
                if self._hook_thread is None:
                    self._hook_thread = threading.Thread(
                        target=self._run_hooks, name="breaker-hook", daemon=True
                    )
                    self._hook_thread.start()
                self._hook_queue.put(change)

    def _run_hooks(self) -> None:
        command = self.config.on_breaker_change
        assert command is not None
        while (change := self._hook_queue.get()) is not None:
            env = {**os.environ, "SENTINEL_RESOURCE": change.resource, "SENTINEL_BREAKER": change.breaker_id,
                   "SENTINEL_FROM": change.from_state, "SENTINEL_TO": change.to_state}  # fmt: skip
            try:
                done = subprocess.run(["/bin/sh", "-c", command], env=env, stdin=subprocess.DEVNULL, timeout=30,
                                      check=False)  # fmt: skip
                if done.returncode:
                    log.error("breaker hook %r exited with %d", command, done.returncode)
            except (OSError, subprocess.TimeoutExpired) as exc:
                log.error("breaker hook %r: %s", command, exc)

    def _write_metric_log(self, seconds: SecondCollector) -> None:
        if self.metric_log is None or self.dp is None:
            return
        protocols = self.protocols
        completed = seconds.completed()
        taken_ms = seconds.now_ms()
        raw = self.dp.raw_stats_bytes()
        totals: dict[int, tuple[int, ...]] = {
            rid: _TOTALS.unpack_from(b, _TOTALS_AT) for rid, b in raw.items()
        }
        # A resource whose counters have not moved since before the first of these seconds began, and
        # that has nothing in flight, has no line to write (the writer drops all-zero items, as Go does):
        # skip the bucket arithmetic for it. With 1,000 idle resources this is most of the daemon's work.
        first = completed[0] if completed else taken_ms
        before = next((t for at, t in reversed(self._totals_seen) if at <= first), {})
        self._totals_seen.append((taken_ms, totals))
        del self._totals_seen[:-3]
        for s in completed:
            items = []
            for r in self.dp.compiled.resources:
                now = totals[r.id]
                if not now[0] and before.get(r.id) == now:
                    continue
                st = ResStats.from_buffer_copy(raw[r.id])
                counts = second_counts(st, s, max(0, int(st.concurrency)), seconds.epoch(s))
                items.append(MetricItem(r.name, counts, classification_of(protocols.get(r.name, "tcp"))))
            try:
                self.metric_log.write(seconds.epoch(s), items)
            except OSError as exc:  # a full disk must not stop enforcement
                log.error("metric log in %s: %s", self.config.log_dir, exc)

    def metrics_snapshot(self) -> MetricsSnapshot:
        resources = self.resource_stats()
        return MetricsSnapshot(resources, dict(self.state_counts), self.cpu_ratio, process_memory_bytes())

    def resource_stats(self) -> list[ResourceStats]:
        """Every resource: the kernel's counts, then the tls resources' (observed by tracing)."""
        kernel = self.dp.resource_stats() if self.dp else []
        return kernel + (self.tls.stats() if self.tls is not None else [])

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """Control socket requests (run on the control thread)."""
        if self.dp is None:
            raise SentinelError("the daemon is stopping")
        cmd = request["cmd"]
        if cmd == "stats":
            doc = stats_document(self.resource_stats())
            doc["dataplane"] = self.dp.counters()
            doc["ports"] = self._port_counters()
            doc["loaded_at"] = self.loaded_at
            return doc
        if cmd == "rules":
            return {
                "file": self.rules_path,
                "loaded_at": self.loaded_at,
                "resources": [r.name for r in self.dp.compiled.resources],
                "document": to_project(self.rules) if self.rules is not None else None,
            }
        if cmd == "reload":
            return self.request_reload().as_dict()
        raise SentinelError(f"unknown command {cmd!r} (stats, rules, reload)")

    def _port_counters(self) -> dict[str, dict[str, int]]:
        """Traffic on each protected port that passed unclassified (TLS, HTTP/2, split request lines)."""
        assert self.dp is not None
        out = {}
        for p in self.dp.compiled.ports:
            try:
                out[str(p.port)] = self.dp.port_counters(p.port)
            except BpfKeyError:
                continue  # nothing counted on that port yet
        return out
