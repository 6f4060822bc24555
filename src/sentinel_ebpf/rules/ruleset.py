"""``RuleSet``: a validated rules document (resources, the five rule kinds, the reject config)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sentinel_ebpf.rules.circuitbreaker import CircuitBreakerRule
from sentinel_ebpf.rules.flow import FlowRule
from sentinel_ebpf.rules.hotspot import HotspotRule
from sentinel_ebpf.rules.isolation import IsolationRule
from sentinel_ebpf.rules.reject import RejectConfig
from sentinel_ebpf.rules.resource import Resource
from sentinel_ebpf.rules.system import SystemRule
from sentinel_ebpf.rules.target import normalize_target

AnyRule = FlowRule | IsolationRule | CircuitBreakerRule | HotspotRule | SystemRule

# sentinel-golang array names, in the order rules are checked for a request.
SECTIONS = ("systemRules", "flowRules", "isolationRules", "hotSpotParamRules", "circuitBreakerRules")


@dataclass(frozen=True)
class RuleSet:
    """A whole, valid document. Build one with ``sentinel_ebpf.rules.load_file`` / ``load_text``.

    ``bound`` is True when the document declares ``resources`` (this project's rules file): every rule's
    resource is then one of them. sentinel-golang JSON arrays and CRDs name resources without binding
    them to traffic; such a set drives the in-process model but not the kernel.
    """

    resources: tuple[Resource, ...] = ()
    flow_rules: tuple[FlowRule, ...] = ()
    isolation_rules: tuple[IsolationRule, ...] = ()
    circuit_breaker_rules: tuple[CircuitBreakerRule, ...] = ()
    hotspot_rules: tuple[HotspotRule, ...] = ()
    system_rules: tuple[SystemRule, ...] = ()
    reject: RejectConfig = field(default_factory=RejectConfig)
    sources: tuple[str, ...] = ()
    bound: bool = False
    # "project", "sentinel-json" or "crd": the input format (not part of equality)
    format: str = field(default="project", compare=False)

    def resource(self, name: str) -> Resource | None:
        for res in self.resources:
            if res.name == name:
                return res
        return None

    def rules(self, section: str) -> tuple[AnyRule, ...]:
        table: dict[str, tuple[AnyRule, ...]] = {
            "flowRules": self.flow_rules,
            "isolationRules": self.isolation_rules,
            "circuitBreakerRules": self.circuit_breaker_rules,
            "hotSpotParamRules": self.hotspot_rules,
            "systemRules": self.system_rules,
        }
        return table[section]

    def resource_names(self) -> list[str]:
        """Declared resources first, then every other name a rule refers to, each once."""
        names: dict[str, None] = {r.name: None for r in self.resources}
        rules: list[FlowRule | IsolationRule | CircuitBreakerRule | HotspotRule] = [
            *self.flow_rules,
            *self.isolation_rules,
            *self.circuit_breaker_rules,
            *self.hotspot_rules,
        ]
        for rule in rules:
            names.setdefault(rule.resource, None)
        for fr in self.flow_rules:
            if fr.ref_resource and fr.relation_strategy == 1:
                names.setdefault(fr.ref_resource, None)
        return list(names)

    def is_empty(self) -> bool:
        return not any((self.resources, *(self.rules(s) for s in SECTIONS)))

    def summary(self) -> dict[str, Any]:
        """A short description of what the document defines (``rules check`` prints it)."""
        per_resource: dict[str, dict[str, int]] = {}
        for section in SECTIONS:
            if section == "systemRules":
                continue
            for rule in self.rules(section):
                assert not isinstance(rule, SystemRule)
                counts = per_resource.setdefault(rule.resource, {})
                counts[section] = counts.get(section, 0) + 1
        resources = []
        for name in self.resource_names():
            res = self.resource(name)
            entry: dict[str, Any] = {
                "name": name,
                "match": res.match.as_dict() if res else None,
                "rules": per_resource.get(name, {}),
            }
            if res is not None and res.match.path is not None:
                # what the kernel matches: the path in the normal form request targets are put in
                entry["normalized_path"] = normalize_target(res.match.path)
            resources.append(entry)
        return {
            "sources": list(self.sources),
            "format": self.format,
            "bound": self.bound,
            "counts": {s: len(self.rules(s)) for s in SECTIONS},
            "resources": resources,
            "reject": {
                "http": self.reject.http.mode
                if self.reject.http.mode != "response"
                else f"{self.reject.http.status} response",
                "tcp": self.reject.tcp,
            },
        }
