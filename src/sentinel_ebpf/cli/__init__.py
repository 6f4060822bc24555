"""The ``sentinel-ebpf`` command line. Each command lives in its own module; no BPF logic here."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="sentinel-ebpf",
    help="Sentinel traffic governance enforced in the Linux kernel with eBPF.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    # Imported for their side effect of adding commands to ``app``.
    from sentinel_ebpf.cli import (  # noqa: F401
        dashboard_cmd,
        doctor_cmd,
        down_cmd,
        rules_cmd,
        rules_etcd_cmd,
        run_cmd,
        stats_cmd,
        trace_cmd,
    )


def main() -> None:
    _register()
    app()
