"""HTTP route table: longest-prefix match as a binary search on prefix lengths over exact-match entries.

The kernel looks a request path up in a hash map (``http_routes``) at the route lengths of its port or
outbound service (``struct route_lens``), binary search style: a hit sends the search to longer lengths,
a miss to shorter ones (Waldvogel et al., "Scalable high speed IP routing lookups", SIGCOMM 1997). For
that to find the longest matching route, every length the search passes on its way to a longer route
holds an entry for that route's prefix: a *marker*, whose value is the longest route that is a prefix of
the marker itself (0 when none). At most ``SE_ROUTE_PROBES`` lookups per request, whatever the number of
routes. :func:`route_lookup` is the kernel's search in Python, for tests.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sentinel_ebpf._types import SentinelLimits

PATH_MAX = int(SentinelLimits.SE_PATH_MAX)
PROBES = int(SentinelLimits.SE_ROUTE_PROBES)


@dataclass(frozen=True)
class RouteEntry:
    """One ``http_routes`` entry: a route (``marker=False``) or a search marker."""

    outbound: bool
    port: int  # local port, or outbound service id
    method: int
    path: bytes  # at most PATH_MAX bytes
    resource: int  # the route's resource; for a marker, the best route it implies (0: none)
    marker: bool = False


def _search_path(lens: tuple[int, ...], target: int) -> list[int]:
    """Indexes into ``lens`` the search probes before it reaches ``target`` going right (hits needed)."""
    lo, hi, hits = 0, len(lens), []
    while lo < hi:
        mid = (lo + hi) // 2
        if mid == target:
            break
        if mid < target:
            hits.append(mid)
            lo = mid + 1
        else:
            hi = mid
    return hits


def _best(routes: Mapping[bytes, int], path: bytes) -> int:
    for n in range(len(path), -1, -1):
        if path[:n] in routes:
            return routes[path[:n]]
    return 0


def build(routes: Iterable[tuple[bool, int, int, bytes, int]]) -> tuple[dict[tuple[bool, int], tuple[int, ...]],
                                                                     list[RouteEntry]]:  # fmt: skip
    """(outbound, port, method, path, resource) routes -> the lengths of each (outbound, port) and the
    entries (routes and markers) to write."""
    groups: dict[tuple[bool, int, int], dict[bytes, int]] = {}
    for outbound, port, method, path, resource in routes:
        groups.setdefault((outbound, port, method), {})[path[:PATH_MAX]] = resource
    lens_of: dict[tuple[bool, int], set[int]] = {}
    for (outbound, port, _), table in groups.items():
        lens_of.setdefault((outbound, port), set()).update(len(p) for p in table)
    lens = {k: tuple(sorted(v)) for k, v in lens_of.items()}
    entries: list[RouteEntry] = []
    for (outbound, port, method), table in groups.items():
        ls = lens[(outbound, port)]
        markers: dict[bytes, int] = {}
        for path in table:
            for i in _search_path(ls, ls.index(len(path))):
                m = path[: ls[i]]
                if m not in table and m not in markers:
                    markers[m] = _best(table, m)
        entries += [RouteEntry(outbound, port, method, p, r) for p, r in table.items()]
        entries += [RouteEntry(outbound, port, method, p, r, marker=True) for p, r in markers.items()]
    return lens, entries


def route_lookup(lens: tuple[int, ...], table: Mapping[bytes, int], path: bytes) -> int:
    """The kernel's search: ``table`` maps the entries' paths (of one port and method) to their values."""
    path = path[:PATH_MAX]
    lo, hi, best = 0, len(lens), 0
    for _ in range(PROBES):
        if lo >= hi:
            break
        mid = (lo + hi) // 2
        n = lens[mid]
        if n > len(path):
            hi = mid
            continue
        if path[:n] in table:
            best = table[path[:n]]
            lo = mid + 1
        else:
            hi = mid
    return best
