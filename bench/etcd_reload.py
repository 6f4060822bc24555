#!/usr/bin/env python3
"""Rules from etcd: a write of the etcd key to enforcement, beside the control socket's reload of a rules
file, in one run, on the same namespaces, nginx and prober.

nginx in a server namespace behind ``sentinel-ebpf run``; ``_prober.py`` in the client namespace prints
each answer with its CLOCK_MONOTONIC time (as in ``control_plane.py``). The rules alternate between a QPS
threshold of 0 on ``/`` (every request answered 429 by the kernel) and one far above the load.

- ``reload``: a daemon with ``-r FILE``; the new file renamed into place, then a control-socket
  ``reload``; latency from the rename.
- ``etcd put``: a daemon with ``-r etcd://127.0.0.1:2379/KEY`` (etcd inside the server namespace);
  ``_etcd_putter.py`` there writes the key; latency from just before the put is sent, so it includes
  the write's commit, the watch notification and the reload.

usage: sudo .venv/bin/python -m bench.etcd_reload [--changes 100]
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench._rule_change import OPEN, RELOAD, change_latencies, file_latencies, parse_args, report, serve
from tests.support.daemon_helpers import Daemon
from tests.support.etcd_server import EtcdServer
from tests.support.netns import NetnsPair

BENCH = Path(__file__).resolve().parent

KEY = "/bench/rules"
PUTTER = BENCH / "_etcd_putter.py"


def main() -> int:
    args = parse_args(__doc__)
    with NetnsPair("ep") as pair:
        with serve(pair) as d:
            results = file_latencies(pair, d, args.changes, (RELOAD,))
        etcd = EtcdServer(pair.tmpdir, pair=pair).start()
        putter = subprocess.Popen(pair.cmd(pair.server, sys.executable, str(PUTTER), etcd.url(KEY)),
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)  # fmt: skip
        assert putter.stdin is not None and putter.stdout is not None

        def by_put(threshold: int) -> tuple[float, bool]:
            putter.stdin.write(f"{threshold}\n")  # type: ignore[union-attr]
            putter.stdin.flush()  # type: ignore[union-attr]
            return float(putter.stdout.readline().split()[0]), True  # type: ignore[union-attr]

        try:
            by_put(OPEN)
            with Daemon(pair, "", source=etcd.url(KEY)):
                results["etcd put"] = change_latencies(pair, args.changes, by_put)
        finally:
            putter.kill()
            putter.wait()
            etcd.stop()

    report(results, "the change", 10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
