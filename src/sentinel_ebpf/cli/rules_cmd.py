"""``sentinel-ebpf rules check FILE...``: validate rules files without touching the kernel.

Exit status: 0 every file is valid, 1 some file has problems, 2 some file could not be read. An
``etcd://`` URL is checked as the document stored in its key (2 when etcd cannot be reached).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from sentinel_ebpf.cli import app
from sentinel_ebpf.cli.etcd_options import EtcdCacert, EtcdCert, EtcdKey
from sentinel_ebpf.rules import Problem, RulesError, RuleSet, RulesFileError, load_file
from sentinel_ebpf.rules.loader import normalize_kind
from sentinel_ebpf.rules.ruleset import SECTIONS
from sentinel_ebpf.sources.url import EtcdTls, EtcdUrlError, check_tls, is_etcd_url, parse_etcd_url

rules_app = typer.Typer(name="rules", help="Work with Sentinel rules files.", no_args_is_help=True)
app.add_typer(rules_app, name="rules")

EXIT_INVALID = 1
EXIT_UNREADABLE = 2


def _load(source: str, kind: str | None, tls: EtcdTls) -> RuleSet:
    if not is_etcd_url(source):
        return load_file(Path(source), kind=kind)
    from sentinel_ebpf.sources.etcd import EtcdError  # etcd3gw and requests: only for etcd URLs
    from sentinel_ebpf.sources.etcd_source import read_version

    try:
        url = parse_etcd_url(source)
        check_tls(url, tls)
        return read_version(url, tls).load()
    except (EtcdError, EtcdUrlError) as exc:  # unreachable, no such key, a malformed URL
        raise RulesFileError([Problem(file=source, reason=str(exc))]) from None


def _check_one(path: str, kind: str | None, tls: EtcdTls) -> tuple[int, dict[str, Any]]:
    try:
        rs = _load(path, kind, tls)
    except RulesFileError as exc:
        return EXIT_UNREADABLE, {
            "file": str(path),
            "ok": False,
            "readable": False,
            "problems": [p.as_dict() for p in exc.problems],
            "_problems": exc.problems,
        }
    except RulesError as exc:
        return EXIT_INVALID, {
            "file": str(path),
            "ok": False,
            "problems": [p.as_dict() for p in exc.problems],
            "_problems": exc.problems,
        }
    return 0, {"file": str(path), "ok": True, "summary": rs.summary(), "_ruleset": rs}


def _describe(rs: RuleSet) -> list[str]:
    s = rs.summary()
    counts = ", ".join(f"{n} {sec}" for sec, n in s["counts"].items() if n) or "no rules"
    declared = f"{len(rs.resources)} resources, " if rs.bound else ""
    lines = [f"{s['format']} format: {declared}{counts}"]
    for res in s["resources"]:
        rules = ", ".join(f"{n} {sec}" for sec, n in res["rules"].items()) or "no rules"
        if res["match"] is not None:
            m = res["match"]
            where = " ".join(
                str(m[k]) for k in ("direction", "protocol", "host", "port", "method", "path") if k in m
            )
            if res.get("normalized_path", m.get("path")) != m.get("path"):
                where += f" (normalised: {res['normalized_path']})"
            # the scope of an inbound resource's port (match.address, match.cgroup)
            where += "".join(f" {k} {m[k]}" for k in ("address", "cgroup") if k in m)
            lines.append(f"  {res['name']}: {where}; {rules}")
        else:
            lines.append(f"  {res['name']}: not bound to traffic; {rules}")
    if rs.system_rules:
        lines.append(f"  system: {len(rs.system_rules)} rules on all inbound traffic")
    if rs.bound:
        lines.append(f"  reject: http {s['reject']['http']}, tcp {s['reject']['tcp']}")
    elif any(rs.rules(sec) for sec in SECTIONS if sec != "systemRules"):
        lines.append(
            "  (resources are names only here: bind them to traffic in a rules file's "
            "resources section to enforce them in the kernel)"
        )
    return lines


@rules_app.command("check")
def check(
    files: Annotated[
        list[str],
        typer.Argument(
            help="Rules files: this project's YAML/JSON, sentinel-golang JSON arrays, or CRD YAML; "
            "or etcd://HOST:PORT/KEY for the document stored there."
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object for machines.")] = False,
    kind: Annotated[
        str | None,
        typer.Option(
            "--kind",
            help="Rule kind of sentinel-golang JSON arrays when it cannot be inferred: "
            "flow, isolation, circuitbreaker, hotspot, system.",
        ),
    ] = None,
    etcd_cacert: EtcdCacert = None,
    etcd_cert: EtcdCert = None,
    etcd_key: EtcdKey = None,
) -> None:
    """Validate rules files; print what each defines, or every problem found."""
    if kind is not None:
        try:
            normalize_kind(kind)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--kind") from None
        if any(is_etcd_url(f) for f in files):
            raise typer.BadParameter(
                "applies to files only: a daemon reads an etcd key without it, so check it the same way",
                param_hint="--kind",
            )
    status = 0
    results = []
    for path in files:
        code, result = _check_one(path, kind, EtcdTls(etcd_cacert, etcd_cert, etcd_key))
        status = max(status, code)
        results.append(result)
    if as_json:
        out = {
            "ok": status == 0,
            "files": [{k: v for k, v in r.items() if not k.startswith("_")} for r in results],
        }
        typer.echo(json.dumps(out, indent=2))
        raise typer.Exit(status)
    console = Console(highlight=False, soft_wrap=True)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    for r in results:
        if r["ok"]:
            console.print(
                f"[green]ok[/green] {escape(r['file'])}: " + escape("\n".join(_describe(r["_ruleset"])))
            )
        else:
            problems = r["_problems"]
            if r.get("readable", True) is False:
                err.print(f"[red]error[/red] {escape(r['file'])}: cannot read: {escape(problems[0].reason)}")
                continue
            n = len(problems)
            err.print(f"[red]invalid[/red] {escape(r['file'])}: {n} problem{'s' if n != 1 else ''}")
            for p in problems:
                err.print(f"  {escape(str(p))}")
    raise typer.Exit(status)
