"""The skip policy of tests/conftest.py: skip with a reason locally, fail under CI=true (every skip:
kernel tests, plain tests, ``skipif`` markers, modules skipped at collection).

Runs pytest in a subprocess on a scratch project that uses a copy of tests/conftest.py. Needs no kernel
features itself (an unavailable object name stands in for "not built").
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"

SCRATCH_TESTS = """
import pytest

@pytest.mark.kernel("tcptrace")
def test_kernel_skips_inside():
    pytest.skip("no such feature here")

@pytest.mark.kernel("no_such_object_xyz")
def test_kernel_object_missing():
    pass

@pytest.mark.kernel("tcptrace")
@pytest.mark.xfail(reason="known kernel bug", strict=True)
def test_kernel_xfail():
    assert False

def test_plain_skip():
    pytest.skip("not a kernel test")

@pytest.mark.skipif(True, reason="a skipif marker")
def test_skipif_marker():
    pass

@pytest.mark.kernel("tcptrace")
def test_kernel_passes():
    pass
"""

SCRATCH_MODULE_SKIP = """
import pytest

pytest.skip("the whole module is skipped", allow_module_level=True)

def test_never_collected():
    pass
"""


def run_scratch(tmp_path: Path, ci: str | None) -> dict[str, str]:
    from sentinel_ebpf.objects import BPF_DIR

    if not (BPF_DIR / "tcptrace.bpf.o").exists():
        pytest.skip("the scratch tests use tcptrace.bpf.o as the object that is built")
    (tmp_path / "conftest.py").write_text(CONFTEST.read_text())
    (tmp_path / "test_scratch.py").write_text(SCRATCH_TESTS)
    (tmp_path / "test_scratch_module.py").write_text(SCRATCH_MODULE_SKIP)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    kernel: needs the kernel\n")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-rA",
            "-v",
            "--continue-on-collection-errors",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    outcomes: dict[str, str] = {}
    for m in re.finditer(
        r"^test_scratch\.py::(test_\w+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)", res.stdout, re.M
    ):
        outcomes[m.group(1)] = m.group(2)
    # a module skipped at collection: "SKIPPED [1] test_scratch_module.py:4: ..." or "ERROR test_scratch_module.py"
    m = re.search(r"^(SKIPPED|ERROR)\b.*test_scratch_module\.py", res.stdout, re.M)
    outcomes["module"] = m.group(1) if m else "not reported"
    outcomes["_output"] = res.stdout + res.stderr
    return outcomes


def test_kernel_skips_are_skips_outside_ci(tmp_path: Path) -> None:
    got = run_scratch(tmp_path, ci=None)
    out = got.pop("_output")
    if os.geteuid() != 0:
        pytest.skip("as non-root every kernel test skips for lack of root")  # not a kernel test itself
    assert got == {
        "test_kernel_skips_inside": "SKIPPED",
        "test_kernel_object_missing": "SKIPPED",
        "test_kernel_xfail": "XFAIL",
        "test_plain_skip": "SKIPPED",
        "test_skipif_marker": "SKIPPED",
        "test_kernel_passes": "PASSED",
        "module": "SKIPPED",
    }, out
    assert "no_such_object_xyz.bpf.o" in out and "not built" in out, out


def test_kernel_skips_fail_in_ci(tmp_path: Path) -> None:
    got = run_scratch(tmp_path, ci="true")
    out = got.pop("_output")
    if os.geteuid() != 0:
        pytest.skip("as non-root every kernel test fails in CI for lack of root")
    assert got == {
        "test_kernel_skips_inside": "FAILED",
        "test_kernel_object_missing": "ERROR",
        "test_kernel_xfail": "XFAIL",
        "test_plain_skip": "FAILED",
        "test_skipif_marker": "ERROR",  # skipped in setup: an error at setup
        "test_kernel_passes": "PASSED",
        "module": "ERROR",
    }, out
    assert "test skipped in CI" in out and "not a kernel test" in out and "a skipif marker" in out, out
    assert "skipped at collection in CI" in out and "the whole module is skipped" in out, out
    assert "kernel test skipped in CI" in out and "no such feature here" in out, out
    assert "kernel test cannot run in CI" in out and "no_such_object_xyz.bpf.o" in out, out
