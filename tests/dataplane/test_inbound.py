"""The inbound TC programs through BPF_PROG_TEST_RUN with an injected clock, against the reference model."""

from __future__ import annotations

import pytest

from sentinel_ebpf._types import Inflight, PortSlots
from sentinel_ebpf.enforce import CompileError, InboundDataplane, compile_inbound
from sentinel_ebpf.errors import BpfError
from sentinel_ebpf.rules import RuleSet
from tests.support.inbound import CLIENT, SERVER, Lockstep, rules
from tests.support.packets import (
    ACK,
    FIN,
    PSH,
    RST,
    SYN,
    SYN_OPTIONS,
    TC_ACT_OK,
    TC_ACT_REDIRECT,
    TC_ACT_SHOT,
    http_request,
    http_response,
    parse_frame,
    tcp_frame,
)

pytestmark = pytest.mark.kernel

T0_MS = 1_578_416_556_900  # sentinel-golang's read-view test instant


TCP_8080 = "protocol: tcp, port: 8080"
HTTP_ROOT = "protocol: http, port: 8080, path: /"


def one_rule(kind: str, rule: str, more: str = "", match: str = TCP_8080) -> RuleSet:
    """Rules of one resource ``c`` (by default TCP port 8080; ``match``: its match's fields) and one rule
    of ``kind`` on it (``rule``: its fields but ``resource``), then ``more`` top-level YAML."""
    return rules(f"""
resources:
  - {{name: c, match: {{{match}}}}}
{kind}:
  - {{resource: c, {rule}}}
{more}""")


class Harness(Lockstep):
    """Feeds the same arrivals to the kernel (test run) and the reference model, on one clock."""

    def __init__(self, dp: InboundDataplane, rs: RuleSet) -> None:
        super().__init__(dp, rs, T0_MS)
        self.sport = 20000
        self.seqs: dict[int, int] = {}

    def syn(self, port: int = 8080) -> int:
        self.sport += 1
        frame = tcp_frame(CLIENT, SERVER, self.sport, port, flags=SYN, seq=7000, ack=0, options=SYN_OPTIONS)
        return self.ingress.test_run(frame).retval

    def request(self, method: str, path: str, port: int = 8080, sport: int | None = None) -> bool:
        """True when the request went on to the server unchanged."""
        if sport is None:
            self.sport += 1
            sport = self.sport
        payload = http_request(method, path)
        seq = self.seqs.get(sport, 1000)  # each connection's requests follow one another in its stream
        self.seqs[sport] = seq + len(payload)
        frame = tcp_frame(CLIENT, SERVER, sport, port, flags=PSH | ACK, seq=seq, payload=payload)
        res = self.ingress.test_run(frame)
        return res.retval == TC_ACT_OK and res.data_out == frame


def test_tcp_flow_reject_matches_the_model_and_answers_with_rst(dp: InboundDataplane) -> None:
    rs = rules("""
resources:
  - {name: web-conns, match: {protocol: tcp, port: 8080}}
flowRules:
  - {resource: web-conns, threshold: 5, statIntervalInMs: 1000}
""")
    h = Harness(dp, rs)
    verdicts = []
    for i in range(40):  # 8 arrivals per 100 ms over 500 ms... then a quiet gap
        h.at(i * 60)
        kernel_pass = h.syn() == TC_ACT_OK
        entry = h.model.entry("web-conns")
        assert kernel_pass == entry.passed, f"arrival {i} at {i * 60} ms"
        verdicts.append(kernel_pass)
    assert 0 < sum(verdicts) < len(verdicts)
    st = dp.resource_stats()[0]
    model = h.model.stats("web-conns")
    assert (st.passed, st.blocked, st.block_by_type["flow"]) == (model.passed, model.blocked, model.blocked)


def test_rst_for_a_blocked_syn_is_exact(dp: InboundDataplane) -> None:
    h = Harness(
        dp,
        rules("""
resources:
  - {name: web-conns, match: {protocol: tcp, port: 8080}}
flowRules:
  - {resource: web-conns, threshold: 0}
"""),
    )
    h.at(0)
    frame = tcp_frame(CLIENT, SERVER, 40000, 8080, flags=SYN, seq=7000, ack=0, options=SYN_OPTIONS)
    res = h.ingress.test_run(frame)
    assert res.retval == TC_ACT_REDIRECT
    out = parse_frame(res.data_out)
    assert (out.src, out.dst, out.sport, out.dport) == (SERVER, CLIENT, 8080, 40000)
    assert (out.flags, out.seq, out.ack, out.doff, out.payload) == (RST | ACK, 0, 7001, 20, b"")
    assert out.src_mac == frame[0:6] and out.dst_mac == frame[6:12]
    assert out.ip_csum_ok and out.tcp_csum_ok
    assert dp.counters()["rst_sent"] == 1


def test_blocked_syn_is_dropped_when_configured(dp: InboundDataplane) -> None:
    h = Harness(
        dp,
        one_rule("flowRules", "threshold: 0", "reject: {tcp: drop}"),
    )
    h.at(0)
    assert h.syn() == TC_ACT_SHOT


def test_http_blocked_request_becomes_rst_to_the_server(dp: InboundDataplane) -> None:
    h = Harness(
        dp,
        rules("""
resources:
  - {name: api, match: {protocol: http, port: 8080, path: /api}}
flowRules:
  - {resource: api, threshold: 0}
reject: {http: {mode: rst}}
"""),
    )
    h.at(0)
    payload = http_request("GET", "/api/x")
    frame = tcp_frame(CLIENT, SERVER, 40001, 8080, flags=PSH | ACK, seq=5000, ack=9000, payload=payload)
    res = h.ingress.test_run(frame)
    assert res.retval == TC_ACT_OK  # the skb goes on to the server as a RST in place of the request
    out = parse_frame(res.data_out)
    assert (out.src, out.dst, out.sport, out.dport) == (CLIENT, SERVER, 40001, 8080)
    assert (out.flags, out.seq, out.ack, out.payload) == (RST | ACK, 5000, 9000, b"")
    assert out.ip_csum_ok and out.tcp_csum_ok


@pytest.mark.parametrize(
    ("method", "path", "expect"),
    [
        ("GET", "/api/orders/42", "GET:/api/orders"),
        ("GET", "/api/orders", "GET:/api/orders"),
        ("GET", "/api/order", "api"),
        ("POST", "/api/orders", "api"),  # GET-only route: the any-method /api wins
        ("GET", "/api", "api"),
        ("GET", "/other", None),
    ],
)
def test_longest_prefix_and_method(dp: InboundDataplane, method: str, path: str, expect: str | None) -> None:
    h = Harness(
        dp,
        rules("""
resources:
  - {name: "GET:/api/orders", match: {protocol: http, port: 8080, method: GET, path: /api/orders}}
  - {name: api, match: {protocol: http, port: 8080, path: /api}}
"""),
    )
    h.at(0)
    assert h.request(method, path)
    passed = {s.name: s.passed for s in dp.resource_stats()}
    assert passed == {"GET:/api/orders": int(expect == "GET:/api/orders"), "api": int(expect == "api")}
    assert dp.port_counters(8080)["no_route"] == int(expect is None)


def test_many_prefix_lengths_route_to_the_longest(dp: InboundDataplane) -> None:
    """Routes of 8 lengths on one port (the kernel's binary search needs markers), checked against a
    longest-prefix scan."""
    paths = ["/", "/a", "/ab", "/abc/", "/abc/d", "/abc/de/f", "/b/c/d/e/f/g", "/abc/de/fgh/ijk"]
    doc = "resources:\n" + "".join(
        f"  - {{name: r{i}, match: {{protocol: http, port: 8080, method: GET, path: '{p}'}}}}\n"
        for i, p in enumerate(paths)
    )
    h = Harness(dp, rules(doc))
    h.at(0)
    requests = ["/", "/a/x", "/abc", "/abc/", "/abc/de", "/abc/de/f", "/abc/de/fg", "/abc/de/fgh/ijkl", "/b/c/d",
                "/b/c/d/e/f/g/h", "/zzz"]  # fmt: skip
    expected: dict[str, int] = {}
    for path in requests:
        best = max((p for p in paths if path.startswith(p)), key=len)
        expected[best] = expected.get(best, 0) + 1
        assert h.request("GET", path)
    passed = {s.name: s.passed for s in dp.resource_stats() if s.passed}
    assert passed == {f"r{paths.index(p)}": n for p, n in expected.items()}


def test_completion_rt_errors_and_isolation(dp: InboundDataplane) -> None:
    h = Harness(dp, one_rule("isolationRules", "threshold: 2", match=HTTP_ROOT))
    h.at(0)
    assert h.request("GET", "/a", sport=30001)
    assert h.request("GET", "/b", sport=30002)
    assert not h.request("GET", "/c", sport=30003)  # third in flight: isolation
    st = dp.resource_stats()[0]
    assert (st.concurrency, st.block_by_type["isolation"]) == (2, 1)
    h.at(250)
    reply = tcp_frame(SERVER, CLIENT, 8080, 30001, flags=PSH | ACK, payload=http_response(503))
    assert h.egress.test_run(reply).retval == TC_ACT_OK
    h.at(400)
    reply = tcp_frame(SERVER, CLIENT, 8080, 30002, flags=PSH | ACK, payload=http_response(200))
    assert h.egress.test_run(reply).retval == TC_ACT_OK
    st = dp.resource_stats()[0]
    assert (st.complete, st.error, st.concurrency, st.rt_sum_ms) == (2, 1, 0, 650.0)
    assert h.request("GET", "/d", sport=30004)


def test_connection_concurrency_ends_with_fin(dp: InboundDataplane) -> None:
    h = Harness(
        dp,
        one_rule("isolationRules", "threshold: 1"),
    )
    h.at(0)
    syn = tcp_frame(CLIENT, SERVER, 31000, 8080, flags=SYN, seq=1, ack=0)
    assert h.ingress.test_run(syn).retval == TC_ACT_OK
    assert h.ingress.test_run(syn).retval == TC_ACT_OK  # retransmitted SYN: not counted twice
    assert h.syn() != TC_ACT_OK
    h.at(1500)
    fin = tcp_frame(CLIENT, SERVER, 31000, 8080, flags=FIN | ACK)
    assert h.ingress.test_run(fin).retval == TC_ACT_OK
    st = dp.resource_stats()[0]
    assert (st.passed, st.blocked, st.complete, st.concurrency, st.rt_sum_ms) == (1, 1, 1, 0, 1500.0)


def test_throttling_matches_the_model(dp: InboundDataplane) -> None:
    rs = rules("""
resources:
  - {name: t, match: {protocol: tcp, port: 8080}}
flowRules:
  - {resource: t, threshold: 10, controlBehavior: 1, maxQueueingTimeMs: 250}
""")
    h = Harness(dp, rs)
    outcomes = []
    for i in range(60):
        h.at(i * 20)
        k = h.syn() == TC_ACT_OK
        assert k == h.model.entry("t").passed, f"arrival {i}"
        outcomes.append(k)
    assert 0 < sum(outcomes) < 60


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\x00" * 14,
        tcp_frame(CLIENT, SERVER, 1, 8080, flags=SYN)[:34],  # IPv4 header whose TCP header is missing
        tcp_frame(CLIENT, SERVER, 1, 8080, flags=SYN)[:40],  # truncated TCP
        bytes.fromhex("0200000000020200000000010806") + b"\x00" * 28,  # ARP
        tcp_frame(CLIENT, SERVER, 1, 9999, flags=SYN),  # a port nobody protects
        tcp_frame("::2", "::1", 1, 8080, flags=PSH | ACK, payload=b"x"),  # data on a TCP resource: not a SYN
    ],
)
def test_malformed_and_foreign_frames_pass(dp: InboundDataplane, frame: bytes) -> None:
    h = Harness(
        dp,
        one_rule("flowRules", "threshold: 100"),
    )
    h.at(0)
    if len(frame) < 14:  # the kernel refuses to build an skb without an Ethernet header
        with pytest.raises(BpfError, match="test run"):
            h.ingress.test_run(frame)
        return
    res = h.ingress.test_run(frame)
    assert res.retval == TC_ACT_OK and res.data_out == frame
    assert dp.resource_stats()[0].passed == 0
    truncated_tcp = frame[12:14] == b"\x08\x00" and len(frame) < 54
    assert dp.counters()["malformed"] == int(truncated_tcp)


def test_ipv6_syn_counts_and_is_answered_with_a_valid_rst(dp: InboundDataplane) -> None:
    h = Harness(
        dp,
        one_rule("flowRules", "threshold: 1"),
    )
    h.at(0)
    first = tcp_frame("fd00::2", "fd00::1", 40000, 8080, flags=SYN, seq=10, ack=0, options=SYN_OPTIONS)
    assert h.ingress.test_run(first).retval == TC_ACT_OK
    second = tcp_frame("fd00::2", "fd00::1", 40001, 8080, flags=SYN, seq=10, ack=0, options=SYN_OPTIONS)
    res = h.ingress.test_run(second)
    assert res.retval == TC_ACT_REDIRECT
    out = parse_frame(res.data_out)
    assert (out.src, out.dst, out.sport, out.dport, out.flags, out.ack) == (
        "fd00::1",
        "fd00::2",
        8080,
        40001,
        RST | ACK,
        11,
    )
    assert out.tcp_csum_ok


def test_unclassified_http_traffic_is_counted(dp: InboundDataplane) -> None:
    h = Harness(
        dp,
        rules("""
resources:
  - {name: api, match: {protocol: http, port: 8080, path: /}}
"""),
    )
    h.at(0)
    expected = dict.fromkeys(dp.port_counters(8080), 0)
    for payload, counter, verdict in (
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "tls", TC_ACT_OK),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "http2", TC_ACT_OK),
        (b"some request body bytes", "not_request_line", TC_ACT_OK),
        # the request line continues later: dropped, to come again whole
        (b"GET /very/long/path/that/is/cut", "incomplete", TC_ACT_SHOT),
    ):
        frame = tcp_frame(CLIENT, SERVER, 40000, 8080, flags=PSH | ACK, payload=payload)
        assert h.ingress.test_run(frame).retval == verdict
        expected[counter] += 1
        assert dp.port_counters(8080) == expected, payload
    assert dp.resource_stats()[0].passed == 0


def test_unsupported_rules_are_refused_by_name() -> None:
    rs = rules("""
resources:
  - {name: a, match: {protocol: tcp, port: 8080}}
  - {name: db, match: {direction: outbound, protocol: http, host: 10.0.0.5/32, port: 5432, cgroup: /app}}
flowRules:
  - {resource: a, threshold: 10, statIntervalInMs: 1200}
circuitBreakerRules:
  - {resource: a, strategy: 2, retryTimeoutMs: 1000, minRequestAmount: 1, statIntervalMs: 1000, threshold: 3,
     statSlidingWindowBucketCount: 20}
""")
    with pytest.raises(CompileError) as exc:
        compile_inbound(rs)
    problems = exc.value.problems
    assert any(p.startswith("resource 'db': cgroup limits outbound connect()s") for p in problems)
    assert (
        "circuitBreakerRules[0] (a): statSlidingWindowBucketCount 20: the kernel holds at most 16 buckets"
        in problems
    )
    assert any("flowRules[0] (a): statIntervalInMs 1200 must be a multiple of 500" in p for p in problems)
    assert len(problems) == 3


RELOAD_BASE = """
resources:
  - {name: api, match: {protocol: http, port: 8080, path: /api}}
  - {name: web, match: {protocol: http, port: 8080, path: /}}
flowRules:
  - {resource: api, threshold: 2}
"""


def _gen_entries(dp: InboundDataplane) -> dict[int, int]:
    """How many protected ports each generation's port table has."""
    slots = dp.maps.port_slots
    return {
        gen: sum(1 for s in PortSlots.from_buffer_copy(slots.lookup(gen.to_bytes(4, "little"))).slot if s)
        for gen in (0, 1)
    }


def test_reload_is_a_generation_switch_that_keeps_statistics(dp: InboundDataplane) -> None:
    h = Harness(dp, rules(RELOAD_BASE))
    h.at(0)
    assert [h.request("GET", "/api/a") for _ in range(3)] == [True, True, False]
    assert h.request("GET", "/index")
    api_id = dp.compiled.resource_id("api")
    gen_before = dp.gen
    assert not dp.apply(dp.compile(rules(RELOAD_BASE))), "an unchanged rule set must be a no-op"

    changed = RELOAD_BASE.replace("threshold: 2", "threshold: 4").replace(
        "resources:\n", "resources:\n  - {name: new, match: {protocol: tcp, port: 9090}}\n"
    )
    assert dp.apply(dp.compile(rules(changed)))
    assert dp.gen != gen_before
    assert _gen_entries(dp) == {dp.gen: 2, 1 - dp.gen: 0}, "the old generation must be gone"
    assert dp.compiled.resource_id("api") == api_id
    stats = {s.name: s for s in dp.resource_stats()}
    assert (stats["api"].passed, stats["api"].blocked, stats["web"].passed) == (2, 1, 1)  # kept
    assert stats["new"].passed == 0
    # the new limit is in force at once, on the same window: 2 passed so far, 2 more allowed
    assert [h.request("GET", "/api/b") for _ in range(3)] == [True, True, False]


def test_a_failed_apply_leaves_the_rules_in_force(
    dp: InboundDataplane, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = Harness(dp, rules(RELOAD_BASE))
    gen, compiled = dp.gen, dp.compiled
    tighter = dp.compile(rules(RELOAD_BASE.replace("threshold: 2", "threshold: 0")))

    def broken(*_args: object) -> None:
        raise BpfError("update map http_routes", 12)

    monkeypatch.setattr(dp, "_write_ports_routes", broken)
    with pytest.raises(BpfError):
        dp.apply(tighter)
    assert (dp.gen, dp.compiled) == (gen, compiled)
    assert _gen_entries(dp) == {gen: 1, 1 - gen: 0}
    h.at(0)
    assert h.request("GET", "/api/x"), "the old limit (2) still applies"


def test_outbound_requests_stay_out_of_the_inbound_node(dp: InboundDataplane) -> None:
    """An outbound HTTP request (TC egress) and its response (TC ingress) count for its resource only:
    system rules guard inbound traffic."""
    h = Harness(
        dp,
        rules("""
resources:
  - {name: backend, match: {direction: outbound, protocol: http, host: 10.9.9.9/32, port: 8000, path: /api}}
systemRules:
  - {metricType: 2, triggerCount: 1}
"""),
    )
    h.at(0)
    local, remote = "10.9.9.1", "10.9.9.9"
    request = tcp_frame(local, remote, 45000, 8000, flags=PSH | ACK, payload=http_request("GET", "/api/x"))
    for _ in range(2):  # a system Concurrency rule of 1 would block the second if it were inbound
        res = h.egress.test_run(request)
        assert res.retval == TC_ACT_OK and res.data_out == request
    h.at(30)
    reply = tcp_frame(remote, local, 8000, 45000, flags=PSH | ACK, payload=http_response(502))
    assert h.ingress.test_run(reply).retval == TC_ACT_OK
    st = dp.resource_stats()[0]
    assert (st.passed, st.complete, st.error, st.concurrency, st.rt_sum_ms) == (2, 1, 1, 0, 30.0)
    inbound = dp.inbound_stats()
    assert (inbound.total_pass, inbound.total_complete, inbound.concurrency) == (0, 0, 0)


def _inflight(dp: InboundDataplane) -> tuple[list[Inflight], int]:
    """The in-flight entries and the kernel's count of idle ones."""
    entries = [Inflight.from_buffer_copy(v) for _, v in dp.maps.inflight.items()]
    return entries, int.from_bytes(dp.maps.inflight_idle.lookup((0).to_bytes(4, "little")), "little")


def test_keep_alive_connection_reuses_its_entry_until_fin(dp: InboundDataplane) -> None:
    h = Harness(dp, one_rule("isolationRules", "threshold: 1", match=HTTP_ROOT))

    def respond(status: int) -> None:
        reply = tcp_frame(SERVER, CLIENT, 8080, 30001, flags=PSH | ACK, payload=http_response(status))
        assert h.egress.test_run(reply).retval == TC_ACT_OK

    h.at(0)
    assert h.request("GET", "/a", sport=30001)
    assert not h.request("GET", "/b", sport=30002)  # one in flight: isolation
    h.at(100)
    respond(200)
    entries, idle = _inflight(dp)
    assert [(e.active, idle) for e in entries] == [(0, 1)], "the completed request's entry stays, idle"
    st = dp.resource_stats()[0]
    assert (st.passed, st.complete, st.concurrency, st.rt_sum_ms) == (1, 1, 0, 100.0)

    h.at(1000)
    assert h.request("GET", "/c", sport=30001)  # the next request on the connection takes the entry over
    assert not h.request("GET", "/d", sport=30002)
    entries, idle = _inflight(dp)
    assert [(e.active, idle) for e in entries] == [(1, 0)]
    assert dp.resource_stats()[0].concurrency == 1
    h.at(1300)
    respond(503)
    st = dp.resource_stats()[0]
    assert (st.passed, st.blocked, st.complete, st.error, st.concurrency, st.rt_sum_ms) == (
        2,
        2,
        2,
        1,
        0,
        400.0,
    )

    h.at(2000)
    fin = tcp_frame(CLIENT, SERVER, 30001, 8080, flags=FIN | ACK)
    assert h.ingress.test_run(fin).retval == TC_ACT_OK
    assert _inflight(dp) == ([], 0), "FIN removes the idle entry"
    st = dp.resource_stats()[0]
    assert (st.complete, st.error, st.concurrency) == (2, 1, 0), (
        "an idle connection's close completes nothing"
    )


def test_inbound_node_is_kept_only_while_system_rules_are_in_force(dp: InboundDataplane) -> None:
    """Without system rules no request pays for the inbound node; a request that started before system
    rules arrived is not in its concurrency, so its completion does not take one away."""
    web = "resources:\n  - {name: web, match: {protocol: http, port: 8080, path: /}}\n"
    h = Harness(dp, rules(web))
    h.at(0)
    assert h.request("GET", "/a", sport=30001)
    inbound = dp.inbound_stats()
    assert (inbound.total_pass, inbound.concurrency) == (0, 0)

    dp.apply(dp.compile(rules(web + "systemRules:\n  - {metricType: 3, triggerCount: 1000}\n")))
    h.at(10)
    assert h.request("GET", "/b", sport=30002)
    inbound = dp.inbound_stats()
    assert (inbound.total_pass, inbound.concurrency) == (1, 1)
    h.at(50)
    for sport in (30001, 30002):  # the first started without the inbound node, the second with it
        reply = tcp_frame(SERVER, CLIENT, 8080, sport, flags=PSH | ACK, payload=http_response(200))
        assert h.egress.test_run(reply).retval == TC_ACT_OK
    inbound = dp.inbound_stats()
    assert (inbound.total_pass, inbound.total_complete, inbound.concurrency, inbound.total_rt_ms) == (
        1,
        1,
        0,
        40,
    )
    st = dp.resource_stats()[0]
    assert (st.passed, st.complete, st.concurrency, st.rt_sum_ms) == (2, 2, 0, 90.0)
