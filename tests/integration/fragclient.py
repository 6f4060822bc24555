"""Run inside the client namespace: one HTTP request over a TCP connection made by hand, whole or in IP
fragments, from an address the client's own stack does not have (so that it never answers the server's
segments with a reset; the server's neighbour entry sends them to this interface's MAC).

usage: fragclient.py IFACE SRC_MAC DST_MAC SRC_IP DST_IP DPORT SPORT MODE(whole|fragments) REQUEST
(REQUEST a Python bytes literal). Prints one JSON object: whether the handshake completed, and the first
line of what the server sent back within 2 s ("" when nothing). Ends the connection with a reset.
"""

from __future__ import annotations

import ast
import json
import socket
import sys
import time

from rawsyn import segment
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

ETH_P_ALL, SYN, RST, ACK, PSH = 0x0003, 0x02, 0x04, 0x10, 0x08


def fragments(packet: bytes, split: int) -> list[bytes]:
    """An IPv4 packet as two fragments, the first holding `split` bytes of its payload (a multiple of 8)."""
    ip = IP(packet)
    payload = bytes(ip.payload)
    first = IP(src=ip.src, dst=ip.dst, id=ip.id, ttl=ip.ttl, proto=ip.proto, flags="MF", frag=0)
    rest = IP(src=ip.src, dst=ip.dst, id=ip.id, ttl=ip.ttl, proto=ip.proto, frag=split // 8)
    return [bytes(first / payload[:split]), bytes(rest / payload[split:])]


def main() -> None:
    iface, src_mac, dst_mac, src, dst = sys.argv[1:6]
    dport, sport, mode = int(sys.argv[6]), int(sys.argv[7]), sys.argv[8]
    request: bytes = ast.literal_eval(sys.argv[9])
    eth = bytes(Ether(dst=dst_mac, src=src_mac, type=0x0800))
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)) as s:
        s.bind((iface, 0))
        s.settimeout(0.2)

        def receive(deadline: float, want: int) -> tuple[int, int, bytes] | None:
            """The next segment from the server to (src, sport) whose flags include `want`."""
            while time.monotonic() < deadline:
                try:
                    frame = s.recv(65535)
                except TimeoutError:
                    continue
                packet = Ether(frame)
                if IP not in packet or TCP not in packet or packet[IP].dst != src:
                    continue
                tcp = packet[TCP]
                if (tcp.sport, tcp.dport) != (dport, sport) or int(tcp.flags) & want != want:
                    continue
                return tcp.seq, tcp.ack, packet[Raw].load if Raw in packet else b""  # (not the padding)
            return None

        isn = 1000 + sport
        s.send(eth + segment(src, dst, sport, dport, isn, 0, SYN))
        synack = receive(time.monotonic() + 3, SYN | ACK)
        answer = ""
        if synack:
            server_seq = synack[0] + 1
            s.send(eth + segment(src, dst, sport, dport, isn + 1, server_seq, ACK))
            data = segment(src, dst, sport, dport, isn + 1, server_seq, PSH | ACK, request)
            for packet in fragments(data, 24) if mode == "fragments" else [data]:
                s.send(eth + packet)
            deadline, acked = time.monotonic() + 2, isn + 1  # what the server's stack took
            while not answer and (got := receive(deadline, ACK)):
                acked = got[1]
                answer = got[2].split(b"\r\n", 1)[0].decode(errors="replace")
            s.send(eth + segment(src, dst, sport, dport, acked, 0, RST))  # (its next byte: a reset it takes)
    print(json.dumps({"handshake": synack is not None, "answer": answer}))


if __name__ == "__main__":
    main()
