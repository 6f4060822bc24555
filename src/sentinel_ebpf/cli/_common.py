"""Helpers shared by CLI commands: privilege checks, signal handling and error reporting."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import typer

from sentinel_ebpf.errors import SentinelError


class Stop(BaseException):
    """Raised from SIGTERM/SIGINT/SIGHUP handlers to unwind through cleanup code (a BaseException, so
    an ``except Exception`` such as logging's own error handling cannot swallow it)."""


def fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"sentinel-ebpf: {message}", err=True)
    return typer.Exit(code)


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise fail(f"{what} needs root (CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN); run it with sudo")


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGINT into ``Stop`` so every ``finally``/``with`` runs and detaches hooks."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Stop(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    except Stop:
        pass
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextmanager
def reported_errors() -> Iterator[None]:
    """Print our own errors as one clear message and exit 1, without a traceback."""
    try:
        yield
    except SentinelError as exc:
        raise fail(str(exc)) from None
    except BrokenPipeError:
        # Output piped into a closed reader (e.g. `| head`): stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise typer.Exit(0) from None
