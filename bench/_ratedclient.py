"""Open-loop HTTP/1.1 load at a fixed rate (helper of accuracy_netns.py; runs in the client namespace).

usage: _ratedclient.py HOST PORT PATH RATE SECONDS [WORKERS]
A ticker releases RATE requests per second, evenly spaced, for SECONDS; WORKERS coroutines each hold a
keep-alive connection, take the next released request and send it. A response with ``Connection: close``
(the kernel's 429) or a reset makes the worker reconnect for its next request. Requests released while
every worker is busy wait (and are sent late); any still waiting at the end are reported as not sent.
Prints one JSON object: outcomes per 500 ms bin of CLOCK_MONOTONIC (bin = ms // 500), sent, not sent.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter, defaultdict

TIMEOUT = 2.0


def now_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class Load:
    def __init__(self, host: str, port: int, path: str) -> None:
        self.host, self.port = host, port
        self.request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: bench\r\n\r\n".encode()
        self.bins: defaultdict[int, Counter[str]] = defaultdict(Counter)
        self.sent = 0
        self.connects = 0

    async def one(
        self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None
    ) -> tuple[str, tuple[asyncio.StreamReader, asyncio.StreamWriter] | None]:
        if conn is None:
            conn = await asyncio.open_connection(self.host, self.port)
            self.connects += 1
        reader, writer = conn
        writer.write(self.request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = lines[0].split(" ", 2)[1]
        length, close = 0, False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "connection" and value.strip().lower() == "close":
                close = True
        if length:
            await reader.readexactly(length)
        if close:
            writer.close()
            return status, None
        return status, conn

    async def worker(self, queue: asyncio.Queue[int | None]) -> None:
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        while await queue.get() is not None:
            self.sent += 1
            try:
                status, conn = await asyncio.wait_for(self.one(conn), TIMEOUT)
            except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                status, conn = "reset", self._drop(conn)
            except (OSError, asyncio.TimeoutError, ValueError, IndexError):
                status, conn = "error", self._drop(conn)
            self.bins[now_ms() // 500][status] += 1
        self._drop(conn)

    @staticmethod
    def _drop(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None) -> None:
        if conn is not None:
            conn[1].close()

    async def run(self, rate: float, seconds: float, workers: int) -> dict[str, object]:
        queue: asyncio.Queue[int | None] = asyncio.Queue()
        tasks = [asyncio.create_task(self.worker(queue)) for _ in range(workers)]
        start = time.monotonic()
        released = 0
        total = int(rate * seconds)
        while released < total:
            due = min(total, int((time.monotonic() - start) * rate) + 1)
            for _ in range(due - released):
                queue.put_nowait(released)
                released += 1
            await asyncio.sleep(0.001)
        end = time.monotonic()
        not_sent = 0
        while not queue.empty():  # released but never picked up: the client could not keep up
            queue.get_nowait()
            not_sent += 1
        for _ in tasks:
            queue.put_nowait(None)
        await asyncio.wait(tasks, timeout=TIMEOUT + 1)
        return {
            "start_ms": int(start * 1000),
            "end_ms": int(end * 1000),
            "released": released,
            "sent": self.sent,
            "not_sent": not_sent,
            "connects": self.connects,
            "bins": {str(k): dict(v) for k, v in sorted(self.bins.items())},
        }


def main() -> None:
    host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    rate, seconds = float(sys.argv[4]), float(sys.argv[5])
    workers = int(sys.argv[6]) if len(sys.argv) > 6 else 64
    out = asyncio.run(Load(host, port, path).run(rate, seconds, workers))
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
