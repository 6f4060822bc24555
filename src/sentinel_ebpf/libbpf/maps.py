"""BPF maps: lookup, update, delete, iterate (batched where the kernel has it), pin."""

from __future__ import annotations

import contextlib
import ctypes
import errno
from collections.abc import Iterator
from enum import IntEnum
from typing import Any

from sentinel_ebpf.errors import BpfKeyError, BpfMapError
from sentinel_ebpf.libbpf import _lib
from sentinel_ebpf.libbpf.ids import map_info


class MapType(IntEnum):
    """``enum bpf_map_type`` (kernel UAPI, stable values)."""

    HASH = 1
    ARRAY = 2
    PERCPU_HASH = 5
    PERCPU_ARRAY = 6
    LRU_HASH = 9
    LRU_PERCPU_HASH = 10
    LPM_TRIE = 11
    RINGBUF = 27


class UpdateFlag(IntEnum):
    ANY = 0
    NOEXIST = 1
    EXIST = 2


_PERCPU = {MapType.PERCPU_HASH, MapType.PERCPU_ARRAY, MapType.LRU_PERCPU_HASH}


def _raw(
    value: bytes | bytearray | ctypes.Structure | ctypes.Array[Any] | int, size: int
) -> ctypes.Array[Any]:
    data = value.to_bytes(size, "little" if _little() else "big") if isinstance(value, int) else bytes(value)
    if len(data) != size:
        raise ValueError(f"expected {size} bytes, got {len(data)}")
    return ctypes.create_string_buffer(data, size)


def _little() -> bool:
    import sys

    return sys.byteorder == "little"


class Map:
    """A map of an object. Keys and values are bytes
    (or ctypes structures/ints, converted); per-CPU maps return one value per possible CPU."""

    def __init__(
        self,
        ptr: int | None,
        obj: object | None,  # the object that owns the map, kept alive while the map is in use
        *,
        fd: int | None = None,
        info: tuple[str, int, int, int, int] | None = None,
    ) -> None:
        self._ptr = ptr
        self._obj = obj
        self._fd_override = fd
        if ptr is not None:
            lib = _lib.lib()
            self.name: str = lib.bpf_map__name(ptr).decode()
            self.type = int(lib.bpf_map__type(ptr))
            self.key_size = int(lib.bpf_map__key_size(ptr))
            self.value_size = int(lib.bpf_map__value_size(ptr))
            self.max_entries = int(lib.bpf_map__max_entries(ptr))
        else:
            assert info is not None
            self.name, self.type, self.key_size, self.value_size, self.max_entries = info

    # -- identity ---------------------------------------------------------------------------------
    @property
    def fd(self) -> int:
        if self._fd_override is not None:
            return self._fd_override
        assert self._ptr is not None
        fd = int(_lib.lib().bpf_map__fd(self._ptr))
        if fd < 0:
            raise BpfMapError(f"map {self.name}: not created (object not loaded?)", errno.EBADF)
        return fd

    @property
    def percpu(self) -> bool:
        return self.type in _PERCPU

    @property
    def _stored_value_size(self) -> int:
        if not self.percpu:
            return self.value_size
        ncpu = int(_lib.lib().libbpf_num_possible_cpus())
        return ((self.value_size + 7) // 8) * 8 * ncpu

    def _split(self, raw: bytes) -> Any:
        if not self.percpu:
            return raw
        step = ((self.value_size + 7) // 8) * 8
        return [raw[i : i + self.value_size] for i in range(0, len(raw), step)]

    def set_max_entries(self, n: int) -> None:
        assert self._ptr is not None
        err = _lib.lib().bpf_map__set_max_entries(self._ptr, n)
        if err:
            raise BpfMapError(f"map {self.name}: set max_entries {n} (only before load)", err)
        self.max_entries = n

    # -- element operations -----------------------------------------------------------------------
    def lookup(self, key: Any) -> Any:
        """The value for key (bytes, or a list of per-CPU bytes); BpfKeyError if absent."""
        k = _raw(key, self.key_size)
        v = ctypes.create_string_buffer(self._stored_value_size)
        if _lib.lib().bpf_map_lookup_elem(self.fd, k, v) != 0:
            err = _lib.errno_now()
            if err == errno.ENOENT:
                raise BpfKeyError(f"map {self.name}: lookup", err)
            raise BpfMapError(f"map {self.name}: lookup", err)
        return self._split(v.raw)

    def get(self, key: Any, default: Any = None) -> Any:
        try:
            return self.lookup(key)
        except BpfKeyError:
            return default

    def update(self, key: Any, value: Any, flags: UpdateFlag = UpdateFlag.ANY) -> None:
        k = _raw(key, self.key_size)
        if self.percpu and isinstance(value, list):
            step = ((self.value_size + 7) // 8) * 8
            v = ctypes.create_string_buffer(b"".join(bytes(x).ljust(step, b"\0") for x in value))
        else:
            v = _raw(value, self._stored_value_size)
        if _lib.lib().bpf_map_update_elem(self.fd, k, v, int(flags)) != 0:
            raise BpfMapError(f"map {self.name}: update", _lib.errno_now())

    def delete(self, key: Any) -> None:
        k = _raw(key, self.key_size)
        if _lib.lib().bpf_map_delete_elem(self.fd, k) != 0:
            err = _lib.errno_now()
            if err == errno.ENOENT:
                raise BpfKeyError(f"map {self.name}: delete", err)
            raise BpfMapError(f"map {self.name}: delete", err)

    def keys(self) -> Iterator[bytes]:
        lib = _lib.lib()
        cur: ctypes.Array[ctypes.c_char] | None = None
        nxt = ctypes.create_string_buffer(self.key_size)
        while True:
            if lib.bpf_map_get_next_key(self.fd, cur, nxt) != 0:
                err = _lib.errno_now()
                if err == errno.ENOENT:
                    return
                raise BpfMapError(f"map {self.name}: get_next_key", err)
            yield nxt.raw
            cur = ctypes.create_string_buffer(nxt.raw, self.key_size)

    def __iter__(self) -> Iterator[bytes]:
        return self.keys()

    def items(self, batch_size: int = 256) -> Iterator[tuple[bytes, Any]]:
        """All entries; one syscall per batch where the kernel supports batched lookup."""
        if self.type not in (MapType.ARRAY, MapType.PERCPU_ARRAY) and _lib.has("bpf_map_lookup_batch"):
            try:
                yield from self._items_batched(batch_size)
                return
            except _BatchUnsupported:
                pass
        for key in self.keys():
            value = self.get(key)
            if value is not None:
                yield key, value

    def _items_batched(self, batch_size: int) -> Iterator[tuple[bytes, Any]]:
        lib = _lib.lib()
        vsize = self._stored_value_size
        keys = ctypes.create_string_buffer(self.key_size * batch_size)
        values = ctypes.create_string_buffer(vsize * batch_size)
        token_in: Any = None
        token_out = ctypes.create_string_buffer(max(self.key_size, 8))
        opts = _lib.BpfMapBatchOpts(sz=ctypes.sizeof(_lib.BpfMapBatchOpts))
        first = True
        while True:
            count = ctypes.c_uint32(batch_size)
            rc = lib.bpf_map_lookup_batch(
                self.fd, token_in, token_out, keys, values, ctypes.byref(count), ctypes.byref(opts)
            )
            err = _lib.errno_now() if rc != 0 else 0
            if rc != 0 and err != errno.ENOENT:
                if first and err in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise _BatchUnsupported
                raise BpfMapError(f"map {self.name}: lookup_batch", err)
            first = False
            key_raw, value_raw = keys.raw, values.raw  # .raw copies the whole buffer: once per batch
            for i in range(count.value):
                k = key_raw[i * self.key_size : (i + 1) * self.key_size]
                yield k, self._split(value_raw[i * vsize : (i + 1) * vsize])
            if rc != 0:  # ENOENT: that was the last batch
                return
            token_in = ctypes.create_string_buffer(token_out.raw)

    def array_prefix(self, count: int) -> list[bytes]:
        """Values of indices 0..count-1 of a (non per-CPU) array, in one batched syscall where the
        kernel has it, else one lookup each."""
        if self.type != MapType.ARRAY:
            raise BpfMapError(f"map {self.name}: array_prefix needs an array map", errno.EINVAL)
        count = min(count, self.max_entries)
        if count <= 0:
            return []
        if _lib.has("bpf_map_lookup_batch"):
            keys = ctypes.create_string_buffer(self.key_size * count)
            values = ctypes.create_string_buffer(self.value_size * count)
            token_out = ctypes.create_string_buffer(max(self.key_size, 8))
            opts = _lib.BpfMapBatchOpts(sz=ctypes.sizeof(_lib.BpfMapBatchOpts))
            n = ctypes.c_uint32(count)
            rc = _lib.lib().bpf_map_lookup_batch(
                self.fd, None, token_out, keys, values, ctypes.byref(n), ctypes.byref(opts)
            )
            err = _lib.errno_now() if rc != 0 else 0
            if (rc == 0 or err == errno.ENOENT) and n.value == count:
                raw, size = values.raw, self.value_size
                return [raw[i * size : (i + 1) * size] for i in range(count)]
            if rc != 0 and err not in (errno.ENOENT, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise BpfMapError(f"map {self.name}: lookup_batch", err)
        return [self.lookup(i.to_bytes(4, "little")) for i in range(count)]

    def clear(self) -> None:
        for key in list(self.keys()):
            with contextlib.suppress(BpfKeyError):
                self.delete(key)

    @classmethod
    def of_fd(cls, fd: int) -> Map:
        """A kernel map known only by an fd (another loaded instance's, found by id): no object owns it;
        the caller keeps ``fd`` open while it uses the map, and closes it."""
        info = map_info(fd)
        return cls(
            None, None, fd=fd, info=(info.name, info.type, info.key_size, info.value_size, info.max_entries)
        )

    # -- reuse ------------------------------------------------------------------------------------
    def reuse(self, fd: int) -> None:
        """Before load: use the existing kernel map ``fd`` (another loaded instance of the same object)
        instead of creating one. Refused unless type, key and value size, max_entries and flags agree."""
        assert self._ptr is not None
        info = map_info(fd)
        mine = (self.type, self.key_size, self.value_size, self.max_entries,
                int(_lib.lib().bpf_map__map_flags(self._ptr)))  # fmt: skip
        theirs = (info.type, info.key_size, info.value_size, info.max_entries, info.flags)
        if mine != theirs:
            raise BpfMapError(
                f"map {self.name}: cannot reuse map id {info.id} "
                f"(type, key size, value size, max_entries, flags {theirs}; this object's {mine})",
                errno.EINVAL,
            )
        err = _lib.lib().bpf_map__reuse_fd(self._ptr, fd)
        if err:
            raise BpfMapError(f"map {self.name}: reuse map id {info.id}", err)

    # -- pinning ----------------------------------------------------------------------------------
    def pin(self, path: str) -> None:
        if _lib.lib().bpf_obj_pin(self.fd, path.encode()) != 0:
            raise BpfMapError(
                f"map {self.name}: pin at {path}",
                _lib.errno_now(),
                "is bpffs mounted at /sys/fs/bpf? (mount -t bpf bpf /sys/fs/bpf)",
            )


class _BatchUnsupported(Exception):
    pass
