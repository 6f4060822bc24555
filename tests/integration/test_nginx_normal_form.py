"""The normal form a resource's path is matched against (rules/target.py; the dataplane tier checks that
bpf/normalize.bpf.h computes the same) is the path nginx picks its location by: nginx answers each target
with its `$uri`, and the two must agree on every target nginx serves. A target the kernel reads as one
path and nginx as another is a way around a limit.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from urllib.parse import unquote_to_bytes

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sentinel_ebpf.netns import entered
from sentinel_ebpf.rules.target import normalize_target
from tests.support.netns import NetnsPair
from tests.support.nginx import nginx_conf, start_nginx

pytestmark = pytest.mark.kernel
Uri = Callable[[str], tuple[int, bytes]]


@pytest.fixture(scope="module")
def nginx_uri() -> Iterator[Uri]:
    """(status, $uri) of nginx for a request target, over one keep-alive connection from the client
    namespace."""
    with NetnsPair("nf") as pair:
        work = pair.tmpdir / "nginx-uri"
        start_nginx(
            pair, work, nginx_conf(work, 'server { listen 8080; location / { return 200 "$uri"; } }'), [8080]
        )
        conn: list[socket.socket] = []

        def ask(target: str) -> tuple[int, bytes]:
            if not conn:
                with entered(pair.client):
                    conn.append(socket.create_connection((pair.server_ip, 8080), timeout=10))
            s = conn[0]
            s.sendall(f"GET {target} HTTP/1.1\r\nHost: svc\r\n\r\n".encode("latin-1"))
            data = b""
            while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + length(data):
                chunk = s.recv(65536)
                assert chunk, f"nginx closed the connection after {target!r}: {data!r}"
                data += chunk
            status = int(data.split(b" ", 2)[1])
            if status != 200:  # nginx closes after an error
                conn.pop().close()
            return status, data.split(b"\r\n\r\n", 1)[1]

        yield ask
        for s in conn:
            s.close()


def length(response: bytes) -> int:
    for line in response.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def assert_agree(nginx_uri: Uri, target: str, *, refused_ok: bool = False) -> None:
    """nginx read the target as the normal form's path (which keeps %25 and control characters encoded,
    where nginx's $uri has them decoded); `refused_ok`: or it refused it (400: nothing is served)."""
    status, uri = nginx_uri(target)
    if refused_ok:
        assume(status != 400)  # (hypothesis fails the test when it must filter out too many)
    assert status == 200, (target, status, uri)
    path = normalize_target(target.split("?", 1)[0])  # (a '?' in the normal form may be a decoded one)
    assert unquote_to_bytes(path) == uri, (target, path, uri)


@pytest.mark.parametrize(
    "target",
    [
        "/api",
        "/%61pi",
        "//api",
        "/./api",
        "/x/../api",
        "/x/%2e%2e/api",
        "/x%2F..%2Fapi",
        "/x/.%2E/api",
        "/api/..",
        "/other%3F/../api",  # a decoded '?' is a path character
        "/api%3F/../other",
        "/api#/../other",  # '#' ends the target
        "/x#/../../api",
        "/api%23/../other",  # a decoded '#' is a path character
        "/api?x=/../y",
        "/x/..;/api",
        "/x/.../api",
        "/x\\../api",
        "/api%20x",
        "/x/%252e%252e/api",
    ],
)
def test_nginx_reads_each_target_as_its_normal_form(nginx_uri: Uri, target: str) -> None:
    assert_agree(nginx_uri, target)


_SEGMENT = st.one_of(
    st.sampled_from(
        [".", "..", "", "a", "%61", "%2e", "%2E%2e", "%2F", "%25", "%3F", "%23", "#", "?", "%0a", ";"]
    ),
    st.text(alphabet="a.%/2eEF3#?", min_size=1, max_size=4),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(segments=st.lists(_SEGMENT, min_size=1, max_size=10))
def test_nginx_reads_generated_targets_as_their_normal_form(nginx_uri: Uri, segments: list[str]) -> None:
    assert_agree(nginx_uri, "/" + "/".join(segments), refused_ok=True)
