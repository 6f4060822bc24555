"""The hand-packed frames of tests/support/packets.py against scapy's build of the same fields."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from tests.support.packets import CLIENT_MAC, SERVER_MAC, SYN_OPTIONS, parse_frame, tcp_frame

_OPTIONS = TCP().get_field("options")


def scapy_frame(src: str, dst: str, sport: int, dport: int, flags: int, seq: int, ack: int, payload: bytes,
                options: bytes, window: int, urgent: int) -> bytes:  # fmt: skip
    ip = IPv6(src=src, dst=dst, hlim=64) if ":" in src else IP(src=src, dst=dst, id=1, flags="DF", ttl=64)
    tcp = TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, window=window, urgptr=urgent,
              options=_OPTIONS.m2i(None, options))  # fmt: skip
    frame = Ether(dst=SERVER_MAC, src=CLIENT_MAC) / ip / tcp
    return bytes(frame / Raw(payload) if payload else frame)


@given(
    addrs=st.sampled_from([("10.200.0.2", "10.200.0.1"), ("2001:db8::2", "2001:db8::1")]),
    ports=st.tuples(st.integers(1, 65535), st.integers(1, 65535)),
    flags=st.integers(0, 0xFF),
    seq=st.integers(0, 2**32 - 1),
    ack=st.integers(0, 2**32 - 1),
    payload=st.binary(max_size=300),
    options=st.sampled_from([b"", SYN_OPTIONS, bytes.fromhex("0101080a0000000700000009")]),
    window=st.integers(0, 65535),
    urgent=st.integers(0, 65535),
)
def test_tcp_frame_is_the_frame_scapy_builds(addrs: tuple[str, str], ports: tuple[int, int], flags: int,
                                             seq: int, ack: int, payload: bytes, options: bytes, window: int,
                                             urgent: int) -> None:  # fmt: skip
    fields = (*addrs, *ports, flags, seq, ack, payload, options, window, urgent)
    ours = tcp_frame(*addrs, *ports, flags=flags, seq=seq, ack=ack, payload=payload, options=options,
                     window=window, urgent=urgent)  # fmt: skip
    assert ours == scapy_frame(*fields)
    parsed = parse_frame(ours)
    assert parsed.ip_csum_ok and parsed.tcp_csum_ok and parsed.payload == payload and parsed.flags == flags
    broken = ours[:-1] + bytes([ours[-1] ^ 1])
    assert not parse_frame(broken).tcp_csum_ok
