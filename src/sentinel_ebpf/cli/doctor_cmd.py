"""``sentinel-ebpf doctor``: what this kernel supports and which features can run."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from sentinel_ebpf.cli import app
from sentinel_ebpf.doctor import Report, Status, run_checks

_STYLE = {Status.OK: "green", Status.MISSING: "red", Status.WARN: "yellow"}


def _render(report: Report) -> None:
    console = Console(highlight=False)
    console.print(f"kernel {report.kernel} ({report.arch})")
    table = Table(show_header=True, header_style="bold", box=None)
    for col in ("group", "check", "status", "detail"):
        table.add_column(col, overflow="fold")
    for c in report.checks:
        table.add_row(c.group, c.name, f"[{_STYLE[c.status]}]{c.status.value}[/]", c.detail)
    console.print(table)
    console.print()
    for f in report.features:
        word, style = (
            ("yes", "green") if f.available else (("NO", "red") if f.essential else ("no", "yellow"))
        )
        why = f"  (missing: {', '.join(f.missing)})" if f.missing else ""
        console.print(f"  [{style}]{word:<3}[/]  {f.name}{why}")
    console.print()
    if report.ok:
        console.print("[green]verdict: sentinel-ebpf can run on this machine[/]")
    else:
        console.print("[red]verdict: essential features are missing (see above)[/]")


@app.command()
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Check the kernel, privileges and mounts by loading tiny probe programs; exit 1 if essentials miss."""
    report = run_checks()
    if as_json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        _render(report)
    if not report.ok:
        raise typer.Exit(1)
