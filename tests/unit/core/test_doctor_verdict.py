"""doctor's verdict logic, independent of the kernel it runs on.

The expectations are written out here from what each feature uses (README, the programs each command
loads and attaches), not derived from doctor's own FEATURES table: a need missing from that table, or a
need naming a check doctor never makes, fails these tests.
"""

from __future__ import annotations

import pytest

from sentinel_ebpf.doctor import Check, Status, verdict

# Every check doctor makes (tests/integration/test_doctor.py compares this with a real run).
ALL_CHECKS = (
    "privileges", "libbpf", "btf", "objects", "cgroup2", "bpffs", "tracefs", "syscall numbers",
    "prog sched_cls", "prog xdp", "prog cgroup_sock_addr", "prog sock_ops", "prog sk_msg",
    "prog raw_tracepoint", "prog kprobe", "map hash", "map lru_hash", "map percpu_array", "map lpm_trie",
    "map ringbuf", "hook tp_btf", "hook raw_tp", "hook kprobe", "hook uprobe", "hook fentry", "hook lsm",
    "BPF_PROG_TEST_RUN", "hook xdp", "hook cgroup/connect4", "hook sock_ops", "hook sk_msg",
    "load inbound", "load tcptrace", "load httptrace",
)  # fmt: skip

TRACE = "trace (TCP connection tracer)"
ACCEPT = "trace --accept"
HTTP = "trace --http (HTTP requests from syscalls)"
TLS = "trace --http over TLS (OpenSSL uprobes); tls resources"
INBOUND = "inbound enforcement (TC ingress/egress)"
OUTBOUND = "outbound connect enforcement (cgroup/connect4|6)"
KPROBE, FENTRY, LSM = "kprobe-based tracing", "fentry/fexit tracing", "BPF LSM"
ESSENTIAL = {TRACE, INBOUND}

# checks missing -> the features that must then be unavailable (and only those)
LOSSES: list[tuple[tuple[str, ...], set[str]]] = [
    (("privileges",), {TRACE, INBOUND}),
    (("btf",), {TRACE, INBOUND}),
    (("objects",), {TRACE, INBOUND}),
    (("map lru_hash",), {TRACE, INBOUND}),
    (("map percpu_array",), {TRACE, INBOUND}),
    (("map ringbuf",), {TRACE, HTTP}),  # the tracers' events
    (("map lpm_trie",), {INBOUND}),  # HTTP routes
    (("prog sched_cls",), {INBOUND}),
    (("BPF_PROG_TEST_RUN",), {INBOUND}),
    (("hook tp_btf",), set()),  # raw_tp is the fallback
    (("hook raw_tp",), set()),
    (("hook tp_btf", "hook raw_tp"), {TRACE, ACCEPT, HTTP}),
    (("syscall numbers",), {ACCEPT, HTTP}),
    (("hook uprobe",), {TLS}),
    # `run` attaches out_connect4, out_connect6 and out_sockops at the cgroup2 root
    (("cgroup2",), {OUTBOUND}),
    (("prog cgroup_sock_addr",), {OUTBOUND}),
    (("hook cgroup/connect4",), {OUTBOUND}),
    (("hook sock_ops",), {OUTBOUND}),
    # the real objects, loaded as the tool loads them: what the verifier refuses cannot run
    (("load inbound",), {INBOUND, OUTBOUND}),
    (("load tcptrace",), {TRACE, ACCEPT}),
    (("load httptrace",), {HTTP, TLS}),
    (("hook kprobe",), {KPROBE}),
    (("hook fentry",), {FENTRY}),
    (("hook lsm",), {LSM}),
    # informational: no feature of this tool needs them
    (("bpffs", "tracefs", "prog xdp", "hook xdp", "prog sk_msg", "hook sk_msg", "map hash"), set()),
]


def _checks(missing: tuple[str, ...] = ()) -> list[Check]:
    return [Check("g", n, Status.MISSING if n in missing else Status.OK) for n in ALL_CHECKS]


def test_everything_available_when_all_checks_pass() -> None:
    features = verdict(_checks())
    assert {f.name for f in features} == {TRACE, ACCEPT, HTTP, TLS, INBOUND, OUTBOUND, KPROBE, FENTRY, LSM}
    assert [f.name for f in features if not f.available] == []
    assert {f.name for f in features if f.essential} == ESSENTIAL


@pytest.mark.parametrize(("missing", "lost"), LOSSES, ids=["+".join(m) for m, _ in LOSSES])
def test_missing_checks_disable_exactly_the_features_that_need_them(
    missing: tuple[str, ...], lost: set[str]
) -> None:
    assert set(missing) <= set(ALL_CHECKS)
    features = verdict(_checks(missing))
    assert {f.name for f in features if not f.available} == lost
    for f in features:
        if f.name in lost:
            # each unavailable feature names what it misses, among the checks made missing
            assert f.missing and all(set(m.split("|")) & set(missing) for m in f.missing), f


def test_warned_checks_do_not_count_as_present() -> None:
    checks = [c if c.name != "cgroup2" else Check("system", "cgroup2", Status.WARN) for c in _checks()]
    assert [f.name for f in verdict(checks) if not f.available] == [OUTBOUND]
