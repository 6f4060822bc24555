#!/usr/bin/env python3
"""What a rejected request costs the server: the eBPF data plane vs nginx ``limit_req`` vs a Python ASGI app.

One server namespace, three servers, the same limit ``--rate`` requests per second on ``/``:

  eBPF 429      nginx on 8080 (one worker, a 12-byte static file) behind ``sentinel-ebpf run``: a flow rule of
                ``--rate`` QPS; excess requests are answered 429 by the TC program, nginx gets a RST
  nginx 429     nginx on 8081 with ``limit_req`` (zone rate ``--rate``r/s, burst 0, nodelay, status 429)
  ASGI 429      uvicorn + Starlette on 8082 behind slowapi's middleware (``--rate``/second, one shared key)

Each gets the same overload in turn, ``--rounds`` times: wrk (2 threads, ``--connections``, closed loop) for
``--seconds`` from a client namespace, far above 10x the limit; once with keep-alive connections and once
with ``Connection: close`` on every request (a new connection per request for every server). Measured per run: requests, rejected
(wrk's non-2xx count), the server process's CPU time (/proc/PID/stat user + system; for eBPF, nginx's
plus the TC programs' run time from ``kernel.bpf_stats_enabled``, where the rejections are made), and the
whole machine's busy CPU time (/proc/stat) including the client. "server us/rejected" is server CPU
divided by rejected requests; "machine us/request" is all CPU divided by all requests.

Not charged to any server process: the kernel's TCP work in softirq (handshakes, ACKs). The kernel's 429
closes the connection (``Connection: close``), so every request the eBPF rule rejects costs the client a
new connection, while nginx's and slowapi's 429 keep it open: that shows in the machine-wide column.

usage: sudo .venv/bin/python bench/rejection_cost.py [--rate 100] [--seconds 10] [--rounds 3]
       (needs ``pip install -e '.[bench]'`` for uvicorn, starlette and slowapi)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from integration.daemon_helpers import Daemon  # noqa: E402
from integration.netns import NetnsPair  # noqa: E402

ASGI = Path(__file__).with_name("_asgi_limited.py")
RULES = """
resources:
  - {{name: root, match: {{protocol: http, port: 8080, path: /}}}}
flowRules:
  - {{resource: root, threshold: {rate}, statIntervalInMs: 1000}}
"""
SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")
TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def machine_busy() -> float:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / TICK


def tc_run_ns() -> int:
    out = subprocess.run(
        ["bpftool", "--json", "prog", "show"], capture_output=True, text=True, check=True
    ).stdout
    return sum(p.get("run_time_ns", 0) for p in json.loads(out or "[]")
               if p.get("type") == "sched_cls" and p.get("name", "").startswith("tc_"))  # fmt: skip


def start_nginx(pair: NetnsPair, port: int, rate: int | None) -> subprocess.Popen[Any]:
    work = pair.tmpdir / f"nginx-{port}"
    work.mkdir(parents=True)
    temp = " ".join(
        f"{k}_temp_path {work}/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (work / "www").mkdir()
    (work / "www" / "index.html").write_text(
        "hello world\n"
    )  # a static file: `return` would run before limit_req
    zone = f"limit_req_zone $server_port zone=one:1m rate={rate}r/s; limit_req_status 429;" if rate else ""
    limit = "limit_req zone=one nodelay;" if rate else ""
    (work / "nginx.conf").write_text(f"""
worker_processes 1;
master_process off;
pid {work}/nginx.pid;
error_log {work}/error.log crit;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    {temp}
    {zone}
    server {{ listen {port}; root {work}/www; location / {{ {limit} }} }}
}}
""")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = pair.popen(pair.server, nginx, "-p", str(work), "-c", str(work / "nginx.conf"), "-g", "daemon off;",
                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    pair.wait_listening(pair.server, port, proc)
    return proc


def run(
    pair: NetnsPair, port: int, pids: list[int], seconds: int, connections: int, close: bool
) -> dict[str, float]:
    cpu0 = sum(proc_cpu(p) for p in pids)
    bpf0, busy0, t0 = tc_run_ns(), machine_busy(), time.monotonic()
    header = ["-H", "Connection: close"] if close else []
    res = pair.run(pair.client, "wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", *header,
                   f"http://{pair.server_ip}:{port}/", timeout=seconds + 60)  # fmt: skip
    elapsed = time.monotonic() - t0
    cpu = sum(proc_cpu(p) for p in pids) - cpu0
    bpf_s = (tc_run_ns() - bpf0) / 1e9
    busy = machine_busy() - busy0
    m = re.search(r"(\d+) requests in", res.stdout)
    if not m:
        raise RuntimeError(f"wrk output not understood:\n{res.stdout}{res.stderr}")
    total = int(m.group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", res.stdout)
    rejected = int(non2xx.group(1)) if non2xx else 0
    errors = re.search(r"Socket errors: (.*)", res.stdout)
    return {"requests": total, "rejected": rejected, "passed_per_s": (total - rejected) / elapsed,
            "proc_cpu_s": cpu, "bpf_cpu_s": bpf_s, "machine_cpu_s": busy, "seconds": elapsed,
            "socket_errors": errors.group(1) if errors else ""}  # type: ignore[dict-item]  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=100)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=32)
    args = ap.parse_args()
    print(f"$ {' '.join(sys.argv)}")
    modes = {"keep-alive": False, "new connection per request": True}
    results = {m: {"eBPF 429": [], "nginx 429": [], "ASGI 429": []} for m in modes}
    old = SYSCTL.read_text().strip()
    SYSCTL.write_text("1")
    try:
        with NetnsPair("rc") as pair:
            ebpf_nginx = start_nginx(pair, 8080, None)
            limited_nginx = start_nginx(pair, 8081, args.rate)
            asgi = pair.popen(pair.server, sys.executable, str(ASGI), "8082", str(args.rate),
                              stdin=subprocess.DEVNULL)  # fmt: skip
            pair.wait_listening(pair.server, 8082, asgi)
            d = Daemon(pair, RULES.format(rate=args.rate))
            try:
                for _ in range(args.rounds):
                    for mode, close in modes.items():
                        for name, port, pid in (("eBPF 429", 8080, ebpf_nginx.pid),
                                                ("nginx 429", 8081, limited_nginx.pid),
                                                ("ASGI 429", 8082, asgi.pid)):  # fmt: skip
                            r = run(pair, port, [pid], args.seconds, args.connections, close)
                            if name != "eBPF 429":
                                r["bpf_cpu_s"] = 0.0  # the programs pass other ports' packets: not their cost
                            results[mode][name].append(r)
            finally:
                d.close()
    finally:
        SYSCTL.write_text(old)

    for mode, by_server in results.items():
        print(f"\n== client: wrk, {args.connections} connections, {mode}")
        print(f"{'server':<10} {'req/s':>8} {'rejected/s':>10} {'passed/s':>8} {'server us/rejected':>18} "
              f"{'x eBPF':>7} {'machine us/request':>18}")  # fmt: skip
        med = {
            name: statistics.median(
                (r["proc_cpu_s"] + r["bpf_cpu_s"]) / max(1, r["rejected"]) * 1e6 for r in runs
            )
            for name, runs in by_server.items()
        }
        for name, runs in by_server.items():
            rps = statistics.median(r["requests"] / r["seconds"] for r in runs)
            rej = statistics.median(r["rejected"] / r["seconds"] for r in runs)
            passed = statistics.median(r["passed_per_s"] for r in runs)
            machine = statistics.median(r["machine_cpu_s"] / max(1, r["requests"]) * 1e6 for r in runs)
            print(f"{name:<10} {rps:>8,.0f} {rej:>10,.0f} {passed:>8,.1f} {med[name]:>18.2f} "
                  f"{med[name] / med['eBPF 429']:>7.1f} {machine:>18.2f}")  # fmt: skip
    print(
        "\ntargets: server CPU per rejected request >= 10x lower than nginx limit_req, >= 50x lower than ASGI"
    )
    print("raw:")
    for mode, by_server in results.items():
        for name, runs in by_server.items():
            for r in runs:
                print(f"  {mode} / {name}: {r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
