"""``sentinel-ebpf down``: remove whatever a crashed daemon left attached."""

from __future__ import annotations

from typing import Annotated

import typer

from sentinel_ebpf.cli import app
from sentinel_ebpf.cli._common import fail, require_root
from sentinel_ebpf.daemon import down as remove_leftovers
from sentinel_ebpf.daemon.state import DEFAULT_STATE_DIR
from sentinel_ebpf.errors import SentinelError


@app.command()
def down(
    state_dir: Annotated[
        str, typer.Option("--state-dir", help="The daemon's state directory.")
    ] = DEFAULT_STATE_DIR,
    force: Annotated[bool, typer.Option("--force", help="Even if the recorded daemon still runs.")] = False,
) -> None:
    """Remove sentinel-ebpf's TC filters, the clsact qdiscs it created, and its pins. Idempotent."""
    require_root("down")
    try:
        removed = remove_leftovers(state_dir, force=force)
    except SentinelError as exc:
        raise fail(str(exc)) from None
    for item in removed:
        typer.echo(f"removed {item}")
    if not removed:
        typer.echo("nothing to remove")
