"""The route table's binary search on prefix lengths finds the longest matching route, as a trie would."""

from __future__ import annotations

import random

from sentinel_ebpf.enforce import routes


def _longest(table: dict[bytes, int], path: bytes) -> int:
    for n in range(len(path), -1, -1):
        if path[:n] in table:
            return table[path[:n]]
    return 0


def _search(lens: tuple[int, ...], entries: list[routes.RouteEntry], path: bytes) -> int:
    return routes.route_lookup(lens, {e.path: e.resource for e in entries}, path)


def test_markers_lead_the_search_to_the_longest_prefix() -> None:
    rng = random.Random(6)
    for _ in range(200):
        alphabet = b"/ab"
        table = {
            b"/" + bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 12))): i + 1
            for i in range(rng.randrange(1, 40))
        }
        lens, entries = routes.build((False, 8080, 1, p, r) for p, r in table.items())
        assert {e.path for e in entries if not e.marker} == set(table)
        for _ in range(50):
            path = b"/" + bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 16)))
            assert _search(lens[(False, 8080)], entries, path) == _longest(table, path), (table, path)


def test_one_length_needs_no_marker_and_one_probe() -> None:
    table = {f"/api/r{i:05d}".encode(): i + 1 for i in range(10_000)}
    lens, entries = routes.build((False, 8080, 1, p, r) for p, r in table.items())
    assert lens == {(False, 8080): (11,)}
    assert not any(e.marker for e in entries)
    assert _search(lens[(False, 8080)], entries, b"/api/r00005/item?id=7") == 6


def test_lengths_are_per_port_and_markers_per_method() -> None:
    lens, entries = routes.build([
        (False, 80, 1, b"/", 1), (False, 80, 1, b"/api/v1/orders", 2), (False, 80, 3, b"/api", 3),
        (True, 1, 1, b"/x", 4),
    ])  # fmt: skip
    assert lens == {(False, 80): (1, 4, 14), (True, 1): (2,)}
    get = [e for e in entries if e.method == 1 and not e.outbound]
    assert _search(lens[(False, 80)], get, b"/api/v1/orders/7") == 2
    assert _search(lens[(False, 80)], get, b"/api/v2") == 1
    post = [e for e in entries if e.method == 3]
    assert _search(lens[(False, 80)], post, b"/api/v1/orders/7") == 3
    assert _search(lens[(False, 80)], post, b"/other") == 0
