"""Crafting and checking Ethernet/IP/TCP frames for BPF_PROG_TEST_RUN.

``tcp_frame`` packs its headers by hand: tests send tens of thousands of frames (floods of the in-flight
map), and building them with scapy takes 60 times longer (376 us a frame against 6; hours in the kernel
matrix's emulated guest). ``tests/unit/core/test_packets.py`` checks it against scapy's build. Frames
are read back, and every unusual frame (VLAN tags, IPv6 extension headers, fragments) is built, with
scapy.
"""

from __future__ import annotations

import ipaddress
import logging
import struct
from dataclasses import dataclass

logging.getLogger("scapy.runtime").setLevel(logging.ERROR)  # no routing-table warnings in a bare netns

from scapy.layers.inet import IP, TCP, in4_chksum  # noqa: E402
from scapy.layers.inet6 import IPv6, in6_chksum  # noqa: E402
from scapy.layers.l2 import Ether  # noqa: E402
from scapy.utils import checksum  # noqa: E402

FIN, SYN, RST, PSH, ACK, URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = 0, 2, 7
CLIENT_MAC, SERVER_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"
_ETH = bytes.fromhex(SERVER_MAC.replace(":", "") + CLIENT_MAC.replace(":", ""))


def _pseudo(src: bytes, dst: bytes, length: int) -> bytes:
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, 6, length)
    return src + dst + struct.pack("!IxxxB", length, 6)


def tcp_frame(src: str, dst: str, sport: int, dport: int, *, flags: int = ACK, seq: int = 1000, ack: int = 2000,
              payload: bytes = b"", options: bytes = b"", window: int = 65535, urgent: int = 0) -> bytes:  # fmt: skip
    """A frame with correct IP and TCP checksums (`options`: raw TCP options, a multiple of 4 bytes;
    `urgent`: the urgent pointer field). IPv4: id 1, DF, TTL 64; IPv6: hop limit 64."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    assert len(options) % 4 == 0
    doff = (20 + len(options)) // 4
    tcp = (
        struct.pack("!HHIIBBHHH", sport, dport, seq, ack, doff << 4, flags, window, 0, urgent)
        + options
        + payload
    )
    tcp = tcp[:16] + struct.pack("!H", checksum(_pseudo(s.packed, d.packed, len(tcp)) + tcp)) + tcp[18:]
    if s.version == 4:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0x4000, 64, 6, 0, s.packed, d.packed)
        return _ETH + b"\x08\x00" + ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:] + tcp
    ip = struct.pack("!IHBB16s16s", 0x60000000, len(tcp), 6, 64, s.packed, d.packed)
    return _ETH + b"\x86\xdd" + ip + tcp


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
    """Parse a frame and verify both checksums from the bytes as they are."""
    eth = Ether(frame)
    ip = eth.payload
    if isinstance(ip, IP):
        header_len = ip.ihl * 4
        segment = frame[14 + header_len : 14 + ip.len]
        ip_ok = checksum(frame[14 : 14 + header_len]) == 0
        tcp_ok = in4_chksum(6, ip, segment) == 0
    else:
        assert isinstance(ip, IPv6), eth.summary()
        segment = frame[54 : 54 + ip.plen]
        ip_ok = True
        tcp_ok = in6_chksum(6, ip, segment) == 0
    tcp = TCP(segment)
    doff = tcp.dataofs * 4
    return Parsed(
        bytes.fromhex(eth.src.replace(":", "")), bytes.fromhex(eth.dst.replace(":", "")), ip.src, ip.dst,
        tcp.sport, tcp.dport, tcp.seq, tcp.ack, int(tcp.flags) & 0xFF, doff, segment[doff:], ip_ok, tcp_ok,
    )  # fmt: skip


# A SYN's usual options: MSS, SACK permitted, timestamps, window scale (20 bytes).
SYN_OPTIONS = bytes.fromhex("020405b4" "0402080a" "000003e8" "00000000" "01030307")  # fmt: skip
