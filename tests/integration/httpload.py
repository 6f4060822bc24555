"""A bounded HTTP load: sequential requests (new connection each) for a fixed time, counted by status.

usage: httpload.py HOST PORT PATH SECONDS [MAX_REQUESTS] [RATE_QPS]
With RATE_QPS, requests start at that pace (one every 1/RATE_QPS s) instead of back to back.
Prints {"status": {"200": n, "429": n, "reset": n, "error": n}, "sent": n}.
"""

from __future__ import annotations

import http.client
import json
import sys
import time
from collections import Counter


def main() -> None:
    host, port, path, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
    limit = int(sys.argv[5]) if len(sys.argv) > 5 else 100_000
    rate_qps = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0
    counts: Counter[str] = Counter()
    start = time.monotonic()
    deadline = start + seconds
    sent = 0
    while time.monotonic() < deadline and sent < limit:
        if rate_qps:
            time.sleep(max(0.0, start + sent / rate_qps - time.monotonic()))
        sent += 1
        conn = http.client.HTTPConnection(host, port, timeout=5)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            counts[str(resp.status)] += 1
        except ConnectionResetError:
            counts["reset"] += 1
        except OSError:
            counts["error"] += 1
        finally:
            conn.close()
    print(json.dumps({"status": dict(counts), "sent": sent}), flush=True)


if __name__ == "__main__":
    main()
