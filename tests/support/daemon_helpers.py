"""Running `sentinel-ebpf run` in a test namespace, and bounded HTTP load against it."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from sentinel_ebpf._closing import Closing
from sentinel_ebpf.daemon import request

from .background import LineProcess, sentinel_cli
from .netns import TIMEOUT_SCALE, NetnsPair

LOAD = Path(__file__).resolve().parents[1] / "integration" / "httpload.py"


class Daemon(Closing):
    def __init__(
        self,
        pair: NetnsPair,
        rules: str,
        *extra: str,
        side: str = "server",
        source: str | None = None,
        name: str = "daemon",
        iface: str | None = None,
        cgroup2: bool = False,
    ) -> None:
        """The daemon runs in the ``side`` namespace ("server" for inbound, "client" for outbound rules),
        attached to that side's veth (or to ``iface`` of that namespace, e.g. ``lo``). ``rules`` go to a
        file, or ``source`` (an etcd URL) is ``-r``. ``name``: its directory (state, socket, logs) under
        the pair's, for several daemons at once.

        ``cgroup2``: mount the cgroup2 hierarchy (the host's, there is one) in the daemon's mount namespace
        first, for outbound TCP resources: `ip netns exec` gives it a fresh /sys without the host's
        cgroup2 mount, and the daemon attaches its connect() hooks at the cgroup2 root it finds mounted."""
        self.pair = pair
        ns, veth = (pair.server, pair.server_if) if side == "server" else (pair.client, pair.client_if)
        iface = iface or veth
        self.dir = pair.tmpdir / name
        self.dir.mkdir(exist_ok=True)
        self.rules = self.dir / "rules.yaml"
        self.rules.write_text(rules)
        self.socket = str(self.dir / "control.sock")
        mount = ["sh", "-c", 'mount -t cgroup2 cgroup2 /sys/fs/cgroup && exec "$@"', "sh"] if cgroup2 else []
        self.proc = LineProcess(pair.cmd(ns, *mount, *sentinel_cli(), "run", "-r", source or str(self.rules),
                                         "-i", iface, "--control-socket", self.socket,
                                         "--state-dir", str(self.dir / "state"), "--log-dir",
                                         str(self.dir / "log"), "--metrics-addr", "127.0.0.1:0", *extra))  # fmt: skip
        line = self.wait_log("Prometheus metrics at")
        self.metrics_url = re.search(r"http://\S+", line).group(0)  # type: ignore[union-attr]
        self.wait_log("enforcing")

    def wait_log(self, text: str, timeout: float = 30, after: int = 0) -> str:
        return self.proc.wait_until(
            lambda: next((ln for ln in self.proc.stderr[after:] if text in ln), None), timeout, repr(text)
        )

    def stats(self) -> dict[str, Any]:
        """The `stats --json` document, asked over the control socket from this process: a CLI process per
        call costs seconds in an emulated guest (the CLI's own path is tested in test_user_paths)."""
        doc = request(self.socket, "stats", timeout_s=20 * TIMEOUT_SCALE)
        doc.pop("ok", None)
        return doc

    def scrape(self) -> dict[tuple[str, str], float]:
        out = self.pair.run(self.pair.server, "curl", "-s", self.metrics_url, check=True).stdout
        values: dict[tuple[str, str], float] = {}
        for fam in text_string_to_metric_families(out):
            for s in fam.samples:
                if s.name.endswith("handled_total"):  # one sample per block type: sum them
                    key = (s.labels["resource"], s.labels["result"])
                    values[key] = values.get(key, 0.0) + s.value
        return values

    def close(self) -> None:
        self.proc.close()

    def metric_rows(self) -> dict[str, list[tuple[int, int, int]]]:
        """resource -> [(second's timestamp in ms, pass, block)], in order."""
        out: dict[str, list[tuple[int, int, int]]] = {}
        for f in sorted((self.dir / "log").glob("*metrics.log*")):
            if f.name.endswith(".idx"):
                continue
            for ln in f.read_text().splitlines():
                parts = ln.split("|")
                out.setdefault(parts[2], []).append((int(parts[0]), int(parts[3]), int(parts[4])))
        return out

    def metric_log(self) -> dict[str, list[tuple[int, int]]]:
        """resource -> [(pass, block)] per second, in order."""
        return {res: [(p, b) for _, p, b in rows] for res, rows in self.metric_rows().items()}

    def wait_metric_second(
        self, resource: str, second_ms: int, timeout: float = 15
    ) -> list[tuple[int, int, int]]:
        """The metric log's rows of ``resource`` once the line of the second starting at ``second_ms`` (or a
        later one) is written."""
        deadline = time.monotonic() + timeout * TIMEOUT_SCALE
        while True:
            rows = self.metric_rows().get(resource, [])
            if any(ts >= second_ms for ts, _, _ in rows):
                return rows
            assert time.monotonic() < deadline, f"no metric log line for {resource} at {second_ms}: {rows}"
            time.sleep(0.1)


def load(pair: NetnsPair, path: str, seconds: float, port: int = 8000) -> dict[str, int]:
    res = pair.run(
        pair.client, sys.executable, str(LOAD), pair.server_ip, str(port), path, str(seconds), timeout=60
    )
    assert res.returncode == 0, res.stderr
    # any answer from the server counts as served (http.server says 404 for these paths)
    status: dict[str, int] = json.loads(res.stdout)["status"]
    out = {"served": 0, "429": 0, "reset": 0, "error": 0}
    for key, n in status.items():
        out[key if key in out else "served"] += n
    return out
