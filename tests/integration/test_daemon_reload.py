"""Reloads of a running daemon: on file change, on SIGHUP, over the control socket; an invalid file
keeps the rules in force (checked with traffic)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

from sentinel_ebpf.daemon import request
from tests.support.daemon_helpers import Daemon, load
from tests.support.netns import NetnsPair

pytestmark = pytest.mark.kernel
RULES = """
resources:
  - {name: limited, match: {protocol: http, port: 8000, path: /limited}}
flowRules:
  - {resource: limited, threshold: THRESHOLD, statIntervalInMs: 1000}
"""


@pytest.fixture
def daemon(fresh_netns_pair: NetnsPair) -> Iterator[Daemon]:
    fresh_netns_pair.start_http_server(8000)
    with Daemon(fresh_netns_pair, RULES.replace("THRESHOLD", "5")) as d:
        yield d


def test_reload_changes_the_limit_and_an_invalid_file_keeps_it(daemon: Daemon) -> None:
    pair = daemon.pair
    before = load(pair, "/limited", 1.2)
    mark = len(daemon.proc.stderr)
    daemon.rules.write_text(RULES.replace("THRESHOLD", "40"))
    daemon.wait_log("applied", after=mark)
    time.sleep(1.1)  # a fresh window
    after = load(pair, "/limited", 1.0)
    assert after["served"] > before["served"] + 10, (before, after)
    mark = len(daemon.proc.stderr)
    daemon.rules.write_text(RULES.replace("THRESHOLD", "-1"))
    daemon.wait_log("the rules in force stay", after=mark)
    mark = len(daemon.proc.stderr)
    daemon.proc.signal(signal.SIGHUP)  # re-reads the file: still invalid, still kept
    daemon.wait_log("the rules in force stay", after=mark)
    time.sleep(1.1)
    kept = load(pair, "/limited", 1.0)
    assert kept["served"] > 20, kept  # still 40/s, not rejected-everything or crashed
    assert daemon.proc.proc.poll() is None
    assert _threshold_in_force(daemon) == 40


def test_sighup_reloads_a_change_the_file_watch_cannot_see(daemon: Daemon) -> None:
    st = daemon.rules.stat()
    daemon.rules.write_text(RULES.replace("THRESHOLD", "9"))  # same size, mtime put back below
    os.utime(daemon.rules, ns=(st.st_atime_ns, st.st_mtime_ns))
    mark = len(daemon.proc.stderr)
    daemon.proc.signal(signal.SIGHUP)
    daemon.wait_log(": applied", after=mark)
    assert _threshold_in_force(daemon) == 9
    # and over the control socket, which answers with the outcome
    daemon.rules.write_text(RULES.replace("THRESHOLD", "7"))
    os.utime(daemon.rules, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert request(daemon.socket, "reload") == {"ok": True, "applied": True, "accepted": True, "problems": []}
    assert _threshold_in_force(daemon) == 7


def _threshold_in_force(daemon: Daemon) -> int:
    doc = request(daemon.socket, "rules")["document"]
    return int(doc["flowRules"][0]["threshold"])
