"""Options of the inbound data plane that size its maps."""

from __future__ import annotations

import os
import socket

import pytest
from test_inbound import Harness

from sentinel_ebpf._maps import InboundRodata
from sentinel_ebpf._types import SentinelLimits
from sentinel_ebpf.enforce import InboundDataplane, compile_inbound
from sentinel_ebpf.errors import SentinelError
from sentinel_ebpf.libbpf import program_id, program_maps
from sentinel_ebpf.rules import load_text
from tests.support.inbound import CLIENT, SERVER
from tests.support.packets import ACK, PSH, TC_ACT_OK, http_request, http_response, tcp_frame

pytestmark = pytest.mark.kernel("inbound")


def test_hotspot_values_sizes_the_lru_map() -> None:
    with InboundDataplane(hotspot_values=2048) as dp:
        assert dp.maps.hot_values.max_entries == 2048
    with InboundDataplane() as dp:
        assert dp.maps.hot_values.max_entries == 262144


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
    with InboundDataplane(idle_connections=limit, socket_lookup=False) as dp:
        _complete_requests(dp, range(40000, 40010))
        assert len(list(dp.maps.inflight.keys())) == kept
        idle = dp.maps.inflight_idle.lookup((0).to_bytes(4, "little"))
        assert int.from_bytes(idle, "little") == kept
        ro = InboundRodata.from_buffer_copy(dp.maps.rodata.lookup(0))
        assert ro.inflight_idle_max == (limit if limit is not None else SentinelLimits.SE_INFLIGHT_IDLE_MAX)
        assert (ro.socket_lookup, ro.use_test_clock) == (False, False)
        dp.clear()
        assert int.from_bytes(dp.maps.inflight_idle.lookup((0).to_bytes(4, "little")), "little") == 0


@pytest.mark.parametrize("n", [-1, 32769])
def test_idle_connections_out_of_range_is_refused(n: int) -> None:
    with pytest.raises(ValueError, match=r"idle_connections must be in 0\.\.32768"):
        InboundDataplane(idle_connections=n)


RESUME_RULES = """
resources:
  - {name: web, match: {protocol: http, port: 8080, path: /}}
flowRules:
  - {resource: web, threshold: 3, statIntervalInMs: 1000}
"""


def _requests(dp: InboundDataplane, n: int, sport: int = 41000) -> list[bool]:
    prog = dp.obj.program("tc_ingress")
    out = []
    for i in range(n):
        frame = tcp_frame(CLIENT, SERVER, sport + i, 8080, flags=PSH | ACK, payload=http_request("GET", "/x"))
        res = prog.test_run(frame)
        out.append(res.retval == TC_ACT_OK and res.data_out == frame)
    return out


def _second_instance(first: InboundDataplane) -> InboundDataplane:
    """Another data plane on the maps of ``first``'s attached programs, as resume.resume() makes one."""
    fds: dict[str, int] = {}
    for prog in ("tc_ingress", "tc_egress"):
        for name, fd in program_maps(program_id(first.obj.program(prog).fd)).items():
            if name in fds:
                os.close(fd)
            else:
                fds[name] = fd
    try:
        return InboundDataplane(test_clock=True, socket_lookup=False, reuse=fds)
    finally:
        for fd in fds.values():
            os.close(fd)


def test_a_second_instance_reuses_the_maps_and_goes_on_counting() -> None:
    """What a daemon taking over from a crashed one does: same maps, statistics and windows go on."""
    with InboundDataplane(test_clock=True, socket_lookup=False) as first:
        first.set_clock_ns(10**15)
        first.apply(first.compile(load_text(RESUME_RULES, "r.yaml")))
        first.apply(first.compile(load_text(RESUME_RULES.replace("threshold: 3", "threshold: 2"), "r.yaml")))
        assert _requests(first, 1) == [True]
        with _second_instance(first) as second:
            last = load_text(RESUME_RULES.replace("threshold: 3", "threshold: 2"), "r.yaml")
            previous = {r.key: r.id for r in first.compiled.resources}
            with pytest.raises(SentinelError, match="generation 0 is in force, the record is of 1"):
                second.adopt(compile_inbound(last, previous, first.last_id), first.last_id, 1 - first.gen)
            second.adopt(compile_inbound(last, previous, first.last_id), first.last_id, first.gen)
            assert second.gen == first.gen and second.compiled == first.compiled
            second.set_clock_ns(10**15)
            # the window the first instance counted in goes on: one more passes, then threshold 2 blocks
            assert _requests(second, 2, sport=42000) == [True, False]
            st = second.resource_stats()[0]
            assert (st.name, st.passed, st.blocked) == ("web", 2, 1)
            # a reload through the second instance keeps the resource's statistics
            second.apply(second.compile(load_text(RESUME_RULES, "r.yaml")))
            assert second.resource_stats()[0].passed == 2
            assert _requests(second, 1, sport=43000) == [True]
            assert first.resource_stats()[0].passed == 3, "one set of maps, seen by both"


def test_reuse_refuses_maps_of_another_definition() -> None:
    with InboundDataplane(hotspot_values=2048) as first:
        fds = {name[:15]: m.fd for name, m in first.obj.maps.items() if "." not in name}
        with pytest.raises(SentinelError, match="hot_values: cannot reuse map id"):
            InboundDataplane(reuse=fds)
        del fds["inflight"]
        with pytest.raises(SentinelError, match=r"they have no inflight$"):
            InboundDataplane(reuse=fds)


def test_adopt_refuses_rules_the_maps_do_not_hold() -> None:
    with InboundDataplane() as first:
        first.apply(first.compile(load_text(RESUME_RULES, "r.yaml")))
        fds = {name[:15]: m.fd for name, m in first.obj.maps.items() if "." not in name}
        with InboundDataplane(reuse=fds) as second:
            other = load_text(
                "resources:\n  - {name: web, match: {protocol: http, port: 8080, path: /}}\n"
                "isolationRules:\n  - {resource: web, threshold: 4}\n",
                "o.yaml",
            )
            with pytest.raises(SentinelError, match="cannot adopt: resource 'web'"):
                second.adopt(compile_inbound(other), 1, first.gen)


def test_a_resumed_instance_repairs_the_drift_it_inherits() -> None:
    """A daemon taking over after kill -9 adopts the crashed one's maps, a leak included (an in-flight
    entry gone, as the LRU evicts them under pressure, its isolation slot never given back, so the rule
    refuses everyone): the new instance's own reconciliation repairs it and clients are admitted again."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        rs = load_text(f"resources:\n  - {{name: conns, match: {{protocol: tcp, port: {port}}}}}\n"
                       "isolationRules:\n  - {resource: conns, threshold: 1}\n", "r.yaml")  # fmt: skip
        with InboundDataplane(test_clock=True, socket_lookup=False) as first:
            h = Harness(first, rs)
            h.at(0)
            assert h.syn(port) == TC_ACT_OK
            for key, _ in list(first.maps.inflight.items()):
                first.maps.inflight.delete(key)
            assert h.syn(port) != TC_ACT_OK, "the leaked slot refuses the next client"
            with _second_instance(first) as second:
                previous = {r.key: r.id for r in first.compiled.resources}
                second.adopt(compile_inbound(rs, previous, first.last_id), first.last_id, first.gen)
                rid = second.compiled.resource_id("conns")
                assert second.raw_stats(rid).concurrency == 1, "the leak came along"
                assert second.reconciler.run().adjusted == {}, "a difference seen once may be traffic"
                assert second.reconciler.run().adjusted == {rid: -1}
                assert (
                    second.raw_stats(rid).concurrency == 0 and second.counters()["concurrency_repaired"] == 1
                )
                h2 = Harness(second, rs)  # the same rules: nothing is applied again
                h2.at(10)
                assert h2.syn(port) == TC_ACT_OK


def _rodata_key(dp: InboundDataplane) -> int:
    """head_hash_key as the loaded program holds it (its frozen .rodata map)."""
    rodata, layout = dp.obj.section_layout(".rodata")
    offset, size, _ = layout["head_hash_key"]
    return int.from_bytes(rodata.lookup(bytes(4))[offset : offset + size], "little")


def test_a_resumed_instance_keeps_the_key_of_head_hashes_and_followed_bits() -> None:
    """The stream states and followed bits a resumed daemon takes over were hashed with the crashed one's
    random key: with another key a duplicate would be judged again and an evicted stream taken for one
    older than the rules."""
    with InboundDataplane(test_clock=True, socket_lookup=False) as first:
        key = _rodata_key(first)
        with InboundDataplane(test_clock=True, socket_lookup=False) as other:
            assert _rodata_key(other) != key, "a new instance draws its own"
        with _second_instance(first) as second:
            assert _rodata_key(second) == key
