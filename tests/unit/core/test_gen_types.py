"""tools/gen_types.py turns BTF into ctypes layouts with the same offsets and sizes, and describes maps."""

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


# A map as libbpf's __uint/__type macros put it in BTF: pointers to int arrays whose length is the value.
MAP_TYPES: dict[int, dict[str, Any]] = {
    **TYPES,
    10: {"id": 10, "kind": "INT", "name": "int", "size": 4, "encoding": "SIGNED"},
    11: {"id": 11, "kind": "ARRAY", "type_id": 10, "nr_elems": 9},  # BPF_MAP_TYPE_LRU_HASH
    12: {"id": 12, "kind": "PTR", "type_id": 11},
    13: {"id": 13, "kind": "ARRAY", "type_id": 10, "nr_elems": 1024},
    14: {"id": 14, "kind": "PTR", "type_id": 13},
    15: {"id": 15, "kind": "PTR", "type_id": 2},  # __u32
    16: {"id": 16, "kind": "PTR", "type_id": 6},  # struct demo_rec
    17: {
        "id": 17,
        "kind": "STRUCT",
        "name": "(anon)",
        "size": 32,
        "members": [
            {"name": "type", "type_id": 12, "bits_offset": 0},
            {"name": "max_entries", "type_id": 14, "bits_offset": 64},
            {"name": "key", "type_id": 15, "bits_offset": 128},
            {"name": "value", "type_id": 16, "bits_offset": 192},
        ],
    },
    18: {"id": 18, "kind": "VAR", "name": "demo_map", "type_id": 17},
    19: {"id": 19, "kind": "INT", "name": "char", "size": 1, "encoding": "SIGNED"},
    20: {"id": 20, "kind": "ARRAY", "type_id": 19, "nr_elems": 16},
    21: {"id": 21, "kind": "VOLATILE", "type_id": 20},
    22: {"id": 22, "kind": "CONST", "type_id": 21},
    23: {"id": 23, "kind": "INT", "name": "_Bool", "size": 1, "encoding": "BOOL"},
}


def test_map_doc_names_type_size_key_and_value() -> None:
    doc = gen_types.map_doc(MAP_TYPES, MAP_TYPES[18])
    assert doc == "LRU_HASH, max_entries 1024: __u32 -> struct demo_rec"


def test_rodata_python_types() -> None:
    assert gen_types.py_type(MAP_TYPES, 22) == "bytes | str"  # const volatile char[16]
    assert gen_types.py_type(MAP_TYPES, 5) == "list[int]"
    assert gen_types.py_type(MAP_TYPES, 23) == "bool"
    assert gen_types.py_type(MAP_TYPES, 2) == "int"
