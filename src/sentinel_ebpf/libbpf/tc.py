"""TC (clsact) attachment through libbpf's ``bpf_tc_*`` API.

A hook remembers whether it created the clsact qdisc, so closing removes only what it added. A hook of
an interface in another network namespace (``netns``) makes each netlink call inside that namespace.
"""

from __future__ import annotations

import ctypes
import errno
from enum import IntEnum

from sentinel_ebpf._closing import Closing
from sentinel_ebpf.errors import BpfAttachError
from sentinel_ebpf.libbpf import _lib
from sentinel_ebpf.libbpf.object import Program
from sentinel_ebpf.netns import entered


class TcAttachPoint(IntEnum):
    INGRESS = 1
    EGRESS = 2


BPF_TC_F_REPLACE = 1


class TcFilter(Closing):
    """A program attached to a clsact hook; detached on close."""

    def __init__(self, hook: TcHook, point: TcAttachPoint, handle: int, priority: int) -> None:
        self._hook = hook
        self.point = point
        self.handle = handle
        self.priority = priority
        self._attached = True

    def close(self) -> None:
        if not self._attached:
            return
        self._attached = False
        hook = self._hook._struct(self.point)
        opts = _lib.BpfTcOpts(sz=ctypes.sizeof(_lib.BpfTcOpts), handle=self.handle, priority=self.priority)
        try:
            with entered(self._hook.netns):
                err = _lib.lib().bpf_tc_detach(ctypes.byref(hook), ctypes.byref(opts))
        except FileNotFoundError:
            return  # the namespace is gone, and its interfaces with it
        if err and abs(err) not in (errno.ENOENT, errno.ENODEV):  # interface or qdisc already gone
            raise BpfAttachError(
                f"tc detach from ifindex {self._hook.ifindex} {self.point.name.lower()}", err
            )


class TcHook:
    """The clsact qdisc of one interface."""

    def __init__(self, ifindex: int, netns: str | None = None) -> None:
        self.ifindex = ifindex
        self.netns = netns  # the interface's network namespace, None for the caller's
        self.created_qdisc = False

    def _struct(self, point: TcAttachPoint | int) -> _lib.BpfTcHook:
        return _lib.BpfTcHook(sz=ctypes.sizeof(_lib.BpfTcHook), ifindex=self.ifindex, attach_point=int(point))

    def create(self) -> TcHook:
        hook = self._struct(TcAttachPoint.INGRESS)
        with entered(self.netns):
            err = _lib.lib().bpf_tc_hook_create(ctypes.byref(hook))
        if err == 0:
            self.created_qdisc = True
        elif abs(err) != errno.EEXIST:
            raise BpfAttachError(f"create clsact qdisc on ifindex {self.ifindex}", err)
        return self

    def attach(
        self,
        prog: Program,
        point: TcAttachPoint,
        *,
        handle: int = 1,
        priority: int = 1,
        replace: bool = False,
    ) -> TcFilter:
        hook = self._struct(point)
        opts = _lib.BpfTcOpts(
            sz=ctypes.sizeof(_lib.BpfTcOpts),
            prog_fd=prog.fd,
            handle=handle,
            priority=priority,
            flags=BPF_TC_F_REPLACE if replace else 0,
        )
        with entered(self.netns):
            err = _lib.lib().bpf_tc_attach(ctypes.byref(hook), ctypes.byref(opts))
        if err:
            raise BpfAttachError(f"tc attach {prog.name} to ifindex {self.ifindex} {point.name.lower()}", err)
        return TcFilter(self, point, handle, priority)

    def has_filter(self, point: TcAttachPoint, handle: int, priority: int) -> bool:
        """Whether a filter with this handle and priority is attached (whoever attached it)."""
        return self._query(point, handle, priority) is not None

    def filter_prog_id(self, point: TcAttachPoint, handle: int, priority: int) -> int | None:
        """The id of the program attached with this handle and priority, or None."""
        return self._query(point, handle, priority)

    def _query(self, point: TcAttachPoint, handle: int, priority: int) -> int | None:
        opts = _lib.BpfTcOpts(sz=ctypes.sizeof(_lib.BpfTcOpts), handle=handle, priority=priority)
        with entered(self.netns):
            err = int(_lib.lib().bpf_tc_query(ctypes.byref(self._struct(point)), ctypes.byref(opts)))
        return None if err else int(opts.prog_id)

    def destroy(self) -> None:
        """Remove the clsact qdisc (and every filter on it) if this hook created it."""
        if not self.created_qdisc:
            return
        self.created_qdisc = False
        hook = self._struct(TcAttachPoint.INGRESS | TcAttachPoint.EGRESS)
        try:
            with entered(self.netns):
                err = _lib.lib().bpf_tc_hook_destroy(ctypes.byref(hook))
        except FileNotFoundError:
            return  # the namespace is gone, and its interfaces with it
        if err and abs(err) not in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
            raise BpfAttachError(f"destroy clsact qdisc on ifindex {self.ifindex}", err)

    def __enter__(self) -> TcHook:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.destroy()
