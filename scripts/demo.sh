#!/usr/bin/env bash
# Set up (idempotent), then the main job on the embedded default: compile the bundled IOS sample
# block for this CPU with measured stage latencies, compare IOS / sequential / Relax VM, write the
# artifact to build/demo/ and draw its schedule. Extra arguments go to `ios-tvm compile`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m ios_tvm compile sample --target host -o build/demo --warmup 1 --number 3 --repeat 3 "$@"
.venv/bin/python -m ios_tvm show build/demo
