"""Write the rules key of an etcd on request: one line ``THRESHOLD`` in, one line
``<monotonic before the put> <revision>`` out (run inside the server namespace; CLOCK_MONOTONIC is
host-wide). usage: _etcd_putter.py ETCD_URL
"""

from __future__ import annotations

import sys
import time

from sentinel_ebpf.sources.etcd import EtcdClient
from sentinel_ebpf.sources.url import parse_etcd_url

RULES = """resources:
  - {{name: root, match: {{protocol: http, port: 8080, path: /}}}}
flowRules:
  - {{resource: root, threshold: {threshold}, statIntervalInMs: 1000}}
"""


def main() -> None:
    client = EtcdClient(parse_etcd_url(sys.argv[1]))
    for line in sys.stdin:
        document = RULES.format(threshold=int(line)).encode()
        t = time.monotonic()
        revision = client.put(document)
        print(f"{t:.6f} {revision}", flush=True)


if __name__ == "__main__":
    main()
