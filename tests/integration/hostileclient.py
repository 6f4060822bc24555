"""Hostile traffic for a while, drawn at random from a seed: run inside the client namespace.

usage: hostileclient.py SERVER_IP PORT SPOOFED_IP SECONDS SEED
Each round picks one of the moves below. Spoofed packets come from SPOOFED_IP, an address nobody answers
ARP for. Requests for /api (the limited resource) are at most API_PER_S a second, so that together with
the legitimate client they stay under the limit: what this client must not do is get anything through
unjudged, judged twice, or make the data plane hold state or concurrency after it stops. Connections it
holds open (stalled request lines, slowloris heads) are at most HOLD at once and are closed at the end.
Prints {"moves": {name: n}, "all": [name], "api": n}: how often each move ran (a move that failed with an
OSError as "name:ErrorType"), every move there is, and how many whole /api requests it sent.
"""

from __future__ import annotations

import json
import random
import socket
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable

from rawsyn import segment, syn

API_PER_S = 2
HOLD = 3
MOVES = ("half_open", "spoofed_request", "spoofed_handshake_data", "partial_then_close", "partial_then_stall", "slowloris", "garbage",
         "reset_after_request", "request_with_fin", "oversized_head", "expect_continue", "split_api",
         "pipelined_api")  # fmt: skip
API_MOVES = ("split_api", "pipelined_api")  # the moves that send a whole GET /api
HEAD = b" HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n"


class Hostile:
    def __init__(self, server: str, port: int, spoofed: str, seed: int) -> None:
        self.server, self.port, self.spoofed = server, port, spoofed
        self.rng = random.Random(seed)
        self.raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.raw.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
        self.held: list[socket.socket] = []
        self.api_sent: list[float] = []

    def connect(self) -> socket.socket:
        s = socket.create_connection((self.server, self.port), timeout=3)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def drain(self, s: socket.socket) -> None:
        try:
            while s.recv(65536):
                pass
        except OSError:
            pass
        s.close()

    def hold(self, s: socket.socket) -> None:
        self.held.append(s)
        while len(self.held) > HOLD:
            self.held.pop(0).close()

    # the moves

    def half_open(self) -> None:
        """Bare SYNs from the spoofed address: their SYN-ACKs go nowhere."""
        for _ in range(10):
            sport = self.rng.randrange(20000, 60000)
            self.raw.sendto(syn(self.spoofed, self.server, sport, self.port), (self.server, 0))

    def spoofed_request(self) -> None:
        """A whole GET /api in a data segment of a connection that does not exist."""
        sport = self.rng.randrange(20000, 60000)
        self.raw.sendto(segment(self.spoofed, self.server, sport, self.port, self.rng.getrandbits(32),
                                self.rng.getrandbits(32), 0x18, b"GET /api" + HEAD), (self.server, 0))  # fmt: skip

    def spoofed_handshake_data(self) -> None:
        """A spoofed SYN, then GET /api on its handshake's last ACK: the sequence number is right (the
        client chose it), the acknowledgment a guess (the SYN-ACK went nowhere). The server's stack
        drops it; it must spend no quota."""
        sport = self.rng.randrange(20000, 60000)
        self.raw.sendto(syn(self.spoofed, self.server, sport, self.port), (self.server, 0))
        time.sleep(0.01)
        self.raw.sendto(segment(self.spoofed, self.server, sport, self.port, 1000 + sport + 1,
                                self.rng.getrandbits(32), 0x18, b"GET /api" + HEAD), (self.server, 0))  # fmt: skip

    def partial_then_close(self) -> None:
        with self.connect() as s:
            s.sendall(self.rng.choice([b"GET /a", b"GE", b"GET /other HTT"]))
            time.sleep(0.05)

    def partial_then_stall(self) -> None:
        s = self.connect()
        s.sendall(b"GET /ap")
        self.hold(s)

    def slowloris(self) -> None:
        """A whole request line for /other and a head that never ends: nginx waits, the slot is taken."""
        s = self.connect()
        s.sendall(b"GET /other HTTP/1.1\r\nHost: svc\r\n")
        self.hold(s)

    def garbage(self) -> None:
        with self.connect() as s:
            s.sendall(self.rng.randbytes(self.rng.randrange(1, 3000)))
            time.sleep(0.02)

    def reset_after_request(self) -> None:
        s = self.connect()
        s.sendall(b"GET /other" + HEAD)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()  # RST, likely before the answer

    def request_with_fin(self) -> None:
        s = self.connect()
        s.sendall(b"GET /other" + HEAD)
        s.shutdown(socket.SHUT_WR)
        self.drain(s)

    def oversized_head(self) -> None:
        s = self.connect()
        s.sendall(b"GET /other HTTP/1.1\r\nHost: svc\r\nX-Pad: " + b"a" * 20000 + b"\r\n\r\n")
        self.drain(s)

    def expect_continue(self) -> None:
        s = self.connect()
        s.sendall(b"POST /other HTTP/1.1\r\nHost: svc\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n")
        time.sleep(0.05)
        s.close()  # the body never comes

    def api_allowed(self) -> bool:
        """Whether another GET /api stays within API_PER_S (counted as sent when it is)."""
        now = time.monotonic()
        self.api_sent = [t for t in self.api_sent if now - t < 1.0]
        if len(self.api_sent) >= API_PER_S:
            return False
        self.api_sent.append(now)
        return True

    def pipelined_api(self) -> bool:
        """GET /api in one segment behind another request, or behind a body: judged once, where it starts."""
        if not self.api_allowed():
            return False
        first = self.rng.choice([b"GET /other HTTP/1.1\r\nHost: svc\r\n\r\n",
                                 b"POST /other HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\n\r\nhello"])  # fmt: skip
        s = self.connect()
        s.sendall(first + b"GET /api" + HEAD)
        self.drain(s)
        return True

    def split_api(self) -> bool:
        """GET /api with its request line in two or three pieces: judged once, when it is whole."""
        if not self.api_allowed():
            return False
        s = self.connect()
        pieces = self.rng.choice([(b"GET /a", b"pi" + HEAD), (b"GE", b"T /a", b"pi" + HEAD)])
        for i, p in enumerate(pieces):
            if i:
                time.sleep(0.03)
            s.sendall(p)
        self.drain(s)
        return True


def main() -> None:
    server, port, spoofed = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    seconds, seed = float(sys.argv[4]), int(sys.argv[5])
    h = Hostile(server, port, spoofed, seed)
    moves: dict[str, Callable[[], object]] = {name: getattr(h, name) for name in MOVES}
    ran: Counter[str] = Counter()
    api = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        name = h.rng.choice(sorted(moves))
        try:
            done = moves[name]()
        except OSError as exc:  # a refused or reset connection is an answer too; note it and go on
            ran[f"{name}:{type(exc).__name__}"] += 1
            continue
        if done is not False:
            ran[name] += 1
            api += name in API_MOVES
    for s in h.held:
        s.close()
    print(json.dumps({"moves": dict(ran), "all": MOVES, "api": api}), flush=True)


if __name__ == "__main__":
    main()
