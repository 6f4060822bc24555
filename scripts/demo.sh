#!/usr/bin/env bash
# Quick start: set up, check the kernel, then trace TCP connections for a while (default 10 s; set
# DURATION=0 to trace until Ctrl-C). A local demo server gets a few connections so there is output.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
.venv/bin/sentinel-ebpf doctor

port=${DEMO_PORT:-18080}
.venv/bin/python -m http.server "$port" --bind 127.0.0.1 >/dev/null 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
(
    sleep 2
    for _ in 1 2 3; do curl -s -o /dev/null "http://127.0.0.1:$port/" || true; done
    curl -s -o /dev/null "http://127.0.0.1:1/" || true   # refused: traced too
) &
echo
echo "Tracing TCP connections for ${DURATION:-10} s (try curl in another terminal)..."
.venv/bin/sentinel-ebpf trace -d "${DURATION:-10}"
