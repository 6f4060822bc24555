"""Resources: a Sentinel resource name bound to a network match.

```yaml
resources:
  - name: "GET:/api/orders"
    match: {direction: inbound, protocol: http, port: 8080, method: GET, path: /api/orders}
  - name: payments-db
    match: {direction: outbound, protocol: tcp, host: 10.0.0.5/32, port: 5432, cgroup: /system.slice/app}
  - name: pod-a-web
    match: {protocol: http, port: 8080, address: 10.244.1.7}
```

``address`` scopes an inbound resource to the local addresses a server is reached at (a pod's IP, or a
CIDR), ``cgroup`` to servers whose socket is in a cgroup v2 (a container's) or below it: on one port,
the most specific scope that holds a connection governs it, and resources that name neither govern the
connections no scope holds. (Outbound, ``cgroup`` is the calling process's.)

Limits are the kernel's: ``path`` is a byte prefix of at most ``PATH_MAX_BYTES`` (LPM-trie key size),
``method`` one of the standard methods, ``port`` 1..65535.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sentinel_ebpf.rules._fields import RuleContext, type_name
from sentinel_ebpf.rules.target import normalize_target

SECTION = "resources"
PATH_MAX_BYTES = 64
NAME_MAX_BYTES = 255
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
DIRECTIONS = ("inbound", "outbound")
PROTOCOLS = ("tcp", "http")
MATCH_KEYS = ("direction", "protocol", "port", "method", "path", "host", "address", "cgroup", "tls")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Match:
    protocol: str
    port: int
    direction: str = "inbound"
    method: str | None = None
    path: str | None = None
    host: IPNetwork | None = None
    address: IPNetwork | None = None  # inbound: the local addresses (a pod's IP, a CIDR) the scope holds
    cgroup: str | None = None
    tls: bool = False  # HTTPS: observed by tracing OpenSSL (sentinel-ebpf trace --http), not enforced

    @property
    def inbound(self) -> bool:
        return self.direction == "inbound"

    def key(self) -> tuple[object, ...]:
        """Two resources with the same key would match exactly the same traffic."""
        return (
            self.direction,
            self.protocol,
            self.port,
            self.method,
            self.path,
            str(self.host) if self.host else None,
            str(self.address) if self.address else None,
            self.cgroup,
            self.tls,
        )

    def describe(self) -> str:
        parts = [self.direction, self.protocol]
        if self.host is not None:
            parts.append(f"host {self.host}")
        if self.address is not None:
            parts.append(f"address {self.address}")
        parts.append(f"port {self.port}")
        if self.method:
            parts.append(self.method)
        if self.path:
            normal = normalize_target(self.path)
            parts.append(f"path {self.path}*" + (f" (normalised: {normal}*)" if normal != self.path else ""))
        if self.cgroup:
            parts.append(f"cgroup {self.cgroup}")
        if self.tls:
            parts.append("tls")
        return " ".join(parts)

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"direction": self.direction, "protocol": self.protocol, "port": self.port}
        if self.method is not None:
            out["method"] = self.method
        if self.path is not None:
            out["path"] = self.path
        if self.host is not None:
            out["host"] = str(self.host)
        if self.address is not None:
            out["address"] = str(self.address)
        if self.cgroup is not None:
            out["cgroup"] = self.cgroup
        if self.tls:
            out["tls"] = True
        return out


@dataclass(frozen=True)
class Resource:
    name: str
    match: Match


def parse(raw: Any, ctx: RuleContext) -> Resource | None:
    if not isinstance(raw, Mapping):
        ctx.add(f"a resource must be an object {{name, match}}, got {type_name(raw)}")
        return None
    for key in raw:
        if key not in ("name", "match"):
            ctx.add(f"unknown key {key!r} (a resource has name and match)", str(key))
    name = raw.get("name")
    ok = True
    if not isinstance(name, str) or not name:
        ctx.add(
            "name must be a non-empty string"
            if name is None or isinstance(name, str)
            else f"name must be a string, got {type_name(name)}",
            "name",
        )
        ok = False
    else:
        ctx.rule_id = name
        if len(name.encode()) > NAME_MAX_BYTES:
            ctx.add(f"name is longer than {NAME_MAX_BYTES} bytes", "name")
    m = raw.get("match")
    if not isinstance(m, Mapping):
        ctx.add(
            "match is required: {direction, protocol, port, ...}"
            if m is None
            else f"match must be an object, got {type_name(m)}",
            "match",
        )
        return None
    match = _parse_match(m, ctx)
    if match is None or not ok:
        return None
    return Resource(name=str(name), match=match)


def _parse_match(m: Mapping[Any, Any], ctx: RuleContext) -> Match | None:
    ok = True

    def bad(reason: str, key: str) -> None:
        """Report a problem of ``match.<key>``; any problem leaves the resource out."""
        nonlocal ok
        ctx.add(reason, f"match.{key}", subpath=(key,))
        ok = False

    for key in m:
        if key not in MATCH_KEYS:
            bad(f"unknown key {key!r}; a match has {', '.join(MATCH_KEYS)}", str(key))
    direction = m.get("direction", "inbound")
    if direction not in DIRECTIONS:
        bad(f"direction must be inbound or outbound, got {direction!r}", "direction")
    protocol = m.get("protocol")
    if protocol not in PROTOCOLS:
        bad(
            "protocol is required: tcp or http"
            if protocol is None
            else f"protocol must be tcp or http, got {protocol!r}",
            "protocol",
        )
    port = m.get("port")
    if isinstance(port, bool) or not isinstance(port, int):
        bad(
            "port is required: 1..65535"
            if port is None
            else f"port must be an integer, got {type_name(port)}",
            "port",
        )
    elif not 1 <= port <= 65535:
        bad(f"port must be in 1..65535, got {port}", "port")
    method = m.get("method")
    if method is not None:
        if protocol != "http":
            bad("method applies to http resources only", "method")
        elif not isinstance(method, str) or method not in HTTP_METHODS:
            bad(f"method must be one of {', '.join(HTTP_METHODS)} (upper case), got {method!r}", "method")
    path = m.get("path")
    if path is not None:
        if protocol != "http":
            bad("path applies to http resources only", "path")
        elif not isinstance(path, str) or not path.startswith("/"):
            bad(f"path must be a string starting with '/', got {path!r}", "path")
        elif len(path.encode()) > PATH_MAX_BYTES:
            bad(
                f"path prefix is {len(path.encode())} bytes; the kernel matches at most {PATH_MAX_BYTES}",
                "path",
            )
        elif any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in path):
            bad(
                "path must not contain spaces or control characters (it is matched against the request line)",
                "path",
            )
    host_raw = m.get("host")
    host: IPNetwork | None = None
    if host_raw is not None:
        if direction != "outbound":
            bad("host applies to outbound resources only (inbound resources match a local port)", "host")
        else:
            try:
                host = ipaddress.ip_network(str(host_raw), strict=True)
            except ValueError as exc:
                bad(f"host must be an IP address or CIDR: {exc}", "host")
    address_raw = m.get("address")
    address: IPNetwork | None = None
    if address_raw is not None:
        if direction != "inbound":
            bad(
                "address applies to inbound resources only (outbound resources match a remote host)",
                "address",
            )
        elif isinstance(address_raw, bool) or not isinstance(address_raw, str):
            bad(f"address must be a local IP address or CIDR such as 10.244.1.7 or 10.244.1.0/24, "
                f"got {type_name(address_raw)}", "address")  # fmt: skip
        else:
            try:
                address = ipaddress.ip_network(address_raw, strict=True)
            except ValueError as exc:
                bad(f"address must be a local IP address or CIDR: {exc}", "address")
    cgroup = m.get("cgroup")
    if cgroup is not None and (not isinstance(cgroup, str) or not cgroup.startswith("/")):
        bad(f"cgroup must be an absolute cgroup v2 path such as /system.slice/app.service, got {cgroup!r}",
            "cgroup")  # fmt: skip
    tls = m.get("tls", False)
    if not isinstance(tls, bool):
        bad(f"tls must be true or false, got {tls!r}", "tls")
    elif tls and protocol != "http":
        bad("tls applies to http resources only (HTTPS requests, observed through OpenSSL)", "tls")
    elif tls and address_raw is not None:
        bad("address does not apply to tls resources (observed through OpenSSL by port alone)", "address")
    elif tls and cgroup is not None:
        bad("cgroup does not apply to tls resources (observed through OpenSSL by port alone)", "cgroup")
    if not ok:
        return None
    return Match(
        protocol=str(protocol),
        port=int(port),  # type: ignore[arg-type]
        direction=str(direction),
        method=method,
        path=path,
        host=host,
        address=address,
        cgroup=cgroup,
        tls=tls,
    )
