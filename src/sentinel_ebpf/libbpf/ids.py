"""Kernel ids and info of loaded programs and maps (``bpf_obj_get_info_by_fd``, ``*_get_fd_by_id``)."""

from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass

from sentinel_ebpf.errors import BpfMapError
from sentinel_ebpf.libbpf import _lib


@dataclass(frozen=True)
class MapInfo:
    id: int
    name: str  # as the kernel keeps it: at most 15 characters
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int


def map_info(fd: int) -> MapInfo:
    info = _lib.BpfMapInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    if _lib.lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)) != 0:
        raise BpfMapError(f"map fd {fd}: info", _lib.errno_now())
    return MapInfo(info.id, info.name.decode(errors="replace"), info.type, info.key_size, info.value_size,
                   info.max_entries, info.map_flags)  # fmt: skip


def program_info(prog_fd: int) -> _lib.BpfProgInfo:
    """The kernel's ``bpf_prog_info`` of a loaded program (see ``_lib.BpfProgInfo``)."""
    info = _lib.BpfProgInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    if _lib.lib().bpf_obj_get_info_by_fd(prog_fd, ctypes.byref(info), ctypes.byref(size)) != 0:
        raise BpfMapError(f"program fd {prog_fd}: info", _lib.errno_now())
    return info


def program_id(prog_fd: int) -> int:
    """The kernel id of a loaded program."""
    return int(program_info(prog_fd).id)


def program_maps(prog_id: int) -> dict[str, int]:
    """New fds of the maps loaded program ``prog_id`` uses, by their kernel name; the caller closes them."""
    lib = _lib.lib()
    prog_fd = int(lib.bpf_prog_get_fd_by_id(prog_id))
    if prog_fd < 0:
        raise BpfMapError(f"program id {prog_id}: open", _lib.errno_now())
    fds: dict[str, int] = {}
    try:
        ids = (ctypes.c_uint32 * 64)()
        info = _lib.BpfProgInfo(nr_map_ids=len(ids), map_ids=ctypes.addressof(ids))
        size = ctypes.c_uint32(ctypes.sizeof(info))
        if lib.bpf_obj_get_info_by_fd(prog_fd, ctypes.byref(info), ctypes.byref(size)) != 0:
            raise BpfMapError(f"program id {prog_id}: info", _lib.errno_now())
        if info.nr_map_ids > len(ids):
            raise BpfMapError(
                f"program id {prog_id}: uses {info.nr_map_ids} maps (at most 64 read)", errno.E2BIG
            )
        for map_id in ids[: info.nr_map_ids]:
            fd = int(lib.bpf_map_get_fd_by_id(map_id))
            if fd < 0:
                raise BpfMapError(f"map id {map_id}: open", _lib.errno_now())
            name = map_info(fd).name
            if name in fds:
                os.close(fd)
                raise BpfMapError(f"program id {prog_id}: two maps named {name!r}", errno.EINVAL)
            fds[name] = fd
    except BaseException:
        for fd in fds.values():
            os.close(fd)
        raise
    finally:
        os.close(prog_fd)
    return fds
