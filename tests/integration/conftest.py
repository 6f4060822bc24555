"""Fixtures of the integration tier: namespaces, real servers, real clients, background CLI commands.

Namespace fixtures need root; every test using them should be marked ``kernel`` (see tests/conftest.py),
which skips them (or fails them under CI=true) when the machine cannot run them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.background import LineProcess
from tests.support.netns import NetnsPair, Server
from tests.support.nginx import hello_nginx, nginx_binary

TCPCLIENT = Path(__file__).with_name("tcpclient.py")


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")


@pytest.fixture(scope="module")
def netns_pair() -> Iterator[NetnsPair]:
    """A client/server namespace pair for the module (10.200.<n>.1 <-> 10.200.<n>.2, IPv6 too)."""
    _need_root()
    with NetnsPair() as pair:
        yield pair


@pytest.fixture
def fresh_netns_pair() -> Iterator[NetnsPair]:
    """A namespace pair of the test's own, for tests that change it."""
    _need_root()
    with NetnsPair() as pair:
        yield pair


@pytest.fixture(scope="module")
def http_server(netns_pair: NetnsPair) -> Server:
    """``python -m http.server`` on [::]:8000 in the server namespace (stopped with the pair)."""
    return netns_pair.start_http_server(8000)


@pytest.fixture(scope="module")
def nginx_server(netns_pair: NetnsPair) -> Server:
    """nginx on port 8080 (IPv4 and IPv6), one process, in the server namespace."""
    try:
        nginx_binary()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    return hello_nginx(netns_pair, 8080)


@pytest.fixture
def background() -> Iterator[Callable[..., LineProcess]]:
    """Start background commands (``background(argv)``); all are killed and reaped after the test."""
    started: list[LineProcess] = []

    def start(argv: list[str], **kw: object) -> LineProcess:
        proc = LineProcess(argv, **kw)
        started.append(proc)
        return proc

    yield start
    for proc in reversed(started):
        proc.close()
