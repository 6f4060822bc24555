"""What this kernel and machine can do, found by loading tiny probes rather than reading config.

``run_checks()`` returns every check; ``verdict()`` says which features of sentinel-ebpf can run.
"""

from __future__ import annotations

import errno
import os
import platform
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from sentinel_ebpf import host
from sentinel_ebpf.errors import BpfError, SentinelError
from sentinel_ebpf.host import cap_eff, cgroup2_mount
from sentinel_ebpf.libbpf import BpfObject, MapType, ProgType, _lib
from sentinel_ebpf.objects import object_path

CAPS = {"CAP_NET_ADMIN": 12, "CAP_SYS_ADMIN": 21, "CAP_PERFMON": 38, "CAP_BPF": 39}


class Status(str, Enum):
    OK = "ok"
    MISSING = "missing"
    WARN = "warn"


@dataclass(frozen=True)
class Check:
    group: str
    name: str
    status: Status
    detail: str = ""


@dataclass(frozen=True)
class Feature:
    name: str
    needs: tuple[str, ...]  # check names, all must be OK
    essential: bool
    available: bool = False
    missing: tuple[str, ...] = ()


FEATURES: tuple[tuple[str, tuple[str, ...], bool], ...] = (
    ("trace (TCP connection tracer)",
     ("privileges", "libbpf", "btf", "objects", "map ringbuf", "map lru_hash", "map percpu_array", "hook tp_btf|hook raw_tp",
      "load tcptrace"),
     True),
    ("trace --accept", ("hook tp_btf|hook raw_tp", "syscall numbers", "load tcptrace"), False),
    ("trace --http (HTTP requests from syscalls)",
     ("hook tp_btf|hook raw_tp", "syscall numbers", "map ringbuf", "load httptrace"), False),
    ("trace --http over TLS (OpenSSL uprobes); tls resources", ("hook uprobe", "load httptrace"), False),
    ("inbound enforcement (TC ingress/egress)",
     ("privileges", "btf", "objects", "prog sched_cls", "map lru_hash", "map lpm_trie", "map percpu_array",
      "BPF_PROG_TEST_RUN", "load inbound"),
     True),
    # `run` attaches out_connect4, out_connect6 and out_sockops (connection outcomes, concurrency)
    ("outbound connect enforcement (cgroup/connect4|6)",
     ("prog cgroup_sock_addr", "hook cgroup/connect4", "hook sock_ops", "cgroup2", "load inbound"), False),
    ("kprobe-based tracing", ("hook kprobe",), False),
    ("fentry/fexit tracing", ("hook fentry",), False),
    ("BPF LSM", ("hook lsm",), False),
)  # fmt: skip


@dataclass
class Report:
    kernel: str
    arch: str
    checks: list[Check] = field(default_factory=list)
    features: list[Feature] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(f.available for f in self.features if f.essential)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kernel": self.kernel,
            "arch": self.arch,
            "ok": self.ok,
            "checks": [{**asdict(c), "status": c.status.value} for c in self.checks],
            "features": [
                {
                    "name": f.name,
                    "available": f.available,
                    "essential": f.essential,
                    "missing": list(f.missing),
                }
                for f in self.features
            ],
        }


def system_checks() -> list[Check]:
    checks: list[Check] = []
    caps = cap_eff()
    have = [name for name, bit in CAPS.items() if caps & (1 << bit)]
    root_enough = caps & (1 << CAPS["CAP_SYS_ADMIN"]) or (
        caps & (1 << CAPS["CAP_BPF"])
        and caps & (1 << CAPS["CAP_PERFMON"])
        and caps & (1 << CAPS["CAP_NET_ADMIN"])
    )
    checks.append(
        Check(
            "system",
            "privileges",
            Status.OK if root_enough else Status.MISSING,
            f"euid {os.geteuid()}, capabilities: {', '.join(have) or 'none'}"
            + ("" if root_enough else " (run as root)"),
        )
    )
    try:
        checks.append(Check("system", "libbpf", Status.OK, _lib.version()))
    except SentinelError as exc:
        checks.append(Check("system", "libbpf", Status.MISSING, str(exc)))
    btf = Path("/sys/kernel/btf/vmlinux")
    checks.append(
        Check(
            "system",
            "btf",
            Status.OK if btf.exists() else Status.MISSING,
            str(btf) if btf.exists() else "no /sys/kernel/btf/vmlinux (CONFIG_DEBUG_INFO_BTF=y needed)",
        )
    )
    try:
        objs = [object_path(n).name for n in ("tcptrace", "httptrace", "inbound", "probes")]
        checks.append(Check("system", "objects", Status.OK, ", ".join(objs)))
    except SentinelError as exc:
        checks.append(Check("system", "objects", Status.MISSING, str(exc)))
    mounts = host.mounts()
    for fstype, name, why, required in (
        ("cgroup2", "cgroup2", "needed for outbound (cgroup/connect) enforcement", True),
        ("bpf", "bpffs", "needed only to pin programs and maps (mount -t bpf bpf /sys/fs/bpf)", False),
        ("tracefs", "tracefs", "not needed: hooks are BTF/raw tracepoints", False),
    ):
        where = mounts.get(fstype)
        status = Status.OK if where else (Status.MISSING if required else Status.WARN)
        checks.append(
            Check("system", name, status, f"mounted at {where}" if where else f"not mounted; {why}")
        )
    nums = platform.machine() in ("x86_64", "aarch64")
    checks.append(
        Check(
            "system",
            "syscall numbers",
            Status.OK if nums else Status.MISSING,
            f"accept/accept4 numbers known for {platform.machine()}"
            if nums
            else f"accept syscall numbers unknown for {platform.machine()}",
        )
    )
    return checks


def _probe_types() -> list[Check]:
    lib = _lib.lib()
    checks = []
    for prog in (
        ProgType.SCHED_CLS,
        ProgType.XDP,
        ProgType.CGROUP_SOCK_ADDR,
        ProgType.SOCK_OPS,
        ProgType.SK_MSG,
        ProgType.RAW_TRACEPOINT,
        ProgType.KPROBE,
    ):
        # TRACING (fentry, tp_btf) and LSM are judged by the hook probes: their type alone says little.
        rc = lib.libbpf_probe_bpf_prog_type(int(prog), None)
        checks.append(_probed("program type", f"prog {prog.name.lower()}", rc, "loads", "does not load"))
    for mtype in (MapType.HASH, MapType.LRU_HASH, MapType.PERCPU_ARRAY, MapType.LPM_TRIE, MapType.RINGBUF):
        rc = lib.libbpf_probe_bpf_map_type(int(mtype), None)
        checks.append(_probed("map type", f"map {mtype.name.lower()}", rc, "creates", "cannot be created"))
    return checks


def _probed(group: str, name: str, rc: int, works: str, fails: str) -> Check:
    """A libbpf type probe's answer as a check: 1 means the kernel has it, else ``rc`` says why not."""
    return (
        Check(group, name, Status.OK, works)
        if rc == 1
        else Check(group, name, Status.MISSING, f"{fails} ({_explain(rc)})")
    )


def _explain(rc: int) -> str:
    if rc == 0:
        return "not supported by this kernel"
    return os.strerror(abs(rc)) if rc < 0 else f"rc {rc}"


# A minimal Ethernet + IPv4 + TCP SYN frame for the test-run probe.
_SYN = bytes.fromhex(
    "000000000000" "000000000000" "0800"
    "4500002800004000400600007f0000017f000001"
    "d4310050000000000000000050020000" "00000000"
)  # fmt: skip


def _attach_in_cgroup(prog: Any) -> str:
    root = cgroup2_mount()
    if root is None:
        raise BpfError("find cgroup2 mount", errno.ENOENT, "mount cgroup2 (e.g. on /sys/fs/cgroup/unified)")
    with prog.attach_cgroup(root):
        return f"attached to {root} and detached"


def _run_tc(prog: Any) -> str:
    res = prog.test_run(_SYN)
    if res.retval != 0:
        raise BpfError("tc probe test run", errno.EINVAL, f"unexpected verdict {res.retval}")
    return "BPF_PROG_TEST_RUN on a TCP SYN frame"


def _run_xdp(prog: Any) -> str:
    res = prog.test_run(_SYN)
    if res.retval != 2:
        raise BpfError("xdp probe test run", errno.EINVAL, f"unexpected verdict {res.retval}")
    return "BPF_PROG_TEST_RUN returned XDP_PASS"


def _attach_uprobe(prog: Any) -> str:
    """A uprobe on getpid in the libc this process maps, for this process only, attached and detached."""
    libc = next(
        (line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()
         if "/libc.so" in line or "/libc-" in line),
        None,
    )  # fmt: skip
    if libc is None:
        raise BpfError("find libc in /proc/self/maps", errno.ENOENT)
    with prog.attach_uprobe(libc, "getpid", pid=os.getpid()):
        return f"attached to {libc}:getpid and detached"


def _attach(prog: Any) -> str:
    with prog.attach():
        return f"attached to {prog.section} and detached"


# check name -> (program in probes.bpf.o, what proves it works)
HOOK_PROBES: dict[str, tuple[str, Callable[[Any], str]]] = {
    "hook tp_btf": ("probe_tp_btf", _attach),
    "hook raw_tp": ("probe_raw_tp", _attach),
    "hook kprobe": ("probe_kprobe", _attach),
    "hook uprobe": ("probe_uprobe", _attach_uprobe),
    "hook fentry": ("probe_fentry", _attach),
    "hook lsm": ("probe_lsm", _attach),
    "BPF_PROG_TEST_RUN": ("probe_tc", _run_tc),
    "hook xdp": ("probe_xdp", _run_xdp),
    "hook cgroup/connect4": ("probe_connect4", _attach_in_cgroup),
    "hook sock_ops": ("probe_sockops", _attach_in_cgroup),
    "hook sk_msg": ("probe_sk_msg", lambda prog: "loads (attaches to a sockmap)"),
}


def probe_hook(check: str) -> Check:
    program, prove = HOOK_PROBES[check]
    with _lib.capture_log():  # expected failures are findings, not warnings
        try:
            with BpfObject.open(object_path("probes")) as obj:
                for name, prog in obj.programs.items():
                    prog.autoload = name == program
                obj.load()
                detail = prove(obj.program(program))
            return Check("hook", check, Status.OK, detail)
        except BpfError as exc:
            return Check("hook", check, Status.MISSING, _hook_detail(check, exc))
        except SentinelError as exc:
            return Check("hook", check, Status.MISSING, str(exc))


def _hook_detail(check: str, exc: BpfError) -> str:
    base = f"{exc.op}: {os.strerror(exc.errno)}"
    if check == "hook kprobe" and not Path("/sys/bus/event_source/devices/kprobe").exists():
        return f"{base} (no kprobe PMU: kernel built without CONFIG_KPROBES, or tracefs needed for legacy kprobes)"
    if check == "hook lsm":
        lsms = Path("/sys/kernel/security/lsm")
        active = lsms.read_text().strip() if lsms.exists() else "unknown (securityfs not mounted)"
        return f"{base} (BPF LSM needs CONFIG_BPF_LSM and 'bpf' in lsm=; active LSMs: {active})"
    if check == "hook fentry":
        return f"{base} (fentry/fexit trampolines not available on this kernel)"
    return base


_PROG_FAILED = re.compile(r"libbpf: prog '([^']+)': (?:BPF program load failed|failed to load)")
_PROCESSED = re.compile(r"^processed \d+ insns")


def verifier_complaint(log: str) -> tuple[str | None, str]:
    """(program, the verifier's complaint) from a failed load's libbpf log: the program libbpf names
    first, and the log line before the verifier's closing "processed N insns" line (the verifier stops at
    its first complaint). (None, "") when the log names no program."""
    lines = log.splitlines()
    prog = None
    for i, line in enumerate(lines):
        m = _PROG_FAILED.search(line)
        if m is None:
            continue
        prog = m.group(1)
        for j in range(i + 1, len(lines)):
            if _PROCESSED.match(lines[j].strip()):
                k = j - 1
                while k > i and not lines[k].strip():
                    k -= 1
                return prog, lines[k].strip()
            if "END PROG LOAD LOG" in lines[j]:
                break
        break
    return prog, ""


# Helpers the objects call that came late, by id: what an older verifier says is "invalid func unknown#ID".
HELPERS_SINCE: dict[int, tuple[str, str]] = {
    137: ("bpf_skc_to_tcp_sock", "5.9"),
    181: ("bpf_loop", "5.17"),
    187: ("bpf_set_retval", "5.18"),
}
_INVALID_FUNC = re.compile(r"invalid func (\w+)#(\d+)")
# Complaints an older kernel makes before it reaches a helper, with what they mean for these objects.
COMPLAINTS_SINCE: dict[str, tuple[str, str]] = {
    # kernels before 5.13 do not count callbacks (bpf_loop's) as functions of the program
    "number of funcs in func_info doesn't match number of subprogs": ("bpf_loop callbacks", "5.17"),
}


def describe_load_error(exc: BpfError) -> str:
    """One line for a failed object load: the program and the verifier's first complaint when known,
    and the kernel version a missing helper needs."""
    prog, complaint = verifier_complaint(getattr(exc, "log", ""))
    if prog and complaint:
        m = _INVALID_FUNC.search(complaint)
        since = HELPERS_SINCE.get(int(m.group(2))) if m else COMPLAINTS_SINCE.get(complaint)
        if since is not None:
            complaint += f" ({since[0]}: needs Linux {since[1]} or newer)"
        return f"{exc.op}: program {prog} rejected by the verifier: {complaint}"
    if prog:
        return f"{exc.op}: program {prog}: {os.strerror(exc.errno)}"
    return str(exc).splitlines()[0]


def _insns(programs: dict[str, Any]) -> str:
    counts = [(name, p.verified_insns) for name, p in sorted(programs.items()) if p.fd >= 0]
    if not any(n for _, n in counts):
        return f"{len(counts)} programs loaded (this kernel does not report verified instructions)"
    return "verified insns: " + ", ".join(f"{name} {n:,}" for name, n in counts)


def _load_inbound() -> str:
    from sentinel_ebpf.enforce.dataplane import InboundDataplane  # the data plane imports this module

    with InboundDataplane() as dp:
        return _insns(dp.obj.programs)


def _load_tracer(kind: str) -> str:
    from sentinel_ebpf.tracing.base import BpfTracer
    from sentinel_ebpf.tracing.http import HttpTraceFilter, HttpTracer
    from sentinel_ebpf.tracing.tcp import ConnTracer, TraceFilter

    # every program of the object: --accept's syscall hooks, and the OpenSSL uprobes
    tracer: BpfTracer = (
        ConnTracer(TraceFilter(accept=True)) if kind == "tcptrace" else HttpTracer(HttpTraceFilter(tls=True))
    )
    obj, flavor = tracer.load()
    with obj:
        return f"{flavor} hooks; {_insns(obj.programs)}"


# check name -> what loads the object the way the tool loads it, and unloads it again
LOAD_CHECKS: dict[str, Callable[[], str]] = {
    "load inbound": _load_inbound,
    "load tcptrace": lambda: _load_tracer("tcptrace"),
    "load httptrace": lambda: _load_tracer("httptrace"),
}


def load_check(check: str) -> Check:
    """Load one of the real objects as the tool does (then unload it): the verifier has the last word."""
    with _lib.capture_log():
        try:
            return Check("object", check, Status.OK, LOAD_CHECKS[check]())
        except BpfError as exc:
            return Check("object", check, Status.MISSING, describe_load_error(exc))
        except SentinelError as exc:
            return Check("object", check, Status.MISSING, str(exc))


def run_checks() -> Report:
    report = Report(kernel=platform.release(), arch=platform.machine())
    report.checks.extend(system_checks())
    by_name = {c.name: c for c in report.checks}
    if by_name["libbpf"].status is Status.OK:
        report.checks.extend(_probe_types())
        if by_name["objects"].status is Status.OK and by_name["privileges"].status is Status.OK:
            report.checks.extend(probe_hook(name) for name in HOOK_PROBES)
            report.checks.extend(load_check(name) for name in LOAD_CHECKS)
    report.features = verdict(report.checks)
    return report


def verdict(checks: list[Check]) -> list[Feature]:
    ok = {c.name for c in checks if c.status is Status.OK}
    features = []
    for name, needs, essential in FEATURES:
        missing = tuple(n for n in needs if not any(alt in ok for alt in n.split("|")))
        features.append(Feature(name, needs, essential, available=not missing, missing=missing))
    return features
