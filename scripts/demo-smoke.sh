#!/usr/bin/env bash
# The quick start's daemon path with checks, for a kernel under test (scripts/kernel-matrix.sh): `run`
# with no rules file (the built-in example: / limited to 5 per second, /slow to 2 at a time), then
# requests whose answers must show both limits, then SIGTERM must leave no TC filter on lo.
set -euo pipefail
cd "$(dirname "$0")/.."
CLI=${CLI:-.venv/bin/sentinel-ebpf}
source scripts/demo-daemon.sh

start_daemon smoke
trap 'stop_daemon; rm -rf "$work"' EXIT
for _ in $(seq 300); do grep -q enforcing "$work/daemon.log" && break; sleep 0.1; done
grep -q enforcing "$work/daemon.log" || { echo "smoke: the daemon did not start"; cat "$work/daemon.log"; exit 1; }

fail() { echo "smoke: $*"; cat "$work/daemon.log"; exit 1; }
# one curl for all 20 (a slow machine or an emulated guest still sends them within a second or two)
codes=$(curl -s -m 20 $(for _ in $(seq 20); do echo "-o /dev/null http://127.0.0.1:18080/"; done) \
    -w '%{http_code}\n' | sort | uniq -c | tr '\n' ' ')
echo "20 requests to /: $codes"
[[ "$codes" =~ [0-9]+\ 200 ]] || fail "no request to / was answered 200"
[[ "$codes" =~ [0-9]+\ 429 ]] || fail "no request to / was refused with 429"
[[ "$codes" =~ 000 ]] && fail "a request to / got no answer"
# four at once from one process, so that a slow machine still has them in flight together
slow=$(curl -s --no-progress-meter -m 20 --parallel --parallel-immediate --parallel-max 4 \
    $(for _ in $(seq 4); do echo "-o /dev/null http://127.0.0.1:18080/slow"; done) -w '%{http_code}\n' |
    sort | uniq -c | tr '\n' ' ')
echo "4 concurrent requests to /slow: $slow"
[[ "$slow" =~ 2\ 200 ]] && [[ "$slow" =~ 2\ 429 ]] || fail "/slow: expected 2 x 200 and 2 x 429"
$CLI stats --json --control-socket "$sock" > "$work/stats.json" || fail "stats failed"
kill -TERM "$daemon"
wait "$daemon" || fail "the daemon exited with an error"
trap 'rm -rf "$work"' EXIT
if tc filter show dev lo ingress | grep -q bpf; then fail "a TC filter is left on lo"; fi
echo "smoke: ok"
