"""Policy for tests marked ``@pytest.mark.kernel`` (shared by every test tier).

* Before such a test runs: it is skipped, with the reason, when not running as root, when the kernel has
  no BTF, or when the BPF objects it needs are not built. ``@pytest.mark.kernel("tcptrace")`` names the
  objects it needs; a bare ``@pytest.mark.kernel`` needs every ``bpf/*.bpf.c`` built.
* In CI (environment ``CI=true``) EVERY skip is reported as a FAILURE, whatever the test's markers: a
  kernel test that cannot run, a ``pytest.skip`` in a test or fixture, a ``skipif`` marker, a module
  skipped at collection. CI must run every tier for real; only ``xfail`` stays what it says.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

BTF = Path("/sys/kernel/btf/vmlinux")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _missing_objects(names: tuple[str, ...]) -> str | None:
    try:
        from sentinel_ebpf.objects import BPF_DIR
    except Exception as exc:  # broken install: say so rather than erroring in every test
        return f"sentinel_ebpf cannot be imported: {exc!r}"
    wanted = names or tuple(p.name.removesuffix(".bpf.c") for p in sorted(BPF_DIR.glob("*.bpf.c")))
    missing = [n for n in wanted if not (BPF_DIR / f"{n}.bpf.o").exists()]
    if missing:
        return (
            f"BPF objects not built: {', '.join(m + '.bpf.o' for m in missing)} in {BPF_DIR} "
            "(run `python -m sentinel_ebpf._build` or reinstall the package)"
        )
    return None


def kernel_unavailable(item: pytest.Item) -> str | None:
    """Why a kernel-marked test cannot run here, or None."""
    marker = item.get_closest_marker("kernel")
    assert marker is not None
    if os.geteuid() != 0:
        return "needs root (CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN)"
    if not BTF.exists():
        return f"kernel has no BTF ({BTF} missing)"
    return _missing_objects(tuple(str(a) for a in marker.args))


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("kernel") is None:
        return
    reason = kernel_unavailable(item)
    if reason is not None:
        if in_ci():
            pytest.fail(f"kernel test cannot run in CI: {reason}", pytrace=False)
        pytest.skip(f"kernel test: {reason}")


def _reason(longrepr: object) -> str:
    return longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    report: pytest.TestReport = yield
    if report.skipped and in_ci() and not hasattr(report, "wasxfail"):
        kind = "kernel test" if item.get_closest_marker("kernel") is not None else "test"
        report.outcome = "failed"
        report.longrepr = (
            f"{kind} skipped in CI (CI={os.environ.get('CI')}), which counts as a failure: "
            f"{_reason(report.longrepr)}"
        )
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> pytest.CollectReport:
    """A module skipped as a whole (``pytest.skip(..., allow_module_level=True)``, ``importorskip``)."""
    report: pytest.CollectReport = yield
    if report.skipped and in_ci():
        report.outcome = "failed"
        report.longrepr = (
            f"{collector.nodeid} skipped at collection in CI (CI={os.environ.get('CI')}), which counts "
            f"as a failure: {_reason(report.longrepr)}"
        )
    return report
