"""Options of the inbound data plane that size its maps."""

from __future__ import annotations

import pytest
from packets import ACK, PSH, TC_ACT_OK, http_request, http_response, tcp_frame

from sentinel_ebpf.inbound import InboundDataplane
from sentinel_ebpf.rules import load_text

pytestmark = pytest.mark.kernel("inbound")

CLIENT, SERVER = "127.0.0.2", "127.0.0.1"


def test_hotspot_values_sizes_the_lru_map() -> None:
    with InboundDataplane(hotspot_values=2048) as dp:
        assert dp.obj.map("hot_values").max_entries == 2048
    with InboundDataplane() as dp:
        assert dp.obj.map("hot_values").max_entries == 262144


@pytest.mark.parametrize("n", [0, 1023, (1 << 24) + 1])
def test_hotspot_values_out_of_range_is_refused(n: int) -> None:
    with pytest.raises(ValueError, match="hotspot_values must be in 1024"):
        InboundDataplane(hotspot_values=n)


def _complete_requests(dp: InboundDataplane, sports: range) -> None:
    """A request and its response on each client port (one connection each)."""
    dp.apply(
        dp.compile(load_text("resources:\n  - {name: web, match: {protocol: http, port: 8080}}\n", "t.yaml"))
    )
    ingress, egress = dp.obj.program("tc_ingress"), dp.obj.program("tc_egress")
    for sport in sports:
        req = tcp_frame(CLIENT, SERVER, sport, 8080, flags=PSH | ACK, payload=http_request("GET", "/"))
        assert ingress.test_run(req).retval == TC_ACT_OK
        resp = tcp_frame(SERVER, CLIENT, 8080, sport, flags=PSH | ACK, payload=http_response(200))
        assert egress.test_run(resp).retval == TC_ACT_OK
    st = dp.resource_stats()[0]
    assert (st.passed, st.complete, st.concurrency) == (len(sports), len(sports), 0)


@pytest.mark.parametrize(("limit", "kept"), [(0, 0), (3, 3), (None, 10)])
def test_idle_connections_bounds_the_entries_kept_between_requests(limit: int | None, kept: int) -> None:
    with InboundDataplane(idle_connections=limit) as dp:
        _complete_requests(dp, range(40000, 40010))
        assert len(list(dp.obj.map("inflight").keys())) == kept
        idle = dp.obj.map("inflight_idle").lookup((0).to_bytes(4, "little"))
        assert int.from_bytes(idle, "little") == kept
        dp.clear()
        assert int.from_bytes(dp.obj.map("inflight_idle").lookup((0).to_bytes(4, "little")), "little") == 0


@pytest.mark.parametrize("n", [-1, 32769])
def test_idle_connections_out_of_range_is_refused(n: int) -> None:
    with pytest.raises(ValueError, match=r"idle_connections must be in 0\.\.32768"):
        InboundDataplane(idle_connections=n)
