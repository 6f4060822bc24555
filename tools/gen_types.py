#!/usr/bin/env python3
"""Generate ``src/sentinel_ebpf/_types.py`` from the compiled BPF objects' BTF.

The structs and enums named in ``bpf/sentinel.h`` (the kernel/user contract) are read from the BTF of
the compiled objects (``bpftool -j btf dump``), so their Python layouts are never typed by hand.
``--check`` exits 1 when the committed file differs from what the objects say (run in CI).
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

INT_TYPES = {
    (1, False): "ctypes.c_uint8", (1, True): "ctypes.c_int8",
    (2, False): "ctypes.c_uint16", (2, True): "ctypes.c_int16",
    (4, False): "ctypes.c_uint32", (4, True): "ctypes.c_int32",
    (8, False): "ctypes.c_uint64", (8, True): "ctypes.c_int64",
}  # fmt: skip


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


def generate(objects: list[Path]) -> str:
    structs, enums = contract_names(HEADER)
    found: dict[str, str] = {}
    for obj in objects:
        types = load_btf(obj)
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the generated file is stale")
    args = parser.parse_args()
    objects = sorted(BPF_DIR.glob("*.bpf.o"))
    if not objects:
        print("gen_types: no compiled objects; run `python -m sentinel_ebpf._build` first", file=sys.stderr)
        return 1
    text = generate(objects)
    if args.check:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            print(
                f"gen_types: {OUTPUT.relative_to(ROOT)} is stale; run `python tools/gen_types.py`",
                file=sys.stderr,
            )
            return 1
        print(f"gen_types: {OUTPUT.relative_to(ROOT)} is up to date")
        return 0
    OUTPUT.write_text(text)
    print(f"gen_types: wrote {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
