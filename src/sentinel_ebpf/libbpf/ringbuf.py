"""BPF ring buffer consumer."""

from __future__ import annotations

import ctypes
from collections.abc import Callable

from sentinel_ebpf.errors import BpfError
from sentinel_ebpf.libbpf import _lib
from sentinel_ebpf.libbpf.maps import Map


class RingBuffer:
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

    def __enter__(self) -> RingBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
