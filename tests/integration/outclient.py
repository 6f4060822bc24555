"""Run inside the client namespace (and a test cgroup): connect() attempts, reported as JSON.

usage: outclient.py HOST PORT COUNT [--hold] [--gap-ms MS]
Prints one JSON list: [{"ok": bool, "errno": int, "ms": float}] — with --hold every connected socket
stays open until the end (concurrent connections).
"""

from __future__ import annotations

import json
import socket
import sys
import time


def main() -> None:
    host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    hold = "--hold" in sys.argv
    gap_ms = float(sys.argv[sys.argv.index("--gap-ms") + 1]) if "--gap-ms" in sys.argv else 0.0
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    held, results = [], []
    for _ in range(count):
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(5)
        t0 = time.perf_counter()
        err = s.connect_ex((host, port))
        results.append({"ok": err == 0, "errno": err, "ms": (time.perf_counter() - t0) * 1000})
        if err == 0 and hold:
            held.append(s)
        else:
            s.close()
        if gap_ms:
            time.sleep(gap_ms / 1000)
    print(json.dumps(results), flush=True)
    for s in held:
        s.close()


if __name__ == "__main__":
    main()
