#!/usr/bin/env python3
"""The connection tracer against bcc's libbpf-tools ``tcpstates``, on the same connections.

A listener in a server namespace (accepts and closes), ``--procs`` client processes in a client namespace
making ``--connections`` connections in all, as fast as they can. ``sentinel-ebpf trace --json -P PORT``
and ``tcpstates -D PORT`` (Debian package ``libbpf-tools``) run at the same time. Counted: connect()s
the client processes made, connects our tracer printed as established, and ``SYN_SENT -> ESTABLISHED``
transitions tcpstates printed for the port; the rate of the run; lost events each tool reported.
Repeated ``--rounds`` times.

tcpstates attaches a classic tracepoint, which needs tracefs: it is mounted on /sys/kernel/tracing for
the run if it is not, and unmounted afterwards (sentinel-ebpf does not need it).

usage: sudo .venv/bin/python bench/tracer_vs_tcpstates.py [--connections 20000] [--procs 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from integration.background import LineProcess, sentinel_cli  # noqa: E402
from integration.netns import NetnsPair  # noqa: E402

PORT = 8480
TCPSTATES = "/usr/sbin/tcpstates"
TRACEFS = "/sys/kernel/tracing"

LISTENER = """
import socket
s = socket.create_server(("0.0.0.0", %d), backlog=4096)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.close()
"""
CLIENT = """
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ok = 0
for _ in range(n):
    try:
        with socket.create_connection((host, port), timeout=5):
            ok += 1
    except OSError:
        pass
print(ok)
"""


def tracefs_mounted() -> bool:
    return any(line.split()[2] == "tracefs" for line in Path("/proc/mounts").read_text().splitlines())


def one_round(pair: NetnsPair, n: int, procs: int) -> dict[str, float]:
    ours = LineProcess([*sentinel_cli(), "trace", "--json", "-P", str(PORT)])
    theirs = LineProcess([TCPSTATES, "-D", str(PORT)])
    try:
        ours.wait_stderr("sentinel-ebpf: tracing TCP connections", timeout=60)
        time.sleep(2)  # tcpstates prints no readiness line: give it time to attach
        t0 = time.monotonic()
        clients = [
            subprocess.Popen(
                pair.cmd(
                    pair.client, sys.executable, "-c", CLIENT, pair.server_ip, str(PORT), str(n // procs)
                ),
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(procs)
        ]
        made = sum(int(c.communicate(timeout=600)[0]) for c in clients)
        elapsed = time.monotonic() - t0

        def count_ours() -> int:
            return sum(
                1 for ln in ours.stdout if ln.startswith("{") and json.loads(ln)["outcome"] == "established"
            )

        def count_theirs() -> int:
            return sum(1 for ln in theirs.stdout if re.search(r"\bSYN_SENT\s+->\s+ESTABLISHED\b", ln))

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (count_ours() < made or count_theirs() < made):
            time.sleep(0.2)
        time.sleep(1)
        return {
            "made": made, "rate": made / elapsed, "ours": count_ours(), "tcpstates": count_theirs(),
            "ours_lost": sum(int(m.group(1)) for ln in ours.stderr if (m := re.search(r"(\d+) connection events lost", ln))),
            "tcpstates_lost": sum(int(m.group(1)) for ln in [*theirs.stderr, *theirs.stdout]
                                  if (m := re.search(r"[Ll]ost (\d+) events", ln))),
        }  # fmt: skip
    finally:
        ours.close()
        theirs.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=20000)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if not os.access(TCPSTATES, os.X_OK):
        sys.exit(f"{TCPSTATES} not found: apt-get install libbpf-tools")
    print(f"$ {' '.join(sys.argv)}")
    mounted_here = False
    if not tracefs_mounted():
        subprocess.run(["mount", "-t", "tracefs", "nodev", TRACEFS], check=True)
        mounted_here = True
    rows = []
    try:
        with NetnsPair("tt") as pair:
            listener = pair.popen(pair.server, sys.executable, "-c", LISTENER % PORT, stdout=subprocess.PIPE)
            pair.wait_listening(pair.server, PORT, listener)
            for _ in range(args.rounds):
                rows.append(one_round(pair, args.connections, args.procs))
    finally:
        if mounted_here:
            subprocess.run(["umount", TRACEFS], check=False)
    print(f"\n{'round':>5} {'connects':>9} {'per s':>7} {'sentinel-ebpf':>13} {'tcpstates':>9} {'ours/theirs':>11} "
          f"{'lost (ours)':>11} {'lost (tcpstates)':>16}")  # fmt: skip
    for i, r in enumerate(rows, 1):
        print(f"{i:>5} {r['made']:>9,} {r['rate']:>7,.0f} {r['ours']:>13,} {r['tcpstates']:>9,} "
              f"{r['ours'] / max(r['tcpstates'], 1):>11.4f} {r['ours_lost']:>11} {r['tcpstates_lost']:>16}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
