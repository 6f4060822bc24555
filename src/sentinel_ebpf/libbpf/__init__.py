"""A thin binding over the system libbpf (``libbpf.so.1``).

Objects, links, TC filters and ring buffers are context managers released on close; failures raise the
typed errors of :mod:`sentinel_ebpf.errors` naming the operation, errno and a hint; verifier failures keep
the verifier log; libbpf's own messages go to the ``sentinel_ebpf.libbpf`` logger.
"""

from sentinel_ebpf.libbpf._lib import version
from sentinel_ebpf.libbpf.ids import MapInfo, map_info, program_id, program_maps
from sentinel_ebpf.libbpf.maps import Map, MapType, UpdateFlag
from sentinel_ebpf.libbpf.object import BpfObject, Link, Program, ProgType, TestRunResult
from sentinel_ebpf.libbpf.ringbuf import RingBuffer, RingReader
from sentinel_ebpf.libbpf.tc import TcAttachPoint, TcFilter, TcHook

__all__ = [
    "BpfObject",
    "Link",
    "Map",
    "MapInfo",
    "MapType",
    "ProgType",
    "Program",
    "RingBuffer",
    "RingReader",
    "TcAttachPoint",
    "TcFilter",
    "TcHook",
    "TestRunResult",
    "UpdateFlag",
    "map_info",
    "program_id",
    "program_maps",
    "version",
]
