"""The libbpf binding against the real kernel: objects, read-only config, maps, test runs, TC, cgroups."""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sentinel_ebpf import _build, _maps
from sentinel_ebpf._maps import TcptraceMaps, TcptraceRodata, set_tcptrace_rodata
from sentinel_ebpf.errors import BpfError, BpfKeyError, BpfLoadError
from sentinel_ebpf.host import cgroup2_mount
from sentinel_ebpf.libbpf import BpfObject, MapType, TcAttachPoint, TcHook, UpdateFlag
from sentinel_ebpf.objects import BPF_DIR, object_path
from sentinel_ebpf.tracing.tcp import ConnTracer, TraceFilter

pytestmark = pytest.mark.kernel

# Ethernet + IPv4 + TCP SYN, as in doctor's probe
SYN = bytes.fromhex(
    "000000000000000000000000" "0800"
    "4500002800004000400600007f0000017f000001"
    "d4310050000000000000000050020000" "00000000"
)  # fmt: skip


@pytest.fixture
def probes() -> Iterator[BpfObject]:
    with BpfObject.open(object_path("probes")) as obj:
        for name, prog in obj.programs.items():
            prog.autoload = name in ("probe_tc", "probe_xdp", "probe_connect4")
        obj.load()
        yield obj


@pytest.fixture
def tracer_obj() -> Iterator[BpfObject]:
    with BpfObject.open(object_path("tcptrace")) as obj:
        for name, prog in obj.programs.items():
            prog.autoload = name == "state_btf"
        yield obj


def _prog_ids() -> set[int]:
    """Programs this process holds an fd of (other tests may load programs concurrently on this machine)."""
    ids = set()
    for info in Path("/proc/self/fdinfo").iterdir():
        try:
            text = info.read_text()
        except OSError:  # the fd closed while we looked
            continue
        ids |= {int(line.split()[1]) for line in text.splitlines() if line.startswith("prog_id:")}
    return ids


def test_rodata_is_set_before_load_and_refused_after(tracer_obj: BpfObject) -> None:
    with pytest.raises(KeyError, match="no read-only global 'nope'"):
        tracer_obj.set_rodata(nope=1)
    with pytest.raises(ValueError, match="targ_comm: 17 bytes given, room for 16"):
        tracer_obj.set_rodata(targ_comm=b"x" * 17)
    with pytest.raises(ValueError, match="targ_ports: 9 elements given, room for 8"):
        tracer_obj.set_rodata(targ_ports=list(range(9)))
    tracer_obj.set_rodata(targ_tgid=1234, targ_ports=[80, 443], targ_nports=2)
    tracer_obj.load()
    raw = TcptraceMaps(tracer_obj).rodata.lookup(0)
    assert (1234).to_bytes(4, "little") in raw
    assert (80).to_bytes(2, "little") + (443).to_bytes(2, "little") in raw
    ro = TcptraceRodata.from_buffer_copy(raw)  # the generated layout of the section
    assert (ro.targ_tgid, list(ro.targ_ports[:2]), ro.targ_nports) == (1234, [80, 443], 2)
    assert (ro.targ_accept_nr, ro.targ_accept4_nr) == (-1, -1)  # as compiled
    with pytest.raises(BpfError, match="only be set before load"):
        tracer_obj.set_rodata(targ_tgid=1)


def test_typed_rodata_setter_leaves_none_as_compiled(tracer_obj: BpfObject) -> None:
    set_tcptrace_rodata(tracer_obj, targ_comm="curl", targ_filter_comm=True, targ_accept_nr=None)
    tracer_obj.load()
    ro = TcptraceRodata.from_buffer_copy(TcptraceMaps(tracer_obj).rodata.lookup(0))
    assert (ro.targ_comm, ro.targ_filter_comm, ro.targ_accept_nr, ro.targ_tgid) == (b"curl", True, -1, 0)


@pytest.mark.parametrize("name", ["httptrace", "inbound", "tcptrace"])
def test_generated_map_handles_are_the_objects_maps(name: str) -> None:
    """Each object's generated class has a handle for every map of its .maps section, and its data
    sections are as large as the generated layouts (tools/gen_types.py --check keeps them current)."""
    with BpfObject.open(object_path(name)) as obj:
        maps = getattr(_maps, f"{name.capitalize()}Maps")(obj)
        assert sorted(m.name for m in maps) == sorted(n for n in obj.maps if "." not in n)
        for section in ("rodata", "bss"):
            layout = getattr(_maps, f"{name.capitalize()}{section.capitalize()}", None)
            if layout is not None:
                assert getattr(maps, section).value_size == ctypes.sizeof(layout)


def test_hash_map_operations(tracer_obj: BpfObject) -> None:
    tracer_obj.load()
    m = TcptraceMaps(tracer_obj).pending_connects
    assert m.type == MapType.LRU_HASH and m.key_size == 8
    value = bytes(range(m.value_size))
    for k in range(300):  # more than one lookup batch
        m.update(k, value)
    assert m.lookup(7) == value
    items = dict(m.items(batch_size=64))
    assert len(items) == 300 and items[(7).to_bytes(8, "little")] == value
    assert len(set(m.keys())) == 300
    with pytest.raises(BpfError):
        m.update(7, value, UpdateFlag.NOEXIST)
    m.delete(7)
    with pytest.raises(BpfKeyError):
        m.lookup(7)
    with pytest.raises(BpfKeyError):
        m.delete(7)
    assert m.get(7, "absent") == "absent"
    with pytest.raises(ValueError, match="expected 8 bytes"):
        m.lookup(b"\0" * 3)
    m.clear()
    assert list(m.keys()) == []


def test_percpu_array_returns_one_value_per_cpu(tracer_obj: BpfObject) -> None:
    tracer_obj.load()
    stats = TcptraceMaps(tracer_obj).trace_stats
    per_cpu = stats.lookup(0)
    assert len(per_cpu) == os.cpu_count() or len(per_cpu) >= 1
    stats.update(1, [(i + 1).to_bytes(8, "little") for i in range(len(per_cpu))])
    assert sum(int.from_bytes(v, "little") for v in stats.lookup(1)) == sum(range(1, len(per_cpu) + 1))


def test_test_run_on_crafted_packets(probes: BpfObject) -> None:
    tc = probes.program("probe_tc")
    res = tc.test_run(SYN, repeat=1000)
    assert res.retval == 0 and res.data_out == SYN and res.duration_ns >= 0
    assert probes.program("probe_xdp").test_run(SYN).retval == 2  # XDP_PASS
    with pytest.raises(BpfError, match="test run of probe_tc") as exc:
        tc.test_run(b"\x00" * 4)  # shorter than an Ethernet header
    assert exc.value.errno == errno.EINVAL


def test_verifier_rejection_keeps_the_log(tmp_path: Path) -> None:
    src = Path(__file__).parent / "bpf" / "verifier_reject.bpf.c"
    shutil.copy(BPF_DIR / "vmlinux.h", tmp_path / "vmlinux.h")
    obj_path = _build.compile_object(src, _build.find_clang(), tmp_path)
    with BpfObject.open(obj_path) as obj, pytest.raises(BpfLoadError) as exc:
        obj.load()
    assert exc.value.errno == errno.EACCES
    assert "invalid access to packet" in exc.value.log
    assert "verifier" in str(exc.value)


def test_open_missing_object_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(BpfLoadError, match=r"open BPF object .*missing\.bpf\.o"):
        BpfObject.open(tmp_path / "missing.bpf.o")


@pytest.fixture
def dummy_iface() -> Iterator[tuple[str, int]]:
    name = f"sedp{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "link", "add", name, "type", "veth", "peer", "name", f"{name}p"], check=True)
    try:
        subprocess.run(["ip", "link", "set", name, "up"], check=True)
        yield name, socket.if_nametoindex(name)
    finally:
        subprocess.run(["ip", "link", "del", name], check=False)


def _qdiscs(name: str) -> str:
    return subprocess.run(["tc", "qdisc", "show", "dev", name], capture_output=True, text=True).stdout


def test_tc_attach_detach_removes_only_what_it_created(
    probes: BpfObject, dummy_iface: tuple[str, int]
) -> None:
    name, ifindex = dummy_iface
    with TcHook(ifindex) as hook:
        assert hook.created_qdisc and "clsact" in _qdiscs(name)
        with (
            hook.attach(probes.program("probe_tc"), TcAttachPoint.INGRESS),
            hook.attach(probes.program("probe_tc"), TcAttachPoint.EGRESS),
        ):
            for direction in ("ingress", "egress"):
                out = subprocess.run(
                    ["tc", "filter", "show", "dev", name, direction], capture_output=True, text=True
                )
                assert "probe_tc" in out.stdout
        out = subprocess.run(["tc", "filter", "show", "dev", name, "ingress"], capture_output=True, text=True)
        assert "probe_tc" not in out.stdout
    assert "clsact" not in _qdiscs(name)


def test_tc_hook_keeps_a_qdisc_it_did_not_create(probes: BpfObject, dummy_iface: tuple[str, int]) -> None:
    name, ifindex = dummy_iface
    subprocess.run(["tc", "qdisc", "add", "dev", name, "clsact"], check=True)
    with TcHook(ifindex) as hook:
        assert not hook.created_qdisc
    assert "clsact" in _qdiscs(name)


def test_cgroup_attach_is_released_on_close(probes: BpfObject) -> None:
    root = cgroup2_mount()
    assert root is not None, "cgroup2 is not mounted"
    cg = Path(root) / f"sentinel-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"  # tests/ci_cleanup.sh naming
    cg.mkdir()
    try:
        with probes.program("probe_connect4").attach_cgroup(cg):
            out = subprocess.run(
                ["bpftool", "cgroup", "show", str(cg)], capture_output=True, text=True
            ).stdout
            assert "connect4" in out
        out = subprocess.run(["bpftool", "cgroup", "show", str(cg)], capture_output=True, text=True).stdout
        assert "connect4" not in out
    finally:
        cg.rmdir()


def test_ring_buffer_callback_errors_propagate_and_objects_unload() -> None:
    before = _prog_ids()  # (the tier's shared inbound object stays loaded)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]

    class Boom(Exception):
        pass

    def explode(_conn: object) -> None:
        raise Boom

    try:
        with ConnTracer(TraceFilter(pid=os.getpid(), ports=(port,))) as tracer:
            assert _prog_ids() - before, "tracer programs should be loaded"
            with socket.create_connection(("127.0.0.1", port)):
                pass
            with pytest.raises(Boom):
                for _ in range(50):
                    tracer.poll(explode, 100)
    finally:
        server.close()
    assert _prog_ids() == before, "programs left loaded after close"
