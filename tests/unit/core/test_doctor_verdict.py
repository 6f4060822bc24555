"""doctor's verdict logic, independent of the kernel it runs on."""

from __future__ import annotations

from sentinel_ebpf.doctor import FEATURES, HOOK_PROBES, Check, Status, verdict


def _all_ok() -> list[Check]:
    names = {alt for _, needs, _ in FEATURES for n in needs for alt in n.split("|")}
    return [Check("g", n, Status.OK) for n in sorted(names)]


def test_everything_available_when_all_checks_pass() -> None:
    assert all(f.available for f in verdict(_all_ok()))


def test_missing_kprobes_only_disables_kprobe_tracing() -> None:
    checks = [c if c.name != "hook kprobe" else Check("hook", c.name, Status.MISSING) for c in _all_ok()]
    unavailable = {f.name for f in verdict(checks) if not f.available}
    assert unavailable == {"kprobe-based tracing"}


def test_trace_needs_either_tp_btf_or_raw_tp() -> None:
    without_btf = [c for c in _all_ok() if c.name != "hook tp_btf"]
    trace = next(f for f in verdict(without_btf) if f.name.startswith("trace (TCP"))
    assert trace.available
    neither = [c for c in without_btf if c.name != "hook raw_tp"]
    trace = next(f for f in verdict(neither) if f.name.startswith("trace (TCP"))
    assert not trace.available and trace.missing == ("hook tp_btf|hook raw_tp",)


def test_missing_privileges_makes_essentials_unavailable() -> None:
    checks = [c for c in _all_ok() if c.name != "privileges"]
    essential = [f for f in verdict(checks) if f.essential]
    assert essential and not any(f.available for f in essential)


def test_every_hook_a_feature_needs_is_probed() -> None:
    hook_needs = {
        alt for _, needs, _ in FEATURES for n in needs for alt in n.split("|") if alt.startswith("hook ")
    }
    probed = set(HOOK_PROBES)
    assert hook_needs <= probed
