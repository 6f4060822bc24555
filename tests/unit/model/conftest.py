from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from sentinel_ebpf.rules import RuleSet, load_data
from sentinel_ebpf.rules.ruleset import SECTIONS

MakeRuleSet = Callable[..., RuleSet]


@pytest.fixture
def make_ruleset() -> MakeRuleSet:
    """Build a valid project rules document, declaring an http resource for every name used."""

    def make(**sections: list[dict[str, Any]]) -> RuleSet:
        names: dict[str, None] = {}
        for section in SECTIONS:
            for rule in sections.get(section, []):
                if "resource" in rule:
                    names.setdefault(rule["resource"], None)
                if rule.get("refResource"):
                    names.setdefault(rule["refResource"], None)
        resources = [
            {"name": n, "match": {"protocol": "http", "port": 1000 + i}} for i, n in enumerate(names)
        ]
        return load_data({"resources": resources, **sections}, "test.yaml")

    return make
