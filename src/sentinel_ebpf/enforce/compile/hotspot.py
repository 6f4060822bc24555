"""Hotspot parameter rules (hotSpotParamRules) -> each resource's ``KHotRule``s, and the kernel's hash of
a parameter value (``fnv1a`` of ``hot_value_bytes``) for their specific items."""

from __future__ import annotations

import ipaddress
import zlib

from sentinel_ebpf._types import HotParam, SentinelLimits
from sentinel_ebpf.enforce.compile.kernel import KHotRule, ResourceKey, check_per_resource, governed_rules
from sentinel_ebpf.rules import RuleSet
from sentinel_ebpf.rules.hotspot import HotspotRule
from sentinel_ebpf.rules.resource import Resource

FNV_OFFSET, FNV_PRIME = 0xCBF29CE484222325, 0x100000001B3


def fnv1a(data: bytes) -> int:
    """The kernel's hash of a parameter value (hotspot.bpf.h)."""
    h = FNV_OFFSET
    for b in data:
        h = ((h ^ b) * FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return h


def hot_value_bytes(param: str, value: str, ipv6_prefix_len: int = 128) -> bytes:
    """The bytes the kernel hashes for a parameter value: a client address as 16 bytes (IPv4 in the
    first 4; IPv6 cut to its first `ipv6_prefix_len` bits), a header value without optional whitespace, a
    query value decoded; at most SE_HOT_VALUE_MAX bytes (the kernel's one length, hotspot.bpf.h)."""
    if param == "remote_ip":
        addr = ipaddress.ip_address(value)
        if addr.version == 6:
            addr = ipaddress.ip_network(f"{addr}/{ipv6_prefix_len}", strict=False).network_address
        return addr.packed.ljust(16, b"\0")
    if param == "header":
        value = value.strip(" \t")
    return value.encode()[: int(SentinelLimits.SE_HOT_VALUE_MAX)]


def _hot(
    rule: HotspotRule, res_key: ResourceKey, protocol: str, where: str, problems: list[str]
) -> KHotRule | None:
    src = rule.param
    if src.kind != "remote_ip" and protocol != "http":
        problems.append(
            f"{where}: paramKey {rule.param_key!r} needs an HTTP resource (a TCP connection has no "
            "request to read it from)"
        )
        return None
    param = {"remote_ip": HotParam.HOT_REMOTE_IP, "header": HotParam.HOT_HEADER, "query": HotParam.HOT_QUERY}[
        src.kind
    ]
    pattern = (
        b""
        if src.kind == "remote_ip"
        else (b"\n" + src.name.lower().encode() + b":" if src.kind == "header" else src.name.encode() + b"=")
    )
    uid = zlib.crc32(repr((res_key, rule)).encode()) or 1
    specific = tuple(sorted((fnv1a(hot_value_bytes(src.kind, item.key, rule.ipv6_prefix)), item.threshold)
                            for item in rule.specific_items))  # fmt: skip
    return KHotRule(
        uid,
        int(rule.metric_type),
        int(rule.control_behavior),
        int(param),
        pattern,
        rule.threshold,
        rule.ipv6_prefix,
        rule.burst_count,
        rule.duration_in_sec * 1000,
        rule.max_queueing_time_ms,
        specific,
    )


def compile_hotspot(
    rules: RuleSet, by_name: dict[str, Resource], problems: list[str]
) -> dict[str, list[KHotRule]]:
    """Resource name -> its hotspot rules, in order (inbound resources only)."""
    hots: dict[str, list[KHotRule]] = {}
    for where, hr, res in governed_rules(rules.hotspot_rules, "hotSpotParamRules", by_name, problems):
        if not res.match.inbound:
            problems.append(f"{where}: hotspot rules on outbound resources are not enforced yet")
            continue
        kh = _hot(hr, (res.name, res.match.key()), res.match.protocol, where, problems)
        if kh is not None:
            hots.setdefault(hr.resource, []).append(kh)
    check_per_resource(hots, "hotspot rules", int(SentinelLimits.SE_HOTSPOT_RULES_PER_RESOURCE), problems)
    return hots
