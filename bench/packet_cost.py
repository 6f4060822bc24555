"""Per-packet cost of the inbound ``tc_ingress`` program, measured with BPF_PROG_TEST_RUN.

usage: sudo python -m bench.packet_cost [--repeat N] [--rounds R] [--no-netns] [--json]

Each case loads a rule set into its own ``InboundDataplane`` (real clock, as attached), builds one frame
and runs ``tc_ingress`` on it ``--repeat`` times per round (the kernel reports the average per run); the
rounds of all cases are interleaved (case by case in turn, the order rotating each round) and the figure
is the median of ``--rounds`` rounds, with the minimum beside it. Printed: ns per packet and the ratio to the non-matching
TCP packet, then the raw round figures.

Caveats, measured as they are:
* BPF_PROG_TEST_RUN reuses one skb and one 4-tuple for every repeat. A passing request inserts its tuple
  into the in-flight LRU map; from the second repeat on that tuple is already present, so the figure is
  "lookup hit + replace the entry" (plus undoing the previous entry's concurrency), not "insert a new
  tuple into a map that may have to evict". Real traffic pays the LRU node allocation on each new
  request; it is of the same order (an LRU hash update always takes a fresh node) but eviction when the
  map is full is not measured here.
* BPF_PROG_TEST_RUN does not restore the skb between repeats. A blocked request rewrites the test skb
  into a RST for the server, so with ``repeat`` only the first run would be a blocked request. Blocked
  cases are therefore run with repeat=1, up to 20,000 calls per round, and the kernel's per-call figure
  averaged (it includes a little timer overhead that the repeat loop amortises).
* Blocked requests: test_run really transmits the reply clones (the 429 response or the RST) out of the
  test skb's device, which is the loopback of the current network namespace. Frames use 127.0.0.x
  addresses, and by default the script first moves itself into a private network namespace (lo up) so
  those packets never touch the host's loopback. The blocked figures include building, checksumming and
  transmitting the clones on lo (and the stack answering them), which is the real cost of a rejection.
* The frames belong to connections that do not exist, so the objects are loaded with
  ``socket_lookup=False`` (every data segment taken as the next bytes of its stream). Attached, a data
  segment on a port with HTTP resources also pays the socket lookup (``bpf_skc_lookup_tcp`` and
  ``bpf_skc_to_tcp_sock``), which these figures leave out.
* The floor: BPF_PROG_TEST_RUN itself costs about 40 ns per repeat on this machine even for a program
  that only returns (the first row, ``probe_tc`` from probes.bpf.o, on the same frame). "net" is a
  row's figure minus that floor: the program's own cost.
* Resources name ``method: GET`` and distinct paths of one length on one port (the route table then
  needs one hash probe per request; routes of k distinct lengths on a port need up to ceil(log2(k+1))).
  A resource without a method takes one route per HTTP method (9).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from sentinel_ebpf._types import SentinelLimits
from sentinel_ebpf.enforce import InboundDataplane
from sentinel_ebpf.libbpf import BpfObject
from sentinel_ebpf.objects import object_path
from sentinel_ebpf.rules import load_text
from tests.support.packets import ACK, PSH, SYN, SYN_OPTIONS, http_request, http_response, tcp_frame

CLONE_NEWNET = 0x40000000
HTTP_PORT = 8080
TCP_PORT = 9000
OTHER_PORT = 5555
CLIENT, SERVER = "127.0.0.2", "127.0.0.1"
MAX_RESOURCES = int(SentinelLimits.SE_MAX_RESOURCES) - 1
BIG = 1_000_000_000  # a threshold nothing in a benchmark reaches


def private_netns() -> None:
    """Move this process into a new network namespace with ``lo`` up (test_run transmits on its lo)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=10)


def http_rules(n: int, threshold: int, reject: str = "") -> str:
    lines = ["resources:"]
    lines += [
        f"  - {{name: r{i:05d}, match: {{protocol: http, port: {HTTP_PORT}, method: GET, path: /api/r{i:05d}}}}}"
        for i in range(n)
    ]
    lines += [f"  - {{name: conns, match: {{protocol: tcp, port: {TCP_PORT}}}}}"]
    lines += ["flowRules:"]
    lines += [f"  - {{resource: r{i:05d}, threshold: {threshold}, statIntervalInMs: 1000}}" for i in range(n)]
    lines += [f"  - {{resource: conns, threshold: {BIG}, statIntervalInMs: 1000}}"]
    if reject:
        lines += ["reject:", f"  http: {reject}"]
    return "\n".join(lines) + "\n"


def req_frame(path: str, sport: int = 40000) -> bytes:
    return tcp_frame(CLIENT, SERVER, sport, HTTP_PORT, flags=PSH | ACK, payload=http_request("GET", path))


def _with_sport(frame: bytes, sport: int) -> bytes:
    """The same IPv4 TCP frame from another client port (the TCP checksum is patched, RFC 1624)."""
    off = 14 + 20
    old = int.from_bytes(frame[off : off + 2], "big")
    csum = int.from_bytes(frame[off + 16 : off + 18], "big")
    total = (~csum & 0xFFFF) + (~old & 0xFFFF) + sport
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    new_csum = ~total & 0xFFFF
    return (
        frame[:off] + sport.to_bytes(2, "big") + frame[off + 2 : off + 16] + new_csum.to_bytes(2, "big")
        + frame[off + 18 :]
    )  # fmt: skip


def resp_frame(sport: int = 40000) -> bytes:
    return tcp_frame(SERVER, CLIENT, HTTP_PORT, sport, flags=PSH | ACK, payload=http_response(200))


def malformed_frame() -> bytes:
    """IPv4 claiming TCP, total length beyond the frame, TCP header cut after 8 bytes."""
    full = req_frame("/api/r00000")
    return full[: 14 + 20 + 8]


@dataclass
class Case:
    name: str
    rules: str
    frame: bytes
    note: str = ""
    per_call: bool = False  # the program rewrites the skb: one run per syscall (see module doc)
    new_tuple: bool = False  # per call, a new client port each call (a fresh in-flight entry)
    response: bytes = b""  # per call, also run tc_egress on this frame (the request's response)
    idle_connections: int | None = None  # InboundDataplane(idle_connections=...): None is the default
    rounds: list[float] = field(default_factory=list)
    retval: int = 0
    counters: dict[str, int] = field(default_factory=dict)
    stats: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def ns(self) -> float:
        return statistics.median(self.rounds)


def cases() -> list[Case]:
    mid = 5  # a resource in the middle of every table
    out = [
        Case(
            "non-matching TCP packet (no resource on its port)",
            http_rules(1000, BIG),
            tcp_frame(CLIENT, SERVER, 40000, OTHER_PORT, flags=PSH | ACK, payload=b"x" * 64),
            "1,000 HTTP resources loaded on another port",
        ),
        Case(
            "non-matching TCP packet, repeat=1 per call",
            http_rules(1000, BIG),
            tcp_frame(CLIENT, SERVER, 40000, OTHER_PORT, flags=PSH | ACK, payload=b"x" * 64),
            "baseline for the per-call rows",
            per_call=True,
        ),
        Case(
            "TCP SYN to a protected port, passes (new tuple)",
            http_rules(10, BIG),
            tcp_frame(CLIENT, SERVER, 40001, TCP_PORT, flags=SYN, options=SYN_OPTIONS),
            "repeat=1 per call, new client port each",
            per_call=True,
            new_tuple=True,
        ),
        Case(
            "TCP SYN retransmitted (same tuple), repeat",
            http_rules(10, BIG),
            tcp_frame(CLIENT, SERVER, 40001, TCP_PORT, flags=SYN, options=SYN_OPTIONS),
            "counted once, then in-flight hit: TC_ACT_OK",
        ),
    ]
    for n in (10, 100, 1000, 10_000):
        loaded = min(n, MAX_RESOURCES - 1)  # one slot is the tcp resource
        note = "" if loaded == n else f"not loadable (max {MAX_RESOURCES}): measured with {loaded}"
        out.append(
            Case(
                f"HTTP request matched, passes, {n:,} resources",
                http_rules(loaded, BIG),
                req_frame(f"/api/r{min(mid, loaded - 1):05d}/item?id=7"),
                note,
            )
        )
    out += [
        Case(
            "HTTP request matched, passes, 1,000 res., new tuple",
            http_rules(1000, BIG),
            req_frame(f"/api/r{mid:05d}/item?id=7"),
            "repeat=1 per call, new client port each",
            per_call=True,
            new_tuple=True,
        ),
        Case(
            "keep-alive request + response, entry kept idle",
            http_rules(1000, BIG),
            req_frame(f"/api/r{mid:05d}/item?id=7"),
            "per call: tc_ingress(request) + tc_egress(response); 2x the per-call baseline",
            per_call=True,
            response=resp_frame(),
        ),
        Case(
            "keep-alive request + response, idle_connections=0",
            http_rules(1000, BIG),
            req_frame(f"/api/r{mid:05d}/item?id=7"),
            "as above; the entry is deleted at each response (insert + delete per request)",
            per_call=True,
            response=resp_frame(),
            idle_connections=0,
        ),
        Case(
            "HTTP request blocked, 429 reply built in kernel",
            http_rules(10, 0),
            req_frame("/api/r00005"),
            "a first refusal (new client port each): the 429 in the stream, sent on lo; repeat=1 per call",
            per_call=True,
            new_tuple=True,
        ),
        Case(
            "HTTP request refused again, 429 sent again",
            http_rules(10, 0),
            req_frame("/api/r00005"),
            "one tuple: the same request again (its reply lost), answered from the stream's record",
            per_call=True,
        ),
        Case(
            "HTTP request blocked, RST mode",
            http_rules(10, 0, "{mode: rst}"),
            req_frame("/api/r00005"),
            "RST clones transmitted on lo (new client port each); repeat=1 per call",
            per_call=True,
            new_tuple=True,
        ),
        Case("malformed packet (truncated TCP header)", http_rules(10, BIG), malformed_frame()),
    ]
    return out


def floor_rounds(obj: BpfObject, case: Case, repeat: int, rounds: int) -> Iterator[None]:
    """An empty TC program (``return TC_ACT_OK``) through the same BPF_PROG_TEST_RUN loop."""
    prog = obj.program("probe_tc")
    prog.test_run(case.frame, repeat=1000)
    for _ in range(rounds):
        yield
        res = prog.test_run(case.frame, repeat=repeat)
        case.rounds.append(float(res.duration_ns))
        case.retval = res.retval


def case_rounds(dp: InboundDataplane, case: Case, repeat: int, rounds: int) -> Iterator[None]:
    """Measure one round of ``case`` per step (the caller interleaves the cases round by round)."""
    dp.apply(dp.compile(load_text(case.rules)))
    prog, egress = dp.obj.program("tc_ingress"), dp.obj.program("tc_egress")
    prog.test_run(case.frame, repeat=1000)  # warm up maps and caches
    calls = min(repeat, 10_000 if case.new_tuple else 20_000)
    frames = [case.frame]
    if case.new_tuple:  # distinct over all rounds (at most 64,000 ports)
        frames = [_with_sport(case.frame, 1024 + i % 64_000) for i in range(calls * rounds)]
    k = 0
    before = dp.counters()
    for _ in range(rounds):
        yield
        if case.per_call:
            runs = []
            extra = 0
            for _ in range(calls):
                runs.append(prog.test_run(frames[k % len(frames)]))
                if case.response:
                    extra += egress.test_run(case.response).duration_ns
                k += 1
            case.rounds.append(statistics.fmean(r.duration_ns for r in runs) + extra / calls)
            res = runs[-1]
        else:
            res = prog.test_run(case.frame, repeat=repeat)
            case.rounds.append(float(res.duration_ns))
        case.retval = res.retval
    case.counters = {k: v - before.get(k, 0) for k, v in dp.counters().items()}
    case.stats = {s.name: (s.passed, s.blocked) for s in dp.resource_stats() if s.passed or s.blocked}


def table(results: list[Case], repeat: int, rounds: int) -> str:
    floor = results[0].ns if results[0].name.startswith("empty") else 0.0
    base = next((c.ns for c in results if c.name.startswith("non-matching")), results[0].ns)
    rows = [
        f"tc_ingress via BPF_PROG_TEST_RUN: repeat={repeat:,}, median of {rounds} rounds",
        f"{'case':<52} {'ns/pkt':>8} {'min':>7} {'net ns':>7} {'x non-match':>11} {'tc ret':>6}  note",
    ]
    for c in results:
        rows.append(
            f"{c.name:<52} {c.ns:>8.1f} {min(c.rounds):>7.1f} {c.ns - floor:>7.1f} {c.ns / base:>11.2f} "
            f"{c.retval:>6}  {c.note}"
        )
    flat = [c for c in results if c.name.startswith("HTTP request matched") and not c.per_call]
    if flat:
        lo, hi = min(c.ns for c in flat), max(c.ns for c in flat)
        rows.append(
            f"matched-request spread across resource counts: {100 * (hi - lo) / lo:.1f}% (max/min - 1), "
            f"net of the floor {100 * (hi - lo) / max(lo - floor, 1):.1f}%"
        )
    rows.append("")
    rows.append("raw rounds (ns per run, as reported by the kernel):")
    for c in results:
        rows.append(f"  {c.name:<52} {' '.join(f'{r:.1f}' for r in c.rounds)}")
    rows.append("")
    rows.append("what the program counted per case (resource: passed, blocked; data-plane counters != 0):")
    for c in results:
        nz = {k: v for k, v in c.counters.items() if v}
        rows.append(f"  {c.name:<52} {c.stats} {nz}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-netns", action="store_true", help="stay in the current network namespace")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--only", default="", help="run only cases whose name contains this text")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("packet_cost.py needs root (BPF)")
    if not args.no_netns:
        private_netns()
    results = [c for c in cases() if args.only.lower() in c.name.lower()]
    progress: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    with contextlib.ExitStack() as stack:
        # One loaded object per case, all loaded first: the rounds then go case by case in turn (the
        # order rotating), so a burst of other work on the machine does not land on one case only.
        steps: list[Iterator[None]] = []
        if not args.only:
            floor = Case("empty TC program (test_run floor)", "", results[0].frame, "probes.bpf.o probe_tc")
            results.insert(0, floor)
            probes = stack.enter_context(BpfObject.open(object_path("probes")))
            for name, prog in probes.programs.items():
                prog.autoload = name == "probe_tc"
            probes.load()
            steps.append(floor_rounds(probes, floor, args.repeat, args.rounds))
        for case in results[len(steps) :]:
            progress(f"loading: {case.name}")
            dp = stack.enter_context(
                InboundDataplane(idle_connections=case.idle_connections, socket_lookup=False)
            )
            steps.append(case_rounds(dp, case, args.repeat, args.rounds))
            next(steps[-1])  # rules applied, warmed up
        for r in range(args.rounds):
            progress(f"round {r + 1}/{args.rounds}")
            order = steps[r % len(steps) :] + steps[: r % len(steps)]
            for step in order:
                next(step, None)
        for step in steps:
            next(step, None)  # the final counters
    print("command: " + " ".join(["python", *sys.argv]))
    print(f"kernel: {os.uname().release}, cpus: {os.cpu_count()}")
    if args.json:
        print(
            json.dumps(
                [{"case": c.name, "ns": c.ns, "rounds": c.rounds, "retval": c.retval} for c in results]
            )
        )
    print(table(results, args.repeat, args.rounds))


if __name__ == "__main__":
    main()
