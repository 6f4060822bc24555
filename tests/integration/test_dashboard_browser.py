"""The dashboard in a real headless Chromium (Debian's, driven by Playwright), over a daemon under traffic.

The daemon and the backend run in a test namespace pair; the dashboard and the browser on loopback of
the host. ``SENTINEL_DASHBOARD_SCREENSHOT=docs/dashboard.png`` saves the README's screenshot there (with
45 s of traffic instead of 8, for a fuller picture).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.background import LineProcess, sentinel_cli
from tests.support.daemon_helpers import LOAD, Daemon, load
from tests.support.netns import NetnsPair

pytestmark = pytest.mark.kernel
FLAKY = Path(__file__).with_name("flakyserver.py")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
TOKEN = "dashboard-test-token-7f3a9c1e"
SCREENSHOT = os.environ.get("SENTINEL_DASHBOARD_SCREENSHOT")
TRAFFIC_S = 45 if SCREENSHOT else 8
RULES = """
resources:
  - {name: "GET:/api", match: {protocol: http, port: 8000, method: GET, path: /api}}
  - {name: slow, match: {protocol: http, port: 8000, path: /slow}}
  - {name: flaky, match: {protocol: http, port: 8000, path: /flaky}}
  - {name: limited, match: {protocol: http, port: 8000, path: /limited}}
flowRules:
  - {id: api-qps, resource: "GET:/api", threshold: 100000, statIntervalInMs: 1000}
  - {id: limited-qps, resource: limited, threshold: 20, statIntervalInMs: 1000}
isolationRules:
  - {id: slow-conc, resource: slow, threshold: 2}
circuitBreakerRules:
  - {id: flaky-errors, resource: flaky, strategy: 2, threshold: 3, minRequestAmount: 1, statIntervalMs: 10000,
     statSlidingWindowBucketCount: 10, retryTimeoutMs: 1000, probeNum: 1}
"""


@dataclass
class Stack:
    pair: NetnsPair
    daemon: Daemon
    mode: Path
    url: str
    page: Any
    browser: Any

    def get(self, path: str) -> str:
        return self.pair.run(self.pair.client, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                             "--max-time", "5", f"http://{self.pair.server_ip}:8000{path}").stdout  # fmt: skip

    def background_load(self, path: str, seconds: float) -> subprocess.Popen[Any]:
        return self.pair.popen(self.pair.client, sys.executable, str(LOAD), self.pair.server_ip, "8000", path,
                               str(seconds), stdout=subprocess.DEVNULL)  # fmt: skip


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (scripts/setup.sh installs it)")
    playwright = pytest.importorskip(
        "playwright.sync_api", reason="pip install -e '.[test]' installs playwright"
    )
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    token_file = tmp_path_factory.mktemp("dashboard") / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    with NetnsPair() as pair:
        mode = pair.tmpdir / "mode"
        mode.write_text("ok")
        backend = pair.popen(pair.server, sys.executable, str(FLAKY), "8000", str(mode), "0.5")
        try:
            pair.wait_listening(pair.server, 8000, backend)
            daemon = Daemon(pair, RULES)
            dash = LineProcess([*sentinel_cli(), "dashboard", "--listen", "127.0.0.1:0", "--control-socket",
                                daemon.socket, "--token-file", str(token_file)])  # fmt: skip
            try:
                line = dash.wait_until(
                    lambda: next((ln for ln in dash.stderr if "dashboard at" in ln), None), 30, "dashboard at"
                )
                url = re.search(r"http://\S+/", line).group(0)  # type: ignore[union-attr]
                with playwright.sync_playwright() as pw:
                    browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                    try:
                        page = browser.new_page(viewport={"width": 1400, "height": 1000})
                        errors: list[str] = []
                        page.on("pageerror", lambda exc: errors.append(str(exc)))
                        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                        yield Stack(pair, daemon, mode, url, page, browser)
                        assert errors == [], errors  # no script error, no CSP violation
                    finally:
                        browser.close()
            finally:
                dash.close()
                daemon.close()
        finally:
            backend.kill()
            backend.wait()


def _open(s: Stack) -> None:
    s.page.goto(s.url)
    s.page.fill("#token", TOKEN)
    s.page.click("#token-use")
    s.page.wait_for_selector("#rules-apply:not([disabled])", timeout=15_000)


def _pixels(s: Stack, selector: str, rgb: tuple[int, int, int], upper: float = 1.0) -> int:
    """Pixels of one colour in the canvas under ``selector`` (what the chart really drew), in its
    ``upper`` part only: a line of zeros runs along the bottom, a line of traffic rises above it."""
    return int(s.page.evaluate(
        """([sel, rgb, upper]) => {
            const c = document.querySelector(sel);
            const d = c.getContext("2d").getImageData(0, 0, c.width, Math.floor(c.height * upper)).data;
            let n = 0;
            for (let i = 0; i < d.length; i += 4)
                if (Math.abs(d[i] - rgb[0]) < 8 && Math.abs(d[i+1] - rgb[1]) < 8 && Math.abs(d[i+2] - rgb[2]) < 8) n++;
            return n;
        }""",
        [selector, list(rgb), upper],
    ))  # fmt: skip


def _card(name: str) -> str:
    return f'.card.resource[data-resource="{name}"]'


def test_the_page_shows_every_resource_with_live_charts_breakers_dataplane_and_doctor(stack: Stack) -> None:
    s = stack
    # a breaker cycle on /flaky: errors open it, a successful probe after the retry timeout closes it
    s.mode.write_text("500")
    codes = [s.get("/flaky") for _ in range(5)]
    assert codes[-1] == "429", codes
    s.mode.write_text("ok")
    time.sleep(1.2)
    assert s.get("/flaky") == "200"
    slow = [s.background_load("/slow", TRAFFIC_S) for _ in range(2)]
    api = s.background_load("/api", TRAFFIC_S)
    limited = s.background_load("/limited", TRAFFIC_S)
    try:
        _open(s)
        for name in ("GET:/api", "slow", "flaky", "limited"):
            s.page.wait_for_selector(f"{_card(name)} .chart-qps canvas", timeout=15_000)
        # pass/s of GET:/api charted: its green line is drawn (wait for a few seconds of traffic)
        deadline = time.monotonic() + 20
        while _pixels(s, f"{_card('GET:/api')} .chart-qps canvas", (46, 125, 50), upper=0.6) < 20:
            assert time.monotonic() < deadline, "no pass line drawn for GET:/api"
            time.sleep(0.5)
        # concurrency of the slow resource (2 clients, 0.5 s per answer) is charted too
        deadline = time.monotonic() + 10
        while _pixels(s, f"{_card('slow')} .chart-rt canvas", (0, 131, 143), upper=0.6) < 20:
            assert time.monotonic() < deadline, "no concurrency line drawn for slow"
            time.sleep(0.5)
        # blocks of the limited resource: its red line, and flow as the reason
        deadline = time.monotonic() + 10
        while _pixels(s, f"{_card('limited')} .chart-qps canvas", (198, 40, 40), upper=0.6) < 20:
            assert time.monotonic() < deadline, "no block line drawn for limited"
            time.sleep(0.5)
        assert re.search(r"blocked by: flow [1-9]", s.page.inner_text(f"{_card('limited')} .reasons"))
        facts = s.page.inner_text(f"{_card('GET:/api')} .facts")
        assert int(re.search(r"total pass ([\d,]+)", facts).group(1).replace(",", "")) > 0  # type: ignore[union-attr]
        # the breaker: its state, and its transitions marked (the dashed line of "open")
        assert s.page.inner_text(f'{_card("flaky")} [data-breaker="flaky-errors"]') == "flaky-errors: closed"
        assert _pixels(s, f"{_card('flaky')} .chart-qps canvas", (216, 27, 96)) > 20
        assert "circuit_breaking" in s.page.inner_text(f"{_card('flaky')} .reasons")
        counters = [
            int(c.inner_text().replace(",", "")) for c in s.page.query_selector_all("#dp-counters td.num")
        ]
        assert len(counters) > 2 and sum(counters) > 0
        # the fleet: this host's one daemon, up, with the revision the rules section shows
        node = [td.inner_text() for td in s.page.query_selector_all("#fleet-nodes tr:nth-child(2) td")]
        assert (
            node[0] == s.daemon.socket and node[1] == "up" and node[3] == s.page.inner_text("#rules-revision")
        )
        s.page.wait_for_selector("#doctor >> text=kernel", timeout=60_000)
        if SCREENSHOT:
            api.wait(timeout=TRAFFIC_S + 30)
            time.sleep(2)
        s.page.screenshot(path=SCREENSHOT or str(s.pair.tmpdir / "dashboard.png"), full_page=True)
    finally:
        for p in [*slow, api, limited]:
            p.wait(timeout=TRAFFIC_S + 30)


def _rule_cell(s: Stack, field: str) -> str:
    return f'table[data-section="flowRules"] tr[data-index="0"] td[data-field="{field}"]'


def test_an_invalid_edit_shows_its_problems_and_changes_nothing_a_valid_one_takes_effect(
    stack: Stack,
) -> None:
    s = stack
    _open(s)
    before_file = s.daemon.rules.read_bytes()
    revision = s.page.inner_text("#rules-revision")
    # invalid: a negative threshold and a word for a number; each problem next to its field
    s.page.fill(f"{_rule_cell(s, 'threshold')} input", "-3")
    s.page.fill(f"{_rule_cell(s, 'statIntervalInMs')} input", "often")
    s.page.click("#rules-apply")
    s.page.wait_for_selector(f"{_rule_cell(s, 'threshold')} .problem", timeout=15_000)
    assert s.page.inner_text(f"{_rule_cell(s, 'statIntervalInMs')} .problem")
    assert "nothing was changed" in s.page.inner_text("#rules-problems")
    assert s.daemon.rules.read_bytes() == before_file
    assert s.page.inner_text("#rules-revision") == revision
    burst = load(s.pair, "/api", 1.0)
    assert burst["429"] == 0 and burst["served"] > 20, burst  # still the old threshold (100,000/s)
    # valid: threshold 5 per second; the page says when it is in force, and traffic shows it
    s.page.fill(f"{_rule_cell(s, 'threshold')} input", "5")
    s.page.fill(f"{_rule_cell(s, 'statIntervalInMs')} input", "1000")
    s.page.click("#rules-apply")
    s.page.wait_for_selector("#rules-status .applied", timeout=15_000)
    assert "in force since" in s.page.inner_text("#rules-status .applied")
    assert s.page.inner_text("#rules-revision") != revision
    assert "threshold: 5" in s.daemon.rules.read_text()
    blocked_before = s.daemon.stats()["resources"]["GET:/api"]["block"]
    limited = load(s.pair, "/api", 2.0)
    assert limited["429"] > 0 and limited["served"] <= 5 * 3 + 5, limited
    assert s.daemon.stats()["resources"]["GET:/api"]["block"] - blocked_before == limited["429"]


def test_without_the_token_the_page_reads_but_cannot_edit(stack: Stack) -> None:
    s = stack
    page = s.browser.new_page()  # a fresh context: no token in its session storage
    try:
        page.goto(s.url)
        page.wait_for_selector(f"{_card('GET:/api')} .chart-qps canvas", timeout=15_000)
        page.wait_for_selector("#rules-tables table[data-section='flowRules'] tr.rule-row", timeout=15_000)
        assert "read-only" in page.inner_text("#rules-status")
        assert page.is_disabled("#rules-apply") and page.is_disabled(f"{_rule_cell(s, 'threshold')} input")
        # and the API refuses an edit without the token, even from the page's own origin
        status = page.evaluate(
            """async () => (await fetch('/api/daemons/0/rules/apply', {method: 'POST',
                 headers: {'Content-Type': 'application/json'}, body: JSON.stringify({document: {}, base: ''})})).status"""
        )
        assert status == 401
    finally:
        page.close()
