#!/usr/bin/env bash
# GPU first light (issue 14): everything a lent GPU machine should run in its first ten-minute
# call, prepared here (no GPU needed) and run there as is.
#
# HERE (the machine with the TVM compiler), from the repository root, once per change of the
# compiler side (plans, kernels, models):
#
#     bash scripts/setup.sh                       # .venv and the native library
#     bash scripts/gpu_first_light.sh prepare     # ~1-2 min; prints the carry size
#
#   It writes build/first_light/ (git-ignored), the ONE path to carry:
#     cases.tar.xz            sample block + Inception V3, batch 1, compiled for sm_90 by
#                             scripts/bench_gpu.py compile (kernels, sequential and IOS plans,
#                             Relax VM executables with and without CUDA graph) + reference
#                             (two inputs and ONNX Runtime's outputs per case)
#     libios_tvm_native.so    the native library (C++ runtime) built here
#     devkit/                 runtime-only TVM for the device's CPython 3.12
#                             (shared/tools/device-kit.sh)
#   and fails if the working tree plus that path exceed the device tool's 64 MiB.
#
# THERE (the GPU machine; its python3 has PyTorch, ONNX and pytest; the kernels are cubins, so
# no NVRTC or cuda-bindings is needed there):
#
#     device run: carry ["build/first_light"], timeout_s 600,
#                 command "bash scripts/gpu_first_light.sh run"
#
#   It prints the GPU, driver and CUDA runtime found, then runs, each under `timeout` (the
#   limits sum to 465 s):
#     1. the runtime-only GPU tests (tests/test_gpu_runtime.py and the gpu tests of
#        tests/test_cuda_graph.py that need no compiler) with IOS_TVM_REQUIRE_GPU=1: a GPU or
#        CUDA runtime that is not usable FAILS them instead of skipping;
#     2. bench_gpu.py run on both cases: sequential/IOS eager and as CUDA graphs, the Relax VM
#        with and without its CUDA graph, PyTorch eager;
#     3. compute-sanitizer --tool memcheck on the sample's IOS plan (bench_gpu.py check);
#     4. per-kernel GPU times of TVM's conv kernels next to PyTorch/cuDNN (bench_gpu.py convs).
#   Everything goes to $OUT (or build/first_light/out without it): first_light.log (all output),
#   gpu_tests.txt, bench_gpu.json, sanitizer.txt, convs.json. A failing step does not stop the
#   later ones; the exit status is that of the first failing step. Copy the JSON files into
#   benchmarks/results/ afterwards.
#
#   Rehearsal without a GPU (here): FIRST_LIGHT_KIT=0 PATH=$PWD/.venv/bin:$PATH bash
#   scripts/gpu_first_light.sh run  (uses this python's TVM, runtime-only; every GPU step fails
#   loudly, none skips).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
FL=build/first_light
MODELS=sample,inception_v3

die() { echo "gpu_first_light: $*" >&2; exit 1; }

prepare() {
  set -e
  local py=.venv/bin/python
  [ -x "$py" ] || die "no .venv here: run bash scripts/setup.sh first"
  local kit_script=${DEVICE_KIT:-}
  for c in "$ROOT/../shared/tools/device-kit.sh" "$ROOT/shared/tools/device-kit.sh" \
           /work/shared/tools/device-kit.sh; do
    [ -z "$kit_script" ] && [ -f "$c" ] && kit_script=$c
  done
  [ -n "$kit_script" ] || die "device-kit.sh not found (set DEVICE_KIT=path/to/device-kit.sh)"
  rm -rf "$FL" && mkdir -p "$FL"
  echo "== compiling $MODELS (batch 1) for sm_90"
  "$py" scripts/bench_gpu.py compile --models "$MODELS" --batches 1 --arch sm_90 \
    --out "$FL/cases"
  echo "== reference inputs and ONNX Runtime outputs"
  "$py" scripts/bench_gpu.py reference --dir "$FL/cases" --inputs 2
  "$py" - "$FL/cases" "$FL/cases.tar.xz" <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, "scripts")
import bench_gpu
bench_gpu.write_archive(Path(sys.argv[1]), Path(sys.argv[2]))
PY
  rm -rf "$FL/cases"
  echo "== native library"
  local lib
  lib=$("$py" -c "import ios_tvm._native as n; n.load(); print(n.library_path())")
  cp "$lib" "$FL/libios_tvm_native.so"
  echo "== runtime-only TVM kit for CPython 3.12 ($kit_script)"
  bash "$kit_script" "$FL/devkit" 3.12 >/dev/null
  # What travels: tracked and untracked-not-ignored files, plus the carried path.
  local tree carry total limit=$((64 * 1024 * 1024))
  tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s 2>/dev/null \
         | awk '{s += $1} END {print s + 0}')
  carry=$(du -sb "$FL" | cut -f1)
  total=$((tree + carry))
  echo "== carry: $FL"
  du -sh "$FL"/* | sed 's/^/   /'
  awk -v t="$tree" -v c="$carry" -v p="$FL" 'BEGIN {
    printf "   working tree %.1f MiB + %s %.1f MiB = %.1f MiB (limit 64 MiB)\n",
           t / 1048576, p, c / 1048576, (t + c) / 1048576 }'
  [ "$total" -le "$limit" ] || die "over the device tool's 64 MiB: carry less"
  echo "ready: device run with carry [\"$FL\"], command \"bash scripts/gpu_first_light.sh run\""
}

# -- run (on the GPU machine) ------------------------------------------------------------------
OUTDIR=${OUT:-$ROOT/$FL/out}
FIRST_FAIL=0
step() {  # step NAME SECONDS CMD...: runs CMD under timeout, logs its status, keeps going
  local name=$1 secs=$2 t0 rc
  shift 2
  echo
  echo "==== $name (timeout ${secs}s) $(date -u +%H:%M:%S)"
  t0=$(date +%s)
  timeout --kill-after=10 "$secs" "$@"
  rc=$?
  echo "==== $name: exit $rc after $(( $(date +%s) - t0 ))s$( [ $rc -eq 124 ] && echo ' (TIMED OUT)')"
  [ $rc -ne 0 ] && [ $FIRST_FAIL -eq 0 ] && FIRST_FAIL=$rc
  return 0
}

find_cudart() {  # the directory of a libcudart.so.13 (pip's CUDA runtime or a toolkit)
  local d
  for d in $(python3 -c "import sys; print(' '.join(p for p in sys.path if p))" 2>/dev/null); do
    for c in "$d"/nvidia/cu13/lib "$d"/nvidia/cuda_runtime/lib; do
      [ -e "$c/libcudart.so.13" ] && { echo "$c"; return; }
    done
  done
  for c in /usr/local/cuda/lib64 /usr/local/cuda-13*/lib64 /usr/local/cuda/targets/*/lib; do
    [ -e "$c/libcudart.so.13" ] && { echo "$c"; return; }
  done
  ldconfig -p 2>/dev/null | awk '/libcudart.so.13 /{print $NF; exit}' | xargs -r dirname
}

info() {
  echo "date: $(date -u)"; echo "host: $(hostname)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
  nvidia-smi | head -5 || true
  echo "python3: $(command -v python3) $(python3 --version 2>&1)"
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'cudnn', torch.backends.cudnn.version(), 'gpu', torch.cuda.is_available())" || true
  echo "libcudart.so.13: ${CUDART_DIR:-NOT FOUND}"
  command -v compute-sanitizer || echo "compute-sanitizer: not on PATH"
  python3 - <<'PY'
import tvm, tvm_ffi
from ios_tvm.runtime.executor import load_cuda_runtime
load_cuda_runtime()
d = tvm.cuda(0)
print("tvm", tvm.__version__, "runtime-only", tvm.base._RUNTIME_ONLY, "cuda(0).exist", d.exist)
if d.exist:
    print("device", d.device_name, "compute", d.compute_version, "SMs", d.multi_processor_count)
import ctypes
rt, drv = ctypes.c_int(0), ctypes.c_int(0)
cudart = ctypes.CDLL("libcudart.so.13")
cudart.cudaRuntimeGetVersion(ctypes.byref(rt))
cudart.cudaDriverGetVersion(ctypes.byref(drv))
print("CUDA runtime", rt.value, "driver API", drv.value)
from ios_tvm import _native
_native.load()
print("ios-tvm native library:", _native.library_path())
info = tvm_ffi.get_global_func("ios_tvm.runtime.cuda_runtime_info")
print("ios-tvm CUDA runtime:", list(info()))
PY
}

run() {
  mkdir -p "$OUTDIR"
  exec > >(tee "$OUTDIR/first_light.log") 2>&1
  [ -f "$FL/cases.tar.xz" ] && [ -d "$FL/devkit" ] && [ -f "$FL/libios_tvm_native.so" ] \
    || die "$FL is incomplete: run 'bash scripts/gpu_first_light.sh prepare' here and carry $FL"
  export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
  if [ "${FIRST_LIGHT_KIT:-1}" = 0 ]; then  # a rehearsal whose python3 already has TVM
    export TVM_USE_RUNTIME_LIB=1
  else
    # shellcheck disable=SC1091
    source "$FL/devkit/activate.sh" || die "the TVM kit did not install"
  fi
  CUDART_DIR=$(find_cudart)
  [ -n "$CUDART_DIR" ] && export LD_LIBRARY_PATH="$CUDART_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  # The driver's libcuda.so.1, in case the loader cache does not know its mount.
  if ! ldconfig -p 2>/dev/null | grep -q 'libcuda.so.1 '; then
    for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu; do
      [ -e "$d/libcuda.so.1" ] && export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$d" && break
    done
  fi
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  export IOS_TVM_NATIVE_LIB="$ROOT/$FL/libios_tvm_native.so"
  export IOS_TVM_REQUIRE_GPU=1 IOS_TVM_GPU_ARTIFACTS="$ROOT/$FL/cases.tar.xz"
  local cases=$IOS_TVM_GPU_ARTIFACTS
  step info 25 bash -c "$(declare -f info); CUDART_DIR='$CUDART_DIR' info"
  step gpu-tests 150 bash -c "set -o pipefail; python3 -m pytest -p no:cacheprovider -m gpu \
      -rfEs --maxfail=10 \
      tests/test_gpu_runtime.py tests/test_cuda_graph.py 2>&1 | tee '$OUTDIR/gpu_tests.txt'"
  step bench 140 python3 scripts/bench_gpu.py run --dir "$cases" --models "$MODELS" \
    --batches 1 --repeat 10 --warmup 5 --min-ms 30 \
    --variants relax_vm,relax_vm_graph,seq_eager,seq_graph,ios_eager,ios_graph,torch_eager \
    --out "$OUTDIR/bench_gpu.json"
  if command -v compute-sanitizer >/dev/null; then
    step sanitizer 70 bash -c "set -o pipefail; compute-sanitizer --tool memcheck --error-exitcode 3 \
        python3 scripts/bench_gpu.py check --dir '$cases' --models sample --plans ios \
        --runs 2 2>&1 | tee '$OUTDIR/sanitizer.txt'"
  else
    echo "compute-sanitizer not found: memcheck skipped" | tee "$OUTDIR/sanitizer.txt"
  fi
  step convs 80 python3 scripts/bench_gpu.py convs --dir "$cases" --models "$MODELS" \
    --out "$OUTDIR/convs.json"
  echo
  echo "first light done: exit $FIRST_FAIL; files in $OUTDIR:"
  ls -la "$OUTDIR"
  return "$FIRST_FAIL"
}

case "${1:-}" in
  prepare) prepare ;;
  run) run; exit $? ;;
  *) echo "usage: bash scripts/gpu_first_light.sh prepare|run (see the header)" >&2; exit 2 ;;
esac
