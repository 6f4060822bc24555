"""BPF ring buffer consumer."""

from __future__ import annotations

import ctypes
import mmap
import select
import struct
from collections.abc import Callable

from sentinel_ebpf._closing import Closing
from sentinel_ebpf.errors import BpfError
from sentinel_ebpf.libbpf import _lib
from sentinel_ebpf.libbpf.maps import Map


class RingBuffer(Closing):
    """Calls ``callback(bytes)`` for each record of a BPF_MAP_TYPE_RINGBUF map.

    An exception raised by the callback stops the current poll and is re-raised from ``poll()``: it must
    never unwind through libbpf's C frames.
    """

    def __init__(self, ring: Map, callback: Callable[[bytes], None]) -> None:
        self._callback = callback
        self._error: BaseException | None = None
        self._cb = _lib.RINGBUF_SAMPLE_FN(self._on_sample)  # referenced for the life of the buffer
        ptr = _lib.lib().ring_buffer__new(ring.fd, self._cb, None, None)
        if not ptr:
            raise BpfError(f"ring buffer on map {ring.name}", _lib.errno_now())
        self._ptr: int | None = ptr

    def _on_sample(self, _ctx: int | None, data: int, size: int) -> int:
        try:
            self._callback(ctypes.string_at(data, size))
        except BaseException as exc:  # includes KeyboardInterrupt: stop consuming, re-raise in poll()
            self._error = exc
            return -1
        return 0

    def _check(self, rc: int, op: str) -> int:
        if self._error is not None:
            err, self._error = self._error, None
            raise err
        if rc < 0 and rc != -4:  # -EINTR: a signal arrived, let the caller decide
            raise BpfError(op, rc)
        return max(rc, 0)

    def poll(self, timeout_ms: int) -> int:
        """Wait up to ``timeout_ms`` for records and consume them; returns how many were consumed."""
        assert self._ptr is not None, "ring buffer closed"
        return self._check(_lib.lib().ring_buffer__poll(self._ptr, timeout_ms), "ring buffer poll")

    def consume(self) -> int:
        assert self._ptr is not None, "ring buffer closed"
        return self._check(_lib.lib().ring_buffer__consume(self._ptr), "ring buffer consume")

    def close(self) -> None:
        if self._ptr is not None:
            _lib.lib().ring_buffer__free(self._ptr)
            self._ptr = None


_BUSY = 1 << 31  # record reserved, not yet submitted
_DISCARD = 1 << 30  # record discarded by the program
_HDR = struct.Struct("<I")


class RingReader(Closing):
    """A BPF ring buffer read directly through its memory mapping, without a callback per record.

    The layout is the kernel's (kernel/bpf/ringbuf.c, as libbpf's ringbuf.c reads it): a read-write page
    holding the consumer position, then a read-only page holding the producer position followed by
    the data area mapped twice, so a record that wraps around reads as one slice. Each record has an
    8-byte header (length with BUSY/DISCARD bits, page offset), its data padded to 8 bytes.

    :meth:`read` returns every submitted record at once (bytes), which is what a consumer written in
    Python needs to keep up with tens of thousands of records per second. Single consumer only.
    """

    def __init__(self, ring: Map) -> None:
        self.fd = ring.fd
        self.size = ring.max_entries
        page = mmap.PAGESIZE
        self._cons = mmap.mmap(self.fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        try:
            self._prod = mmap.mmap(
                self.fd, page + 2 * self.size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page
            )
        except BaseException:
            self._cons.close()
            raise
        self._page = page
        self._mask = self.size - 1
        self._epoll = select.epoll()
        self._epoll.register(self.fd, select.EPOLLIN)

    def read(self) -> list[bytes]:
        """Consume every record submitted so far (discarded ones are skipped)."""
        cons_map, prod_map = self._cons, self._prod
        cons = int.from_bytes(cons_map[0:8], "little")
        prod = int.from_bytes(prod_map[0:8], "little")
        out: list[bytes] = []
        base, mask, unpack = self._page, self._mask, _HDR.unpack_from
        while cons < prod:
            at = base + (cons & mask)
            (length,) = unpack(prod_map, at)
            if length & _BUSY:
                break  # the producer has not submitted it yet: records leave in order
            size = length & ~(_BUSY | _DISCARD)
            if not length & _DISCARD:
                out.append(prod_map[at + 8 : at + 8 + size])
            cons += (size + 8 + 7) & ~7
        cons_map[0:8] = cons.to_bytes(8, "little")
        return out

    def wait(self, timeout_ms: int) -> bool:
        """Wait until records may be available (or the timeout); True when woken by the ring."""
        try:
            return bool(self._epoll.poll(timeout_ms / 1000))
        except InterruptedError:
            return False

    def close(self) -> None:
        self._epoll.close()
        self._prod.close()
        self._cons.close()
