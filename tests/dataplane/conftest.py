"""Shared fixtures of the dataplane tier: one loaded inbound object for the whole tier, cleared for each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sentinel_ebpf.enforce import InboundDataplane


@pytest.fixture(scope="session")
def loaded() -> Iterator[InboundDataplane]:
    """The inbound programs with a test clock, taking every crafted segment as next in its stream (no
    socket lookup: their connections do not exist). Loading and verifying takes a while (about half a
    minute on 6.1 under emulation, in the kernel matrix): once per run."""
    with InboundDataplane(test_clock=True, socket_lookup=False) as d:
        yield d


@pytest.fixture
def dp(loaded: InboundDataplane) -> Iterator[InboundDataplane]:
    """No rules, statistics or counters left from the previous test."""
    loaded.clear()
    counters = loaded.maps.dp_counters
    for idx in range(counters.max_entries):
        key = idx.to_bytes(4, "little")
        counters.update(key, [bytes(8)] * len(counters.lookup(key)))
    yield loaded
