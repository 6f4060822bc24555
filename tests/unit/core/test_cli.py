"""CLI parsing and error reporting that needs no kernel."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from sentinel_ebpf.cli import _register, app

_register()
runner = CliRunner()


def test_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for cmd in ("doctor", "trace"):
        assert cmd in result.output


def test_trace_rejects_bad_port_before_touching_the_kernel() -> None:
    result = runner.invoke(app, ["trace", "-P", "70000"])
    assert result.exit_code == 2
    assert "port 70000 out of range 1..65535" in result.output


def test_trace_rejects_too_many_ports() -> None:
    args = ["trace"] + [x for p in range(1, 10) for x in ("-P", str(p))]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "at most 8 ports" in result.output


def test_trace_rejects_negative_count() -> None:
    result = runner.invoke(app, ["trace", "-c", "-1"])
    assert result.exit_code == 2


def test_the_enforcement_example_compiles_for_the_kernel() -> None:
    from pathlib import Path

    from sentinel_ebpf.enforce import compile_inbound
    from sentinel_ebpf.rules import load_file

    example = Path(__file__).resolve().parents[3] / "examples" / "enforce.yaml"
    compiled = compile_inbound(load_file(example))
    assert len(compiled.resources) == 5 and len(compiled.out_routes) == 1 and len(compiled.system) == 2
    assert sum(len(r.breakers) for r in compiled.resources) == 2
    assert sum(len(r.hot) for r in compiled.resources) == 2


def test_run_rejects_a_bad_metrics_address() -> None:
    result = runner.invoke(app, ["run", "--metrics-addr", "9464"])
    assert result.exit_code == 2 and "--metrics-addr must be HOST:PORT, got '9464'" in result.output


def test_the_readme_rules_example_is_valid_and_enforceable() -> None:
    import re
    from pathlib import Path

    from sentinel_ebpf.enforce import compile_inbound
    from sentinel_ebpf.rules import load_text

    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    section = readme[readme.index("## Rules and what they do") :]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block is not None
    compiled = compile_inbound(load_text(block.group(1), "README.md"))
    assert len(compiled.resources) == 3 and len(compiled.system) == 1


def test_too_many_protected_ports_is_refused_by_count() -> None:
    from sentinel_ebpf.enforce import CompileError, compile_inbound
    from sentinel_ebpf.rules import load_text

    text = "resources:\n" + "".join(
        f"  - {{name: p{i}, match: {{protocol: tcp, port: {10000 + i}}}}}\n" for i in range(1025)
    )
    with pytest.raises(CompileError, match="1025 protected ports: at most 1024"):
        compile_inbound(load_text(text, "ports.yaml"))


def test_address_scopes_of_a_port_are_chained_most_specific_first() -> None:
    from sentinel_ebpf.enforce import CompileError, compile_inbound
    from sentinel_ebpf.rules import load_text

    text = """
resources:
  - {name: any, match: {protocol: http, port: 8080}}
  - {name: wide, match: {protocol: http, port: 8080, address: 10.0.0.0/8}}
  - {name: one, match: {protocol: tcp, port: 8080, address: 10.1.2.3}}
  - {name: other-port, match: {protocol: http, port: 9090, path: /x, address: 10.1.2.3}}
"""
    compiled = compile_inbound(load_text(text, "scopes.yaml"))
    chain = [(p.port, str(p.address) if p.address else None, p.slot, p.next) for p in compiled.ports]
    assert chain == [(8080, "10.1.2.3/32", 1, 2), (8080, "10.0.0.0/8", 2, 3), (8080, None, 3, 0),
                     (9090, "10.1.2.3/32", 4, 0)]  # fmt: skip
    assert [p.tcp_resource > 0 for p in compiled.ports] == [True, False, False, False]
    assert {e.port for e in compiled.routes if not e.outbound} == {2, 3, 4}  # routes keyed by scope slot
    cgroups = {"/pods": (1, 11), "/pods/a": (2, 12)}
    nested = """
resources:
  - {name: any, match: {protocol: tcp, port: 80}}
  - {name: pods, match: {protocol: tcp, port: 80, cgroup: /pods}}
  - {name: pod-a, match: {protocol: tcp, port: 80, cgroup: /pods/a}}
  - {name: here, match: {protocol: tcp, port: 80, address: 10.1.2.3, cgroup: /pods}}
"""
    compiled = compile_inbound(load_text(nested, "nested.yaml"), cgroups=lambda path: cgroups[path])
    assert [(p.cgroup, p.cgroup_level, p.cgroup_id, p.next) for p in compiled.ports] == [
        ("/pods", 1, 11, 2), ("/pods/a", 2, 12, 3), ("/pods", 1, 11, 4), (None, 0, 0, 0)
    ]  # fmt: skip

    def missing(path: str) -> tuple[int, int]:
        raise FileNotFoundError(2, "No such file or directory")

    with pytest.raises(CompileError, match="resource 'pods': cgroup /pods: No such file or directory"):
        compile_inbound(load_text(nested, "nested.yaml"), cgroups=missing)
    many = "resources:\n" + "".join(
        f"  - {{name: s{i}, match: {{protocol: tcp, port: 80, address: 10.0.0.{i}}}}}\n" for i in range(9)
    )
    with pytest.raises(CompileError, match=r"port 80: 9 scopes .* at most 8"):
        compile_inbound(load_text(many, "many.yaml"))


def test_run_rejects_a_bad_cluster_url() -> None:
    result = runner.invoke(app, ["run", "--cluster", "http://10.0.0.5:6379"])
    assert result.exit_code == 2 and "the scheme must be redis://, rediss:// or unix://" in result.output
    result = runner.invoke(app, ["run", "--cluster", "redis://:secret@"])
    assert result.exit_code == 2 and "no host" in result.output and "secret" not in result.output


def test_run_passes_the_cluster_timeout_to_the_daemon(monkeypatch: pytest.MonkeyPatch) -> None:
    import sentinel_ebpf.cli.run_cmd as run_cmd
    from sentinel_ebpf.daemon import DaemonConfig

    seen: list[DaemonConfig] = []

    class Captured:
        def __init__(self, config: DaemonConfig) -> None:
            seen.append(config)

        def run(self) -> None:
            pass

    monkeypatch.setattr(run_cmd, "Daemon", Captured)
    monkeypatch.setattr(run_cmd, "require_root", lambda what: None)
    result = runner.invoke(app, ["run", "--cluster", "unix:///tmp/r.sock", "--cluster-timeout", "400"])
    assert result.exit_code == 0, result.output
    assert (seen[0].cluster, seen[0].cluster_timeout_ms) == ("unix:///tmp/r.sock", 400)
    result = runner.invoke(app, ["run", "--cluster", "unix:///tmp/r.sock", "--cluster-timeout", "0"])
    assert result.exit_code == 2 and "--cluster-timeout" in result.output


def test_dashboard_rejects_a_bad_fleet_url() -> None:
    result = runner.invoke(app, ["dashboard", "--no-doctor", "--fleet", "http://10.0.0.5:6379"])
    assert result.exit_code == 2 and "the scheme must be redis://, rediss:// or unix://" in result.output
    result = runner.invoke(app, ["dashboard", "--no-doctor", "--fleet", "etcd://127.0.0.1:2379"])
    assert result.exit_code == 2 and "etcd://127.0.0.1:2379" in result.output, result.output
