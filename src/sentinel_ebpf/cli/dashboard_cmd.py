"""``sentinel-ebpf dashboard``: serve the web dashboard until Ctrl-C."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Annotated

import typer

from sentinel_ebpf.cli import app
from sentinel_ebpf.cli._common import fail, stop_on_signals
from sentinel_ebpf.cli.etcd_options import EtcdCacert, EtcdCert, EtcdKey
from sentinel_ebpf.daemon.control import DEFAULT_SOCKET
from sentinel_ebpf.errors import SentinelError
from sentinel_ebpf.sources.url import EtcdTls, check_tls, is_etcd_url, parse_etcd_url


def read_token(path: str) -> str:
    """The token in ``path`` (surrounding whitespace removed); ValueError says what is wrong."""
    p = Path(path)
    try:
        token = p.read_text().strip()
        mode = p.stat().st_mode
    except OSError as exc:
        raise ValueError(f"--token-file {path}: {exc.strerror}") from None
    if len(token) < 16:
        raise ValueError(f"--token-file {path}: the token must be at least 16 characters")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError(f"--token-file {path}: readable by others (mode {mode & 0o777:o}); chmod 600 it")
    return token


@app.command()
def dashboard(
    listen: Annotated[str, typer.Option("--listen", help="HOST:PORT to serve on.")] = "127.0.0.1:8719",
    control_socket: Annotated[
        list[str] | None,
        typer.Option(
            "--control-socket", help="A daemon's control socket; repeatable (default: the default one)."
        ),
    ] = None,
    token_file: Annotated[
        str | None,
        typer.Option(
            "--token-file", help="File holding the API token (needed for rule edits, and off loopback)."
        ),
    ] = None,
    no_doctor: Annotated[
        bool, typer.Option("--no-doctor", help="Do not run the host's doctor checks.")
    ] = False,
    fleet: Annotated[
        str | None,
        typer.Option(
            "--fleet",
            help="The fleet view from a node registry: a Redis URL (the daemons' --cluster URL: every daemon "
            "of --app that runs with --cluster registers itself there), or the etcd:// URL the daemons read "
            "their rules from (each registers under KEY/nodes/).",
        ),
    ] = None,
    app_name: Annotated[
        str, typer.Option("--app", help="The app whose nodes a Redis --fleet shows.")
    ] = "sentinel-ebpf",
    etcd_cacert: EtcdCacert = None,
    etcd_cert: EtcdCert = None,
    etcd_key: EtcdKey = None,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Log every request.")] = False,
) -> None:
    """Serve a web dashboard: live charts per resource, data-plane counters, doctor, rules with editing."""
    from sentinel_ebpf.dashboard import Backend, DashboardServer, DoctorCache, run_doctor
    from sentinel_ebpf.dashboard.fleet import NodeSource

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    try:
        token = read_token(token_file) if token_file else None
        doctor = DoctorCache(run_doctor if not no_doctor else _no_doctor)
        nodes: NodeSource | None = None
        if fleet and is_etcd_url(fleet):
            from sentinel_ebpf.sources.etcd import EtcdClient  # etcd3gw only when used
            from sentinel_ebpf.sources.etcd_registry import EtcdNodes

            url = parse_etcd_url(fleet)
            tls = EtcdTls(etcd_cacert, etcd_cert, etcd_key)
            check_tls(url, tls)
            nodes = EtcdNodes(EtcdClient(url, tls), url.key)
        elif fleet:
            from sentinel_ebpf.cluster.registry import RedisNodes  # redis only when used
            from sentinel_ebpf.cluster.store import check_url

            check_url(fleet)
            nodes = RedisNodes(fleet, app_name)
        backend = Backend(list(control_socket or [DEFAULT_SOCKET]), doctor, fleet=nodes)
        server = DashboardServer(backend, listen, token)
    except (ValueError, OSError, SentinelError) as exc:
        raise fail(str(exc), code=2) from None
    doctor.start()
    logging.getLogger("sentinel_ebpf.dashboard").info(
        "dashboard at %s (pid %d)%s",
        server.url,
        os.getpid(),
        "" if token else "; read-only (no --token-file)",
    )
    with stop_on_signals():
        try:
            server.serve_forever()
        finally:
            server.close()


def _no_doctor() -> dict[str, object]:
    raise RuntimeError("disabled by --no-doctor")
