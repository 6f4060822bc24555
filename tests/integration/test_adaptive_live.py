"""WarmUp and MemoryAdaptive on the live path: the daemon recomputing thresholds from kernel buckets on the
real clock, under real traffic, against the reference model fed the same arrivals (also with every CPU
busy).

The data-plane tier checks the kernel against the model on a test clock; here the daemon's own timer,
its reads of the kernel's buckets and the host's clock are in the loop. The client stamps each request
with CLOCK_MONOTONIC (the kernel's clock) just before sending it; the model judges the same arrivals at
those instants.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from sentinel_ebpf.model.clock import ManualClock
from sentinel_ebpf.model.sentinel import Sentinel
from sentinel_ebpf.model.system import SystemMetrics
from sentinel_ebpf.rules import load_text
from tests.support.daemon_helpers import Daemon
from tests.support.netns import NetnsPair
from tests.support.nginx import hello_nginx

pytestmark = pytest.mark.kernel
ARRIVALS = Path(__file__).with_name("arrivals.py")
TRAFFIC_S = 11.0
WARM_UP = """
resources:
  - {name: api, match: {protocol: http, port: 8000, path: /}}
flowRules:
  - {resource: api, threshold: 100, tokenCalculateStrategy: 1, warmUpPeriodSec: 8, warmUpColdFactor: 3}
"""
# Sentinel's curve for this rule under overload, one value per second from a cold start
SENTINEL_CURVE = [33, 35, 37, 40, 43, 48, 54, 64, 81, 100, 100]


@contextlib.contextmanager
def busy_cpus(seconds: float) -> Iterator[int]:
    """One busy loop per CPU for at most ``seconds`` (each ends by itself; all are killed on exit)."""
    n = os.cpu_count() or 1
    code = f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass\n"
    procs = [subprocess.Popen([sys.executable, "-c", code], start_new_session=True) for _ in range(n)]
    try:
        yield n
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)


_Loop = TypeVar("_Loop", bound="BackgroundLoop")


class BackgroundLoop:
    """``_run`` on a daemon thread while in ``with``; leaving sets ``_done`` (which ``_run`` watches) and
    waits ``join_s`` at most for the thread."""

    join_s = 5.0

    def __init__(self) -> None:
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

    def __enter__(self: _Loop) -> _Loop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(self.join_s)


class MemorySamples(BackgroundLoop):
    """The host's used memory as the daemon reads it (MemTotal - MemAvailable), sampled every 50 ms, so
    the model can see the value of the moment."""

    def __init__(self) -> None:
        from sentinel_ebpf.enforce.adaptive import HostMemory

        super().__init__()
        self.samples: list[tuple[int, int]] = []
        self._host = HostMemory()

    def _run(self) -> None:
        while not self._done.is_set():
            mem = self._host.memory_bytes()
            assert mem is not None
            self.samples.append((time.monotonic_ns(), mem))
            self._done.wait(0.05)

    def at(self, t_ns: int) -> int:
        best = self.samples[0][1]
        for when, mem in self.samples:
            if when > t_ns:
                break
            best = mem
        return best


def send(pair: NetnsPair, seconds: float) -> list[tuple[int, str]]:
    res = pair.run(pair.client, sys.executable, str(ARRIVALS), pair.server_ip, "8000", "/", str(seconds),
                   timeout=seconds + 60)  # fmt: skip
    assert res.returncode == 0, res.stderr
    return [(int(t), str(o)) for t, o in json.loads(res.stdout)["arrivals"]]


def replay(rules: str, arrivals: list[tuple[int, str]], memory: MemorySamples | None = None) -> list[bool]:
    """The model's verdict for each arrival, at its instant."""
    clock = ManualClock(arrivals[0][0] // 1_000_000)
    metrics = SystemMetrics()
    model = Sentinel(load_text(rules, "live.yaml"), clock=clock, system_metrics=metrics)
    out = []
    for t_ns, _ in arrivals:
        clock.set_ns(t_ns)
        if memory is not None:
            metrics.memory = memory.at(t_ns)
        e = model.entry("api")
        out.append(e.passed)
        if e.passed:
            e.exit()
    return out


def per_second(arrivals: list[tuple[int, str]], admitted: list[bool]) -> list[int]:
    counts: Counter[int] = Counter()
    first = arrivals[0][0] // 1_000_000_000
    for (t_ns, _), ok in zip(arrivals, admitted, strict=True):
        counts[t_ns // 1_000_000_000 - first] += ok
    return [counts[s] for s in range(max(counts) + 1)]


class Stalls(BackgroundLoop):
    """Stop ``pid`` (SIGSTOP) for ``stall_s`` every ``every_s``: a daemon starved of CPU or blocked on I/O,
    at its worst. ``intervals`` records when it was stopped (monotonic ns)."""

    join_s = 10.0

    def __init__(self, pid: int, every_s: float, stall_s: float) -> None:
        super().__init__()
        self.pid, self.every_s, self.stall_s = pid, every_s, stall_s
        self.intervals: list[tuple[int, int]] = []

    def _run(self) -> None:
        while not self._done.wait(self.every_s - self.stall_s):
            start = time.monotonic_ns()
            os.kill(self.pid, signal.SIGSTOP)
            try:
                self._done.wait(self.stall_s)
            finally:
                os.kill(self.pid, signal.SIGCONT)
                self.intervals.append((start, time.monotonic_ns()))

    def __exit__(self, *exc: object) -> None:
        super().__exit__()
        os.kill(self.pid, signal.SIGCONT)  # left running, whatever the loop was doing

    def running_through(self, start_ns: int, end_ns: int) -> bool:
        return not any(a < end_ns and b > start_ns for a, b in self.intervals)


class Run:
    def __init__(self, arrivals: list[tuple[int, str]], model: list[bool]) -> None:
        self.arrivals = arrivals
        self.first_s = arrivals[0][0] // 1_000_000_000
        self.kernel = per_second(arrivals, [o == "200" for _, o in arrivals])
        self.model = per_second(arrivals, model)
        self._model = model

    def first_1000_ms(self) -> tuple[int, int]:
        """(kernel, model) admitted within 1,000 ms of the first request (what a reader polling every
        second from the start of the load sees first)."""
        end = self.arrivals[0][0] + 1_000_000_000
        k = sum(o == "200" for t, o in self.arrivals if t < end)
        m = sum(ok for (t, _), ok in zip(self.arrivals, self._model, strict=True) if t < end)
        return k, m


def live_run(pair: NetnsPair, rules: str, busy: bool = False, memory: bool = False,
             stall: tuple[float, float] | None = None) -> tuple[Run, Stalls | None]:  # fmt: skip
    """A cold start under overload: the client's arrivals with the kernel's and the model's verdicts."""
    hello_nginx(pair, 8000)
    d = Daemon(pair, rules)
    stalls = None
    try:
        with contextlib.ExitStack() as stack:
            mem = stack.enter_context(MemorySamples()) if memory else None
            if busy:
                stack.enter_context(busy_cpus(TRAFFIC_S + 5))
            if stall:
                stalls = stack.enter_context(Stalls(d.proc.proc.pid, *stall))
            arrivals = send(pair, TRAFFIC_S)
        stats = d.stats()
    finally:
        d.close()
    outcomes = Counter(o for _, o in arrivals)
    assert set(outcomes) <= {"200", "429"}, outcomes
    run = Run(arrivals, replay(rules, arrivals, mem))
    print(
        f"arrivals {len(arrivals)}, ticks {stats.get('threshold_ticks')}\nkernel {run.kernel}\nmodel  {run.model}"
    )
    return run, stalls


def assert_follows(run: Run, seconds: list[int], tolerance: int = 3, relative: float = 0.0) -> None:
    for s in seconds:
        k, m = run.kernel[s], run.model[s]
        assert abs(k - m) <= max(tolerance, relative * m), (
            f"second {s}: kernel {k}, model {m}\nkernel {run.kernel}\nmodel  {run.model}"
        )


@pytest.mark.parametrize("busy", [False, True], ids=["quiet", "cpus-saturated"])
def test_warm_up_from_a_cold_start_follows_the_model(fresh_netns_pair: NetnsPair, busy: bool) -> None:
    run, _ = live_run(fresh_netns_pair, WARM_UP, busy)
    assert run.kernel[0] <= 34, f"a cold rule is cold from its first request: {run.kernel}"
    assert_follows(run, list(range(len(run.kernel))))
    # Sentinel's curve under steady overload; a client starved for a while on a busy host bends it, in
    # the kernel and the model alike (what is compared above)
    assert all(abs(m - c) <= 8 for m, c in zip(run.model[:10], SENTINEL_CURVE, strict=False)), run.model
    assert run.kernel[9] >= 95, run.kernel  # warm after warmUpPeriodSec
    # Admissions come in bursts when a 500 ms bucket leaves the window, so the 1,000 ms after the first
    # request hold the first burst and (part of) the second (up to 33 + 35), in the kernel and in
    # Sentinel's model alike: a reader polling every second from the start of the load sees that.
    k, m = run.first_1000_ms()
    assert abs(k - m) <= 3, (k, m)


def test_warm_up_catches_up_the_seconds_a_stalled_daemon_missed(fresh_netns_pair: NetnsPair) -> None:
    """The daemon stopped for 2.2 s of every 4: thresholds cannot change while it is stopped (the kernel
    keeps the last one written), but once it runs again they are the model's, every missed second synced
    from the kernel's buckets."""
    run, stalls = live_run(fresh_netns_pair, WARM_UP, stall=(4.0, 2.2))
    assert stalls is not None and len(stalls.intervals) >= 2
    # seconds whose start (the tick) and first bucket the daemon ran through
    live = [s for s in range(1, len(run.kernel) - 1)
            if stalls.running_through((run.first_s + s) * 1_000_000_000 - 50_000_000,
                                      (run.first_s + s) * 1_000_000_000 + 600_000_000)]  # fmt: skip
    after_stall = [s for s in live if (run.first_s + s) * 1_000_000_000 > stalls.intervals[0][1]]
    assert after_stall, (live, stalls.intervals)
    # 6 % beside the 3 requests: the stop can land inside a tick's read of the buckets (seen: 80 vs 84 at
    # 84 per second); the old catch-up missed by 8 at 48 (40 vs 48)
    assert_follows(run, live, relative=0.06)


MEMORY_ADAPTIVE = """
resources:
  - {{name: api, match: {{protocol: http, port: 8000, path: /}}}}
flowRules:
  - {{resource: api, tokenCalculateStrategy: 2, lowMemUsageThreshold: 150, highMemUsageThreshold: 30,
     memLowWaterMarkBytes: {low}, memHighWaterMarkBytes: {high}}}
"""


@pytest.mark.parametrize("busy", [False, True], ids=["quiet", "cpus-saturated"])
def test_memory_adaptive_follows_the_model(fresh_netns_pair: NetnsPair, busy: bool) -> None:
    """Water marks around the host's used memory, so the threshold is interpolated between them."""
    from sentinel_ebpf.enforce.adaptive import HostMemory

    used = HostMemory().memory_bytes()
    assert used is not None
    total = used * 4
    rules = MEMORY_ADAPTIVE.format(low=used // 4, high=total)
    run, _ = live_run(fresh_netns_pair, rules, busy, memory=True)
    # The daemon and the test read /proc/meminfo at different instants, and other processes move it.
    assert_follows(run, list(range(len(run.kernel))), relative=0.05)
    whole = run.model[1:-1]
    assert all(30 < m < 150 for m in whole), whole  # between the water marks' thresholds
