"""Hotspot parameter rules in the kernel (client address, header, query parameter) against the model."""

from __future__ import annotations

import random

import pytest

from sentinel_ebpf.enforce import InboundDataplane
from sentinel_ebpf.model.sentinel import Entry
from sentinel_ebpf.rules import RulesError, load_text
from tests.support.inbound import SERVER, Lockstep
from tests.support.packets import ACK, PSH, RST, SYN, TC_ACT_OK, http_response, parse_frame, tcp_frame

pytestmark = pytest.mark.kernel
T0_MS = 1_700_000_000_000
CLIENTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


def request_bytes(path: str, user: str | None, filler: int = 0) -> bytes:
    headers = "Host: svc\r\n" + "X-Padding: " + "p" * filler + "\r\n"
    if user is not None:
        headers += f"x-user-ID:  {user}\r\n"
    return f"GET {path} HTTP/1.1\r\n{headers}Accept: */*\r\n\r\n".encode()


class Run(Lockstep):
    def __init__(self, dp: InboundDataplane, text: str) -> None:
        super().__init__(dp, load_text(text, "hot.yaml"), T0_MS)
        self.port = 30000
        self.open: dict[tuple[str, int], Entry] = {}

    def http(self, client: str, path: str, params: dict[str, str], user: str | None, filler: int = 0) -> bool:
        self.port += 1
        frame = tcp_frame(
            client, SERVER, self.port, 8080, flags=PSH | ACK, payload=request_bytes(path, user, filler)
        )
        res = self.ingress.test_run(frame)
        kernel = res.retval == TC_ACT_OK and res.data_out == frame
        entry = self.model.entry("api", param=params)
        assert kernel == entry.passed, (client, path, params)
        if entry.passed:
            self.open[(client, self.port)] = entry
        return kernel

    def finish(self, key: tuple[str, int]) -> None:
        client, port = key
        frame = tcp_frame(SERVER, client, 8080, port, flags=PSH | ACK, payload=http_response(200))
        assert self.egress.test_run(frame).retval == TC_ACT_OK
        self.open.pop(key).exit()


API = """
resources:
  - {name: api, match: {protocol: http, port: 8080, path: /}}
hotSpotParamRules:
"""


def test_remote_ip_qps_reject_limits_one_client_not_another(dp: InboundDataplane) -> None:
    run = Run(
        dp,
        API + "  - {resource: api, paramKey: remote_ip, metricType: 1, threshold: 3, durationInSec: 1,"
        " burstCount: 1, specificItems: [{valKind: 1, valStr: 127.0.0.4, threshold: 8}]}\n",
    )
    passed = {c: 0 for c in CLIENTS}
    for i in range(90):
        run.at(i * 30)
        client = CLIENTS[i % 3]
        passed[client] += run.http(client, "/x", {"remote_ip": client}, None)
    # 2.7 s at 3/s (+1 burst) for the first two; the specific item allows 8/s for the third
    assert passed["127.0.0.2"] == passed["127.0.0.3"] < passed["127.0.0.4"] < 30


@pytest.mark.parametrize("filler", [0, 300], ids=["near", "far"])
def test_header_concurrency(dp: InboundDataplane, filler: int) -> None:
    run = Run(dp, API + "  - {resource: api, paramKey: 'header:X-User-Id', metricType: 0, threshold: 2}\n")
    rnd = random.Random(3)
    outcomes = []
    for i in range(120):
        run.at(i * 10)
        if run.open and rnd.random() < 0.4:
            run.finish(rnd.choice(sorted(run.open)))
            continue
        user = rnd.choice(("alice", "bob", None))
        params = {"header:X-User-Id": user} if user else {}
        outcomes.append(run.http("127.0.0.2", "/y", params, user, filler))
    assert 0 < sum(outcomes) < len(outcomes)


def test_query_throttling_and_absent_parameter(dp: InboundDataplane) -> None:
    run = Run(
        dp,
        API + "  - {resource: api, paramKey: 'query:tenant', metricType: 1, controlBehavior: 1,"
        " threshold: 5, durationInSec: 1, maxQueueingTimeMs: 100}\n",
    )
    outcomes = []
    for i in range(80):
        run.at(i * 25)
        tenant = ("acme", "globex", None)[i % 3]
        path = f"/q?x=1&tenant={tenant}&y=2" if tenant else "/q?mytenant=zzz&x=1"
        params = {"query:tenant": tenant} if tenant else {}
        outcomes.append(run.http("127.0.0.2", path, params, None))
    assert 0 < sum(outcomes) < len(outcomes)


def test_parameter_rules_need_http_resources() -> None:
    with pytest.raises(RulesError, match="header parameters need an http resource"):
        load_text(
            """
resources:
  - {name: conns, match: {protocol: tcp, port: 8080}}
hotSpotParamRules:
  - {resource: conns, paramKey: 'header:X-User-Id', metricType: 0, threshold: 2}
""",
            "x.yaml",
        )


def test_remote_ip_on_tcp_connections(dp: InboundDataplane) -> None:
    run = Run(
        dp,
        """
resources:
  - {name: api, match: {protocol: tcp, port: 8080}}
hotSpotParamRules:
  - {resource: api, paramKey: remote_ip, metricType: 1, threshold: 2, durationInSec: 1}
""",
    )
    run.at(0)
    verdicts = []
    for i in range(6):
        client = CLIENTS[i % 2]
        frame = tcp_frame(client, SERVER, 40000 + i, 8080, flags=SYN, seq=1, ack=0)
        kernel = run.ingress.test_run(frame).retval == TC_ACT_OK
        assert kernel == run.model.entry("api", param={"remote_ip": client}).passed
        verdicts.append(kernel)
    assert verdicts == [True, True, True, True, False, False]


ONE_PER_USER = (
    API + "  - {resource: api, paramKey: 'header:X-User-Id', metricType: 1, threshold: 1, durationInSec: 1}\n"
)
ONE_PER_TENANT = (
    API + "  - {resource: api, paramKey: 'query:tenant', metricType: 1, threshold: 1, durationInSec: 1}\n"
)
ALICE = request_bytes("/a", "alice")
BOB = request_bytes("/b", "bob")


def tenant(name: str) -> bytes:
    return f"GET /q?tenant={name} HTTP/1.1\r\nHost: svc\r\n\r\n".encode()


class Stream:
    """One connection's client segments (crafted; no socket: read as the stream's next bytes)."""

    def __init__(self, dp: InboundDataplane, sport: int) -> None:
        self.ingress = dp.obj.program("tc_ingress")
        self.sport, self.seq = sport, 1000

    def send(self, payload: bytes, seq: int | None = None) -> bytes | None:
        """What of `payload` reached the server (None: nothing; it was refused)."""
        seq = self.seq if seq is None else seq
        frame = tcp_frame("127.0.0.2", SERVER, self.sport, 8080, flags=PSH | ACK, seq=seq, payload=payload)
        res = self.ingress.test_run(frame)
        if res.retval != TC_ACT_OK or parse_frame(res.data_out).flags & RST:
            return None
        kept = parse_frame(res.data_out).payload
        self.seq = seq + len(kept)
        return kept


def spend(dp: InboundDataplane, first: bytes) -> None:
    """One request of a fresh connection spends its value's one token."""
    assert Stream(dp, 31000).send(first) == first


@pytest.mark.parametrize(
    ("rules", "first", "lead"),
    [(ONE_PER_USER, BOB, b"\r\n\r\n"), (ONE_PER_TENANT, tenant("acme"), b"\r\n")],
    ids=["header", "query"],
)
def test_empty_lines_before_the_request_do_not_hide_its_parameter(
    dp: InboundDataplane, rules: str, first: bytes, lead: bytes
) -> None:
    """nginx skips empty lines before a request line; the parameter search must too (it stopped at the
    first line end, as if the request line, or the head, had ended: the rule did not apply)."""
    dp.apply(dp.compile(load_text(rules, "hot.yaml")))
    spend(dp, first)
    assert Stream(dp, 31001).send(lead + first) is None, "the value's token is spent"


@pytest.mark.parametrize(
    ("rules", "spent", "other"),
    [
        (ONE_PER_USER, BOB, request_bytes("/a", None)),
        (ONE_PER_TENANT, tenant("acme"), b"GET /q?x=1 HTTP/1.1\r\nHost: svc\r\n\r\n"),
    ],
    ids=["header", "query"],
)
def test_a_pipelined_request_is_judged_by_its_own_parameter(
    dp: InboundDataplane, rules: str, spent: bytes, other: bytes
) -> None:
    """Behind a request without the parameter in one segment: the parameter is read from the request
    judged, not from the segment's first (which has none: the rule would not apply, and an attacker would
    pipeline its limited value behind such a request)."""
    dp.apply(dp.compile(load_text(rules, "hot.yaml")))
    spend(dp, spent)
    assert Stream(dp, 31002).send(other + spent) == other, "cut before the spent value's request"
