"""Outbound connections judged at connect(): flow and isolation limits and circuit breakers fail a
blocked connect() at once with ECONNREFUSED, for the processes of one cgroup only."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sentinel_ebpf.enforce import InboundDataplane
from sentinel_ebpf.host import cgroup2_mount
from sentinel_ebpf.rules import load_text
from tests.support.netns import NetnsPair

pytestmark = pytest.mark.kernel
CLIENT = Path(__file__).with_name("outclient.py")


@pytest.fixture
def cgroup() -> Iterator[str]:
    root = cgroup2_mount()
    assert root is not None, "cgroup2 not mounted"
    name = f"sentinel-it-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    path = Path(root, name)
    path.mkdir()
    try:
        yield "/" + name
    finally:
        for _ in range(50):  # wait for the client processes to be gone
            try:
                path.rmdir()
                break
            except OSError:
                time.sleep(0.1)


@pytest.fixture
def guard() -> Iterator[InboundDataplane]:
    with InboundDataplane() as dp:
        dp.attach_outbound()
        yield dp


def connects(pair: NetnsPair, cgroup: str | None, port: int, count: int, *extra: str) -> list[dict[str, Any]]:
    """Run the client in the client namespace, inside ``cgroup`` when given (joined before entering the
    namespace: `ip netns exec` remounts /sys)."""
    argv = [sys.executable, str(CLIENT), pair.server_ip, str(port), str(count), *extra]
    if cgroup is not None:
        procs = Path(cgroup2_mount() or "", cgroup.lstrip("/"), "cgroup.procs")
        script = f'echo $$ > {procs} && exec "$@"'
        argv = ["sh", "-c", script, "sh", "ip", "netns", "exec", pair.client, *argv]
    else:
        argv = ["ip", "netns", "exec", pair.client, *argv]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)  # type: ignore[no-any-return]


def active_opens(pair: NetnsPair) -> int:
    """TCP ActiveOpens of the client namespace (/proc/net/snmp is per namespace): SYNs its sockets sent."""
    lines = [
        ln.split()
        for ln in pair.run(pair.client, "cat", "/proc/net/snmp").stdout.splitlines()
        if ln.startswith("Tcp:")
    ]
    return int(lines[1][lines[0].index("ActiveOpens")])


def rules(pair: NetnsPair, cgroup: str, body: str, port: int = 8000) -> str:
    return f"""
resources:
  - name: backend
    match: {{direction: outbound, protocol: tcp, host: {pair.server_ip}/32, port: {port}, cgroup: {cgroup}}}
{body}"""


def test_flow_limit_refuses_excess_connects_fast(fresh_netns_pair: NetnsPair, cgroup: str,
                                                 guard: InboundDataplane) -> None:  # fmt: skip
    pair = fresh_netns_pair
    pair.start_http_server(8000)
    guard.apply(
        guard.compile(load_text(rules(pair, cgroup, "flowRules:\n  - {resource: backend, threshold: 3}\n")))
    )
    opens = active_opens(pair)
    results = connects(pair, cgroup, 8000, 6)
    assert [r["ok"] for r in results] == [True, True, True, False, False, False]
    assert all(r["errno"] == errno.ECONNREFUSED for r in results[3:])
    # refused in the connect() call: no SYN sent for them (the client namespace's TCP counted 3 active
    # opens), and at once (a loose bound: the count is the proof)
    assert active_opens(pair) - opens == 3
    assert max(r["ms"] for r in results[3:]) < 1000, results
    # a process outside the cgroup is not limited
    assert all(r["ok"] for r in connects(pair, None, 8000, 4))
    st = guard.resource_stats()[0]
    assert (st.passed, st.blocked, st.block_by_type["flow"]) == (3, 3, 3)
    assert guard.counters()["connect_refused"] == 3


def test_isolation_caps_concurrent_connections(fresh_netns_pair: NetnsPair, cgroup: str,
                                               guard: InboundDataplane) -> None:  # fmt: skip
    pair = fresh_netns_pair
    pair.start_http_server(8000)
    guard.apply(
        guard.compile(
            load_text(rules(pair, cgroup, "isolationRules:\n  - {resource: backend, threshold: 2}\n"))
        )
    )
    held = connects(pair, cgroup, 8000, 4, "--hold")
    assert [r["ok"] for r in held] == [True, True, False, False]
    deadline = time.monotonic() + 5
    while guard.resource_stats()[0].concurrency and time.monotonic() < deadline:
        time.sleep(0.05)  # the held sockets close when the client exits
    assert guard.resource_stats()[0].concurrency == 0
    assert [r["ok"] for r in connects(pair, cgroup, 8000, 2, "--hold")] == [True, True]


@pytest.mark.parametrize(
    "strategy",
    ["strategy: 2, threshold: 3, minRequestAmount: 1", "strategy: 1, threshold: 0.9, minRequestAmount: 3"],
    ids=["error_count", "error_ratio"],
)
def test_breaker_opens_on_refused_connects_and_closes_when_the_backend_recovers(
    fresh_netns_pair: NetnsPair, cgroup: str, guard: InboundDataplane, strategy: str
) -> None:
    pair = fresh_netns_pair
    breaker = f"""circuitBreakerRules:
  - {{id: backend-down, resource: backend, {strategy}, retryTimeoutMs: 800, statIntervalMs: 10000, statSlidingWindowBucketCount: 10, probeNum: 1}}
"""
    guard.apply(guard.compile(load_text(rules(pair, cgroup, breaker))))
    guard.state_changes()
    # nothing listens: the first 3 connects are refused by the backend's kernel (RST), then the breaker opens
    first = connects(pair, cgroup, 8000, 5)
    assert [r["ok"] for r in first] == [False] * 5
    assert [c.to_state for c in guard.state_changes(100)] == ["open"]
    assert guard.resource_stats()[0].block_by_type["circuit_breaking"] == 2
    # the backend recovers; after the retry timeout one probe goes through and closes the breaker
    pair.start_http_server(8000)
    time.sleep(0.9)
    again = connects(pair, cgroup, 8000, 3)
    assert [r["ok"] for r in again] == [True, True, True]
    assert [(c.from_state, c.to_state) for c in guard.state_changes(100)] == [
        ("open", "half_open"), ("half_open", "closed"),
    ]  # fmt: skip
    assert guard.breaker_states()["backend"][0].state == "closed"
