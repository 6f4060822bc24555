"""``rules push``, ``rules pull`` and ``rules check`` against a real etcd on a loopback port of the host
(no root needed): validation before writing, compare-and-swap with --if-revision, several endpoints,
etcd unreachable, and TLS with client certificates."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.background import sentinel_cli
from tests.support.etcd_server import EtcdServer, free_port
from tests.support.netns import CLEAN_ENV

KEY = "/sentinel/rules"
GOOD = """resources:
  - {name: api, match: {protocol: http, port: 8000, path: /api}}
flowRules:
  - {resource: api, threshold: THRESHOLD, statIntervalInMs: 1000}
"""
BAD = GOOD.replace("THRESHOLD", "-1") + "  - {resource: nowhere, threshold: 1}\n"


def cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*sentinel_cli(), *argv], capture_output=True, text=True, timeout=60, env=CLEAN_ENV)


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    with EtcdServer(tmp_path_factory.mktemp("etcd")) as server:
        yield server


def rules_file(tmp_path: Path, text: str, name: str = "rules.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def revision_of(res: subprocess.CompletedProcess[str]) -> int:
    assert res.returncode == 0, res.stderr
    return int(re.fullmatch(r"pushed .* to etcds?://\S+: revision (\d+)\n", res.stdout).group(1))  # type: ignore[union-attr]


def test_push_validates_first_and_writes_nothing_when_invalid(etcd: EtcdServer, tmp_path: Path) -> None:
    url = etcd.url("/push/invalid")
    res = cli("rules", "push", rules_file(tmp_path, BAD), url)
    assert res.returncode == 1, res
    assert "2 problems; nothing written" in res.stderr
    assert "threshold: must be >= 0" in res.stderr and "'nowhere'" in res.stderr
    pulled = cli("rules", "pull", url)
    assert pulled.returncode == 2 and "the key does not exist" in pulled.stderr


def test_push_pull_and_check_round_trip(etcd: EtcdServer, tmp_path: Path) -> None:
    url = etcd.url(KEY)
    text = "# comments and format are kept\n" + GOOD.replace("THRESHOLD", "5")
    revision = revision_of(cli("rules", "push", rules_file(tmp_path, text), url))
    pulled = cli("rules", "pull", url)
    assert pulled.returncode == 0 and pulled.stdout == text
    assert f"revision {revision}" in pulled.stderr
    checked = cli("rules", "check", url)
    assert checked.returncode == 0 and "api: inbound http 8000 /api" in checked.stdout, checked


def test_check_names_the_revision_of_an_invalid_document(etcd: EtcdServer) -> None:
    url = etcd.url("/check/invalid")
    put = subprocess.run(
        [sys.executable, "-c", "import sys; from sentinel_ebpf.sources.etcd import EtcdClient; "
         "from sentinel_ebpf.sources.url import parse_etcd_url; "
         "print(EtcdClient(parse_etcd_url(sys.argv[1])).put(sys.argv[2].encode()))", url, BAD],
        capture_output=True, text=True, timeout=30, env=CLEAN_ENV, check=True,
    )  # fmt: skip
    revision = int(put.stdout)
    res = cli("rules", "check", url)
    assert res.returncode == 1, res
    assert f"{url}@{revision}:4: flowRules[0]: threshold" in res.stderr, res.stderr
    assert "'nowhere'" in res.stderr
    missing = cli("rules", "check", etcd.url("/check/absent"))
    assert missing.returncode == 2 and "the key does not exist" in missing.stderr


def test_if_revision_is_a_compare_and_swap(etcd: EtcdServer, tmp_path: Path) -> None:
    url = etcd.url("/push/cas")
    first = rules_file(tmp_path, GOOD.replace("THRESHOLD", "1"), "a.yaml")
    second = rules_file(tmp_path, GOOD.replace("THRESHOLD", "2"), "b.yaml")
    r1 = revision_of(cli("rules", "push", first, url, "--if-revision", "0"))  # created: it did not exist
    again = cli("rules", "push", second, url, "--if-revision", "0")
    assert again.returncode == 3, again
    assert f"changed since revision 0 (now at revision {r1}): nothing written" in again.stderr
    r2 = revision_of(cli("rules", "push", second, url, "--if-revision", str(r1)))
    assert r2 > r1
    # an operator who read r1 cannot overwrite the change made since
    stale = cli("rules", "push", first, url, "--if-revision", str(r1))
    assert stale.returncode == 3 and f"now at revision {r2}" in stale.stderr, stale
    assert "threshold: 2" in cli("rules", "pull", url).stdout


def test_endpoints_are_tried_in_turn_and_unreachable_etcd_is_exit_2(etcd: EtcdServer, tmp_path: Path) -> None:
    dead = free_port()
    good = rules_file(tmp_path, GOOD.replace("THRESHOLD", "3"))
    both = f"etcd://127.0.0.1:{dead},127.0.0.1:{etcd.port}/push/endpoints"
    revision_of(cli("rules", "push", good, both))
    res = cli("rules", "push", good, f"etcd://127.0.0.1:{dead}/push/endpoints")
    assert res.returncode == 2, res
    assert f"etcd unreachable (127.0.0.1:{dead}: Connection refused); nothing written" in res.stderr
    assert cli("rules", "pull", f"etcd://127.0.0.1:{dead}/x").returncode == 2
    check = cli("rules", "check", f"etcd://127.0.0.1:{dead}/x")
    assert check.returncode == 2 and "etcd unreachable" in check.stderr, check
    bad = cli("rules", "push", good, "etcd://127.0.0.1:2379")
    assert bad.returncode == 2 and "names no key" in bad.stderr


def _openssl(*argv: str) -> None:
    subprocess.run(["openssl", *argv], capture_output=True, timeout=60, check=True)


def make_certs(d: Path) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
             "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"))  # fmt: skip
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout",
                 str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"))  # fmt: skip
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.crt"), "-CAkey",
                 str(d / "ca.key"), "-CAcreateserial", "-days", "2", "-extfile", str(d / f"{name}.ext"),
                 "-out", str(d / f"{name}.crt"))  # fmt: skip
    return {"ca": str(d / "ca.crt"), "cert": str(d / "server.crt"), "key": str(d / "server.key")}


def test_etcds_with_client_certificates(tmp_path: Path) -> None:
    certs = make_certs(tmp_path)
    tls = ["--etcd-cacert", certs["ca"], "--etcd-cert", str(tmp_path / "client.crt"),
           "--etcd-key", str(tmp_path / "client.key")]  # fmt: skip
    good = rules_file(tmp_path, GOOD.replace("THRESHOLD", "4"))
    with EtcdServer(tmp_path, tls=certs) as etcd:
        url = etcd.url(KEY)
        assert url.startswith("etcds://")
        revision = revision_of(cli("rules", "push", good, url, *tls))
        pulled = cli("rules", "pull", url, *tls)
        assert (
            pulled.returncode == 0
            and "threshold: 4" in pulled.stdout
            and f"revision {revision}" in pulled.stderr
        )
        assert cli("rules", "check", url, *tls).returncode == 0
        untrusted = cli("rules", "pull", url)  # the system's CAs do not know this one
        assert untrusted.returncode == 2 and "etcd unreachable" in untrusted.stderr, untrusted
        no_client_cert = cli("rules", "pull", url, "--etcd-cacert", certs["ca"])
        assert no_client_cert.returncode == 2, no_client_cert
        plain = cli("rules", "pull", url.replace("etcds://", "etcd://"), *tls)
        assert plain.returncode == 2 and "need an etcds:// URL" in plain.stderr, plain
