"""ctypes declarations for the system libbpf (``libbpf.so.1``).

The only module that deals with raw pointers and errno. Option structs mirror libbpf's public ABI
(``libbpf.h``/``bpf.h``, stable across 1.x: each starts with its own size so newer libbpf accepts them).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import mmap
import platform
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_char_p,
    c_int,
    c_long,
    c_size_t,
    c_uint32,
    c_uint64,
    c_void_p,
)
from typing import Any

from sentinel_ebpf.errors import LibbpfUnavailableError

log = logging.getLogger("sentinel_ebpf.libbpf")

LIBBPF_SONAMES = ("libbpf.so.1", "libbpf.so")


class BpfTcHook(Structure):
    _fields_ = [("sz", c_size_t), ("ifindex", c_int), ("attach_point", c_int), ("parent", c_uint32)]


class BpfTcOpts(Structure):
    _fields_ = [
        ("sz", c_size_t),
        ("prog_fd", c_int),
        ("flags", c_uint32),
        ("prog_id", c_uint32),
        ("handle", c_uint32),
        ("priority", c_uint32),
    ]


class BpfMapInfo(Structure):
    """The leading fields of the kernel's ``struct bpf_map_info`` (the kernel accepts a shorter size)."""

    _fields_ = [
        ("type", c_uint32),
        ("id", c_uint32),
        ("key_size", c_uint32),
        ("value_size", c_uint32),
        ("max_entries", c_uint32),
        ("map_flags", c_uint32),
        ("name", ctypes.c_char * 16),
    ]


class BpfProgInfo(Structure):
    """The leading fields of the kernel's ``struct bpf_prog_info``, up to ``verified_insns`` (5.16; older
    kernels leave it 0, and accept the longer size because its tail is zero)."""

    _fields_ = [
        ("type", c_uint32),
        ("id", c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", c_uint32),
        ("xlated_prog_len", c_uint32),
        ("jited_prog_insns", c_uint64),
        ("xlated_prog_insns", c_uint64),
        ("load_time", c_uint64),
        ("created_by_uid", c_uint32),
        ("nr_map_ids", c_uint32),
        ("map_ids", c_uint64),
        ("name", ctypes.c_char * 16),
        ("ifindex", c_uint32),
        ("gpl_compatible", c_uint32),
        ("netns_dev", c_uint64),
        ("netns_ino", c_uint64),
        ("nr_jited_ksyms", c_uint32),
        ("nr_jited_func_lens", c_uint32),
        ("jited_ksyms", c_uint64),
        ("jited_func_lens", c_uint64),
        ("btf_id", c_uint32),
        ("func_info_rec_size", c_uint32),
        ("func_info", c_uint64),
        ("nr_func_info", c_uint32),
        ("nr_line_info", c_uint32),
        ("line_info", c_uint64),
        ("jited_line_info", c_uint64),
        ("nr_jited_line_info", c_uint32),
        ("line_info_rec_size", c_uint32),
        ("jited_line_info_rec_size", c_uint32),
        ("nr_prog_tags", c_uint32),
        ("prog_tags", c_uint64),
        ("run_time_ns", c_uint64),
        ("run_cnt", c_uint64),
        ("recursion_misses", c_uint64),
        ("verified_insns", c_uint32),
        ("attach_btf_obj_id", c_uint32),
    ]


class BpfTestRunOpts(Structure):
    _fields_ = [
        ("sz", c_size_t),
        ("data_in", c_void_p),
        ("data_out", c_void_p),
        ("data_size_in", c_uint32),
        ("data_size_out", c_uint32),
        ("ctx_in", c_void_p),
        ("ctx_out", c_void_p),
        ("ctx_size_in", c_uint32),
        ("ctx_size_out", c_uint32),
        ("retval", c_uint32),
        ("repeat", c_int),
        ("duration", c_uint32),
        ("flags", c_uint32),
        ("cpu", c_uint32),
        ("batch_size", c_uint32),
    ]


class BpfMapBatchOpts(Structure):
    _fields_ = [("sz", c_size_t), ("elem_flags", c_uint64), ("flags", c_uint64)]


class BtfType(Structure):
    _fields_ = [("name_off", c_uint32), ("info", c_uint32), ("size_or_type", c_uint32)]


class BtfVarSecinfo(Structure):
    _fields_ = [("type", c_uint32), ("offset", c_uint32), ("size", c_uint32)]


class BtfArray(Structure):
    _fields_ = [("type", c_uint32), ("index_type", c_uint32), ("nelems", c_uint32)]


PRINT_FN = CFUNCTYPE(c_int, c_int, c_char_p, c_void_p)
RINGBUF_SAMPLE_FN = CFUNCTYPE(c_int, c_void_p, c_void_p, c_size_t)

# (name, restype, argtypes); pointers to opaque libbpf objects are c_void_p.
_PROTOTYPES: list[tuple[str, Any, list[Any]]] = [
    ("libbpf_set_print", c_void_p, [PRINT_FN]),
    ("libbpf_major_version", c_uint32, []),
    ("libbpf_minor_version", c_uint32, []),
    ("libbpf_version_string", c_char_p, []),
    ("libbpf_num_possible_cpus", c_int, []),
    ("libbpf_probe_bpf_prog_type", c_int, [c_int, c_void_p]),
    ("libbpf_probe_bpf_map_type", c_int, [c_int, c_void_p]),
    ("libbpf_probe_bpf_helper", c_int, [c_int, c_int, c_void_p]),
    ("bpf_object__open_file", c_void_p, [c_char_p, c_void_p]),
    ("bpf_object__load", c_int, [c_void_p]),
    ("bpf_object__close", None, [c_void_p]),
    ("bpf_object__name", c_char_p, [c_void_p]),
    ("bpf_object__btf", c_void_p, [c_void_p]),
    ("bpf_object__next_program", c_void_p, [c_void_p, c_void_p]),
    ("bpf_object__next_map", c_void_p, [c_void_p, c_void_p]),
    ("bpf_program__name", c_char_p, [c_void_p]),
    ("bpf_program__section_name", c_char_p, [c_void_p]),
    ("bpf_program__fd", c_int, [c_void_p]),
    ("bpf_program__type", c_int, [c_void_p]),
    ("bpf_program__set_autoload", c_int, [c_void_p, ctypes.c_bool]),
    ("bpf_program__autoload", ctypes.c_bool, [c_void_p]),
    ("bpf_program__attach", c_void_p, [c_void_p]),
    ("bpf_program__attach_raw_tracepoint", c_void_p, [c_void_p, c_char_p]),
    ("bpf_program__attach_kprobe", c_void_p, [c_void_p, ctypes.c_bool, c_char_p]),
    ("bpf_program__attach_uprobe_opts", c_void_p, [c_void_p, c_int, c_char_p, c_size_t, c_void_p]),
    ("bpf_program__attach_cgroup", c_void_p, [c_void_p, c_int]),
    ("bpf_program__attach_xdp", c_void_p, [c_void_p, c_int]),
    ("bpf_program__attach_trace", c_void_p, [c_void_p]),
    ("bpf_program__attach_lsm", c_void_p, [c_void_p]),
    ("bpf_link__destroy", c_int, [c_void_p]),
    ("bpf_link__fd", c_int, [c_void_p]),
    ("bpf_link__pin", c_int, [c_void_p, c_char_p]),
    ("bpf_link__unpin", c_int, [c_void_p]),
    ("bpf_map__name", c_char_p, [c_void_p]),
    ("bpf_map__fd", c_int, [c_void_p]),
    ("bpf_map__type", c_int, [c_void_p]),
    ("bpf_map__key_size", c_uint32, [c_void_p]),
    ("bpf_map__value_size", c_uint32, [c_void_p]),
    ("bpf_map__max_entries", c_uint32, [c_void_p]),
    ("bpf_map__set_max_entries", c_int, [c_void_p, c_uint32]),
    ("bpf_map__is_internal", ctypes.c_bool, [c_void_p]),
    ("bpf_map__initial_value", c_void_p, [c_void_p, POINTER(c_size_t)]),
    ("bpf_map__pin", c_int, [c_void_p, c_char_p]),
    ("bpf_map__unpin", c_int, [c_void_p, c_char_p]),
    ("bpf_map__set_pin_path", c_int, [c_void_p, c_char_p]),
    ("bpf_map_lookup_elem", c_int, [c_int, c_void_p, c_void_p]),
    ("bpf_map_update_elem", c_int, [c_int, c_void_p, c_void_p, c_uint64]),
    ("bpf_map_delete_elem", c_int, [c_int, c_void_p]),
    ("bpf_map_get_next_key", c_int, [c_int, c_void_p, c_void_p]),
    (
        "bpf_map_lookup_batch",
        c_int,
        [c_int, c_void_p, c_void_p, c_void_p, c_void_p, POINTER(c_uint32), c_void_p],
    ),
    ("bpf_map_update_batch", c_int, [c_int, c_void_p, c_void_p, POINTER(c_uint32), c_void_p]),
    ("bpf_map__reuse_fd", c_int, [c_void_p, c_int]),
    ("bpf_map__map_flags", c_uint32, [c_void_p]),
    ("bpf_map_get_fd_by_id", c_int, [c_uint32]),
    ("bpf_prog_get_fd_by_id", c_int, [c_uint32]),
    ("bpf_obj_get_info_by_fd", c_int, [c_int, c_void_p, POINTER(c_uint32)]),
    ("bpf_obj_pin", c_int, [c_int, c_char_p]),
    ("bpf_obj_get", c_int, [c_char_p]),
    ("bpf_prog_test_run_opts", c_int, [c_int, POINTER(BpfTestRunOpts)]),
    ("bpf_tc_hook_create", c_int, [POINTER(BpfTcHook)]),
    ("bpf_tc_hook_destroy", c_int, [POINTER(BpfTcHook)]),
    ("bpf_tc_attach", c_int, [POINTER(BpfTcHook), POINTER(BpfTcOpts)]),
    ("bpf_tc_detach", c_int, [POINTER(BpfTcHook), POINTER(BpfTcOpts)]),
    ("bpf_tc_query", c_int, [POINTER(BpfTcHook), POINTER(BpfTcOpts)]),
    ("ring_buffer__new", c_void_p, [c_int, RINGBUF_SAMPLE_FN, c_void_p, c_void_p]),
    ("ring_buffer__poll", c_int, [c_void_p, c_int]),
    ("ring_buffer__consume", c_int, [c_void_p]),
    ("ring_buffer__free", None, [c_void_p]),
    ("ring_buffer__epoll_fd", c_int, [c_void_p]),
    ("btf__find_by_name_kind", c_int, [c_void_p, c_char_p, c_uint32]),
    ("btf__type_by_id", POINTER(BtfType), [c_void_p, c_uint32]),
    ("btf__name_by_offset", c_char_p, [c_void_p, c_uint32]),
    ("btf__resolve_size", c_long, [c_void_p, c_uint32]),
]

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_capture = threading.local()
_print_cb: Any = None  # keep the C callback alive for the life of the process

LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}


_FORMAT_BUF_BYTES = 16 << 20  # libbpf prints a whole verifier log in one message
_format_map: mmap.mmap | None = None  # anonymous pages: only what a message writes becomes resident
_format_buf: ctypes.Array[ctypes.c_char] | None = None
_format_lock = threading.Lock()


def _format_va(fmt: bytes, va_list: int | None) -> str:
    # va_list is an array type on x86_64, so C passes it as a pointer that vsnprintf accepts as is.
    global _format_map, _format_buf
    if platform.machine() != "x86_64" or va_list is None:
        return fmt.decode(errors="replace")
    with _format_lock:
        if _format_buf is None:
            _format_map = mmap.mmap(-1, _FORMAT_BUF_BYTES)
            _format_buf = (ctypes.c_char * _FORMAT_BUF_BYTES).from_buffer(_format_map)
        assert _format_map is not None
        n = _libc().vsnprintf(_format_buf, _FORMAT_BUF_BYTES, fmt, c_void_p(va_list))
        text = ctypes.string_at(_format_buf, max(0, min(n, _FORMAT_BUF_BYTES - 1))).decode(errors="replace")
        if n > 1 << 16:  # a long verifier log: give its pages back
            _format_map.madvise(mmap.MADV_DONTNEED)
        return text


def _on_print(level: int, fmt: bytes, va_list: int | None) -> int:
    try:
        text = _format_va(fmt, va_list)
        lines: list[str] | None = getattr(_capture, "lines", None)
        if lines is not None:
            lines.append(text)
        # Loading failures are raised with the captured log; don't also shout about them.
        py_level = logging.DEBUG if lines is not None else LEVELS.get(level, logging.DEBUG)
        log.log(py_level, "%s", text.rstrip("\n"))
    except Exception:  # a Python error must never unwind into C
        pass
    return 0


@contextmanager
def capture_log() -> Iterator[list[str]]:
    """Collect libbpf's messages from this thread (verifier logs arrive this way)."""
    previous = getattr(_capture, "lines", None)
    lines: list[str] = []
    _capture.lines = lines
    try:
        yield lines
    finally:
        _capture.lines = previous


_libc_handle: ctypes.CDLL | None = None


def _libc() -> ctypes.CDLL:
    global _libc_handle
    if _libc_handle is None:
        _libc_handle = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc_handle.vsnprintf.argtypes = [c_char_p, c_size_t, c_char_p, c_void_p]
        _libc_handle.vsnprintf.restype = c_int
    return _libc_handle


def lib() -> ctypes.CDLL:
    """The loaded libbpf with prototypes declared; raises LibbpfUnavailableError with a fix."""
    global _lib, _print_cb
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is not None:
            return _lib
        handle: ctypes.CDLL | None = None
        errors = []
        for name in LIBBPF_SONAMES:
            try:
                handle = ctypes.CDLL(name, use_errno=True)
                break
            except OSError as exc:
                errors.append(str(exc))
        if handle is None:
            raise LibbpfUnavailableError(
                f"cannot load libbpf ({'; '.join(errors)}): apt-get install libbpf1 (or libbpf-dev)"
            )
        for fname, restype, argtypes in _PROTOTYPES:
            fn = getattr(handle, fname, None)
            if fn is None:  # older libbpf: the feature that needs it reports itself unavailable
                continue
            fn.restype = restype
            fn.argtypes = argtypes
        _print_cb = PRINT_FN(_on_print)
        handle.libbpf_set_print(_print_cb)
        _lib = handle
        return handle


def has(fname: str) -> bool:
    return hasattr(lib(), fname)


def version() -> str:
    raw = lib().libbpf_version_string()
    return raw.decode() if raw else "unknown"


def errno_now() -> int:
    return ctypes.get_errno()
