"""``etcd://`` and ``etcds://`` URLs naming one key that holds a rules document.

    etcd://HOST[:PORT][,HOST[:PORT]...]/KEY      plain HTTP to etcd's gRPC gateway (port 2379 by default)
    etcds://...                                   HTTPS; certificates from --etcd-cacert/--etcd-cert/--etcd-key

The key is everything from the first ``/`` after the endpoints on, leading slash included
(``etcd://h:2379/sentinel/rules`` is the key ``/sentinel/rules``), percent-decoded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

from sentinel_ebpf.errors import SentinelError

DEFAULT_PORT = 2379
SCHEMES = {"etcd": False, "etcds": True}  # scheme -> TLS
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
_KEY_SAFE = "/:@!$&'()*+,;=-._~"


class EtcdUrlError(SentinelError, ValueError):
    """An etcd URL or its TLS options are malformed; the message says what and how to write it."""


@dataclass(frozen=True)
class EtcdTls:
    """Client TLS files for ``etcds://``: the CA to trust (None: the system's), a client certificate and key."""

    cacert: str | None = None
    cert: str | None = None
    key: str | None = None

    def given(self) -> bool:
        return any((self.cacert, self.cert, self.key))


@dataclass(frozen=True)
class EtcdUrl:
    endpoints: tuple[tuple[str, int], ...]
    key: str
    tls: bool = False

    @property
    def scheme(self) -> str:
        return "etcds" if self.tls else "etcd"

    def endpoint_names(self) -> list[str]:
        return [f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.endpoints]

    def __str__(self) -> str:
        return f"{self.scheme}://{','.join(self.endpoint_names())}{quote(self.key, safe=_KEY_SAFE)}"


def is_etcd_url(text: str) -> bool:
    return text.split("://", 1)[0].lower() in SCHEMES and "://" in text


def parse_etcd_url(text: str) -> EtcdUrl:
    """Parse ``etcd://h1:2379,h2:2379/KEY``; raises EtcdUrlError naming what is wrong."""
    form = "etcd://HOST:PORT[,HOST:PORT...]/KEY (or etcds:// for TLS)"
    scheme, sep, rest = text.partition("://")
    if not sep or scheme.lower() not in SCHEMES:
        raise EtcdUrlError(f"{text!r} is not an etcd URL: expected {form}")
    if "?" in rest or "#" in rest:
        raise EtcdUrlError(
            f"{text!r}: an etcd URL has no query or fragment (percent-encode '?' and '#' in keys)"
        )
    hosts, slash, key = rest.partition("/")
    if not slash or not key:
        raise EtcdUrlError(f"{text!r} names no key: expected {form}")
    if not hosts:
        raise EtcdUrlError(f"{text!r} names no endpoint: expected {form}")
    endpoints = tuple(_endpoint(part, text) for part in hosts.split(","))
    return EtcdUrl(endpoints, unquote("/" + key), SCHEMES[scheme.lower()])


def _endpoint(part: str, text: str) -> tuple[str, int]:
    if part.startswith("["):  # [IPv6]:port
        host, close, tail = part[1:].partition("]")
        if not close or not host or (tail and not tail.startswith(":")):
            raise EtcdUrlError(f"{text!r}: bad endpoint {part!r} (IPv6 is written [ADDRESS]:PORT)")
        port_text = tail[1:] if tail else ""
    else:
        host, _, port_text = part.partition(":")
        if not _HOST.match(host):
            raise EtcdUrlError(f"{text!r}: bad endpoint {part!r} (expected HOST or HOST:PORT)")
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise EtcdUrlError(f"{text!r}: bad port in {part!r} (1-65535)")
    return host, int(port_text)


def check_tls(url: EtcdUrl, tls: EtcdTls) -> None:
    """TLS files only with etcds://, and a client certificate only with its key."""
    if tls.given() and not url.tls:
        raise EtcdUrlError(f"--etcd-cacert/--etcd-cert/--etcd-key need an etcds:// URL, got {url}")
    if bool(tls.cert) != bool(tls.key):
        raise EtcdUrlError("--etcd-cert and --etcd-key go together (the client certificate and its key)")
