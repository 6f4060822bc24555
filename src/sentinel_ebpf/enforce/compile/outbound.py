"""Outbound resources (``direction: outbound``) -> ``KOutRoute``s, one per destination, judged at
connect() (TCP) and at TC (HTTP requests, by the destination's service routes)."""

from __future__ import annotations

import dataclasses
import ipaddress

from sentinel_ebpf.enforce.compile.kernel import METHODS, CgroupResolver, KOutRoute, KRoute
from sentinel_ebpf.rules import RuleSet
from sentinel_ebpf.rules.resource import Resource
from sentinel_ebpf.rules.target import normalize_target

Destination = tuple[str, int]  # (match.host or 0.0.0.0/0, match.port)


def check_outbound(rules: RuleSet, problems: list[str]) -> None:
    for r in rules.resources:
        if not r.match.inbound and r.match.protocol == "http" and r.match.cgroup:
            problems.append(
                f"resource {r.name!r}: cgroup limits outbound connect()s; it cannot be applied to outbound "
                "HTTP requests (seen at TC, where no process is known)"
            )


def _out_route(r: Resource, rid: int, cgroups: CgroupResolver, problems: list[str]) -> KOutRoute:
    host = r.match.host or ipaddress.ip_network("0.0.0.0/0")
    level = cid = 0
    if r.match.cgroup and r.match.protocol == "tcp":
        try:
            level, cid = cgroups(r.match.cgroup)
        except OSError as exc:
            problems.append(f"resource {r.name!r}: cgroup {r.match.cgroup}: {exc.strerror or exc}")
    return KOutRoute(host.version, r.match.port, host.network_address.packed, host.prefixlen, rid, level, cid)


def add_outbound(
    r: Resource,
    ids: dict[str, int],
    cgroups: CgroupResolver,
    services: dict[Destination, int],
    out_by_dest: dict[Destination, KOutRoute],
    routes: list[KRoute],
    problems: list[str],
) -> None:
    """The route of an outbound resource's destination (``out_by_dest``), and for an HTTP resource its
    routes (``routes``) under the destination's service id (``services``)."""
    route = _out_route(r, ids[r.name] if r.match.protocol == "tcp" else 0, cgroups, problems)
    dest = (str(r.match.host or "0.0.0.0/0"), r.match.port)
    if r.match.protocol == "http":
        sid = services.setdefault(dest, len(services) + 1)
        path = normalize_target(r.match.path or "/").encode("latin-1")  # as the kernel reads targets
        methods = [METHODS[r.match.method]] if r.match.method else list(METHODS.values())
        routes += [KRoute(sid, m, path, ids[r.name], outbound=True) for m in methods]
        route = dataclasses.replace(route, http_service=sid)
    prev = out_by_dest.get(dest)
    if prev is not None:  # a TCP and HTTP resources of one destination share its route
        route = dataclasses.replace(
            prev, resource=prev.resource or route.resource, http_service=prev.http_service or route.http_service,
            cgroup_level=prev.cgroup_level or route.cgroup_level, cgroup_id=prev.cgroup_id or route.cgroup_id,
        )  # fmt: skip
    out_by_dest[dest] = route
