#!/usr/bin/env bash
# Set up the development environment: .venv with the pinned TVM wheels and ios-tvm installed in
# editable mode (Python from the source tree, libios_tvm_native.so built by CMake in
# build/<wheel tag>/ and installed into site-packages).
#
# Idempotent and fast when already done: if the stamp (a hash of the packaging files) matches and
# the native library loads, only the incremental CMake build runs (well under a second when nothing
# changed). Needs python3 (>= 3.10), a C++17 compiler and cmake >= 3.18 (pip installs one if
# missing); PyPI must be reachable the first time.
#
# Environment: PYTHON (interpreter for the venv, default python3), IOS_TVM_FORCE_SETUP=1 (reinstall).
set -euo pipefail
cd "$(dirname "$0")/.."

export PIP_DISABLE_PIP_VERSION_CHECK=1
PY=.venv/bin/python
STAMP=.venv/.ios_tvm_setup_stamp
LOG=$(mktemp "${TMPDIR:-/tmp}/ios_tvm_setup.XXXXXX")
trap 'rm -f "$LOG"' EXIT

run_quiet() {  # run a command, showing its output only when it fails
  if ! "$@" >"$LOG" 2>&1; then
    cat "$LOG" >&2
    echo "setup.sh: failed: $*" >&2
    exit 1
  fi
}

if [ ! -x "$PY" ]; then
  echo "setup.sh: creating .venv with ${PYTHON:-python3}"
  run_quiet "${PYTHON:-python3}" -m venv .venv
fi

hash_now=$(cat pyproject.toml CMakeLists.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)
native_loads() { "$PY" -c "import ios_tvm._native as f; f.load()" >/dev/null 2>&1; }

# Fast path: already installed in editable mode with these packaging files. Bring the native
# library up to date (incremental CMake build + install) and check that it loads.
# Exit codes of the check: 0 done, 3 not an editable install (reinstall), other: build failed.
FAST_CHECK='
import sys
try:
    import ios_tvm
    rebuild = ios_tvm.__spec__.loader.rebuild
except (ImportError, AttributeError):
    sys.exit(3)
rebuild()
import ios_tvm._native as f
f.load()
'
if [ "${IOS_TVM_FORCE_SETUP:-0}" != 1 ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$hash_now" ]; then
  rc=0
  SKBUILD_EDITABLE_VERBOSE=0 "$PY" -c "$FAST_CHECK" >"$LOG" 2>&1 || rc=$?
  if [ "$rc" -eq 0 ]; then
    exit 0
  elif [ "$rc" -ne 3 ]; then
    cat "$LOG" >&2
    echo "setup.sh: the incremental native build failed (IOS_TVM_FORCE_SETUP=1 reinstalls)" >&2
    exit 1
  fi
fi

echo "setup.sh: installing ios-tvm and its dependencies into .venv"
# Build requirements must be in the venv because the editable build runs without isolation
# (isolation would re-install the 300 MB tvm wheel into a temporary env on every build).
build_reqs=("scikit-build-core>=0.10" "apache-tvm-ffi==0.1.14.post1" "apache-tvm==0.27.0.post1"
            "ninja")
if ! command -v cmake >/dev/null 2>&1; then
  build_reqs+=("cmake>=3.18")
fi
run_quiet "$PY" -m pip install -q "${build_reqs[@]}"
# The learned extra is the CPU-only xgboost-cpu wheel; the full `xgboost` (NCCL, ~130 MB) of an
# older setup owns the same module files, so it goes first.
if "$PY" -m pip show -q xgboost >/dev/null 2>&1; then run_quiet "$PY" -m pip uninstall -y -q xgboost; fi
run_quiet "$PY" -m pip install -q --no-build-isolation -e ".[dev,test,rpc,plot,learned,notebook,cuda]"
# PyTorch, for the PyTorch baselines of the benchmark and their tests: only a CPU build that
# pip's find-links directory already holds (a plain `pip install torch` can pull several GB of
# CUDA libraries). Without one, those baselines and tests are skipped.
torch_whl=""
pytag=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
for d in $("$PY" -m pip config get global.find-links 2>/dev/null) /opt/wheels; do
  torch_whl=$(ls "$d"/torch-*+cpu-"$pytag"-*.whl 2>/dev/null | sort -V | tail -1 || true)
  [ -n "$torch_whl" ] && break
done
if [ -n "$torch_whl" ] && ! "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "setup.sh: installing PyTorch from $torch_whl"
  run_quiet "$PY" -m pip install -q "$torch_whl"
elif [ -z "$torch_whl" ]; then
  echo "setup.sh: no local CPU build of PyTorch; the PyTorch baselines are skipped (pip install torch to add them)"
fi
if ! native_loads; then
  "$PY" -c "import ios_tvm._native as f; f.load()"  # show why
  exit 1
fi
echo "$hash_now" >"$STAMP"
echo "setup.sh: done ($("$PY" -c 'import ios_tvm._native as f; print(f.library_path())'))"
