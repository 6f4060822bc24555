"""doctor's reading of a failed load: the program libbpf names and the verifier's first complaint."""

from __future__ import annotations

import errno

import pytest
from typer.testing import CliRunner

from sentinel_ebpf.cli import _register, app
from sentinel_ebpf.doctor import (
    describe_load_error,
    verifier_complaint,
)
from sentinel_ebpf.errors import BpfLoadError

# What Linux 6.1 said of inbound.bpf.o before it was fixed (trimmed libbpf log).
LOG_6_1 = """\
libbpf: prog 'tc_egress': added 335 insns from sub-prog 'complete'
libbpf: prog 'tc_ingress': BPF program load failed: Permission denied
libbpf: prog 'tc_ingress': -- BEGIN PROG LOAD LOG --
Validating complete() func#1...
869: R1=mem_or_null(id=2,off=0,imm=0) R2=scalar() R10=fp0
; f = bpf_map_lookup_elem(&inflight, key);
875: (85) call bpf_map_lookup_elem#1
R2 type=mem expected=fp, pkt, pkt_meta, map_key, map_value
processed 6 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0
-- END PROG LOAD LOG --
libbpf: prog 'tc_ingress': failed to load: -13
libbpf: failed to load object '/x/inbound.bpf.o'
"""


def test_the_complaint_is_the_line_before_processed() -> None:
    assert verifier_complaint(LOG_6_1) == (
        "tc_ingress",
        "R2 type=mem expected=fp, pkt, pkt_meta, map_key, map_value",
    )


def test_a_log_without_a_verifier_verdict_names_the_program_only() -> None:
    log = "libbpf: prog 'out_connect4': failed to load: -22\n"
    assert verifier_complaint(log) == ("out_connect4", "")
    msg = describe_load_error(BpfLoadError("load inbound.bpf.o", -errno.EINVAL, log))
    assert msg == "load inbound.bpf.o: program out_connect4: Invalid argument"


def test_describe_names_object_program_and_complaint() -> None:
    msg = describe_load_error(BpfLoadError("load inbound.bpf.o", -errno.EACCES, LOG_6_1))
    assert msg == (
        "load inbound.bpf.o: program tc_ingress rejected by the verifier: "
        "R2 type=mem expected=fp, pkt, pkt_meta, map_key, map_value"
    )


def test_run_refuses_with_the_program_and_the_complaint(monkeypatch: pytest.MonkeyPatch) -> None:
    import sentinel_ebpf.cli.run_cmd as run_cmd

    class Rejected:
        def __init__(self, *_: object) -> None:
            raise BpfLoadError("load inbound.bpf.o", -errno.EACCES, LOG_6_1)

    monkeypatch.setattr(run_cmd, "Daemon", Rejected)
    monkeypatch.setattr(run_cmd, "require_root", lambda what: None)
    _register()
    result = CliRunner().invoke(app, ["run", "--metrics-addr", ""])
    assert result.exit_code == 1
    assert "cannot enforce on this kernel" in result.output
    assert "program tc_ingress rejected by the verifier: R2 type=mem expected=fp" in result.output


def test_a_helper_the_kernel_lacks_is_named_with_the_version_it_needs() -> None:
    log = (
        "libbpf: prog 'out_connect4': BPF program load failed: Invalid argument\n"
        "libbpf: prog 'out_connect4': -- BEGIN PROG LOAD LOG --\n"
        "123: (85) call unknown#187\n"
        "invalid func unknown#187\n"
        "processed 140 insns (limit 1000000) max_states_per_insn 0 total_states 9\n"
        "-- END PROG LOAD LOG --\n"
    )
    msg = describe_load_error(BpfLoadError("load inbound.bpf.o", -errno.EINVAL, log))
    assert msg.endswith("invalid func unknown#187 (bpf_set_retval: needs Linux 5.18 or newer)")


def test_an_older_kernel_that_cannot_count_callbacks_is_told_the_version_they_need() -> None:
    """Linux 5.10 (Debian 11) stops before any helper: bpf_loop's callbacks are not functions to it."""
    log = (
        "libbpf: prog 'tc_ingress': BPF program load failed: Invalid argument\n"
        "libbpf: prog 'tc_ingress': -- BEGIN PROG LOAD LOG --\n"
        "number of funcs in func_info doesn't match number of subprogs\n"
        "processed 0 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0\n"
        "-- END PROG LOAD LOG --\n"
    )
    msg = describe_load_error(BpfLoadError("load inbound.bpf.o", -errno.EINVAL, log))
    assert msg == (
        "load inbound.bpf.o: program tc_ingress rejected by the verifier: number of funcs in func_info "
        "doesn't match number of subprogs (bpf_loop callbacks: needs Linux 5.17 or newer)"
    )
