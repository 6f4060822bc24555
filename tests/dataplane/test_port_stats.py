"""Per-port counters (port_stats) follow the ports in force: reloads over many ports keep working."""

from __future__ import annotations

import pytest

from sentinel_ebpf.enforce import InboundDataplane
from sentinel_ebpf.enforce.writer import PORTS_MAX
from sentinel_ebpf.errors import BpfKeyError
from sentinel_ebpf.rules import load_text
from tests.support.inbound import CLIENT, SERVER
from tests.support.packets import ACK, PSH, TC_ACT_OK, tcp_frame

pytestmark = pytest.mark.kernel
KEPT_PORT = 8080
PORTS_PER_SET = 300
SETS = 5  # 1,500 distinct ports over the sequence: more than port_stats holds (SE_PORTS_MAX)


def _rules(first_port: int) -> str:
    ports = range(first_port, first_port + PORTS_PER_SET)
    return (
        "resources:\n"
        f"  - {{name: web, match: {{protocol: http, port: {KEPT_PORT}, path: /}}}}\n"
        + "".join(f"  - {{name: p{p}, match: {{protocol: tcp, port: {p}}}}}\n" for p in ports)
    )


def _body_segment(dp: InboundDataplane, sport: int) -> None:
    """Bytes that start no request on the kept HTTP port: counted as not_request_line."""
    frame = tcp_frame(CLIENT, SERVER, sport, KEPT_PORT, flags=PSH | ACK, payload=b"body bytes")
    assert dp.obj.program("tc_ingress").test_run(frame).retval == TC_ACT_OK


def test_reloads_over_more_ports_than_the_map_holds_keep_working(dp: InboundDataplane) -> None:
    assert PORTS_PER_SET * SETS > PORTS_MAX
    previous: range | None = None
    for k in range(SETS):
        first = 20000 + k * PORTS_PER_SET
        assert dp.apply(dp.compile(load_text(_rules(first), f"set{k}.yaml")))
        _body_segment(dp, 30000 + k)
        # the kept port's counters survive every reload
        assert dp.port_counters(KEPT_PORT)["not_request_line"] == k + 1
        assert dp.port_counters(first)["not_request_line"] == 0
        # ports no longer protected have no entry left
        if previous is not None:
            for port in (previous.start, previous.stop - 1):
                with pytest.raises(BpfKeyError):
                    dp.port_counters(port)
        previous = range(first, first + PORTS_PER_SET)
        assert len(list(dp.maps.port_stats.keys())) == PORTS_PER_SET + 1
