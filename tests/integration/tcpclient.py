"""A TCP client that reports what its sockets saw, as JSON lines (run it inside a namespace).

    tcpclient.py HOST PORT [--bind ADDR] [--timeout S]
                                           one connect(), one JSON line, exit
    tcpclient.py --serve                   print {"ready": ...}, then one connect() per stdin line
                                           "HOST PORT [BIND]", one JSON line each; exit on EOF

Each result: pid, tid, uid, comm, family, host, port, ok, errno, sockname [addr, port] (after the attempt,
also when it failed), peername, route_src (the source address the kernel's route lookup picks for HOST,
which is the one a failed attempt used: Linux resets a failed socket's address to the wildcard) and
t_start/t_end (wall clock around connect()). Standalone: no imports from the test package.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import sys
import threading
import time


def comm() -> str:
    with open("/proc/self/comm") as f:
        return f.read().strip()


def route_src(family: int, host: str, port: int) -> str:
    """Source address the kernel picks for host (a UDP connect sends nothing)."""
    with socket.socket(family, socket.SOCK_DGRAM) as u:
        u.connect((host, port))
        return str(u.getsockname()[0])


def attempt(host: str, port: int, bind: str | None = None, timeout: float = 10) -> dict[str, object]:
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    out: dict[str, object] = {
        "pid": os.getpid(),
        "tid": threading.get_native_id(),
        "uid": os.getuid(),
        "comm": comm(),
        "family": 4 if family == socket.AF_INET else 6,
        "host": host,
        "port": port,
    }
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        if bind:
            s.bind((bind, 0))
        out["t_start"] = time.time()
        try:
            s.connect((host, port))
        except OSError as exc:
            out.update(ok=False, errno=exc.errno, error=str(exc), peername=None)
        else:
            out.update(ok=True, errno=0, error=None, peername=list(s.getpeername()[:2]))
        out["t_end"] = time.time()
        out["sockname"] = list(s.getsockname()[:2])
    out["route_src"] = route_src(family, host, port)
    return out


def main(argv: list[str]) -> int:
    if argv[:1] == ["--serve"]:
        print(json.dumps({"ready": True, "pid": os.getpid(), "comm": comm()}), flush=True)
        for line in sys.stdin:
            words = line.split()
            if not words:
                continue
            bind = words[2] if len(words) > 2 else None
            print(json.dumps(attempt(words[0], int(words[1]), bind)), flush=True)
        return 0
    host, port = argv[0], int(argv[1])
    bind = argv[argv.index("--bind") + 1] if "--bind" in argv else None
    timeout = float(argv[argv.index("--timeout") + 1]) if "--timeout" in argv else 10
    print(json.dumps(attempt(host, port, bind, timeout)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
