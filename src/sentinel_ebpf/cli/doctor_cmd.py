"""``sentinel-ebpf doctor``."""

from __future__ import annotations

from sentinel_ebpf.cli import app


@app.command()
def doctor() -> None:
    """Check what this kernel and machine support (work in progress)."""
    raise NotImplementedError("doctor is not implemented yet")
