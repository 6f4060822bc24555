#!/usr/bin/env python3
"""Connection tracer: connects per second traced with nothing lost, counted against bcc's tcpstates.

usage: sudo .venv/bin/python -m bench.tracer [--connections 20000] [--procs 2] [--rates 5000,max]

A client/server namespace pair (tests/support/netns.py). In the server namespace bench/_conns.py
accepts and closes; in the client namespace ``--procs`` processes of bench/_conns.py open
``--connections`` connections in all (each closed at once with a RST), at each total rate of
``--rates`` connections per second (``max``: as fast as they can). Two tracers run at once in the host
namespace (both see every namespace):

  sentinel-ebpf trace --json -P PORT      this project (sock:inet_sock_set_state as tp_btf/raw_tp)
  tcpstates -4 -D PORT                    libbpf-tools (Debian libbpf-tools), sock:inet_sock_set_state
                                          as a tracefs tracepoint, perf buffer

Counted, for connections to the server's address and port only: the client's own count, the lines the
project's tracer printed (one per connection, at its outcome), and tcpstates' CLOSE -> SYN_SENT
transitions (one per connect()), plus both tools' lost-event reports and their CPU time from just
before the connections start until both have drained (start-up not counted). tracefs is
mounted at /sys/kernel/tracing when it is not (tcpstates needs it), and unmounted afterwards only then.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.support.background import sentinel_cli
from tests.support.netns import NetnsPair
from tests.support.procstat import cpu_seconds

CONNS = Path(__file__).with_name("_conns.py")
TRACEFS = Path("/sys/kernel/tracing")


def find_tcpstates() -> str | None:
    for cand in (shutil.which("tcpstates"), "/usr/sbin/tcpstates", "/usr/share/libbpf-tools/tcpstates"):
        if cand and Path(cand).exists():
            return cand
    return None


def tracefs_mounted() -> bool:
    with open("/proc/mounts") as f:
        return any(line.split()[2] == "tracefs" for line in f)


@contextlib.contextmanager
def tracefs() -> Any:
    """Mount tracefs for tcpstates if nothing has; unmount only what this mounted."""
    mounted = False
    if not tracefs_mounted():
        subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACEFS)], check=True)
        mounted = True
        print(f"mounted tracefs at {TRACEFS} (unmounted at the end)", flush=True)
    try:
        yield
    finally:
        if mounted:
            res = subprocess.run(["umount", str(TRACEFS)], capture_output=True, text=True, check=False)
            if res.returncode:
                print(f"could not unmount {TRACEFS}: {res.stderr.strip()}", file=sys.stderr)


def wait_for(path: Path, text: str, proc: subprocess.Popen[Any], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while text not in (path.read_text(errors="replace") if path.exists() else ""):
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}: {path.read_text()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{proc.args!r}: no {text!r} after {timeout}s")
        time.sleep(0.05)


def stop(proc: subprocess.Popen[Any]) -> int:
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(10)


def one_run(pair: NetnsPair, port: int, tcpstates: str, n: int, procs: int, rate: float) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"run-{rate:g}-", dir=pair.tmpdir))
    files = {k: work / k for k in ("se.out", "se.err", "ts.out", "ts.err")}
    outs = {k: open(p, "w") for k, p in files.items()}  # noqa: SIM115 - closed below
    se_argv = [*sentinel_cli(), "trace", "--json", "-P", str(port)]
    ts_argv = [tcpstates, "-4", "-D", str(port)]
    se = subprocess.Popen(se_argv, stdout=outs["se.out"], stderr=outs["se.err"], stdin=subprocess.DEVNULL)
    ts = subprocess.Popen(ts_argv, stdout=outs["ts.out"], stderr=outs["ts.err"], stdin=subprocess.DEVNULL)
    try:
        wait_for(files["se.err"], "tracing TCP connections", se)
        time.sleep(2)  # tcpstates prints nothing when ready (stdout is a file: buffered); it loads in < 1 s
        if ts.poll() is not None:
            raise RuntimeError(f"tcpstates exited with {ts.returncode}: {files['ts.err'].read_text()}")
        cpu0 = {"se": cpu_seconds(se.pid), "ts": cpu_seconds(ts.pid)}  # start-up (loading) is not counted
        per = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
        argv = [sys.executable, str(CONNS), "connect", pair.server_ip, str(port)]
        clients = [pair.popen(pair.client, *argv, str(k), str(rate / procs if rate else 0),
                              stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True) for k in per]  # fmt: skip
        results = [json.loads(c.communicate(timeout=600)[0]) for c in clients]
        time.sleep(2)  # both tracers drain what is buffered
        cpu = {"se": cpu_seconds(se.pid) - cpu0["se"], "ts": cpu_seconds(ts.pid) - cpu0["ts"]}
    finally:
        for p in (se, ts):
            if p.poll() is None:
                stop(p)
        for f in outs.values():
            f.close()
    start = min(r["start_ns"] for r in results)
    end = max(r["end_ns"] for r in results)
    made = sum(r["established"] for r in results)

    se_lines = [json.loads(ln) for ln in files["se.out"].read_text().splitlines() if ln.startswith("{")]
    mine = [c for c in se_lines if c["daddr"] == pair.server_ip and c["dport"] == port]
    se_lost = sum(int(m) for m in re.findall(r"(\d+) connection events lost", files["se.err"].read_text()))
    syn_sent = established = 0
    for line in files["ts.out"].read_text().splitlines():
        col = line.split()  # ... LADDR LPORT RADDR RPORT OLDSTATE -> NEWSTATE MS
        if len(col) < 9 or col[-3] != "->" or col[-6] != pair.server_ip or col[-5] != str(port):
            continue
        syn_sent += col[-4] == "CLOSE" and col[-2] == "SYN_SENT"
        established += col[-4] == "SYN_SENT" and col[-2] == "ESTABLISHED"
    ts_lost = sum(int(m) for m in re.findall(r"lost (\d+) events", files["ts.err"].read_text()))
    return {
        "rate": rate, "made": made, "failed": sum(r["failed"] for r in results),
        "seconds": (end - start) / 1e9, "per_s": made / ((end - start) / 1e9),
        "se": len(mine), "se_established": sum(c["outcome"] == "established" for c in mine),
        "se_unique": len({c["sport"] for c in mine}), "se_lost": se_lost, "se_cpu": cpu["se"],
        "ts": syn_sent, "ts_established": established, "ts_lost": ts_lost, "ts_cpu": cpu["ts"],
        "se_command": shlex.join(se_argv), "ts_command": shlex.join(ts_argv),
        "client_command": f"{procs} x " + shlex.join(["ip", "netns", "exec", pair.client, *argv, "N", "RATE"]),
        "se_stderr": files["se.err"].read_text().strip(), "ts_stderr": files["ts.err"].read_text().strip(),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=20000)
    ap.add_argument("--procs", type=int, default=2, help="client processes")
    ap.add_argument("--rates", default="5000,max", help="total connections/s per run; 'max': unpaced")
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (BPF, tracefs, network namespaces)")
    tcpstates = find_tcpstates()
    if tcpstates is None:
        sys.exit("tcpstates not found: apt-get install libbpf-tools")
    print("command:", shlex.join([sys.executable, *sys.argv]), flush=True)
    rates = [0.0 if r == "max" else float(r) for r in args.rates.split(",")]
    runs = []
    with tracefs(), NetnsPair("trc") as pair:
        port = random.randint(20000, 29999)
        server = pair.popen(
            pair.server, sys.executable, str(CONNS), "serve", str(port), stdin=subprocess.DEVNULL
        )
        pair.wait_listening(pair.server, port, server)
        for _ in range(args.rounds):
            for rate in rates:
                run = one_run(pair, port, tcpstates, args.connections, args.procs, rate)
                runs.append(run)
                print(
                    f"  rate {'max' if not rate else f'{rate:g}'}: {run['per_s']:,.0f} connections/s",
                    flush=True,
                )
    print(f"sentinel-ebpf: {runs[0]['se_command']}\ntcpstates:     {runs[0]['ts_command']}\n"
          f"clients:       {runs[0]['client_command']}\n")  # fmt: skip
    print(f"{'offered/s':>9} {'conn/s':>8} {'made':>7} {'sentinel':>8} {'lost':>5} {'tcpstates':>9} {'lost':>5} "
          f"{'same':>5} {'CPU s (se/ts)':>14}")  # fmt: skip
    for r in runs:
        same = "yes" if r["made"] == r["se"] == r["ts"] else "NO"
        offered = "max" if not r["rate"] else f"{r['rate']:,.0f}"
        print(f"{offered:>9} {r['per_s']:>8,.0f} {r['made']:>7} "
              f"{r['se']:>8} {r['se_lost']:>5} {r['ts']:>9} {r['ts_lost']:>5} {same:>5} "
              f"{r['se_cpu']:>6.2f}/{r['ts_cpu']:<6.2f}")  # fmt: skip
    print("\nraw:")
    for r in runs:
        print(json.dumps({k: v for k, v in r.items() if not k.endswith("_command")}))


if __name__ == "__main__":
    main()
