"""A bounded, paced HTTP load: one request per new connection at RATE per second (0: as fast as possible)
for SECONDS, counted by status.

usage: ratedload.py HOST PORT PATH SECONDS RATE
Prints {"status": {"200": n, "429": n, "reset": n, "error": n}, "sent": n}.
"""

from __future__ import annotations

import http.client
import json
import sys
import time
from collections import Counter


def main() -> None:
    host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    seconds, rate = float(sys.argv[4]), float(sys.argv[5])
    counts: Counter[str] = Counter()
    start = time.monotonic()
    deadline = start + seconds
    sent = 0
    while (now := time.monotonic()) < deadline and sent < 1_000_000:
        if rate > 0 and now < start + sent / rate:
            time.sleep(min(start + sent / rate - now, deadline - now))
            continue
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
