#!/usr/bin/env bash
# The whole check, as CI runs it: setup, lint, type check, generated-file freshness, all test tiers.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
PY=.venv/bin/python

echo "== ruff"
$PY -m ruff check src tests tools bench setup.py
$PY -m ruff format --check src tests tools bench setup.py
echo "== mypy"
$PY -m mypy
echo "== generated types are fresh"
$PY tools/gen_types.py --check

echo "== pytest (unit, dataplane, integration)"
set +e
$PY -m pytest tests "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
    echo "test.sh: pytest collected no tests: that is a failure" >&2
    exit 1
fi
exit "$rc"
