#!/usr/bin/env python3
"""Generate ``src/sentinel_ebpf/_types.py`` and ``_maps.py`` from the compiled BPF objects' BTF.

The structs and enums named in ``bpf/sentinel.h`` (the kernel/user contract) are read from the BTF of
the compiled objects (``bpftool -j btf dump``), so their Python layouts are never typed by hand.
``_maps.py`` holds, per object, what libbpf's skeletons and bpf2go generate: a class of map handles
(``InboundMaps(obj).port_slots``: nothing else names a map by string), the layouts of its ``.rodata`` and
``.bss`` sections (offsets as libbpf lays them out at open) and a typed setter of its read-only globals.
``--check`` exits 1 when a committed file differs from what the objects say (run in CI).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BPF_DIR = ROOT / "src/sentinel_ebpf/bpf"
HEADER = BPF_DIR / "sentinel.h"
OUTPUT = ROOT / "src/sentinel_ebpf/_types.py"
MAPS_OUTPUT = ROOT / "src/sentinel_ebpf/_maps.py"

INT_TYPES = {
    (1, False): "ctypes.c_uint8", (1, True): "ctypes.c_int8",
    (2, False): "ctypes.c_uint16", (2, True): "ctypes.c_int16",
    (4, False): "ctypes.c_uint32", (4, True): "ctypes.c_int32",
    (8, False): "ctypes.c_uint64", (8, True): "ctypes.c_int64",
}  # fmt: skip

# enum bpf_map_type (kernel UAPI, stable values)
MAP_TYPES = [
    "UNSPEC", "HASH", "ARRAY", "PROG_ARRAY", "PERF_EVENT_ARRAY", "PERCPU_HASH", "PERCPU_ARRAY",
    "STACK_TRACE", "CGROUP_ARRAY", "LRU_HASH", "LRU_PERCPU_HASH", "LPM_TRIE", "ARRAY_OF_MAPS",
    "HASH_OF_MAPS", "DEVMAP", "SOCKMAP", "CPUMAP", "XSKMAP", "SOCKHASH", "CGROUP_STORAGE",
    "REUSEPORT_SOCKARRAY", "PERCPU_CGROUP_STORAGE", "QUEUE", "STACK", "SK_STORAGE", "DEVMAP_HASH",
    "STRUCT_OPS", "RINGBUF", "INODE_STORAGE", "TASK_STORAGE", "BLOOM_FILTER", "USER_RINGBUF",
    "CGRP_STORAGE",
]  # fmt: skip
# the data sections libbpf turns into internal maps (one entry, the section's bytes)
DATA_SECTIONS = (".rodata", ".data", ".bss")


def contract_names(header: Path) -> tuple[list[str], list[str]]:
    text = header.read_text()
    structs = re.findall(r"^struct\s+(\w+)\s*\{", text, re.M)
    enums = re.findall(r"^enum\s+(\w+)\s*\{", text, re.M)
    return structs, enums


def load_btf(obj: Path) -> dict[int, dict[str, Any]]:
    bpftool = shutil.which("bpftool") or "/usr/sbin/bpftool"
    out = subprocess.run([bpftool, "-j", "btf", "dump", "file", str(obj)], capture_output=True, check=True)
    return {t["id"]: t for t in json.loads(out.stdout)["types"]}


def camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


class Gen:
    def __init__(self, types: dict[int, dict[str, Any]]) -> None:
        self.types = types

    def ctype(self, type_id: int) -> tuple[str, int]:
        """ctypes expression and size for a BTF type id."""
        t = self.types[type_id]
        kind = t["kind"]
        if kind in ("TYPEDEF", "CONST", "VOLATILE", "RESTRICT"):
            return self.ctype(t["type_id"])
        if kind == "INT":
            if t["name"] == "char" or t["name"] == "_Bool":
                return ("ctypes.c_char" if t["name"] == "char" else "ctypes.c_bool"), 1
            return INT_TYPES[(t["size"], t["encoding"] == "SIGNED")], t["size"]
        if kind == "ENUM":
            return INT_TYPES[(t["size"], t.get("encoding") == "SIGNED")], t["size"]
        if kind == "ARRAY":
            elem, size = self.ctype(t["type_id"])
            return f"({elem} * {t['nr_elems']})", size * t["nr_elems"]
        if kind == "STRUCT":
            return camel(t["name"]), t["size"]
        raise SystemExit(f"gen_types: unsupported BTF kind {kind} in the contract header")

    def struct(self, t: dict[str, Any]) -> str:
        lines = [f"class {camel(t['name'])}(ctypes.Structure):", f'    """``struct {t["name"]}``."""', ""]
        fields: list[str] = []
        offset = 0
        pad = 0
        for m in t["members"]:
            if m["bits_offset"] % 8:
                raise SystemExit(f"gen_types: bitfield {t['name']}.{m['name']} not supported")
            byte_off = m["bits_offset"] // 8
            if byte_off > offset:
                fields.append(f'        ("_pad{pad}", ctypes.c_uint8 * {byte_off - offset}),')
                pad += 1
            expr, size = self.ctype(m["type_id"])
            fields.append(f'        ("{m["name"]}", {expr}),')
            offset = byte_off + size
        if t["size"] > offset:
            fields.append(f'        ("_pad{pad}", ctypes.c_uint8 * {t["size"] - offset}),')
        lines.append("    _pack_ = 1")
        lines.append("    _fields_ = [")
        lines.extend(fields)
        lines.append("    ]")
        lines.append("")
        lines.append("")
        lines.append(f"assert ctypes.sizeof({camel(t['name'])}) == {t['size']}")
        return "\n".join(lines)

    @staticmethod
    def enum(t: dict[str, Any]) -> str:
        lines = [f"class {camel(t['name'])}(IntEnum):", f'    """``enum {t["name"]}``."""', ""]
        lines += [f"    {v['name']} = {v['val']}" for v in t["values"]]
        return "\n".join(lines)


def generate(btfs: dict[Path, dict[int, dict[str, Any]]]) -> str:
    structs, enums = contract_names(HEADER)
    found: dict[str, str] = {}
    for types in btfs.values():
        gen = Gen(types)
        for t in types.values():
            name = t.get("name")
            if t["kind"] == "STRUCT" and name in structs:
                code = gen.struct(t)
            elif t["kind"] == "ENUM" and name in enums:
                code = gen.enum(t)
            else:
                continue
            if name in found and found[name] != code:
                raise SystemExit(f"gen_types: {name} differs between objects (rebuild all)")
            found[name] = code
    missing = [n for n in structs + enums if n not in found]
    if missing:
        raise SystemExit(f"gen_types: not in any object's BTF (reference them in a .bpf.c): {missing}")
    parts = [found[n] for n in enums] + [found[n] for n in structs]  # enums first: structs may use them
    header = (
        '"""Layouts shared with the BPF programs. Generated by tools/gen_types.py from bpf/sentinel.h via\n'
        'the compiled objects\' BTF: do not edit, run `python tools/gen_types.py`."""\n\n'
        "import ctypes\nfrom enum import IntEnum\n"
    )
    return header + "\n\n" + "\n\n\n".join(parts) + "\n"


# -- map handles and global variables (_maps.py) ----------------------------------------------------


def section_layouts(obj: Path) -> tuple[dict[str, int], dict[str, dict[str, tuple[int, int]]]]:
    """Data section sizes, and {section: {variable: (offset, size)}}, as libbpf lays them out when it
    opens the object (the object file's BTF has no offsets in its DATASECs: libbpf fills them in from the
    symbol table), through the package's own libbpf binding."""
    sys.path.insert(0, str(ROOT / "src"))
    from sentinel_ebpf.errors import BpfError
    from sentinel_ebpf.libbpf import BpfObject

    sizes: dict[str, int] = {}
    layouts: dict[str, dict[str, tuple[int, int]]] = {}
    with BpfObject.open(obj) as opened:
        for section in DATA_SECTIONS:
            try:
                mapped, layout = opened.section_layout(section)
            except BpfError:
                continue  # the object has no such section
            sizes[section] = mapped.value_size
            layouts[section] = {name: (offset, size) for name, (offset, size, _) in layout.items()}
    return sizes, layouts


def type_name(types: dict[int, dict[str, Any]], type_id: int) -> str:
    """A BTF type as C spells it (typedef names kept: ``__u32``, ``struct flow_key``, ``__u16[8]``)."""
    t = types[type_id]
    kind = t["kind"]
    if kind in ("CONST", "VOLATILE", "RESTRICT"):
        return type_name(types, t["type_id"])
    if kind == "ARRAY":
        return f"{type_name(types, t['type_id'])}[{t['nr_elems']}]"
    if kind == "PTR":
        return f"{type_name(types, t['type_id'])} *"
    if kind in ("STRUCT", "UNION", "ENUM", "ENUM64"):
        return f"{kind.lower().removesuffix('64')} {t['name']}"
    return str(t["name"])


def strip(types: dict[int, dict[str, Any]], type_id: int) -> dict[str, Any]:
    t = types[type_id]
    while t["kind"] in ("TYPEDEF", "CONST", "VOLATILE", "RESTRICT"):
        t = types[t["type_id"]]
    return t


def map_doc(types: dict[int, dict[str, Any]], var: dict[str, Any]) -> str:
    """``LRU_HASH, max_entries 65536: struct flow_key -> struct inflight`` for a map of ``.maps``."""
    members = {m["name"]: m["type_id"] for m in types[var["type_id"]]["members"]}

    def number(field: str) -> int:  # __uint(field, N) is a pointer to an array of N elements
        return int(types[types[members[field]]["type_id"]]["nr_elems"])

    def kv(field: str) -> str | None:
        if field in members:
            return type_name(types, types[members[field]]["type_id"])
        if f"{field}_size" in members:
            return f"{number(f'{field}_size')} bytes"
        return None

    kind = number("type")
    doc = MAP_TYPES[kind] if kind < len(MAP_TYPES) else f"map type {kind}"
    if "max_entries" in members:
        doc += f", max_entries {number('max_entries')}"
    key, value = kv("key"), kv("value")
    if key is not None or value is not None:
        doc += f": {key or '-'} -> {value or '-'}"
    return doc


def py_type(types: dict[int, dict[str, Any]], type_id: int) -> str:
    """What ``BpfObject.set_rodata`` takes for a variable of this type."""
    t = strip(types, type_id)
    if t["kind"] == "INT":
        return "bool" if t["name"] == "_Bool" else "int"
    if t["kind"] in ("ENUM", "ENUM64"):
        return "int"
    if t["kind"] == "ARRAY":
        elem = strip(types, t["type_id"])
        return "bytes | str" if elem["kind"] == "INT" and elem["name"] == "char" else "list[int]"
    raise SystemExit(f"gen_types: read-only global of BTF kind {t['kind']} not supported")


class ObjectGen:
    """The ``_maps.py`` part of one object: ``<Name>Maps``, ``<Name>Rodata``/``Bss``, ``set_<name>_rodata``."""

    def __init__(self, obj: Path, types: dict[int, dict[str, Any]]) -> None:
        self.obj = obj
        self.stem = obj.name.removesuffix(".bpf.o")
        self.prefix = camel(self.stem)
        self.types = types
        self.sizes, self.symbols = section_layouts(obj)
        self.gen = Gen(types)
        self.sections: dict[str, list[dict[str, Any]]] = {}
        for t in types.values():
            if t["kind"] == "DATASEC" and (t["name"] == ".maps" or t["name"] in DATA_SECTIONS):
                self.sections[t["name"]] = [types[v["type_id"]] for v in t["vars"]]

    def maps_class(self) -> str:
        maps = sorted(self.sections.get(".maps", []), key=lambda v: str(v["name"]))
        data = [s for s in DATA_SECTIONS if s in self.sections]
        cls = f"{self.prefix}Maps"
        lines = [
            f"class {cls}:",
            f'    """The maps of ``{self.obj.name}``: ``{cls}(obj)`` once the object is open."""',
            "",
            "    def __init__(self, obj: BpfObject) -> None:",
        ]
        for var in maps:
            lines.append(f"        #: {map_doc(self.types, var)}")
            lines.append(f'        self.{var["name"]}: Map = obj.map("{var["name"]}")')
        for sec in data:
            attr = sec.lstrip(".")
            lines.append(f"        #: the ``{sec}`` section (key 0): :class:`{self.prefix}{camel(attr)}`")
            lines.append(f'        self.{attr}: Map = _section(obj, "{sec}")')
        lines += [
            "",
            "    def __iter__(self) -> Iterator[Map]:",
            '        """The maps of the ``.maps`` section (not the data sections)."""',
            "        return iter(",
            "            (",
        ]
        lines += [f"                self.{var['name']}," for var in maps]
        lines += ["            )", "        )"]
        return "\n".join(lines)

    def section_struct(self, sec: str) -> str:
        """The section's bytes as a ctypes structure (``_``-named variables are padding here)."""
        symbols = self.symbols.get(sec, {})
        placed = []
        for var in self.sections[sec]:
            if var["name"] not in symbols:
                raise SystemExit(f"gen_types: {self.obj.name}: no symbol for {sec} variable {var['name']}")
            placed.append((symbols[var["name"]][0], var))
        fields: list[str] = []
        offset = pad = 0
        for start, var in sorted(placed, key=lambda p: (p[0], str(p[1]["name"]))):
            if var["name"].startswith("_"):
                continue
            if start > offset:
                fields.append(f'        ("_pad{pad}", ctypes.c_uint8 * {start - offset}),')
                pad += 1
            expr, size = self.gen.ctype(var["type_id"])
            fields.append(f'        ("{var["name"]}", {expr}),')
            offset = start + size
        total = self.sizes[sec]
        if total > offset:
            fields.append(f'        ("_pad{pad}", ctypes.c_uint8 * {total - offset}),')
        name = f"{self.prefix}{camel(sec.lstrip('.'))}"
        lines = [
            f"class {name}(ctypes.Structure):",
            f'    """``{sec}`` of ``{self.obj.name}`` (``{self.prefix}Maps.{sec.lstrip(".")}``, key 0)."""',
            "",
            "    _pack_ = 1",
            "    _fields_ = [",
            *fields,
            "    ]",
            "",
            "",
            f"assert ctypes.sizeof({name}) == {total}",
        ]
        return "\n".join(lines)

    def rodata_setter(self) -> str:
        variables = [v for v in self.sections[".rodata"] if not v["name"].startswith("_")]
        variables.sort(key=lambda v: self.symbols[".rodata"][v["name"]][0])
        lines = [
            f"def set_{self.stem}_rodata(",
            "    obj: BpfObject,",
            "    *,",
            *(f"    {v['name']}: {py_type(self.types, v['type_id'])} | None = None," for v in variables),
            ") -> None:",
            f'    """Set read-only globals of ``{self.obj.name}`` before load (None: as compiled)."""',
            "    values: dict[str, RodataValue | None] = {",
            *(f'        "{v["name"]}": {v["name"]},' for v in variables),
            "    }",
            "    obj.set_rodata(**{name: value for name, value in values.items() if value is not None})",
        ]
        return "\n".join(lines)

    def parts(self) -> list[str]:
        out = []
        if self.sections.get(".maps") or any(s in self.sections for s in DATA_SECTIONS):
            out.append(self.maps_class())
        out += [self.section_struct(s) for s in DATA_SECTIONS if s in self.sections]
        if any(not v["name"].startswith("_") for v in self.sections.get(".rodata", [])):
            out.append(self.rodata_setter())
        return out


MAPS_HEADER = '''"""Map handles and global variables of the BPF objects, as libbpf skeletons have them. Generated by
tools/gen_types.py from the compiled objects' BTF and symbols: do not edit, run `python tools/gen_types.py`.

``InboundMaps(obj).port_slots`` is ``obj.map("port_slots")``: code names maps through these classes only.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sentinel_ebpf.libbpf import BpfObject, Map

RodataValue = int | bool | bytes | str | list[int]


def _section(obj: BpfObject, section: str) -> Map:
    """The internal map libbpf makes of a data section (named after the object: ``inbound_.bss``)."""
    for name, m in obj.maps.items():
        if name.endswith(section):
            return m
    raise KeyError(f"{obj.path.name} has no {section} map (has {sorted(obj.maps)})")
'''


def generate_maps(btfs: dict[Path, dict[int, dict[str, Any]]]) -> str:
    parts: list[str] = []
    for obj, types in sorted(btfs.items()):
        parts += ObjectGen(obj, types).parts()
    return MAPS_HEADER + "\n\n" + "\n\n\n".join(parts) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if a generated file is stale")
    args = parser.parse_args()
    objects = sorted(BPF_DIR.glob("*.bpf.o"))
    if not objects:
        print("gen_types: no compiled objects; run `python -m sentinel_ebpf._build` first", file=sys.stderr)
        return 1
    btfs = {obj: load_btf(obj) for obj in objects}
    outputs = {OUTPUT: generate(btfs), MAPS_OUTPUT: generate_maps(btfs)}
    stale = [path for path, text in outputs.items() if not path.exists() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(
                f"gen_types: {path.relative_to(ROOT)} is stale; run `python tools/gen_types.py`",
                file=sys.stderr,
            )
        if stale:
            return 1
        for path in outputs:
            print(f"gen_types: {path.relative_to(ROOT)} is up to date")
        return 0
    for path, text in outputs.items():
        path.write_text(text)
        print(f"gen_types: wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
