"""``stats --json`` document (DESIGN.md "Contracts") and the ``stats``/``top`` tables."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console
from rich.table import Table

from sentinel_ebpf.outputs.stats_json import stats_document
from sentinel_ebpf.outputs.stats_table import stats_table
from sentinel_ebpf.stats import BreakerSnapshot, ResourceStats

ORDERS = ResourceStats(
    name="GET:/api/orders",
    passed=120,
    blocked=9,
    complete=118,
    error=2,
    abort=3,
    concurrency=2,
    rt_sum_ms=590.0,
    block_by_type={"flow": 5, "isolation": 0, "circuit_breaking": 3, "system": 1, "hotspot": 0},
    circuit_breakers=(BreakerSnapshot("cb-1", "open"), BreakerSnapshot("cb-2", "half_open")),
)


def test_document_shape_exactly() -> None:
    doc = stats_document([ORDERS, ResourceStats(name="idle", block_by_type={"flow": 0})])
    assert doc == {
        "resources": {
            "GET:/api/orders": {
                "pass": 120,
                "block": 9,
                "complete": 118,
                "error": 2,
                "abort": 3,
                "concurrency": 2,
                "avg_rt_ms": 5.0,
                "block_by_type": {
                    "flow": 5,
                    "isolation": 0,
                    "circuit_breaking": 3,
                    "system": 1,
                    "hotspot": 0,
                },
                "circuit_breakers": [{"id": "cb-1", "state": "open"}, {"id": "cb-2", "state": "half_open"}],
                "source": "kernel",
            },
            "idle": {
                "pass": 0,
                "block": 0,
                "complete": 0,
                "error": 0,
                "abort": 0,
                "concurrency": 0,
                "avg_rt_ms": 0.0,
                "block_by_type": {
                    "flow": 0,
                    "isolation": 0,
                    "circuit_breaking": 0,
                    "system": 0,
                    "hotspot": 0,
                },
                "circuit_breakers": [],
                "source": "kernel",
            },
        }
    }
    assert json.loads(json.dumps(doc)) == doc
    entry = doc["resources"]["idle"]
    assert isinstance(entry["avg_rt_ms"], float)
    assert list(entry["block_by_type"]) == ["flow", "isolation", "circuit_breaking", "system", "hotspot"]


def test_empty_snapshot() -> None:
    assert stats_document([]) == {"resources": {}}


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        ([ORDERS, ORDERS], "appears twice"),
        ([ResourceStats(name="r", block_by_type={"rate": 1})], "unknown block types"),
        ([ResourceStats(name="r", circuit_breakers=(BreakerSnapshot("b", "halfopen"),))], "is not one of"),
    ],
)
def test_document_rejects_inconsistent_snapshot(resources: list[ResourceStats], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        stats_document(resources)


def render(table: Table) -> list[list[str]]:
    """The table's data rows as text, one list of cells per resource."""
    console = Console(width=200, file=io.StringIO(), color_system=None)
    console.print(table)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    # Data rows use the light bar; the header row uses the heavy one.
    return [[c.strip() for c in line.split("│")[1:-1]] for line in text.splitlines() if line.count("│") > 2]


def test_stats_table_shows_cumulative_counters() -> None:
    rows = render(stats_table([ORDERS]))
    assert rows == [["GET:/api/orders", "120", "9", "118", "2", "5.0", "2", "cb-1:open, cb-2:half_open"]]


def test_top_table_shows_rates_between_snapshots() -> None:
    before = ResourceStats(
        name="GET:/api/orders", passed=100, blocked=1, complete=98, error=0, rt_sum_ms=390.0
    )
    single = ResourceStats(name="db", passed=10, circuit_breakers=(BreakerSnapshot("b", "closed"),))
    rows = render(stats_table([ORDERS, single], previous=[before], elapsed_s=2.0))
    assert rows == [
        # 20 passes, 8 blocks, 20 completions, 2 errors in 2 s; (590-390)/20 = 10 ms
        ["GET:/api/orders", "10.0", "4.0", "10.0", "1.0", "10.0", "2", "cb-1:open, cb-2:half_open"],
        ["db", "5.0", "0.0", "0.0", "0.0", "0.0", "0", "closed"],  # new resource: counted from zero
    ]


def test_top_table_counts_from_zero_after_counter_reset() -> None:
    before = ResourceStats(name="r", passed=1000, complete=1000, rt_sum_ms=9000.0)
    now = ResourceStats(name="r", passed=30, complete=30, rt_sum_ms=60.0)
    assert render(stats_table([now], previous=[before], elapsed_s=1.0)) == [
        ["r", "30.0", "0.0", "30.0", "0.0", "2.0", "0", "-"]
    ]


def test_top_table_needs_positive_elapsed() -> None:
    with pytest.raises(ValueError, match="elapsed_s"):
        stats_table([ORDERS], previous=[ORDERS], elapsed_s=0)
