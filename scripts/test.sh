#!/usr/bin/env bash
# Set up (scripts/setup.sh), then run the test suite and the linter.
# Arguments go to pytest, e.g. `bash scripts/test.sh -k native --runslow`.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
rc=0
.venv/bin/python -m pytest "$@" || rc=$?
.venv/bin/ruff check --quiet --output-format concise . || { r=$?; [ "$rc" -ne 0 ] || rc=$r; }
exit "$rc"
