"""tools/gen_types.py turns BTF into ctypes layouts with the same offsets and sizes."""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tools"))

import gen_types

TYPES: dict[int, dict[str, Any]] = {
    1: {"id": 1, "kind": "INT", "name": "unsigned int", "size": 4, "encoding": "(none)"},
    2: {"id": 2, "kind": "TYPEDEF", "name": "__u32", "type_id": 1},
    3: {"id": 3, "kind": "INT", "name": "unsigned char", "size": 1, "encoding": "(none)"},
    4: {"id": 4, "kind": "INT", "name": "long long", "size": 8, "encoding": "SIGNED"},
    5: {"id": 5, "kind": "ARRAY", "type_id": 3, "nr_elems": 3},
    6: {
        "id": 6,
        "kind": "STRUCT",
        "name": "demo_rec",
        "size": 24,
        "members": [
            {"name": "a", "type_id": 2, "bits_offset": 0},
            {"name": "b", "type_id": 4, "bits_offset": 64},  # 4 bytes of padding before it
            {"name": "c", "type_id": 5, "bits_offset": 128},  # 5 bytes of tail padding after it
        ],
    },
    7: {
        "id": 7,
        "kind": "ENUM",
        "name": "demo_kind",
        "size": 4,
        "encoding": "UNSIGNED",
        "values": [{"name": "DEMO_A", "val": 0}, {"name": "DEMO_B", "val": 7}],
    },
}


def _exec(code: str) -> dict[str, Any]:
    ns: dict[str, Any] = {}
    exec("import ctypes\nfrom enum import IntEnum\n" + code, ns)
    return ns


def test_struct_layout_matches_btf_offsets() -> None:
    gen = gen_types.Gen(TYPES)
    ns = _exec(gen.struct(TYPES[6]))
    rec = ns["DemoRec"]
    assert ctypes.sizeof(rec) == 24
    assert rec.a.offset == 0 and rec.b.offset == 8 and rec.c.offset == 16
    assert rec.b.size == 8


def test_enum_values() -> None:
    ns = _exec(gen_types.Gen.enum(TYPES[7]))
    assert ns["DemoKind"].DEMO_B == 7


def test_contract_names_are_read_from_the_header() -> None:
    structs, enums = gen_types.contract_names(gen_types.HEADER)
    assert "conn_event" in structs
    assert {"conn_direction", "conn_outcome", "trace_stat", "sentinel_limits"} <= set(enums)
