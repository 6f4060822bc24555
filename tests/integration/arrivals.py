"""HTTP requests (a new connection each) for a bounded time, each stamped with CLOCK_MONOTONIC.

usage: arrivals.py HOST PORT PATH SECONDS [MAX_REQUESTS]

Prints {"arrivals": [[t_ns, outcome], ...]}: t_ns is time.monotonic_ns() just before the request bytes
are sent (the clock of the kernel's bpf_ktime_get_ns, so a test can feed the same arrivals to the
reference model); outcome is the HTTP status, or "reset" / "error". Sequential: the next request starts
when the previous one is answered. Standalone: no imports from the test package.
"""

from __future__ import annotations

import http.client
import json
import sys
import time


def main() -> None:
    host, port, path, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
    limit = int(sys.argv[5]) if len(sys.argv) > 5 else 200_000
    arrivals: list[tuple[int, str]] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and len(arrivals) < limit:
        conn = http.client.HTTPConnection(host, port, timeout=5)
        outcome = "error"
        t_ns = time.monotonic_ns()
        try:
            conn.connect()
            t_ns = time.monotonic_ns()
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            outcome = str(resp.status)
        except ConnectionResetError:
            outcome = "reset"
        except OSError:
            outcome = "error"
        finally:
            conn.close()
        arrivals.append((t_ns, outcome))
    json.dump({"arrivals": arrivals}, sys.stdout)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
