"""Resources -> their ids (``assign_ids``), the scopes of each local port (``KPort``: port, address,
cgroup; chained most specific first) and the HTTP route table of ports and outbound services; isolation
thresholds; cgroup identities (``cgroup2_identity``)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import NamedTuple

from sentinel_ebpf._types import IncompleteMode, RejectMode, SentinelLimits
from sentinel_ebpf.enforce import routes as route_table
from sentinel_ebpf.enforce.compile.kernel import (
    METHODS,
    CgroupResolver,
    KOutRoute,
    KPort,
    KRoute,
    ResourceKey,
)
from sentinel_ebpf.enforce.compile.outbound import Destination, add_outbound
from sentinel_ebpf.rules import RuleSet
from sentinel_ebpf.rules.resource import IPNetwork, Resource
from sentinel_ebpf.rules.target import normalize_target

PATH_MAX = int(SentinelLimits.SE_PATH_MAX)


def assign_ids(
    keys: list[ResourceKey], previous: Mapping[ResourceKey, int], last_id: int
) -> dict[ResourceKey, int]:
    """Stable resource ids: a resource that stays keeps its id (and so its statistics); a new one gets the
    next id after the last handed out, so an id freed by a reload is not reused while its requests may
    still be in flight."""
    limit = int(SentinelLimits.SE_MAX_RESOURCES) - 1
    ids = {k: previous[k] for k in keys if k in previous}
    used = set(ids.values())
    nxt = last_id
    for k in keys:
        if k in ids:
            continue
        for _ in range(limit):
            nxt = nxt % limit + 1
            if nxt not in used:
                break
        ids[k] = nxt
        used.add(nxt)
    return ids


def cgroup2_identity(path: str, root: str | None = None) -> tuple[int, int]:
    """(level below the cgroup2 root, cgroup id) of a cgroup path such as /system.slice/app.service: the id
    is the directory's inode number, which is what bpf_get_current_ancestor_cgroup_id() returns."""
    from sentinel_ebpf.host import cgroup2_mount

    mount = root or cgroup2_mount()
    if mount is None:
        raise FileNotFoundError("cgroup2 is not mounted")
    full = os.path.join(mount, path.lstrip("/"))
    return len([p for p in path.split("/") if p]), os.stat(full).st_ino


def _inbound_cgroup(r: Resource, cgroups: CgroupResolver, problems: list[str]) -> tuple[int, int]:
    """(level, id) of an inbound resource's match.cgroup, (0, 0) for none."""
    if not r.match.cgroup:
        return 0, 0
    try:
        return cgroups(r.match.cgroup)
    except OSError as exc:
        problems.append(f"resource {r.name!r}: cgroup {r.match.cgroup}: {exc.strerror or exc}")
        return 0, 0


ScopeKey = tuple[int, IPNetwork | None, str | None]  # port, match.address, match.cgroup


def _chain_scopes(ports: dict[ScopeKey, KPort], problems: list[str]) -> dict[ScopeKey, KPort]:
    """Slots for every scope, in port order, and each port's chain (struct port_conf ``next``): the most
    specific first, by address (longest prefix first, IPv6 before IPv4 at equal length, none last), then
    by cgroup (deepest first, none last)."""

    def specificity(kp: KPort) -> tuple[int, int, int]:
        bits = -1 if kp.address is None else kp.address.prefixlen
        version = 0 if kp.address is None else kp.address.version
        depth = -1 if kp.cgroup is None else kp.cgroup_level
        return (-bits, -version, -depth)

    by_port: dict[int, list[KPort]] = {}
    for kp in ports.values():
        by_port.setdefault(kp.port, []).append(kp)
    out: dict[ScopeKey, KPort] = {}
    slot = 1
    for port, scopes in by_port.items():
        scopes.sort(key=specificity)
        if len(scopes) > int(SentinelLimits.SE_PORT_SCOPES_MAX):
            problems.append(
                f"port {port}: {len(scopes)} scopes (each match.address and match.cgroup, and one for "
                f"resources naming neither): at most {int(SentinelLimits.SE_PORT_SCOPES_MAX)}"
            )
        for i, kp in enumerate(scopes):
            nxt = slot + 1 if i + 1 < len(scopes) else 0
            out[(port, kp.address, kp.cgroup)] = dataclasses.replace(kp, slot=slot, next=nxt)
            slot += 1
    return out


def compile_isolation(rules: RuleSet, ids: dict[str, int], problems: list[str]) -> dict[str, int]:
    """Resource name -> its isolation (concurrency) threshold."""
    isolation: dict[str, int] = {}
    for i, iso in enumerate(rules.isolation_rules):
        if iso.resource not in ids:
            problems.append(
                f"isolationRules[{i}]: resource {iso.resource!r} is not a resource the kernel governs"
            )
            continue
        # several isolation rules on one resource: the smallest threshold decides first
        isolation[iso.resource] = min(iso.threshold, isolation.get(iso.resource, iso.threshold))
    return isolation


class PortsAndRoutes(NamedTuple):
    ports: tuple[KPort, ...]
    routes: tuple[route_table.RouteEntry, ...]  # routes and search markers
    out_routes: tuple[KOutRoute, ...]
    out_http_ports: tuple[int, ...]  # remote ports of outbound HTTP resources


def compile_ports_routes(
    rules: RuleSet, inbound: list[Resource], ids: dict[str, int], cgroups: CgroupResolver, problems: list[str]
) -> PortsAndRoutes:
    """The port scopes and routes of the resources ``inbound`` (all but TLS ones, inbound and outbound),
    in their order."""
    reject_tcp = RejectMode.REJECT_DROP if rules.reject.tcp == "drop" else RejectMode.REJECT_RST
    http_mode = {"rst": RejectMode.REJECT_RST, "drop": RejectMode.REJECT_DROP}.get(
        rules.reject.http.mode, RejectMode.REJECT_HTTP_REPLY
    )
    incomplete = (
        IncompleteMode.INCOMPLETE_PASS
        if rules.reject.incomplete == "pass"
        else IncompleteMode.INCOMPLETE_DROP
    )
    ports: dict[ScopeKey, KPort] = {}
    scope_ids: dict[ScopeKey, int] = {}
    routes: list[KRoute] = []
    out_by_dest: dict[Destination, KOutRoute] = {}
    services: dict[Destination, int] = {}
    for r in inbound:
        if not r.match.inbound:
            add_outbound(r, ids, cgroups, services, out_by_dest, routes, problems)
            continue
        scope = (r.match.port, r.match.address, r.match.cgroup)
        port = ports.get(
            scope,
            KPort(
                r.match.port,
                r.match.address,
                r.match.cgroup,
                *_inbound_cgroup(r, cgroups, problems),
                reject_tcp=int(reject_tcp),
                reject_http=int(http_mode),
                incomplete=int(incomplete),
            ),
        )
        if r.match.protocol == "tcp":
            port = dataclasses.replace(port, tcp_resource=ids[r.name])
        else:
            defer = rules.reject.defer_accept
            port = dataclasses.replace(
                port,
                has_http=True,
                defer_accept=defer is True or (not isinstance(defer, bool) and port.port in defer),
            )
            path = normalize_target(r.match.path or "/").encode("latin-1")  # as the kernel reads targets
            methods = [METHODS[r.match.method]] if r.match.method else list(METHODS.values())
            sid = scope_ids.setdefault(scope, len(scope_ids))  # the scope's slot once the chains are made
            routes += [KRoute(sid, m, path, ids[r.name]) for m in methods]
        ports[scope] = port
    ports = _chain_scopes(ports, problems)
    slot_of = {sid: ports[scope].slot for scope, sid in scope_ids.items()}
    routes = [rt if rt.outbound else dataclasses.replace(rt, port=slot_of[rt.port]) for rt in routes]
    # A specific-method route must win over an any-method route with the same path.
    any_method = {ids[r.name] for r in inbound if r.match.method is None}
    seen: dict[tuple[bool, int, int, bytes], KRoute] = {}
    for rt in routes:
        key = (rt.outbound, rt.port, rt.method, rt.path[:PATH_MAX])
        if key in seen and rt.resource in any_method:
            continue
        seen[key] = rt
    lens, entries = route_table.build((*k, rt.resource) for k, rt in seen.items())
    if len(entries) > int(SentinelLimits.SE_HTTP_ROUTES_MAX):
        problems.append(
            f"{len(entries)} HTTP route entries (routes per method and search markers): at most "
            f"{int(SentinelLimits.SE_HTTP_ROUTES_MAX)}; give resources a method, or fewer distinct path lengths"
        )
    ports = {p: dataclasses.replace(kp, lens=lens.get((False, kp.slot), ())) for p, kp in ports.items()}
    out_by_dest = {
        d: dataclasses.replace(r, lens=lens.get((True, r.http_service), ())) if r.http_service else r
        for d, r in out_by_dest.items()
    }
    if len(ports) > int(SentinelLimits.SE_PORTS_MAX):
        plain = all(kp.address is None and kp.cgroup is None for kp in ports.values())
        what = "protected ports" if plain else "port scopes"
        problems.append(f"{len(ports)} {what}: at most {int(SentinelLimits.SE_PORTS_MAX)}")
    if not isinstance(rules.reject.defer_accept, bool):
        http_ports = {kp.port for kp in ports.values() if kp.has_http}
        for p in sorted(set(rules.reject.defer_accept) - http_ports):
            problems.append(f"reject.deferAccept: port {p} has no inbound HTTP resource")
    return PortsAndRoutes(
        ports=tuple(ports.values()),
        routes=tuple(entries),
        out_routes=tuple(out_by_dest.values()),
        out_http_ports=tuple(sorted({port for _, port in services})),
    )
