"""Sentinel rules: data, validation and loaders (no kernel needed).

Public API::

    from sentinel_ebpf.rules import load_file, load_text, RuleSet, RulesError

    try:
        ruleset = load_file("rules.yaml")
    except RulesError as exc:
        for problem in exc.problems:
            print(problem)          # file:line: section[i]: field: reason

One module per Sentinel rule kind (``flow``, ``isolation``, ``circuitbreaker``, ``hotspot``, ``system``),
plus ``resource`` (traffic bindings), ``reject`` (what a block looks like), ``loader`` (the three input
formats), ``dump`` (writing them back) and ``errors``.
"""

from sentinel_ebpf.rules.circuitbreaker import CircuitBreakerRule
from sentinel_ebpf.rules.errors import Problem, RulesError, RulesFileError
from sentinel_ebpf.rules.flow import FlowRule
from sentinel_ebpf.rules.hotspot import HotspotRule
from sentinel_ebpf.rules.isolation import IsolationRule
from sentinel_ebpf.rules.loader import detect_format, load_data, load_file, load_text
from sentinel_ebpf.rules.reject import HttpReject, RejectConfig
from sentinel_ebpf.rules.resource import Match, Resource
from sentinel_ebpf.rules.ruleset import RuleSet
from sentinel_ebpf.rules.system import SystemRule

__all__ = [
    "CircuitBreakerRule",
    "FlowRule",
    "HotspotRule",
    "HttpReject",
    "IsolationRule",
    "Match",
    "Problem",
    "RejectConfig",
    "Resource",
    "RuleSet",
    "RulesError",
    "RulesFileError",
    "SystemRule",
    "detect_format",
    "load_data",
    "load_file",
    "load_text",
]
