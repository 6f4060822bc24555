"""A test backend. The first word of MODE_FILE says how it answers: ok | 500 | slow (0.3 s, then 200);
paths under /slow always answer after SLOW_S seconds (default 1). Every request it receives is appended
to MODE_FILE.requests (one path per line), so tests can tell what reached it.

usage: flakyserver.py PORT [MODE_FILE] [SLOW_S]
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

from sentinel_ebpf._plainhttp import PlainHandler, ResetTolerantServer


class Handler(PlainHandler):
    mode_file = Path("/dev/null")
    slow_path_s = 1.0

    def do_GET(self) -> None:
        if self.mode_file != Path("/dev/null"):
            with open(f"{self.mode_file}.requests", "a") as log:
                log.write(self.path + "\n")
        mode = (self.mode_file.read_text().split() or ["ok"])[0]
        if self.path.startswith("/slow"):
            time.sleep(self.slow_path_s)
        elif mode == "slow":
            time.sleep(0.3)
        status = 500 if mode == "500" else 200
        self.reply(status, f"{mode}\n".encode())


class Server(ResetTolerantServer):
    request_queue_size = 128
    address_family = socket.AF_INET6


if __name__ == "__main__":
    if len(sys.argv) > 2:
        Handler.mode_file = Path(sys.argv[2])
    if len(sys.argv) > 3:
        Handler.slow_path_s = float(sys.argv[3])
    Server(("::", int(sys.argv[1])), Handler).serve_forever()
