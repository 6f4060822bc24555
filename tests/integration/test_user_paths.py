"""Paths users rely on that no other test walked: the README's demo (`run` with no arguments), outbound
HTTP with client and server on loopback, outbound TCP and IPv6 `connect6` through `run`, HTTP
`{mode: drop}`, a hotspot `remote_ip` rule with `{mode: rst}`, outbound breakers with
`--on-breaker-change`, and the control socket refusing a non-root client.

Everything runs in namespaces this module creates (their own loopback included), never on the host's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.background import LineProcess, sentinel_cli
from tests.support.daemon_helpers import Daemon
from tests.support.netns import CLEAN_ENV, NetnsPair

pytestmark = pytest.mark.kernel
HERE = Path(__file__).parent
FLAKY = HERE / "flakyserver.py"
OUTCLIENT = HERE / "outclient.py"


def curl_code(pair: NetnsPair, ns: str, url: str, *extra: str) -> tuple[int, str]:
    """(curl's exit status, the HTTP status it printed: 000 when there was no response)."""
    res = pair.run(
        ns, "curl", "-s", "-g", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "3", *extra, url
    )
    return res.returncode, res.stdout.strip()


def start_flaky(pair: NetnsPair, ns: str, port: int = 8000) -> Path:
    mode = pair.tmpdir / f"mode-{ns}-{port}"
    mode.write_text("ok")
    proc = pair.popen(ns, sys.executable, str(FLAKY), str(port), str(mode))
    pair.wait_listening(ns, port, proc)
    return mode


def requests_seen(mode: Path) -> int:
    log = Path(f"{mode}.requests")
    return len(log.read_text().splitlines()) if log.exists() else 0


# -- outbound HTTP, client and server on loopback ---------------------------------------------------------


def test_outbound_http_503_on_loopback(fresh_netns_pair: NetnsPair) -> None:
    """A local caller and a local server on lo (here a namespace's own lo, as the host's would be): the
    third request over a limit of 2 in 10 s (however slow the machine) gets the kernel's 503, and the server
    never sees it."""
    pair = fresh_netns_pair
    ns = pair.client
    mode = start_flaky(pair, ns)
    d = Daemon(
        pair,
        """
resources:
  - {name: local-api, match: {direction: outbound, protocol: http, host: 127.0.0.1/32, port: 8000, path: /api}}
flowRules:
  - {resource: local-api, threshold: 2, statIntervalInMs: 10000}
""",
        side="client",
        iface="lo",
    )
    try:
        codes = [curl_code(pair, ns, "http://127.0.0.1:8000/api")[1] for _ in range(4)]
        assert codes == ["200", "200", "503", "503"], codes
        assert requests_seen(mode) == 2
        doc = d.stats()["resources"]["local-api"]
        assert (doc["pass"], doc["block"]) == (2, 2), doc
    finally:
        d.close()


# -- the README's demo: `sentinel-ebpf run` with no arguments ------------------------------------------------


def test_run_without_arguments_is_the_readme_demo(fresh_netns_pair: NetnsPair) -> None:
    """`sentinel-ebpf run`, no option at all: the built-in example on lo with its demo server (`/` at
    5 requests per second, `/slow` 2 at a time), the default control socket, state and log directories
    (in a private mount namespace here: tmpfs over /run/sentinel-ebpf and /var/log/sentinel-ebpf)."""
    pair = fresh_netns_pair
    ns = pair.server
    script = (
        "mkdir -p /run/sentinel-ebpf /var/log/sentinel-ebpf && "
        "mount -t tmpfs sentinel-test /run/sentinel-ebpf && mount -t tmpfs sentinel-test /var/log/sentinel-ebpf && "
        'exec "$@"'
    )
    # `ip netns exec` gives the command its own mount namespace: these mounts are not the host's
    daemon = LineProcess(pair.cmd(ns, "sh", "-c", script, "sh", *sentinel_cli(), "run"))
    try:
        daemon.wait_until(
            lambda: next((ln for ln in daemon.stderr if "enforcing" in ln), None), 60, "enforcing"
        )

        def inside(*argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
            return subprocess.run(["nsenter", "-t", str(daemon.pid), "-m", "-n", *argv], capture_output=True,
                                  text=True, timeout=timeout, env=CLEAN_ENV)  # fmt: skip

        # / : 20 requests as fast as one client goes: 5 a second pass (two windows at most), the rest 429
        burst = inside(sys.executable, str(HERE / "httpload.py"), "127.0.0.1", "18080", "/", "10", "20")
        status = json.loads(burst.stdout)["status"]
        assert status.get("200", 0) in range(5, 11) and status.get("429", 0) == 20 - status.get("200", 0), (
            status
        )
        # /slow: 4 at once, 2 are served (0.5 s each), 2 refused at once
        urls = ["http://127.0.0.1:18080/slow"] * 4
        par = inside("curl", "-s", "-Z", "--parallel-immediate", "-o", "/dev/null", "-o", "/dev/null", "-o",
                     "/dev/null", "-o", "/dev/null", "-w", "%{http_code}\n", *urls)  # fmt: skip
        assert sorted(par.stdout.split()) == ["200", "200", "429", "429"], par.stdout + par.stderr
        # stats through the default control socket, /run/sentinel-ebpf/control.sock
        doc = json.loads(inside(*sentinel_cli(), "stats", "--json").stdout)["resources"]
        root = next(v for k, v in doc.items() if "slow" not in k)
        slow = next(v for k, v in doc.items() if "slow" in k)
        assert (root["pass"], root["block"]) == (status.get("200", 0), status["429"]), doc
        assert (slow["pass"], slow["block"], slow["block_by_type"]["isolation"]) == (2, 2, 2), doc
        # the metric log goes to the default directory
        assert inside("sh", "-c", "ls /var/log/sentinel-ebpf").stdout.strip(), "no metric log written"
    finally:
        daemon.signal(2)  # SIGINT, as Ctrl-C
        rc = daemon.wait_exit(30)
    assert rc == 0, daemon.describe()
    left = pair.run(ns, "tc", "filter", "show", "dev", "lo", "ingress").stdout
    assert "0x5e17" not in left, left


# -- inbound: HTTP {mode: drop}, hotspot remote_ip with {mode: rst} ---------------------------------------


def test_http_drop_mode_answers_nothing(fresh_netns_pair: NetnsPair) -> None:
    """`reject: {http: {mode: drop}}`: the blocked request gets no answer at all (the client times out),
    the server never sees it, and other paths of the port still work."""
    pair = fresh_netns_pair
    mode = start_flaky(pair, pair.server)
    d = Daemon(
        pair,
        """
resources:
  - {name: api, match: {protocol: http, port: 8000, path: /api}}
flowRules:
  - {resource: api, threshold: 1}
reject:
  http: {mode: drop}
""",
    )
    try:
        url = f"http://{pair.server_ip}:8000"
        assert curl_code(pair, pair.client, url + "/api") == (0, "200")
        assert curl_code(pair, pair.client, url + "/api") == (28, "000")  # curl: operation timed out
        # curl closed its socket (FIN), but the client's stack goes on sending the request: the next
        # copy (backoff: about 6 s after the first) must be dropped too, not judged in a new window
        again = d.stats()["ports"]["8000"]["refused_again"]
        deadline = time.monotonic() + 15
        while d.stats()["ports"]["8000"]["refused_again"] == again:
            assert time.monotonic() < deadline, "no copy of the refused request came after curl closed"
            time.sleep(0.2)
        assert curl_code(pair, pair.client, url + "/other") == (0, "200")
        assert requests_seen(mode) == 2  # /api once, /other once
        doc = d.stats()["resources"]["api"]
        assert (doc["pass"], doc["block"], doc["block_by_type"]["flow"]) == (1, 1, 1), doc
        # curl's TCP sent the request again (new 1 s windows opened meanwhile): each time dropped again,
        # neither judged nor counted
        assert again >= 1, d.stats()["ports"]
    finally:
        d.close()


def test_hotspot_remote_ip_with_rst_mode(fresh_netns_pair: NetnsPair) -> None:
    """A per-client-address hotspot rule with `{mode: rst}`: the client over its budget gets a reset
    (curl exit 56); the server never sees that request."""
    pair = fresh_netns_pair
    mode = start_flaky(pair, pair.server)
    d = Daemon(
        pair,
        """
resources:
  - {name: api, match: {protocol: http, port: 8000, path: /}}
hotSpotParamRules:
  - {resource: api, paramKey: remote_ip, metricType: 1, threshold: 2, durationInSec: 10}
reject:
  http: {mode: rst}
""",
    )
    try:
        url = f"http://{pair.server_ip}:8000/x"
        got = [curl_code(pair, pair.client, url) for _ in range(3)]
        assert got == [(0, "200"), (0, "200"), (56, "000")], got  # 56: connection reset
        assert requests_seen(mode) == 2
        doc = d.stats()["resources"]["api"]
        assert (doc["pass"], doc["block"], doc["block_by_type"]["hotspot"]) == (2, 1, 1), doc
    finally:
        d.close()


# -- outbound TCP through `run`, IPv4 and IPv6 (connect4 and connect6) ------------------------------------


@pytest.mark.parametrize("family", [4, 6])
def test_outbound_tcp_flow_limit_through_run(fresh_netns_pair: NetnsPair, family: int) -> None:
    """An outbound TCP resource in the daemon's rules file: connect()s over the limit fail at once with
    ECONNREFUSED, for IPv4 (cgroup/connect4) and IPv6 (cgroup/connect6)."""
    pair = fresh_netns_pair
    start_flaky(pair, pair.server)
    host = pair.server_ip if family == 4 else pair.server_ip6
    prefix = 32 if family == 4 else 128
    d = Daemon(
        pair,
        f"""
resources:
  - {{name: backend, match: {{direction: outbound, protocol: tcp, host: "{host}/{prefix}", port: 8000}}}}
flowRules:
  - {{resource: backend, threshold: 3}}
""",
        side="client",
        cgroup2=True,
    )
    try:
        res = pair.run(pair.client, sys.executable, str(OUTCLIENT), host, "8000", "6")
        assert res.returncode == 0, res.stderr
        results = json.loads(res.stdout)
        assert [r["errno"] for r in results] == [0, 0, 0, 111, 111, 111], results  # ECONNREFUSED
        assert max(r["ms"] for r in results[3:]) < 1000, results  # at once (a loose bound: machine stalls)
        doc = d.stats()["resources"]["backend"]
        assert (doc["pass"], doc["block"], doc["block_by_type"]["flow"]) == (3, 3, 3), doc
    finally:
        d.close()


# -- the control socket is root-only ---------------------------------------------------------------------


def test_control_socket_refuses_a_non_root_client(fresh_netns_pair: NetnsPair) -> None:
    """`stats` run by an unprivileged user fails with a clear message; root's works."""
    pair = fresh_netns_pair
    d = Daemon(pair, "resources:\n  - {name: api, match: {protocol: http, port: 8000, path: /}}\n")
    try:
        for path in (pair.tmpdir, d.dir):  # let nobody reach the socket: its own mode must refuse
            path.chmod(0o755)
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *sentinel_cli(), "stats",
                "--json", "--control-socket", d.socket]  # fmt: skip
        res = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=CLEAN_ENV)
        assert res.returncode == 1, res
        assert "permission denied" in res.stderr and "root-only" in res.stderr, res.stderr
        assert "api" in d.stats()["resources"]
    finally:
        d.close()


# -- lost events are reported, on the way and at exit ----------------------------------------------------


def test_trace_reports_lost_events(fresh_netns_pair: NetnsPair) -> None:
    """The tracer is stopped (SIGSTOP) while 60,000 connection attempts overflow its ring buffer: the losses
    are reported on stderr, the counters at exit agree, and every attempt is either printed or lost."""
    pair = fresh_netns_pair
    # nothing listens on 47: each connect() is refused at once; the ring buffer holds ~45,000 events
    port, attempts = 47, 60_000
    tracer = LineProcess([*sentinel_cli(), "trace", "--json", "-P", str(port)])
    try:
        tracer.wait_stderr("sentinel-ebpf: tracing TCP", timeout=60)
        os.kill(tracer.pid, signal.SIGSTOP)
        try:
            res = pair.run(pair.client, sys.executable, str(OUTCLIENT), pair.server_ip, str(port), str(attempts),
                           timeout=120)  # fmt: skip
        finally:
            os.kill(tracer.pid, signal.SIGCONT)
        assert res.returncode == 0 and all(r["errno"] == 111 for r in json.loads(res.stdout)), res.stderr[
            -500:
        ]
        tracer.wait_until(lambda: next((ln for ln in tracer.stderr if ln.endswith("events lost")), None), 10,
                          "a lost-events report")  # fmt: skip

        def all_accounted() -> bool | None:  # the backlog in the ring buffer printed too
            return len(tracer.stdout) + _reported_lost(tracer) >= attempts or None

        tracer.wait_until(all_accounted, 60, "every attempt printed or reported lost")
        tracer.signal(signal.SIGINT)
        assert tracer.wait_exit(30) == 0, tracer.describe()
    finally:
        tracer.close()
    reported = _reported_lost(tracer)
    prefix = "sentinel-ebpf: counters at exit: "
    counters = next(json.loads(ln.removeprefix(prefix)) for ln in tracer.stderr if ln.startswith(prefix))
    records = [json.loads(ln) for ln in tracer.stdout if ln.startswith("{")]
    lost = counters["lost"] + counters["pending_full"]
    print(f"\n{len(records)} printed, {lost} lost ({reported} reported on the way)")
    assert lost > 0 and reported == lost, (reported, counters)
    assert len(records) == counters["events"] and len(records) + lost == attempts, (len(records), counters)


def _reported_lost(tracer: LineProcess) -> int:
    return sum(int(ln.split()[1]) for ln in tracer.stderr if ln.endswith("connection events lost"))


# -- a hook command that hangs -----------------------------------------------------------------------------


def test_hung_breaker_hook_does_not_stall_the_daemon(fresh_netns_pair: NetnsPair) -> None:
    """`--on-breaker-change` runs a command that never returns: breakers still open and refuse, the
    control socket answers, and SIGTERM still stops the daemon promptly (the hook gets 5 s, then is killed
    with its process group), leaving no hook process behind."""
    pair = fresh_netns_pair
    mode = start_flaky(pair, pair.server)
    mode.write_text("500")
    tag = f"{os.getpid()}.{time.monotonic_ns() % 1000:03d}"
    hook = f"sleep 6{tag}"  # a unique command line, found below if it outlives the daemon
    d = Daemon(
        pair,
        """
resources:
  - {name: api, match: {protocol: http, port: 8000, path: /api}}
circuitBreakerRules:
  - {id: api-cb, resource: api, strategy: 2, threshold: 2, minRequestAmount: 1, statIntervalMs: 10000,
     retryTimeoutMs: 60000}
""",
        "--on-breaker-change",
        hook,
    )
    try:
        url = f"http://{pair.server_ip}:8000/api"
        codes = [curl_code(pair, pair.client, url)[1] for _ in range(4)]
        assert codes == ["500", "500", "429", "429"], codes  # opened; the hook now hangs
        deadline = time.monotonic() + 10
        while subprocess.run(["pgrep", "-f", hook], capture_output=True, check=False).returncode != 0:
            assert time.monotonic() < deadline, "the hook never started"
            time.sleep(0.05)
        assert curl_code(pair, pair.client, url)[1] == "429"  # still enforcing
        doc = d.stats()["resources"]["api"]  # still answering
        assert doc["circuit_breakers"] == [{"id": "api-cb", "state": "open"}], doc
        t0 = time.monotonic()
        d.proc.signal(signal.SIGTERM)
        assert d.proc.wait_exit(45) == 0, d.proc.describe()
        stopped_s = time.monotonic() - t0
        print(f"\nstopped {stopped_s:.1f} s after SIGTERM with the hook hung")
        assert stopped_s < 20, "a hung hook holds up the stop (the daemon gives it 5 s, then kills it)"
    finally:
        d.close()
    left = subprocess.run(["pgrep", "-f", hook], capture_output=True, text=True, check=False).stdout
    assert not left, f"hook process left running: {left}"
