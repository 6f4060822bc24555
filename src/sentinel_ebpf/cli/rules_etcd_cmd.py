"""``sentinel-ebpf rules push FILE URL`` and ``rules pull URL``: the rules document in an etcd key.

push exit status: 0 written (the new revision printed), 1 the file is invalid (nothing written), 2 the
file cannot be read or etcd cannot be reached, 3 ``--if-revision`` did not match (nothing written).
pull exit status: 0 printed, 2 etcd cannot be reached or the key does not exist.
The etcd client (etcd3gw, requests: ~0.5 s to import) is imported only when these commands run.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from sentinel_ebpf.cli._common import fail
from sentinel_ebpf.cli.etcd_options import EtcdCacert, EtcdCert, EtcdKey
from sentinel_ebpf.cli.rules_cmd import EXIT_INVALID, EXIT_UNREADABLE, rules_app
from sentinel_ebpf.rules import RulesError, RulesFileError, load_text
from sentinel_ebpf.sources.url import EtcdTls, EtcdUrl, EtcdUrlError, check_tls, parse_etcd_url

EXIT_CONFLICT = 3


def etcd_target(url: str, cacert: str | None, cert: str | None, key: str | None) -> tuple[EtcdUrl, EtcdTls]:
    """The key's URL and the TLS files from the command line, checked together (exit 2 if wrong)."""
    tls = EtcdTls(cacert, cert, key)
    try:
        target = parse_etcd_url(url)
        check_tls(target, tls)
    except EtcdUrlError as exc:
        raise fail(str(exc), code=EXIT_UNREADABLE) from None
    return target, tls


@rules_app.command("push")
def push(
    file: Annotated[
        Path, typer.Argument(help="The rules document to store (any format `rules check` takes).")
    ],
    url: Annotated[str, typer.Argument(help="etcd://HOST:PORT[,HOST:PORT]/KEY or etcds://...")],
    if_revision: Annotated[
        int | None,
        typer.Option(
            "--if-revision",
            min=0,
            help="Write only if the key's last change is this revision (0: only if it does not exist).",
        ),
    ] = None,
    etcd_cacert: EtcdCacert = None,
    etcd_cert: EtcdCert = None,
    etcd_key: EtcdKey = None,
) -> None:
    """Validate a rules document, then store it in an etcd key; print the new revision."""
    from sentinel_ebpf.sources.etcd import EtcdClient, EtcdError, RevisionConflict

    target, tls = etcd_target(url, etcd_cacert, etcd_cert, etcd_key)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        raw = file.read_bytes()
        text = raw.decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(f"{file}: cannot read: {exc}; nothing written", code=EXIT_UNREADABLE) from None
    try:
        load_text(text, str(file))  # as the daemon will read it: by content, not by file name
    except RulesFileError as exc:
        raise fail(
            f"{file}: cannot read: {exc.problems[0].reason}; nothing written", EXIT_UNREADABLE
        ) from None
    except RulesError as exc:
        n = len(exc.problems)
        err.print(
            f"[red]invalid[/red] {escape(str(file))}: {n} problem{'s' if n != 1 else ''}; nothing written"
        )
        for p in exc.problems:
            err.print(f"  {escape(str(p))}")
        raise typer.Exit(EXIT_INVALID) from None
    try:
        revision = EtcdClient(target, tls).put(raw, if_revision)
    except RevisionConflict as exc:
        raise fail(str(exc), code=EXIT_CONFLICT) from None
    except EtcdError as exc:
        raise fail(f"{exc}; nothing written", code=EXIT_UNREADABLE) from None
    typer.echo(f"pushed {file} to {target}: revision {revision}")


@rules_app.command("pull")
def pull(
    url: Annotated[str, typer.Argument(help="etcd://HOST:PORT[,HOST:PORT]/KEY or etcds://...")],
    etcd_cacert: EtcdCacert = None,
    etcd_cert: EtcdCert = None,
    etcd_key: EtcdKey = None,
) -> None:
    """Print the rules document stored in an etcd key, as stored (its revision goes to stderr)."""
    from sentinel_ebpf.sources.etcd import EtcdClient, EtcdError

    target, tls = etcd_target(url, etcd_cacert, etcd_cert, etcd_key)
    try:
        kv = EtcdClient(target, tls).get()
    except EtcdError as exc:
        raise fail(str(exc), code=EXIT_UNREADABLE) from None
    if kv.value is None:
        raise fail(f"{target}: the key does not exist (etcd revision {kv.revision})", code=EXIT_UNREADABLE)
    typer.echo(f"# {target} revision {kv.mod_revision}", err=True)
    sys.stdout.buffer.write(kv.value)  # byte for byte as stored
    sys.stdout.buffer.flush()
