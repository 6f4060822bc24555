"""doctor loads the real objects: each program's verified instructions, or the program the verifier
rejected and its complaint."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sentinel_ebpf import _build
from sentinel_ebpf.doctor import LOAD_CHECKS, Status, describe_load_error, load_check
from sentinel_ebpf.errors import BpfLoadError
from sentinel_ebpf.libbpf import BpfObject, _lib
from sentinel_ebpf.objects import BPF_DIR

pytestmark = pytest.mark.kernel("inbound", "tcptrace", "httptrace")

PROGRAMS = {
    "load inbound": ("tc_ingress", "tc_egress", "out_connect4", "out_connect6", "out_sockops"),
    "load tcptrace": ("state_", "sys_enter_", "sys_exit_"),
    "load httptrace": ("http_sys_exit_", "ssl_exit"),
}


@pytest.mark.parametrize("check", sorted(LOAD_CHECKS))
def test_every_object_loads_and_reports_verified_instructions(check: str) -> None:
    result = load_check(check)
    assert result.status is Status.OK, result.detail
    counts = dict(part.rsplit(" ", 1) for part in result.detail.split("verified insns: ", 1)[1].split(", "))
    for prog in PROGRAMS[check]:
        name = next((n for n in counts if n.startswith(prog)), None)
        assert name is not None, (prog, result.detail)
        # inside the verifier's budget of 1M processed instructions, with room to spare
        assert 0 < int(counts[name].replace(",", "")) < 800_000, result.detail


def test_a_rejected_program_is_named_with_the_verifier_complaint(tmp_path: Path) -> None:
    src = Path(__file__).parent / "bpf" / "verifier_reject.bpf.c"
    shutil.copy(BPF_DIR / "vmlinux.h", tmp_path / "vmlinux.h")
    obj_path = _build.compile_object(src, _build.find_clang(), tmp_path)
    with _lib.capture_log(), BpfObject.open(obj_path) as obj, pytest.raises(BpfLoadError) as exc:
        obj.load()
    msg = describe_load_error(exc.value)
    assert msg.startswith("load verifier_reject.bpf.o: program unchecked_read rejected by the verifier: ")
    assert "packet" in msg.split("verifier: ", 1)[1]  # "invalid access to packet" or "outside of the packet"
