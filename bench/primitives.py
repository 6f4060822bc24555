"""What the building blocks of the data plane cost on this machine, through BPF_PROG_TEST_RUN.

usage: sudo .venv/bin/python -m bench.primitives [--repeat N] [--rounds R]

One TC program per primitive (bench/primitives.bpf.c, compiled here with the project's build flags):
a helper call (the clock, bpf_skb_load_bytes), an inlined array lookup with an atomic add or a per-CPU
increment, hash and LRU lookups with keys of the in-flight map's and the route table's sizes, an LRU
update of an existing key, and an LRU insert plus delete of a new key. Each runs ``--repeat`` times per
round on one TCP frame, rounds interleaved; printed: the median ns per run, minus the empty program's
(the floor of BPF_PROG_TEST_RUN itself). These set the floor of what ``tc_ingress`` can cost per packet:
a passing HTTP request needs the clock, a payload load, a route lookup and an in-flight lookup at least.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from bench._serverside import build_bench_object
from sentinel_ebpf.libbpf import BpfObject, Map
from tests.support.packets import ACK, PSH, tcp_frame

PROGRAMS = [
    "empty",
    "ktime_get_ns",
    "skb_load_bytes_8",
    "skb_load_bytes_64",
    "percpu_array_inc",
    "array_atomic_add",
    "hash_lookup_key40",
    "hash_lookup_key72",
    "lru_lookup_key40",
    "lru_update_existing",
    "lru_insert_delete",
]


class PrimitivesMaps:
    """The maps of ``primitives.bpf.o`` that the bench fills, named here only (as ``sentinel_ebpf._maps``
    has them for the project's objects): ``PrimitivesMaps(obj)`` once the object is open."""

    def __init__(self, obj: BpfObject) -> None:
        #: HASH, max_entries 65536: struct key40 -> struct val56 (the in-flight map's sizes)
        self.hash40: Map = obj.map("hash40")
        #: HASH, max_entries 65536, no prealloc: struct key72 -> __u32 (the route table's key size)
        self.hash72: Map = obj.map("hash72")
        #: LRU_HASH, max_entries 65536: struct key40 -> struct val56
        self.lru40: Map = obj.map("lru40")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("primitives.py needs root (BPF)")
    frame = tcp_frame("127.0.0.2", "127.0.0.1", 40000, 80, flags=PSH | ACK, payload=b"x" * 128)
    rounds: dict[str, list[float]] = {name: [] for name in PROGRAMS}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(__file__).with_name("primitives.bpf.c")
        with BpfObject.open(build_bench_object(src, Path(tmp))) as obj:
            obj.load()
            maps = PrimitivesMaps(obj)
            for inflight_sized in (maps.hash40, maps.lru40):
                inflight_sized.update(bytes(40), bytes(56))
            maps.hash72.update(bytes(72), bytes(4))
            for name in PROGRAMS:
                obj.program(name).test_run(frame, repeat=1000)  # warm up
            for r in range(args.rounds):
                order = PROGRAMS[r % len(PROGRAMS) :] + PROGRAMS[: r % len(PROGRAMS)]
                for name in order:
                    res = obj.program(name).test_run(frame, repeat=args.repeat)
                    if res.retval != 0:
                        sys.exit(f"{name} returned {res.retval}: the primitive failed")
                    rounds[name].append(float(res.duration_ns))
    floor = statistics.median(rounds["empty"])
    print("command: " + " ".join(["python", *sys.argv]))
    print(
        f"kernel: {os.uname().release}, cpus: {os.cpu_count()}; repeat={args.repeat:,}, {args.rounds} rounds"
    )
    print(f"{'primitive':<22} {'ns/run':>7} {'min':>7} {'net ns':>7}")
    for name in PROGRAMS:
        med = statistics.median(rounds[name])
        print(f"{name:<22} {med:>7.1f} {min(rounds[name]):>7.1f} {med - floor:>7.1f}")
    print("raw rounds:")
    for name in PROGRAMS:
        print(f"  {name:<22} {' '.join(f'{v:.0f}' for v in rounds[name])}")


if __name__ == "__main__":
    main()
