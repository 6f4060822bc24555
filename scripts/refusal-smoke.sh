#!/usr/bin/env bash
# For a kernel the enforcement programs need more than (scripts/kernel-matrix.sh with
# KERNEL_MATRIX_EXPECT_REFUSAL): the quick start's `run` must refuse at once, exit 1, name the reason
# (EXPECTED, e.g. "bpf_loop callbacks: needs Linux 5.17") and leave no TC filter on lo.
set -euo pipefail
cd "$(dirname "$0")/.."
CLI=${CLI:-.venv/bin/sentinel-ebpf}
EXPECTED=${1:?usage: refusal-smoke.sh EXPECTED-TEXT}

work=$(mktemp -d /tmp/sentinel-ebpf-refusal.XXXXXX)
trap 'rm -rf "$work"' EXIT
set +e
timeout 300 $CLI run --control-socket "$work/control.sock" --state-dir "$work/state" --log-dir "$work/log" \
    --metrics-addr "" > "$work/out.log" 2>&1
rc=$?
set -e
cat "$work/out.log"
echo "refusal smoke: run exited $rc"
[ "$rc" = 1 ] || { echo "refusal smoke: expected exit 1 (refused), got $rc"; exit 1; }
grep -qF "$EXPECTED" "$work/out.log" || { echo "refusal smoke: the refusal does not say '$EXPECTED'"; exit 1; }
if tc filter show dev lo ingress 2>/dev/null | grep -q 0x5e17; then
    echo "refusal smoke: a TC filter was left on lo"
    exit 1
fi
echo "refusal smoke: refused as expected"
