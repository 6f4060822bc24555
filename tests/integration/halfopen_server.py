"""Run inside the server namespace: a TCP server behind the inbound data plane, sock_ops included.

usage: halfopen_server.py RULES_YAML IFACE PORT
Prints "ready" once attached and listening; accepts connections and closes each when its client does.
On SIGTERM prints one JSON line: {"stats": {name: [pass, block, concurrency]}, "counters": {...}}.
`ip netns exec` gives the process a /sys of its own, without the cgroup mounts: the cgroup2 hierarchy is
mounted here, in that private mount namespace, for sock_ops.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from types import FrameType

from sentinel_ebpf.enforce import InboundDataplane
from sentinel_ebpf.rules import load_file


def serve(conn: socket.socket) -> None:
    with conn:
        while conn.recv(4096):
            pass


def main() -> None:
    rules_path, iface, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    cgroup_root = tempfile.mkdtemp(prefix="se-cgroup2-")
    try:
        subprocess.run(["mount", "-t", "cgroup2", "none", cgroup_root], check=True)
        run(rules_path, iface, port, cgroup_root)
    finally:
        subprocess.run(["umount", cgroup_root], check=False, capture_output=True)
        with contextlib.suppress(OSError):
            os.rmdir(cgroup_root)  # (it was left behind, empty, after each run)


def run(rules_path: str, iface: str, port: int, cgroup_root: str) -> None:
    srv = socket.socket(socket.AF_INET)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(1024)
    stop = threading.Event()

    def on_term(_sig: int, _frame: FrameType | None) -> None:
        stop.set()
        srv.close()

    signal.signal(signal.SIGTERM, on_term)
    with InboundDataplane() as dp:
        dp.apply(dp.compile(load_file(rules_path)))
        dp.attach(iface)
        dp.attach_sockops(cgroup_root)
        print(json.dumps("ready"), flush=True)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                break
            threading.Thread(target=serve, args=(conn,), daemon=True).start()
        stats = {s.name: [s.passed, s.blocked, s.concurrency] for s in dp.resource_stats()}
        print(json.dumps({"stats": stats, "counters": dp.counters()}), flush=True)


if __name__ == "__main__":
    main()
