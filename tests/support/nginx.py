"""nginx in a server namespace, for tests and benchmarks: one configuration builder, one starter.

    conf = nginx_conf(work, 'server { listen 8080; location / { return 200 "ok\\n"; } }')
    server = start_nginx(pair, work, conf, [8080])     # a netns.Server; stopped with the pair

Every file nginx writes (pid, logs, temp paths) lives in ``work``; its error log is ``work/server.log``
(what ``Server.log()`` reads).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from .netns import NetnsPair, Server
from .procstat import pin

# The http-block settings every benchmark's nginx shares: no access log, long keep-alive, sendfile.
BENCH_HTTP = """access_log off;
    keepalive_requests 1000000;
    sendfile on;
    tcp_nopush on;"""


def nginx_binary() -> str:
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None:
        raise FileNotFoundError("nginx is not installed (apt-get install nginx-light)")
    return nginx


def nginx_conf(
    work: Path,
    http_body: str,
    *,
    workers: int = 1,
    events: int = 64,
    master: bool = False,
    log_level: str = "warn",
) -> str:
    """A whole nginx.conf whose files live in ``work``, with ``http_body`` inside ``http { }``.

    ``master=False``: one process that serves (``master_process off``), so its pid is the server's (for
    tracing or reading its memory); ``master=True``: a master and ``workers`` workers, which stay root.
    """
    temp = " ".join(
        f"{k}_temp_path {work}/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""
{"user root;" if master else "master_process off;"}
worker_processes {workers};
pid {work}/nginx.pid;
error_log {work}/server.log {log_level};
events {{ worker_connections {events}; }}
http {{
    {temp}
    {http_body}
}}
"""


def start_nginx(
    pair: NetnsPair,
    work: Path,
    conf: str,
    ports: list[int],
    *,
    cpu: int | None = None,
    preexec_fn: Callable[[], None] | None = None,
    ns: str | None = None,
) -> Server:
    """nginx with configuration ``conf`` (written to ``work/nginx.conf``) in the server namespace, pinned
    to ``cpu`` when given (``taskset``); returns once it listens on every port of ``ports`` (the Server's
    port is the first). ``preexec_fn`` runs in the child before it execs (e.g. joining a cgroup). ``ns``:
    another namespace of the pair's to run in."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "nginx.conf").write_text(conf)
    proc = pair.popen(
        ns or pair.server,
        *(pin(cpu) if cpu is not None else []),
        nginx_binary(),
        "-e",
        str(work / "server.log"),
        "-p",
        str(work),
        "-c",
        str(work / "nginx.conf"),
        "-g",
        "daemon off;",
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=preexec_fn,
    )
    server = Server("nginx", proc, ns or pair.server, ports[0], work)
    for port in ports:
        pair.wait_ready(server, port)
    return server


def hello_nginx(pair: NetnsPair, port: int = 8080, ns: str | None = None) -> Server:
    """nginx (single process) answering ``hello from nginx`` on ``port``, IPv4 and IPv6, with an access
    log (``workdir/access.log``: nginx's combined format, then ``conn=`` the connection's serial number),
    in the server namespace (or ``ns``)."""
    work = pair.tmpdir / (f"nginx-{ns}-{port}" if ns else f"nginx-{port}")
    listen6 = f"listen [::]:{port};" if pair.ipv6 else ""
    body = f"""log_format conn '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
                    '"$http_referer" "$http_user_agent" conn=$connection';
    access_log {work}/access.log conn;
    server {{
        listen {port};
        {listen6}
        location / {{ return 200 "hello from nginx\\n"; }}
    }}"""
    return start_nginx(pair, work, nginx_conf(work, body, log_level="info"), [port], ns=ns)
