"""BPF objects, programs and links: open -> configure (read-only globals) -> load -> attach -> close."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

from sentinel_ebpf._closing import Closing
from sentinel_ebpf.errors import BpfAttachError, BpfError, BpfLoadError
from sentinel_ebpf.libbpf import _lib
from sentinel_ebpf.libbpf.ids import program_info
from sentinel_ebpf.libbpf.maps import Map

BTF_KIND_ARRAY = 3
BTF_KIND_TYPEDEF = 8
BTF_KIND_VOLATILE = 9
BTF_KIND_CONST = 10
BTF_KIND_VAR = 14
BTF_KIND_DATASEC = 15
BTF_KIND_RESTRICT = 11


class ProgType(IntEnum):
    """``enum bpf_prog_type`` (kernel UAPI, stable values)."""

    SOCKET_FILTER = 1
    KPROBE = 2
    SCHED_CLS = 3
    XDP = 6
    CGROUP_SKB = 8
    CGROUP_SOCK = 9
    SOCK_OPS = 13
    SK_MSG = 16
    RAW_TRACEPOINT = 17
    CGROUP_SOCK_ADDR = 18
    TRACING = 26
    LSM = 29


class Link(Closing):
    """An attachment of a program to a hook; detached on ``close()`` or when leaving ``with``."""

    def __init__(self, ptr: int, description: str) -> None:
        self._ptr: int | None = ptr
        self.description = description

    @property
    def fd(self) -> int:
        assert self._ptr is not None, "link closed"
        return int(_lib.lib().bpf_link__fd(self._ptr))

    def pin(self, path: str) -> None:
        assert self._ptr is not None, "link closed"
        err = _lib.lib().bpf_link__pin(self._ptr, path.encode())
        if err:
            raise BpfAttachError(f"pin link {self.description} at {path}", err)

    def close(self) -> None:
        if self._ptr is not None:
            _lib.lib().bpf_link__destroy(self._ptr)
            self._ptr = None

    def __repr__(self) -> str:
        return f"<Link {self.description}{' closed' if self._ptr is None else ''}>"


class _UprobeOpts(ctypes.Structure):
    """struct bpf_uprobe_opts as of libbpf 1.0 (``sz`` tells libbpf which fields exist)."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("ref_ctr_offset", ctypes.c_size_t),
        ("bpf_cookie", ctypes.c_uint64),
        ("retprobe", ctypes.c_bool),
        ("func_name", ctypes.c_char_p),
    ]


@dataclass(frozen=True)
class TestRunResult:
    retval: int
    data_out: bytes
    duration_ns: int
    ctx_out: bytes


class Program:
    def __init__(self, ptr: int, obj: BpfObject) -> None:
        self._ptr = ptr
        self._obj = obj
        lib = _lib.lib()
        self.name: str = lib.bpf_program__name(ptr).decode()
        self.section: str = lib.bpf_program__section_name(ptr).decode()

    @property
    def fd(self) -> int:
        return int(_lib.lib().bpf_program__fd(self._ptr))

    @property
    def type(self) -> int:
        return int(_lib.lib().bpf_program__type(self._ptr))

    @property
    def verified_insns(self) -> int:
        """Instructions the verifier processed to accept this program (0 before 5.16, or not loaded)."""
        return int(program_info(self.fd).verified_insns) if self.fd >= 0 else 0

    @property
    def autoload(self) -> bool:
        return bool(_lib.lib().bpf_program__autoload(self._ptr))

    @autoload.setter
    def autoload(self, value: bool) -> None:
        err = _lib.lib().bpf_program__set_autoload(self._ptr, value)
        if err:
            raise BpfError(f"program {self.name}: set autoload (only before load)", err)

    def _link(self, ptr: int | None, what: str) -> Link:
        if not ptr:
            raise BpfAttachError(f"attach {self.name} {what}", _lib.errno_now())
        return Link(ptr, f"{self.name} {what}".strip())

    def attach(self) -> Link:
        """Attach where the section name says (tp_btf/, raw_tp/, kprobe/, fentry/, lsm/ ...)."""
        return self._link(_lib.lib().bpf_program__attach(self._ptr), f"to {self.section}")

    def attach_raw_tracepoint(self, tracepoint: str) -> Link:
        return self._link(
            _lib.lib().bpf_program__attach_raw_tracepoint(self._ptr, tracepoint.encode()),
            f"to raw_tp {tracepoint}",
        )

    def attach_kprobe(self, function: str, retprobe: bool = False) -> Link:
        return self._link(
            _lib.lib().bpf_program__attach_kprobe(self._ptr, retprobe, function.encode()),
            f"to kprobe {function}",
        )

    def attach_uprobe(
        self, binary: str | os.PathLike[str], function: str, retprobe: bool = False, pid: int = -1
    ) -> Link:
        """Attach to ``function`` (an ELF symbol libbpf resolves) in ``binary``; pid -1: every process."""
        opts = _UprobeOpts(sz=ctypes.sizeof(_UprobeOpts), retprobe=retprobe, func_name=function.encode())
        kind = "uretprobe" if retprobe else "uprobe"
        return self._link(
            _lib.lib().bpf_program__attach_uprobe_opts(
                self._ptr, pid, os.fsencode(binary), 0, ctypes.byref(opts)
            ),
            f"to {kind} {binary}:{function}",
        )

    def attach_cgroup(self, cgroup_path: str | os.PathLike[str]) -> Link:
        fd = os.open(cgroup_path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            return self._link(
                _lib.lib().bpf_program__attach_cgroup(self._ptr, fd), f"to cgroup {cgroup_path}"
            )
        finally:
            os.close(fd)  # the link holds its own reference

    def attach_xdp(self, ifindex: int) -> Link:
        return self._link(_lib.lib().bpf_program__attach_xdp(self._ptr, ifindex), f"to xdp ifindex {ifindex}")

    def test_run(
        self,
        data: bytes = b"",
        *,
        repeat: int = 1,
        ctx: bytes | None = None,
        data_out_size: int | None = None,
    ) -> TestRunResult:
        """Run the program once (or ``repeat`` times) on ``data`` with BPF_PROG_TEST_RUN."""
        in_buf = ctypes.create_string_buffer(data, len(data)) if data else None
        out_size = data_out_size if data_out_size is not None else max(len(data) + 512, 64)
        out_buf = ctypes.create_string_buffer(out_size)
        ctx_in = ctypes.create_string_buffer(ctx, len(ctx)) if ctx else None
        ctx_out = ctypes.create_string_buffer(len(ctx)) if ctx else None
        opts = _lib.BpfTestRunOpts(
            sz=ctypes.sizeof(_lib.BpfTestRunOpts),
            data_in=ctypes.cast(in_buf, ctypes.c_void_p) if in_buf is not None else None,
            data_out=ctypes.cast(out_buf, ctypes.c_void_p),
            data_size_in=len(data),
            data_size_out=out_size,
            ctx_in=ctypes.cast(ctx_in, ctypes.c_void_p) if ctx_in is not None else None,
            ctx_out=ctypes.cast(ctx_out, ctypes.c_void_p) if ctx_out is not None else None,
            ctx_size_in=len(ctx) if ctx else 0,
            ctx_size_out=len(ctx) if ctx else 0,
            repeat=repeat,
        )
        if _lib.lib().bpf_prog_test_run_opts(self.fd, ctypes.byref(opts)) != 0:
            raise BpfError(f"test run of {self.name}", _lib.errno_now())
        n = min(int(opts.data_size_out), out_size)
        return TestRunResult(
            retval=int(opts.retval),
            data_out=out_buf.raw[:n],
            duration_ns=int(opts.duration),
            ctx_out=ctx_out.raw if ctx_out is not None else b"",
        )

    def __repr__(self) -> str:
        return f"<Program {self.name} {self.section}>"


def _each(next_of: Callable[[int, int | None], int | None], obj: int) -> Iterator[int]:
    """The pointers of a libbpf ``bpf_object__next_*`` iteration over ``obj``, in order."""
    item = next_of(obj, None)
    while item:
        yield item
        item = next_of(obj, item)


class BpfObject(Closing):
    """A compiled BPF object file.

    ``with BpfObject.open(path) as obj: obj.set_rodata(...); obj.load(); link = obj.program("x").attach()``
    Closing the object unloads its programs and maps (links should be closed first; close() does it for
    links made through ``track``).
    """

    def __init__(self, ptr: int, path: Path) -> None:
        self._ptr: int | None = ptr
        self.path = path
        self.loaded = False
        self._links: list[Link] = []
        lib = _lib.lib()
        programs = (Program(p, self) for p in _each(lib.bpf_object__next_program, ptr))
        self.programs: dict[str, Program] = {p.name: p for p in programs}
        maps = (Map(m, self) for m in _each(lib.bpf_object__next_map, ptr))
        self.maps: dict[str, Map] = {m.name: m for m in maps}

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> BpfObject:
        p = Path(path)
        lib = _lib.lib()
        with _lib.capture_log() as lines:
            ptr = lib.bpf_object__open_file(str(p).encode(), None)
        if not ptr:
            raise BpfLoadError(f"open BPF object {p}", _lib.errno_now() or errno.EINVAL, "".join(lines))
        return cls(ptr, p)

    @property
    def _handle(self) -> int:
        if self._ptr is None:
            raise BpfError(f"object {self.path.name} is closed", errno.EBADF)
        return self._ptr

    def program(self, name: str) -> Program:
        try:
            return self.programs[name]
        except KeyError:
            raise KeyError(
                f"{self.path.name} has no program {name!r} (has {sorted(self.programs)})"
            ) from None

    def map(self, name: str) -> Map:
        try:
            return self.maps[name]
        except KeyError:
            raise KeyError(f"{self.path.name} has no map {name!r} (has {sorted(self.maps)})") from None

    # -- read-only configuration (const volatile globals) -----------------------------------------
    def _rodata(self) -> tuple[Map, dict[str, tuple[int, int, int]]]:
        """The .rodata map and {variable: (offset, size, element size)} from the object's BTF."""
        return self.section_layout(".rodata")

    def section_layout(self, section: str) -> tuple[Map, dict[str, tuple[int, int, int]]]:
        """The internal map of a data section (``.rodata``, ``.data``, ``.bss``) and {variable: (offset,
        size, element size)}, from the object's BTF as libbpf fixed it up at open (the offsets come from
        the ELF symbols; the compiler leaves them 0)."""
        lib = _lib.lib()
        mapped = next((m for m in self.maps.values() if m.name.endswith(section)), None)
        if mapped is None:
            what = "no read-only globals" if section == ".rodata" else f"no {section} section"
            raise BpfError(f"{self.path.name}: {what}", errno.ENOENT)
        btf = lib.bpf_object__btf(self._handle)
        sec_id = lib.btf__find_by_name_kind(btf, section.encode(), BTF_KIND_DATASEC)
        if sec_id < 0:
            raise BpfError(f"{self.path.name}: no {section} in BTF", -sec_id)
        sec = lib.btf__type_by_id(btf, sec_id)
        vlen = sec.contents.info & 0xFFFF
        infos = ctypes.cast(
            ctypes.addressof(sec.contents) + ctypes.sizeof(_lib.BtfType), ctypes.POINTER(_lib.BtfVarSecinfo)
        )
        layout: dict[str, tuple[int, int, int]] = {}
        for i in range(vlen):
            info = infos[i]
            var = lib.btf__type_by_id(btf, info.type).contents
            name = lib.btf__name_by_offset(btf, var.name_off).decode()
            layout[name] = (
                int(info.offset),
                int(info.size),
                self._element_size(btf, var.size_or_type, info.size),
            )
        return mapped, layout

    @staticmethod
    def _element_size(btf: int, type_id: int, size: int) -> int:
        lib = _lib.lib()
        for _ in range(16):  # strip const/volatile/typedef down to an array, if any
            t = lib.btf__type_by_id(btf, type_id).contents
            kind = (t.info >> 24) & 0x1F
            if kind in (BTF_KIND_CONST, BTF_KIND_VOLATILE, BTF_KIND_TYPEDEF, BTF_KIND_RESTRICT):
                type_id = t.size_or_type
                continue
            if kind == BTF_KIND_ARRAY:
                arr = ctypes.cast(
                    ctypes.addressof(t) + ctypes.sizeof(_lib.BtfType), ctypes.POINTER(_lib.BtfArray)
                ).contents
                return size // arr.nelems if arr.nelems else size
            break
        return size

    def set_rodata(self, **values: int | bool | bytes | str | list[int]) -> None:
        """Set ``const volatile`` globals before load. Lists fill arrays; str/bytes are NUL-padded."""
        if self.loaded:
            raise BpfError(f"{self.path.name}: read-only globals can only be set before load", errno.EPERM)
        rodata, layout = self._rodata()
        assert rodata._ptr is not None
        size = ctypes.c_size_t()
        base = _lib.lib().bpf_map__initial_value(rodata._ptr, ctypes.byref(size))
        if not base:
            raise BpfError(f"{self.path.name}: .rodata initial value", errno.ENOENT)
        for name, value in values.items():
            if name not in layout:
                raise KeyError(f"{self.path.name} has no read-only global {name!r} (has {sorted(layout)})")
            offset, vsize, esize = layout[name]
            data = _encode(name, value, vsize, esize)
            ctypes.memmove(base + offset, data, len(data))

    # -- lifecycle --------------------------------------------------------------------------------
    def load(self) -> None:
        with _lib.capture_log() as lines:
            err = _lib.lib().bpf_object__load(self._handle)
        if err:
            raise BpfLoadError(f"load {self.path.name}", err, "".join(lines))
        self.loaded = True

    def track(self, link: Link) -> Link:
        """Have ``close()`` detach this link before unloading the object."""
        self._links.append(link)
        return link

    def close(self) -> None:
        for link in reversed(self._links):
            link.close()
        self._links.clear()
        if self._ptr is not None:
            _lib.lib().bpf_object__close(self._ptr)
            self._ptr = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def _encode(name: str, value: Any, size: int, elem_size: int) -> bytes:
    order = sys.byteorder
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        try:
            return value.to_bytes(size, order, signed=value < 0)
        except OverflowError:
            raise ValueError(f"read-only global {name}: {value} does not fit in {size} bytes") from None
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):
        if len(value) > size:
            raise ValueError(f"read-only global {name}: {len(value)} bytes given, room for {size}")
        return value.ljust(size, b"\0")
    if isinstance(value, list):
        if len(value) * elem_size > size:
            raise ValueError(
                f"read-only global {name}: {len(value)} elements given, room for {size // elem_size}"
            )
        return b"".join(int(v).to_bytes(elem_size, order, signed=int(v) < 0) for v in value).ljust(
            size, b"\0"
        )
    raise TypeError(f"read-only global {name}: unsupported value type {type(value).__name__}")
