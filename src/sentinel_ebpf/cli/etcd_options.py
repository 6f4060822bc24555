"""The etcd TLS options shared by ``run`` and the ``rules`` commands that take an etcds:// URL."""

from __future__ import annotations

from typing import Annotated

import typer

EtcdCacert = Annotated[
    str | None,
    typer.Option("--etcd-cacert", help="CA certificate to trust for etcds:// (default: the system's)."),
]
EtcdCert = Annotated[str | None, typer.Option("--etcd-cert", help="Client certificate for etcds://.")]
EtcdKey = Annotated[
    str | None, typer.Option("--etcd-key", help="Key of the client certificate for etcds://.")
]
