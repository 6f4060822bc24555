"""What the rules loader reports for a document it refuses."""

from __future__ import annotations

import pytest

from sentinel_ebpf.rules import Problem, RulesError, load_text


def text_problems(text: str, file: str = "<string>", *, kind: str | None = None) -> list[Problem]:
    """The problems of ``load_text(text, file, kind=kind)``, which must refuse the document."""
    with pytest.raises(RulesError) as info:
        load_text(text, file, kind=kind)
    return list(info.value.problems)


def assert_reported(text: str, file: str, reason: str) -> None:
    """``text`` is refused with a problem whose reason contains ``reason``."""
    found = text_problems(text, file)
    assert any(reason in p.reason for p in found), found
