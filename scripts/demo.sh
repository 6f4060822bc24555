#!/usr/bin/env bash
# Quick start: set up, check the kernel, run the daemon for ~10 s on its built-in example (a demo server
# on 127.0.0.1:18080 whose / is limited to 5 requests per second and whose /slow takes 2 requests at a
# time), send it requests, show the statistics, stop it; then trace TCP connections for a few seconds
# (DURATION, default 5).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/as-root.sh
source scripts/demo-daemon.sh

bash scripts/setup.sh
CLI=.venv/bin/sentinel-ebpf
$CLI doctor

start_daemon demo
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
[ -S "$sock" ] || { cat "$work/daemon.log"; exit 1; }

echo
echo "== 6 rounds of 10 requests 0.1 s apart to http://127.0.0.1:18080/ (limit: 5 per second) =="
for round in $(seq 6); do
    codes=""
    for _ in $(seq 10); do
        codes+="$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:18080/) "
        sleep 0.1
    done
    echo "round $round: $(tr ' ' '\n' <<< "$codes" | grep . | sort | uniq -c | awk '{printf "%s x %s  ", $1, $2}')"
done
echo
echo "== a blocked client sees =="
for _ in $(seq 10); do curl -s -o /dev/null http://127.0.0.1:18080/; done
curl -s -i http://127.0.0.1:18080/ | tr -d '\r'
echo "== 4 requests at once to /slow (0.5 s each; at most 2 in flight) =="
for _ in $(seq 4); do curl -s -o /dev/null -w "%{http_code}\n" http://127.0.0.1:18080/slow & done | sort | uniq -c
# (the pipe closes when the last curl has answered)
echo "== sentinel-ebpf stats =="
COLUMNS=110 $CLI stats --control-socket "$sock"
kill -TERM "$daemon"
wait "$daemon" || true
trap - EXIT
echo "(daemon stopped; its log: $work/daemon.log, metric log: $work/log)"

echo
echo "== tracing TCP connections for ${DURATION:-5} s =="
( sleep 1.5; curl -s -o /dev/null http://127.0.0.1:1/ || true ) &
$CLI trace -d "${DURATION:-5}"
