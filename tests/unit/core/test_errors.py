"""Errors name the operation, the errno and a hint; load errors keep the verifier log."""

from __future__ import annotations

import errno

from sentinel_ebpf.errors import BpfError, BpfKeyError, BpfLoadError, SentinelError


def test_bpf_error_names_operation_errno_and_hint() -> None:
    err = BpfError("attach prog to tc ingress", -errno.EPERM)
    assert err.errno == errno.EPERM
    assert str(err).startswith("attach prog to tc ingress: Operation not permitted (EPERM)")
    assert "root" in str(err)
    assert isinstance(err, SentinelError)


def test_explicit_hint_wins() -> None:
    assert str(BpfError("pin", errno.ENOENT, "mount bpffs")).endswith("(mount bpffs)")


def test_load_error_keeps_the_tail_of_the_log() -> None:
    log = "".join(f"line {i}\n" for i in range(100))
    err = BpfLoadError("load x.bpf.o", errno.EACCES, log)
    assert err.log == log
    text = str(err)
    assert "verifier" in text and "line 99" in text and "line 69" not in text


def test_key_error_is_a_key_error() -> None:
    err = BpfKeyError("map m: lookup", errno.ENOENT)
    assert isinstance(err, KeyError)
    assert str(err).startswith("map m: lookup: No such file or directory")
