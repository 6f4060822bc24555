"""The deployment examples in deploy/ use options the CLI has, rules from etcd, and mounts that exist."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import typer.main
import yaml

from sentinel_ebpf.cli import _register, app
from sentinel_ebpf.sources.url import parse_etcd_url

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"


# added by the Redis cluster work (branch fleet-redis); checked like the others once it is merged
def run_options() -> set[str]:
    _register()
    command = typer.main.get_command(app).commands["run"]  # type: ignore[attr-defined]
    return {opt for param in command.params for opt in param.opts if opt.startswith("-")}


def options_in(args: list[str]) -> set[str]:
    return {a.split("=", 1)[0] for a in args if a.startswith("-")}


def test_daemonset_runs_with_etcd_rules_host_network_and_what_it_mounts() -> None:
    ds: dict[str, Any] = yaml.safe_load((DEPLOY / "daemonset.yaml").read_text())
    assert ds["kind"] == "DaemonSet"
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    (container,) = pod["containers"]
    args = container["args"]
    assert args[0] == "run" and options_in(args) <= run_options()
    rules = next(a.split("=", 1)[1] for a in args if a.startswith("--rules="))
    assert parse_etcd_url(rules).tls  # etcds://, with the client files below
    caps = set(container["securityContext"]["capabilities"]["add"])
    assert {"BPF", "PERFMON", "NET_ADMIN"} <= caps and container["securityContext"]["privileged"] is False
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"] for v in pod["volumes"]}
    assert set(mounts) == volumes
    assert {"/sys/fs/cgroup", "/sys/fs/bpf"} <= set(mounts.values())
    for opt in ("--etcd-cacert", "--etcd-cert", "--etcd-key"):
        path = next(a.split("=", 1)[1] for a in args if a.startswith(opt + "="))
        assert path.startswith(mounts["etcd-tls"] + "/"), (opt, path)
    state = next(a.split("=", 1)[1] for a in args if a.startswith("--state-dir="))
    assert mounts["state"] == state  # the rules cache survives the pod
    cluster = next(a for a in args if a.startswith("--cluster="))
    env = {e["name"]: e for e in container["env"]}
    variable = re.fullmatch(r"--cluster=\$\((\w+)\)", cluster).group(1)  # type: ignore[union-attr]
    assert "secretKeyRef" in env[variable]["valueFrom"]


def test_systemd_unit_runs_with_etcd_rules_and_a_persistent_state_dir() -> None:
    unit = (DEPLOY / "sentinel-ebpf.service").read_text()
    exec_start = re.search(r"^ExecStart=(.*)$", unit, re.M).group(1)  # type: ignore[union-attr]
    argv = shlex.split(exec_start)
    assert argv[0].endswith("/sentinel-ebpf") and argv[1] == "run"
    assert options_in(argv[2:]) <= run_options()
    rules_var = argv[argv.index("-r") + 1]
    default = re.search(r"^Environment=SENTINEL_RULES=(\S+)$", unit, re.M).group(1)  # type: ignore[union-attr]
    assert rules_var == "${SENTINEL_RULES}" and parse_etcd_url(default).key == "/sentinel/rules"
    assert argv[argv.index("--state-dir") + 1] == "/var/lib/sentinel-ebpf"
    assert "StateDirectory=sentinel-ebpf" in unit and re.search(r"^KillSignal=SIGTERM$", unit, re.M)
