"""Integration tests of ``sentinel-ebpf trace --http``: real clients, real servers, HTTP and HTTPS.

Clients in a client namespace (curl, and ``httprawclient.py`` on Python's socket/ssl modules) talk to
servers in a server namespace (nginx, plain and TLS; ``httpechoserver.py`` on Python's http.server,
plain and TLS) with a self-signed certificate this module makes. One tracer (the CLI, ``--json``) runs
host-wide for every scenario; each scenario is found in its output by the client's local port, and
checked, on the client's side and on the server's, against what the client says it sent and received.
The last request of the run is a marker: records leave in order, so once its records are out, every
earlier one is too.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.background import LineProcess, sentinel_cli
from tests.support.bpf_ids import bpf_fd_ids, left_after_exit
from tests.support.netns import NetnsPair, Server
from tests.support.nginx import nginx_conf, start_nginx

pytestmark = pytest.mark.kernel("httptrace")

HERE = Path(__file__).parent
NGINX_HTTP, NGINX_TLS, PY_HTTP, PY_TLS = 8180, 8543, 8200, 8643
BIG = 1_048_576 + 17  # a static file nginx sends with sendfile()
CURL_W = '{"lport":%{local_port},"code":%{http_code},"req":%{size_request},"up":%{size_upload},' \
    '"hdr":%{size_header},"down":%{size_download}}\n'  # fmt: skip


@dataclass
class Scenario:
    name: str
    client: str  # "curl" or "python"
    tls: bool
    server_port: int
    local_ports: list[int] = field(default_factory=list)
    expected: list[dict[str, Any]] = field(default_factory=list)  # path, sent, status, received


def make_cert(dir: Path) -> tuple[Path, Path]:
    cert, key = dir / "cert.pem", dir / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=sentinel-test", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def start_tls_nginx(pair: NetnsPair, cert: Path, key: Path) -> Server:
    work = pair.tmpdir / "nginx-http-trace"
    (work / "www" / "static").mkdir(parents=True)
    (work / "www" / "static" / "big.bin").write_bytes(bytes(i % 253 for i in range(BIG)))
    body = f"""access_log off;
    sendfile on;
    server {{
        listen {NGINX_HTTP};
        listen {NGINX_TLS} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        root {work}/www;
        location = /hello {{ return 200 "hello from nginx\\n"; }}
    }}"""
    return start_nginx(pair, work, nginx_conf(work, body, log_level="info"), [NGINX_TLS, NGINX_HTTP])


def curl(pair: NetnsPair, sc: Scenario, path: str, data_file: Path | None = None) -> None:
    scheme = "https" if sc.tls else "http"
    argv = ["curl", "-sS", "-k", "-o", "/dev/null", "-w", CURL_W]
    if data_file is not None:
        argv += ["-H", "Content-Type: application/octet-stream", "--data-binary", f"@{data_file}"]
    res = pair.run(pair.client, *argv, f"{scheme}://{pair.server_ip}:{sc.server_port}{path}", timeout=60)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    sc.local_ports.append(out["lport"])
    sc.expected.append(
        {
            "path": path,
            "sent": out["req"] + out["up"],
            "status": out["code"],
            "received": out["hdr"] + out["down"],
        }
    )


def pyclient(pair: NetnsPair, sc: Scenario, order: str, *specs: str) -> None:
    res = pair.run(
        pair.client, sys.executable, str(HERE / "httprawclient.py"), pair.server_ip, str(sc.server_port),
        "tls" if sc.tls else "plain", order, *specs, timeout=60,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    sc.local_ports.append(out["local_port"])
    sc.expected.extend(out["exchanges"])


@pytest.fixture(scope="module")
def traced() -> Iterator[tuple[NetnsPair, list[Scenario], list[dict[str, Any]], LineProcess]]:
    if shutil.which("openssl") is None or shutil.which("curl") is None:
        pytest.skip("openssl and curl are needed (scripts/setup.sh installs them)")
    with NetnsPair("ht") as pair:
        cert, key = make_cert(pair.tmpdir)
        start_tls_nginx(pair, cert, key)
        echo = pair.popen(
            pair.server, sys.executable, str(HERE / "httpechoserver.py"), str(PY_HTTP), str(PY_TLS),
            str(cert), str(key), stdin=subprocess.DEVNULL,
        )  # fmt: skip
        pair.wait_listening(pair.server, PY_HTTP, echo)
        pair.wait_listening(pair.server, PY_TLS, echo)
        upload = pair.tmpdir / "upload.bin"
        upload.write_bytes(b"u" * 300_000)

        ports = [f"-P{p}" for p in (NGINX_HTTP, NGINX_TLS, PY_HTTP, PY_TLS)]
        tracer = LineProcess([*sentinel_cli(), "trace", "--http", "--json", *ports])
        try:
            tracer.wait_stderr("sentinel-ebpf: tracing HTTP", timeout=60)
            scenarios = [
                Scenario("curl-nginx-http", "curl", False, NGINX_HTTP),
                Scenario("curl-nginx-https", "curl", True, NGINX_TLS),
                Scenario("curl-py-http-post", "curl", False, PY_HTTP),
                Scenario("curl-py-https-post", "curl", True, PY_TLS),
                Scenario("py-py-http-pipelined", "python", False, PY_HTTP),
                Scenario("py-py-https-pipelined", "python", True, PY_TLS),
                Scenario("py-nginx-https", "python", True, NGINX_TLS),
                Scenario("py-nginx-http", "python", False, NGINX_HTTP),
            ]
            by = {s.name: s for s in scenarios}
            curl(pair, by["curl-nginx-http"], "/hello")
            curl(pair, by["curl-nginx-http"], "/static/big.bin")
            curl(pair, by["curl-nginx-http"], "/missing")
            curl(pair, by["curl-nginx-https"], "/hello")
            curl(pair, by["curl-nginx-https"], "/static/big.bin")
            curl(pair, by["curl-py-http-post"], "/upload", upload)
            curl(pair, by["curl-py-https-post"], "/upload", upload)
            specs = (
                "GET:/bytes/10",
                "GET:/chunked/25000",
                "POST:/upload:200000",
                "GET:/bytes/70000",
                "GET:/x",
            )
            pyclient(pair, by["py-py-http-pipelined"], "pipeline", *specs)
            pyclient(pair, by["py-py-https-pipelined"], "pipeline", *specs)
            pyclient(pair, by["py-nginx-https"], "sequential", "GET:/hello", "GET:/static/big.bin")
            pyclient(pair, by["py-nginx-http"], "pipeline", "GET:/hello", "GET:/static/big.bin", "GET:/hello")
            marker = Scenario("marker", "curl", False, PY_HTTP)
            curl(pair, marker, "/bytes/1")

            records: list[dict[str, Any]] = []

            def marker_seen() -> bool | None:
                records[:] = [json.loads(line) for line in tracer.stdout if line.startswith("{")]
                hits = [
                    r for r in records if _port_of(r, pair) in marker.local_ports and r["path"] == "/bytes/1"
                ]
                return True if len(hits) >= 2 else None

            tracer.wait_until(marker_seen, 30, "the marker request's client and server records")
            # stop it: at exit it reports its counters (lost events and desyncs of the last second too)
            tracer.signal(signal.SIGINT)
            assert tracer.wait_exit(30) == 0, tracer.describe()
            marker_seen()
            yield pair, scenarios, records, tracer
        finally:
            tracer.close()


def _port_of(record: dict[str, Any], pair: NetnsPair) -> int:
    """The client's local port of a record: local for the client's side, remote for the server's."""
    endpoint = record["local"] if record["direction"] == "client" else record["remote"]
    host, _, port = endpoint.rpartition(":")
    return int(port) if host == pair.client_ip else -1


SCENARIOS = [
    "curl-nginx-http",
    "curl-nginx-https",
    "curl-py-http-post",
    "curl-py-https-post",
    "py-py-http-pipelined",
    "py-py-https-pipelined",
    "py-nginx-https",
    "py-nginx-http",
]


@pytest.mark.parametrize("name", SCENARIOS)
@pytest.mark.parametrize("side", ["client", "server"])
def test_records_match_what_the_client_sent_and_received(
    traced: tuple[NetnsPair, list[Scenario], list[dict[str, Any]], LineProcess], name: str, side: str
) -> None:
    pair, scenarios, records, _ = traced
    sc = next(s for s in scenarios if s.name == name)
    mine = [r for r in records if _port_of(r, pair) in sc.local_ports and r["direction"] == side]
    got = [
        {
            "path": r["path"],
            "sent": r["request_bytes"],
            "status": r["status"],
            "received": r["response_bytes"],
        }
        for r in mine
    ]
    assert got == sc.expected, f"{name} ({side}): records {mine}"
    assert all(r["tls"] is sc.tls for r in mine)
    assert all(r["latency_ms"] > 0 for r in mine)
    python = Path(sys.executable).name[:15]
    if side == "client":
        assert {r["comm"] for r in mine} == {"curl" if sc.client == "curl" else python}
    else:
        assert {r["comm"] for r in mine} == {"nginx" if sc.server_port in (NGINX_HTTP, NGINX_TLS) else python}


def test_no_events_lost_and_no_desynchronisation(
    traced: tuple[NetnsPair, list[Scenario], list[dict[str, Any]], LineProcess],
) -> None:
    *_, records, tracer = traced
    assert not any(line.endswith("events lost") for line in tracer.stderr), tracer.describe()
    # the counters the tracer read at exit: nothing lost, no parser desynchronised, nothing evicted
    prefix = "sentinel-ebpf: counters at exit: "
    final = [json.loads(line.removeprefix(prefix)) for line in tracer.stderr if line.startswith(prefix)]
    assert len(final) == 1, tracer.describe()
    counters = final[0]
    assert counters["events"] > len(records) > 0, counters
    assert {k: counters[k] for k in ("lost", "active_full", "desyncs", "evicted")} == {
        "lost": 0, "active_full": 0, "desyncs": 0, "evicted": 0,
    }, counters  # fmt: skip


def test_pid_filter_and_no_tls(
    traced: tuple[NetnsPair, list[Scenario], list[dict[str, Any]], LineProcess],
) -> None:
    """`trace --http -p NGINX --no-tls`: only nginx's side of plain HTTP; HTTPS (OpenSSL not hooked:
    encrypted bytes are no HTTP) and other processes give no record."""
    pair, *_ = traced
    pids = pair.run(pair.server, "ip", "netns", "pids", pair.server).stdout.split()
    nginx = next(int(p) for p in pids if Path(f"/proc/{p}/comm").read_text().strip() == "nginx")
    ports = [f"-P{p}" for p in (NGINX_HTTP, NGINX_TLS, PY_HTTP)]
    tracer = LineProcess([*sentinel_cli(), "trace", "--http", "--json", "--no-tls", "-p", str(nginx), *ports])
    try:
        ready = tracer.wait_stderr("sentinel-ebpf: tracing HTTP", timeout=60)
        assert "OpenSSL: off" in ready, ready
        plain, tls, other = (Scenario(n, "curl", t, port) for n, t, port in
                             (("plain", False, NGINX_HTTP), ("tls", True, NGINX_TLS), ("other", False, PY_HTTP)))  # fmt: skip
        curl(pair, tls, "/hello")
        curl(pair, other, "/bytes/10")
        curl(pair, plain, "/hello")  # the last: once its record is out, the others would be too
        tracer.wait_until(lambda: tracer.stdout or None, 30, "the plain request's record")
        tracer.signal(signal.SIGINT)
        assert tracer.wait_exit(30) == 0, tracer.describe()
    finally:
        tracer.close()
    records = [json.loads(line) for line in tracer.stdout if line.startswith("{")]
    assert len(records) == 1, records
    r = records[0]
    assert (r["pid"], r["direction"], r["path"], r["tls"]) == (nginx, "server", "/hello", False), r
    assert r["remote"] == f"{pair.client_ip}:{plain.local_ports[0]}", r


def test_http_flag_rejects_connection_options() -> None:
    res = subprocess.run(
        [*sentinel_cli(), "trace", "--http", "--accept"], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 2
    assert "--comm and --accept apply to connection tracing" in res.stderr


@pytest.mark.parametrize(("hooks", "how"), [("btf", "count"), ("raw", "count"), ("auto", "sigint")])
def test_http_trace_cli_exits_and_leaves_nothing(fresh_netns_pair: NetnsPair, hooks: str, how: str) -> None:
    """-c or SIGINT: the command exits 0 and every program, link (uprobes too) and map it held is gone."""
    import signal

    pair = fresh_netns_pair
    cert, key = make_cert(pair.tmpdir)
    echo = pair.popen(pair.server, sys.executable, str(HERE / "httpechoserver.py"), str(PY_HTTP), str(PY_TLS),
                      str(cert), str(key), stdin=subprocess.DEVNULL)  # fmt: skip
    pair.wait_listening(pair.server, PY_TLS, echo)
    argv = [*sentinel_cli(), "trace", "--http", "--json", f"-P{PY_TLS}", "--hooks", hooks]
    tracer = LineProcess([*argv, "-c", "2"] if how == "count" else argv)
    try:
        tracer.wait_stderr("sentinel-ebpf: tracing HTTP", timeout=60)
        assert f"{hooks} hooks" in tracer.stderr[-1] or hooks == "auto", tracer.describe()
        owned = bpf_fd_ids(tracer.pid)
        # sys_enter, sys_exit, inet_sock_set_state, 5 OpenSSL programs; every attachment a link
        assert len(owned["prog"]) >= 8 and len(owned["link"]) >= 11, owned
        res = pair.run(
            pair.client, "curl", "-sk", "-o", "/dev/null", f"https://{pair.server_ip}:{PY_TLS}/bytes/5"
        )
        assert res.returncode == 0, res.stderr
        if how == "sigint":
            tracer.wait_until(lambda: tracer.stdout[-1:] or None, 15, "the first record")
            tracer.signal(signal.SIGINT)
        assert tracer.wait_exit(20) == 0, tracer.describe()
        assert not any("Traceback" in ln for ln in tracer.stderr), tracer.describe()
        records = [json.loads(line) for line in tracer.stdout]
        assert {(r["direction"], r["path"], r["status"], r["tls"]) for r in records} >= {
            ("server", "/bytes/5", 200, True)
        }, records
        left = left_after_exit(owned)
        assert not any(left.values()), f"still loaded after trace --http exited: {left}"
    finally:
        tracer.close()
