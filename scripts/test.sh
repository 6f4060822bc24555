#!/usr/bin/env bash
# The whole check, as CI runs it: setup, lint, type check, generated-file freshness, all test tiers
# (one pytest run per tier, with durations).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/as-root.sh

bash scripts/setup.sh
PY=.venv/bin/python

echo "== ruff"
$PY -m ruff check src tests tools bench setup.py
$PY -m ruff format --check src tests tools bench setup.py
echo "== mypy"
$PY -m mypy
echo "== generated types are fresh"
$PY tools/gen_types.py --check

# One pytest run per tier (the fast ones first, then any other directory of tests), each with its
# slowest tests and its wall time, so CI time is visible. Arguments: one run over tests/ with them.
if [ $# -gt 0 ]; then
    set +e
    $PY -m pytest tests --durations=15 --durations-min=1.0 "$@"
    rc=$?
    set -e
    exit "$rc"
fi
tiers=(unit dataplane integration reliability)
for dir in tests/*/; do
    name=$(basename "$dir")
    [[ " ${tiers[*]} " == *" $name "* ]] && continue
    [ -n "$(find "$dir" -name 'test_*.py' -print -quit)" ] && tiers+=("$name")
done
rc=0
for tier in "${tiers[@]}"; do
    echo "== pytest tests/$tier"
    start=$(date +%s)
    set +e
    $PY -m pytest "tests/$tier" --durations=15 --durations-min=1.0
    tier_rc=$?
    set -e
    echo "== tests/$tier: exit $tier_rc in $(($(date +%s) - start)) s"
    if [ "$tier_rc" = 5 ]; then
        echo "test.sh: pytest collected no tests in tests/$tier: that is a failure" >&2
        tier_rc=1
    fi
    [ "$tier_rc" = 0 ] || rc=$tier_rc
done
exit "$rc"
