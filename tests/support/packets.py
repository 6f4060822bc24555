"""Crafting and checking Ethernet/IP/TCP frames for BPF_PROG_TEST_RUN."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

FIN, SYN, RST, PSH, ACK, URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = 0, 2, 7


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _pseudo(src: bytes, dst: bytes, length: int) -> bytes:
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, 6, length)
    return src + dst + struct.pack("!IxxxB", length, 6)


def tcp_frame(src: str, dst: str, sport: int, dport: int, *, flags: int = ACK, seq: int = 1000, ack: int = 2000,
              payload: bytes = b"", options: bytes = b"", window: int = 65535, urgent: int = 0) -> bytes:  # fmt: skip
    """A frame with correct IP and TCP checksums (`urgent`: the urgent pointer field)."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    assert len(options) % 4 == 0
    doff = (20 + len(options)) // 4
    tcp = (
        struct.pack("!HHIIBBHHH", sport, dport, seq, ack, doff << 4, flags, window, 0, urgent)
        + options
        + payload
    )
    tcp_csum = csum(_pseudo(s.packed, d.packed, len(tcp)) + tcp)
    tcp = tcp[:16] + struct.pack("!H", tcp_csum) + tcp[18:]
    if s.version == 4:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0x4000, 64, 6, 0, s.packed, d.packed)
        ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
        ethertype = 0x0800
    else:
        ip = struct.pack("!IHBB16s16s", 0x60000000, len(tcp), 6, 64, s.packed, d.packed)
        ethertype = 0x86DD
    eth = bytes.fromhex("020000000002") + bytes.fromhex("020000000001") + struct.pack("!H", ethertype)
    return eth + ip + tcp


def http_request(method: str, path: str, host: str = "svc") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: test\r\n\r\n".encode()


def http_response(status: int, body: bytes = b"ok") -> bytes:
    return f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


@dataclass(frozen=True)
class Parsed:
    src_mac: bytes
    dst_mac: bytes
    src: str
    dst: str
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    doff: int
    payload: bytes
    ip_csum_ok: bool
    tcp_csum_ok: bool


def parse_frame(frame: bytes) -> Parsed:
    """Parse a frame and verify both checksums from scratch."""
    dst_mac, src_mac = frame[0:6], frame[6:12]
    ethertype = struct.unpack("!H", frame[12:14])[0]
    if ethertype == 0x0800:
        ihl = (frame[14] & 0x0F) * 4
        tot = struct.unpack("!H", frame[16:18])[0]
        ip = frame[14 : 14 + ihl]
        s, d = frame[26:30], frame[30:34]
        tcp = frame[14 + ihl : 14 + tot]
        ip_ok = csum(ip) == 0
    else:
        plen = struct.unpack("!H", frame[18:20])[0]
        s, d = frame[22:38], frame[38:54]
        tcp = frame[54 : 54 + plen]
        ip_ok = True
    sport, dport, seq, ack, off, flags = struct.unpack("!HHIIBB", tcp[:14])
    doff = (off >> 4) * 4
    return Parsed(
        src_mac, dst_mac, str(ipaddress.ip_address(s)), str(ipaddress.ip_address(d)), sport, dport, seq, ack,
        flags, doff, tcp[doff:], ip_ok, csum(_pseudo(s, d, len(tcp)) + tcp) == 0,
    )  # fmt: skip


# A SYN's usual options: MSS, SACK permitted, timestamps, window scale (20 bytes).
SYN_OPTIONS = bytes.fromhex("020405b4" "0402080a" "000003e8" "00000000" "01030307")  # fmt: skip
