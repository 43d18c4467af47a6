#!/usr/bin/env bash
# Install everything the test suite needs (from this repository's files) and run it.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'
if command -v npm >/dev/null 2>&1; then
  (cd tests/interop/node && npm ci --no-audit --no-fund --silent)
fi
exec .venv/bin/python -m pytest "$@"
