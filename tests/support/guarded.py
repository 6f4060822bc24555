"""A recording HTTP server behind the inbound data plane, in a namespace pair's server namespace
(tests/integration/guarded_server.py): what each connection carried, whether it was reset, and the data
plane's counters at the end."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

from tests.support.background import LineProcess
from tests.support.netns import NetnsPair

SERVER = Path(__file__).parents[1] / "integration" / "guarded_server.py"
PORT = 8080


class Guarded:
    """guarded_server.py on `iface` of the server namespace (its veth by default; "-": no data plane)."""

    def __init__(self, pair: NetnsPair, rules: str, iface: str | None = None) -> None:
        self.pair = pair
        path = pair.tmpdir / "rules.yaml"
        path.write_text(rules)
        self.proc = LineProcess(
            pair.cmd(pair.server, sys.executable, str(SERVER), str(path), iface or pair.server_if, str(PORT))
        )
        self.proc.wait_stdout(lambda ln: ln.strip() == '"ready"', what="the guarded server's ready line")

    def stop(self, connections: int = 0) -> list[Any]:
        """The server's events, once it has reported ``connections`` ended connections (its handler
        threads see the kernel's RST or the client's close a moment after curl returns), then stopped."""
        if connections:
            self.proc.wait_until(
                lambda: True if sum('"requests"' in ln for ln in self.proc.stdout) >= connections else None,
                15,
                f"{connections} connections reported by the guarded server",
            )
        if self.proc.proc.poll() is None:
            self.proc.signal(signal.SIGTERM)
            self.proc.wait_exit(20)
        self.proc.close()
        return [json.loads(line) for line in self.proc.stdout if line.strip()]


# An http.client caller on one keep-alive connection (argv[1]: the server's address, port 8080): prints
# [status, local port, body length] for each of its six requests.
KEEPALIVE_CLIENT = """
import http.client, json, sys
conn = http.client.HTTPConnection(sys.argv[1], 8080, timeout=5)
out = []
for path in ["/ok", "/limited", "/ok", "/limited", "/limited", "/ok"]:
    conn.request("GET", path)
    resp = conn.getresponse()
    body = resp.read()
    out.append([resp.status, conn.sock.getsockname()[1], len(body)])
print(json.dumps(out))
"""
