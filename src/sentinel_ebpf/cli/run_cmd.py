"""``sentinel-ebpf run``: the daemon, in the foreground."""

from __future__ import annotations

import logging
import platform
from typing import Annotated

import typer

from sentinel_ebpf.cli import app
from sentinel_ebpf.cli._common import fail, require_root
from sentinel_ebpf.cli.etcd_options import EtcdCacert, EtcdCert, EtcdKey
from sentinel_ebpf.daemon import Daemon, DaemonConfig
from sentinel_ebpf.daemon.control import DEFAULT_SOCKET
from sentinel_ebpf.daemon.state import DEFAULT_STATE_DIR
from sentinel_ebpf.doctor import describe_load_error
from sentinel_ebpf.enforce import CompileError
from sentinel_ebpf.errors import BpfLoadError, SentinelError
from sentinel_ebpf.rules import RulesError
from sentinel_ebpf.sources.url import EtcdTls


@app.command()
def run(
    rules: Annotated[
        str | None,
        typer.Option(
            "-r",
            "--rules",
            help="Rules file, or etcd://HOST:PORT[,HOST:PORT]/KEY (default: built-in example).",
        ),
    ] = None,
    iface: Annotated[
        list[str] | None,
        typer.Option(
            "-i",
            "--iface",
            help="Interface name or pattern ('veth*') to protect; repeatable. Interfaces that appear "
            "later and match are attached too (default: every interface that is up). IFACE@NETNS: an "
            "interface of another network namespace (an `ip netns` name or /proc/PID/ns/net), such as "
            "a pod's eth0: its servers are governed from there.",
        ),
    ] = None,
    metrics_addr: Annotated[
        str, typer.Option("--metrics-addr", help="Prometheus HOST:PORT; empty to disable.")
    ] = "127.0.0.1:9464",
    log_dir: Annotated[
        str, typer.Option("--log-dir", help="Sentinel metric log directory; empty to disable.")
    ] = "/var/log/sentinel-ebpf",
    app_name: Annotated[
        str, typer.Option("--app", help="App name in metric log file names and cluster keys.")
    ] = "sentinel-ebpf",
    control_socket: Annotated[
        str, typer.Option("--control-socket", help="Unix socket for stats/top.")
    ] = DEFAULT_SOCKET,
    state_dir: Annotated[str, typer.Option("--state-dir", help="Where `down` finds what was attached.")] = (
        DEFAULT_STATE_DIR
    ),
    on_breaker_change: Annotated[
        str | None,
        typer.Option(
            "--on-breaker-change",
            help="Shell command run on each circuit breaker transition, with "
            "SENTINEL_RESOURCE, SENTINEL_BREAKER, SENTINEL_FROM, SENTINEL_TO set.",
        ),
    ] = None,
    hotspot_keys: Annotated[
        int,
        typer.Option(
            "--hotspot-keys",
            help="Hotspot parameter values tracked at once (LRU; ~104 bytes of kernel memory each).",
            min=1024,
            max=1 << 24,
        ),
    ] = 262144,
    etcd_cacert: EtcdCacert = None,
    etcd_cert: EtcdCert = None,
    etcd_key: EtcdKey = None,
    cluster: Annotated[
        str | None,
        typer.Option(
            "--cluster",
            help="Redis shared by the fleet for clusterMode flow rules: redis://HOST:PORT[/DB], "
            "rediss://..., unix:///PATH.sock, or redis://H1:P1,H2:P2 for Redis Cluster.",
        ),
    ] = None,
    cluster_timeout: Annotated[
        int,
        typer.Option(
            "--cluster-timeout",
            help="Milliseconds a Redis lease call may take before it counts as no contact (Sentinel's "
            "cluster requestTimeout); the rules fall back after this plus 200 ms without contact.",
            min=1,
            max=5000,
        ),
    ] = 50,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Debug logging.")] = False,
) -> None:
    """Enforce the rules in the kernel until SIGTERM/SIGINT; reload when the file or etcd key changes, and on SIGHUP."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    if metrics_addr and ":" not in metrics_addr:
        raise fail(f"--metrics-addr must be HOST:PORT, got {metrics_addr!r}", code=2)
    if cluster:
        from sentinel_ebpf.cluster.store import check_url  # redis only when used

        try:
            check_url(cluster)
        except SentinelError as exc:
            raise fail(str(exc), code=2) from None
    require_root("run")
    config = DaemonConfig(
        rules=rules, interfaces=list(iface or []), metrics_addr=metrics_addr or None, log_dir=log_dir or None,
        app=app_name, control_socket=control_socket, state_dir=state_dir, on_breaker_change=on_breaker_change,
        hotspot_keys=hotspot_keys, etcd_tls=EtcdTls(etcd_cacert, etcd_cert, etcd_key), cluster=cluster,
        cluster_timeout_ms=cluster_timeout,
    )  # fmt: skip
    try:
        Daemon(config).run()
    except (RulesError, CompileError) as exc:
        lines = "\n".join(f"  {p}" for p in exc.problems)
        raise fail(f"{rules}: not started, the rules are invalid:\n{lines}") from None
    except BpfLoadError as exc:
        # the same words as doctor's "load inbound" check
        raise fail(f"cannot enforce on this kernel ({platform.release()}): {describe_load_error(exc)}; "
                   "`sentinel-ebpf doctor` lists what this kernel supports") from None  # fmt: skip
    except (SentinelError, OSError) as exc:
        raise fail(str(exc)) from None
