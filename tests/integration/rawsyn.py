"""Run inside the client namespace: send bare SYNs from an address nobody answers for.

usage: rawsyn.py SRC_IP DST_IP DPORT COUNT
The server's SYN-ACKs go to SRC_IP, which no host has (no ARP answer): they are dropped, and each SYN
leaves a half-open connection on the server. Raw IPv4 with IP_HDRINCL, packets built with scapy.
"""

from __future__ import annotations

import logging
import socket
import sys

logging.getLogger("scapy.runtime").setLevel(logging.ERROR)  # no routing-table warnings in a bare netns

from scapy.layers.inet import IP, TCP  # noqa: E402


def segment(
    src: str, dst: str, sport: int, dport: int, seq: int, ack: int, flags: int, payload: bytes = b""
) -> bytes:
    """An IPv4 TCP segment with its checksums."""
    packet = IP(src=src, dst=dst, id=sport, flags="DF", ttl=64) / TCP(
        sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, window=64240
    )
    return bytes(packet / payload if payload else packet)


def syn(src: str, dst: str, sport: int, dport: int) -> bytes:
    """A SYN whose initial sequence number is 1000 + sport."""
    return segment(src, dst, sport, dport, 1000 + sport, 0, 0x02)


def main() -> None:
    src, dst, dport, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as s:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
        for i in range(count):
            s.sendto(syn(src, dst, 20000 + i, dport), (dst, 0))
    print(count, flush=True)


if __name__ == "__main__":
    main()
