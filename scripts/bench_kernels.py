"""Kernel-level CPU benchmark (issue 16): every distinct conv/matmul of the zoo, ios-tvm vs ORT.

For each distinct convolution (or Gemm/MatMul) shape of the built-in models, one single-operator
ONNX model (the op with its bias and ReLU, as the zoo fuses them) is

* lowered by ios-tvm exactly as ``ios_tvm.build`` lowers a model (``lower_to_kernels`` with the
  default CPU layout and schedules); the fused kernel that holds the op is compiled alone and
  timed with TVM's ``time_evaluator`` (the layout transforms at the single-op graph's edges are
  other kernels and are not timed: inside a model they are not there);
* run by ONNX Runtime (default session options, ``intra_op_num_threads`` = the cores used),
  whose time includes its session overhead and the NCHWc reorders it inserts around a lone
  conv, which favours ios-tvm slightly on small kernels.

The two are timed interleaved in paired rounds; the ratio is the median of per-round ratios.
Before each timed turn the process sleeps ``--pause-ms`` and runs the op once untimed: thread
pools keep spinning after a run (ORT's and TVM's), and with 2 threads a pool spinning in the
same process took a core from the next op; TVM splits a parallel loop statically, so its
kernels then waited for the taken core (measured: 1.5-6.7x slower than with the pause).

``--onednn PREFIX`` adds oneDNN (the conv alone, ``scripts/onednn_conv.cc`` compiled against
``PREFIX/include`` and ``PREFIX/lib``) as a third column, the baseline of the library-kernel
route. The pip ``onednn`` wheel is a SYCL build: run with its libraries (and those of
``intel-sycl-rt``, ``tbb``, ``intel-opencl-rt``, ...) on ``LD_LIBRARY_PATH`` and
``OCL_ICD_FILENAMES`` naming ``libintelocl.so``, or its CPU engine finds no device.
Each row reports GFLOP/s (2 FLOPs per multiply-add, bias and ReLU not counted) and the fraction
of this machine's peak, measured with a small C FMA loop (``--peak``: gcc, AVX2 and AVX-512
variants, one thread and all threads).

    python scripts/bench_kernels.py                      # the 40 hottest shapes by zoo FLOPs
    python scripts/bench_kernels.py --top 0              # every distinct shape
    python scripts/bench_kernels.py --models squeezenet --top 5 --rounds 3

Writes ``benchmarks/results/kernels-cpu-<date>.json`` (``-o`` to change).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

PEAK_C = r"""
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
/* 12 independent FMA chains per thread: enough to cover the FMA latency x pipes of any
   current x86 core, so the loop runs at the FMA units' throughput. */
static long ITERS; static int WIDTH;
__attribute__((target("avx2,fma"))) static float run256(long n) {
  __m256 a[12]; __m256 b = _mm256_set1_ps(1.0000001f), c = _mm256_set1_ps(1e-7f);
  for (int i = 0; i < 12; i++) a[i] = _mm256_set1_ps((float)i);
  for (long k = 0; k < n; k++) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; i++) a[i] = _mm256_fmadd_ps(a[i], b, c);
  }
  __m256 s = a[0]; for (int i = 1; i < 12; i++) s = _mm256_add_ps(s, a[i]);
  float o[8]; _mm256_storeu_ps(o, s); return o[0];
}
__attribute__((target("avx512f"))) static float run512(long n) {
  __m512 a[12]; __m512 b = _mm512_set1_ps(1.0000001f), c = _mm512_set1_ps(1e-7f);
  for (int i = 0; i < 12; i++) a[i] = _mm512_set1_ps((float)i);
  for (long k = 0; k < n; k++) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; i++) a[i] = _mm512_fmadd_ps(a[i], b, c);
  }
  __m512 s = a[0]; for (int i = 1; i < 12; i++) s = _mm512_add_ps(s, a[i]);
  return _mm512_reduce_add_ps(s);
}
static void *worker(void *p) {
  volatile float r = WIDTH == 512 ? run512(ITERS) : run256(ITERS); (void)r; (void)p; return NULL;
}
static double now(void) {
  struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec;
}
int main(int argc, char **argv) {
  int threads = atoi(argv[1]); WIDTH = atoi(argv[2]); ITERS = atol(argv[3]);
  pthread_t th[256];
  double t0 = now();
  for (int i = 0; i < threads; i++) pthread_create(&th[i], NULL, worker, NULL);
  for (int i = 0; i < threads; i++) pthread_join(th[i], NULL);
  double dt = now() - t0;
  printf("%.3f\n", 2.0 * 12 * (WIDTH / 32) * (double)ITERS * threads / dt / 1e9);
  return 0;
}
"""


# --------------------------------------------------------------------------------------------
# peak
# --------------------------------------------------------------------------------------------
def measure_peak(threads: int, repeats: int = 5) -> dict[str, Any]:
    """Peak fp32 FMA GFLOP/s of one thread and of ``threads`` threads (best of ``repeats``)."""
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    widths = [256] + ([512] if " avx512f" in flags else [])
    out: dict[str, Any] = {"method": "gcc -O2 C loop, 12 independent FMA chains per thread",
                           "gflops": {}}
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "peak.c", Path(tmp) / "peak"
        src.write_text(PEAK_C)
        subprocess.run(["gcc", "-O2", "-pthread", str(src), "-o", str(exe)], check=True)
        for width in widths:
            for n in sorted({1, threads}):
                vals = [float(subprocess.run([str(exe), str(n), str(width), "20000000"],
                                             check=True, capture_output=True,
                                             text=True).stdout) for _ in range(repeats)]
                out["gflops"][f"avx{width}_{n}t"] = max(vals)
    g = out["gflops"]
    out["one_core"] = max(v for k, v in g.items() if k.endswith("_1t"))
    out["all_cores"] = max(v for k, v in g.items() if k.endswith(f"_{threads}t"))
    return out


# --------------------------------------------------------------------------------------------
# shapes
# --------------------------------------------------------------------------------------------
def zoo_shapes(models: list[str]) -> list[dict[str, Any]]:
    """Distinct Conv/Gemm/MatMul shapes of ``models`` with their count and FLOPs."""
    import onnx
    from onnx import shape_inference

    from ios_tvm.models import BUILTIN_MODELS

    shapes: dict[str, dict[str, Any]] = {}
    for name in models:
        proto = shape_inference.infer_shapes(BUILTIN_MODELS[name]())
        known = {}
        for vi in [*proto.graph.input, *proto.graph.value_info, *proto.graph.output]:
            dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
            known[vi.name] = dims
        inits = {i.name: list(i.dims) for i in proto.graph.initializer}
        known.update(inits)
        for node in proto.graph.node:
            if node.op_type not in ("Conv", "Gemm", "MatMul"):
                continue
            a = {x.name: onnx.helper.get_attribute_value(x) for x in node.attribute}
            x, w = known.get(node.input[0]), known.get(node.input[1])
            out = known.get(node.output[0])
            if not x or not w or not out:
                continue
            if node.op_type == "Conv":
                kh, kw = w[2], w[3]
                group = int(a.get("group", 1))
                spec = {"op": "conv2d", "in": x, "weight": w,
                        "strides": list(a.get("strides", [1, 1])),
                        "pads": list(a.get("pads", [0, 0, 0, 0])),
                        "dilations": list(a.get("dilations", [1, 1])), "group": group,
                        "bias": len(node.input) > 2}
                macs = math.prod(out) * (w[1] * kh * kw)
            else:
                spec = {"op": node.op_type.lower(), "in": x, "weight": w,
                        "trans_b": int(a.get("transB", 0)), "bias": len(node.input) > 2}
                macs = math.prod(out) * x[-1]
            # Is the op followed by a ReLU (the zoo fuses one into most convs)?
            consumers = [n for n in proto.graph.node if node.output[0] in n.input]
            spec["relu"] = len(consumers) == 1 and consumers[0].op_type == "Relu"
            spec["out"] = out
            key = json.dumps(spec, sort_keys=True)
            row = shapes.setdefault(key, {"spec": spec, "macs": macs, "count": 0,
                                          "models": {}})
            row["count"] += 1
            row["models"][name] = row["models"].get(name, 0) + 1
    rows = list(shapes.values())
    for r in rows:
        r["zoo_gflop"] = 2 * r["macs"] * r["count"] / 1e9
    rows.sort(key=lambda r: -r["zoo_gflop"])
    return rows


def single_op_model(spec: dict[str, Any], seed: int = 0) -> Any:
    """The op of ``spec`` (with bias and ReLU when the zoo has them) as an ONNX model."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = (rng.standard_normal(spec["weight"]) / math.sqrt(max(np.prod(spec["weight"][1:]), 1))
         ).astype("float32")
    inits = [numpy_helper.from_array(w, "w")]
    ins = ["x", "w"]
    if spec["bias"]:
        nb = spec["weight"][0] if spec["op"] == "conv2d" else spec["out"][-1]
        inits.append(numpy_helper.from_array(rng.standard_normal(nb).astype("float32"), "b"))
        ins.append("b")
    if spec["op"] == "conv2d":
        node = helper.make_node("Conv", ins, ["c"], strides=spec["strides"], pads=spec["pads"],
                                dilations=spec["dilations"], group=spec["group"],
                                kernel_shape=spec["weight"][2:])
    elif spec["op"] == "gemm":
        node = helper.make_node("Gemm", ins, ["c"], transB=spec["trans_b"])
    else:
        node = helper.make_node("MatMul", ins[:2], ["c"])
    nodes = [node, helper.make_node("Relu" if spec["relu"] else "Identity", ["c"], ["y"])]
    graph = helper.make_graph(
        nodes, "op", [helper.make_tensor_value_info("x", TensorProto.FLOAT, spec["in"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, spec["out"])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


# --------------------------------------------------------------------------------------------
# runners
# --------------------------------------------------------------------------------------------
#: ``--baseline``: the default schedules as they were before issue 16 (rules version 3: no
#: weight prepacking, 8 accumulator registers with AVX-512 too, depthwise convs with one vector
#: accumulator per tile, no row limit for inputs 4 KiB apart), timed beside the current ones.
BASELINE = {"PREPACK_WEIGHTS": False, "ACCUMULATOR_REGISTERS_AVX512": 8,
            "DEPTHWISE_ROWS": False, "ALIASED_ROWS": 0}


def tvm_kernel(proto: Any, target: Any, cpu_layout: str,
               settings: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """ios-tvm's fused kernel of the op: ``(timer() -> seconds, info)``.

    ``settings`` override constants of :mod:`ios_tvm.compiler.kernel_schedules` while lowering.
    """
    import tvm

    from ios_tvm.compiler import kernel_schedules
    from ios_tvm.compiler.frontend import load_model
    from ios_tvm.compiler.kernels import KERNEL_INFO_ATTR, lower_to_kernels

    saved = {k: getattr(kernel_schedules, k) for k in settings or {}}
    try:
        for k, v in (settings or {}).items():
            setattr(kernel_schedules, k, v)
        mod = lower_to_kernels(load_model(proto), target, cpu_layout=cpu_layout)
    finally:
        for k, v in saved.items():
            setattr(kernel_schedules, k, v)
    record = json.loads(str(mod.attrs[KERNEL_INFO_ATTR]))["kernels"]
    heavy = [k for k, v in record.items()
             if any(o.startswith(("conv", "matmul", "dense")) for o in v.get("ops", []))]
    if len(heavy) != 1:
        raise RuntimeError(f"expected one conv/matmul kernel, found {heavy}")
    name = heavy[0]
    func = mod[name]
    t0 = time.perf_counter()
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                      target=target).mod
    compile_s = time.perf_counter() - t0
    dev = tvm.cpu(0)
    rng = np.random.default_rng(1)
    args = []
    for p in func.params:
        shape = [int(s) for s in p.shape]  # TVM 0.27: params carry their buffer type
        args.append(tvm.runtime.tensor(rng.standard_normal(shape).astype(str(p.dtype)), dev))
    f = lib["main"]
    f(*args)

    def timer(number: int) -> float:
        ev = lib.time_evaluator("main", dev, number=number, repeat=1)
        return float(ev(*args).results[0])

    return timer, {"kernel": name, "schedule": record[name].get("schedule"),
                   "ops": record[name].get("ops"), "compile_s": compile_s,
                   "arg_shapes": [[int(s) for s in p.shape] for p in func.params]}


def ort_op(proto: Any, threads: int) -> Any:
    """ONNX Runtime on the single-op model: ``timer(number) -> seconds per run``."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(proto.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    shape = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    feed = {"x": np.random.default_rng(2).standard_normal(shape).astype("float32")}
    sess.run(None, feed)

    def timer(number: int) -> float:
        t0 = time.perf_counter()
        for _ in range(number):
            sess.run(None, feed)
        return (time.perf_counter() - t0) / number

    return timer


def onednn_op(spec: dict[str, Any], prefix: str, workdir: str) -> Any:
    """oneDNN running the conv of ``spec``: ``timer(number) -> seconds per run``, or None when
    oneDNN cannot create it (e.g. not a conv)."""
    import ctypes

    lib_path = Path(workdir) / "libonednn_conv.so"
    if not lib_path.exists():
        subprocess.run(["g++", "-O2", "-shared", "-fPIC", "-std=c++17", f"-I{prefix}/include",
                        str(ROOT / "scripts" / "onednn_conv.cc"), "-o", str(lib_path),
                        f"-L{prefix}/lib", "-ldnnl"], check=True)
    lib = ctypes.CDLL(str(lib_path))
    lib.odc_create.restype = ctypes.c_void_p
    lib.odc_run.restype = ctypes.c_double
    lib.odc_run.argtypes = [ctypes.c_void_p, ctypes.c_int]
    if spec["op"] != "conv2d":
        return None
    n, c, h, w = spec["in"]
    o, _, kh, kw = spec["weight"]
    st = spec.get("strides", [1, 1])
    pads = spec.get("pads", [0, 0, 0, 0])
    dil = spec.get("dilations", [1, 1])
    handle = lib.odc_create(n, c, h, w, o, kh, kw, st[0], st[1], pads[0], pads[1], pads[2],
                            pads[3], dil[0], dil[1], spec.get("group", 1), 1)
    if not handle:
        return None
    return lambda number: lib.odc_run(handle, number)


def calibrate(timer: Any, min_s: float) -> int:
    """Runs per timed round so that one round takes about ``min_s``."""
    one = max(timer(1), 1e-6)
    return max(1, int(min_s / one))


def main(argv: list[str] | None = None) -> int:
    from ios_tvm.models import BUILTIN_MODELS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=sorted(BUILTIN_MODELS),
                   choices=sorted(BUILTIN_MODELS))
    p.add_argument("--top", type=int, default=40,
                   help="hottest shapes by total zoo FLOPs (0: all)")
    p.add_argument("--target", default="host")
    p.add_argument("--cpu-layout", default="NHWC", choices=["NHWC", "NCHW"])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--min-ms", type=float, default=30.0, help="per timed round")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for TVM's kernels and ONNX Runtime (default: every core)")
    p.add_argument("--no-peak", action="store_true")
    p.add_argument("--baseline", action="store_true",
                   help=f"also time the pre-issue-16 default schedules ({BASELINE})")
    p.add_argument("--baseline-settings", type=json.loads, default=None, metavar="JSON",
                   help="with --baseline: the kernel_schedules constants of the baseline "
                        "instead, e.g. '{\"DEPTHWISE_ROWS\": false, \"ALIASED_ROWS\": 0}' "
                        "(the rules before version 5)")
    p.add_argument("--pause-ms", type=float, default=200.0,
                   help="sleep before each timed turn, so the last op's pool stops spinning")
    p.add_argument("--onednn", metavar="PREFIX",
                   help="also time oneDNN (headers in PREFIX/include, libdnnl in PREFIX/lib)")
    p.add_argument("-o", "--out")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    baseline = BASELINE if args.baseline_settings is None else dict(args.baseline_settings)

    from ios_tvm.bench.timing import machine_info, write_result
    from ios_tvm.compiler.target import resolve_target

    # TVM's pool defaults to half the hardware threads (one on a 2-core machine): give it every
    # core this process may use, as ios-tvm's executor does, before any kernel runs.
    if args.threads:
        os.environ["TVM_NUM_THREADS"] = str(args.threads)
    from ios_tvm.runtime.executor import default_cpu_threads

    threads = default_cpu_threads()
    target = resolve_target(args.target)
    started = time.time()
    peak = None if args.no_peak else measure_peak(threads)
    if peak:
        print(f"peak fp32 FMA: one core {peak['one_core']:.1f} GFLOP/s, "
              f"{threads} threads {peak['all_cores']:.1f} GFLOP/s  {peak['gflops']}")
    rows = zoo_shapes(args.models)
    total_zoo = sum(r["zoo_gflop"] for r in rows)
    picked = rows if args.top <= 0 else rows[:args.top]
    print(f"{len(rows)} distinct shapes ({total_zoo:.2f} zoo GFLOP), timing {len(picked)} "
          f"({sum(r['zoo_gflop'] for r in picked) / total_zoo:.0%} of the FLOPs)")
    hdr = (f"{'#':>3} {'op':24} {'in':>16} {'k':>5} {'s':>2} {'g':>4} {'MFLOP':>8} "
           f"{'tvm us':>9} {'ort us':>9} {'ratio':>6} {'tvm GF/s':>8} {'ort GF/s':>8} "
           f"{'tvm %pk':>7}")
    print(hdr)
    results = []
    workdir = tempfile.mkdtemp(prefix="ios_tvm_onednn_") if args.onednn else ""
    for i, row in enumerate(picked):
        spec = row["spec"]
        proto = single_op_model(spec)
        entry: dict[str, Any] = {**row}
        try:
            tvm_t, info = tvm_kernel(proto, target, args.cpu_layout)
            base_t = (tvm_kernel(proto, target, args.cpu_layout, baseline)[0]
                      if args.baseline else None)
            ort_t = ort_op(proto, threads)
            n_tvm, n_ort = calibrate(tvm_t, args.min_ms / 1e3), calibrate(ort_t, args.min_ms / 1e3)
            n_base = calibrate(base_t, args.min_ms / 1e3) if base_t else 0
            dnn_t = onednn_op(spec, args.onednn, workdir) if args.onednn else None
            n_dnn = calibrate(dnn_t, args.min_ms / 1e3) if dnn_t else 0
            tv, ov, bv, dv = [], [], [], []

            def turn(timer: Any, number: int) -> float:
                time.sleep(args.pause_ms / 1e3)
                timer(1)  # wakes this op's pool, which slept through the pause
                return timer(number)

            for _ in range(args.rounds):
                tv.append(turn(tvm_t, n_tvm))
                ov.append(turn(ort_t, n_ort))
                if base_t:
                    bv.append(turn(base_t, n_base))
                if dnn_t:
                    dv.append(turn(dnn_t, n_dnn))
        except Exception as e:  # reported in the JSON; one failing shape does not stop the run
            entry["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
            print(f"{i:>3} {spec['op']} {spec['in']} FAILED: {entry['error']}")
            results.append(entry)
            continue
        flop = 2 * row["macs"]
        t_med, o_med = float(np.median(tv)), float(np.median(ov))
        ratio = float(np.median([a / b for a, b in zip(tv, ov, strict=True)]))
        entry.update(info)
        entry.update({"tvm_us": t_med * 1e6, "ort_us": o_med * 1e6, "tvm_samples_us":
                      [x * 1e6 for x in tv], "ort_samples_us": [x * 1e6 for x in ov],
                      "ratio_tvm_over_ort": ratio, "tvm_gflops": flop / t_med / 1e9,
                      "ort_gflops": flop / o_med / 1e9})
        if bv:
            entry["baseline_us"] = float(np.median(bv)) * 1e6
            entry["baseline_samples_us"] = [x * 1e6 for x in bv]
            entry["ratio_baseline_over_ort"] = float(np.median(
                [a / b for a, b in zip(bv, ov, strict=True)]))
            entry["speedup_vs_baseline"] = float(np.median(
                [b / a for a, b in zip(tv, bv, strict=True)]))
        if dv:
            entry["onednn_us"] = float(np.median(dv)) * 1e6
            entry["onednn_samples_us"] = [x * 1e6 for x in dv]
            entry["ratio_onednn_over_ort"] = float(np.median(
                [a / b for a, b in zip(dv, ov, strict=True)]))
        if peak:
            entry["tvm_frac_peak"] = entry["tvm_gflops"] / peak["all_cores"]
            entry["ort_frac_peak"] = entry["ort_gflops"] / peak["all_cores"]
        results.append(entry)
        k = f"{spec['weight'][-2]}x{spec['weight'][-1]}" if spec["op"] == "conv2d" else "-"
        s = spec.get("strides", [1])[0]
        ld = os.getloadavg()[0]
        entry["load1"] = ld
        print(f"{i:>3} {spec['op'] + ' ' + str(spec['weight'][0]):24} "
              f"{'x'.join(map(str, spec['in'][1:])):>16} {k:>5} {s:>2} {spec.get('group', 1):>4} "
              f"{flop / 1e6:>8.1f} {t_med * 1e6:>9.1f} {o_med * 1e6:>9.1f} {ratio:>6.2f} "
              f"{entry['tvm_gflops']:>8.1f} {entry['ort_gflops']:>8.1f} "
              f"{entry.get('tvm_frac_peak', 0) * 100:>6.1f}%"
              + (f"  base/ort {entry['ratio_baseline_over_ort']:.2f}" if bv else "")
              + (f"  onednn/ort {entry['ratio_onednn_over_ort']:.2f}" if dv else ""), flush=True)
    ok = [r for r in results if "ratio_tvm_over_ort" in r]
    summary: dict[str, Any] = {}
    if ok:
        w = np.array([r["zoo_gflop"] for r in ok])
        summary = {
            "shapes_timed": len(ok), "shapes_failed": len(results) - len(ok),
            "geomean_ratio": float(np.exp(np.mean(np.log([r["ratio_tvm_over_ort"] for r in ok])))),
            "flop_weighted_ratio": float(np.exp(np.sum(w * np.log(
                [r["ratio_tvm_over_ort"] for r in ok])) / w.sum())),
            # Zoo time each side would spend on these shapes (count x per-call time).
            "zoo_ms_tvm": float(sum(r["count"] * r["tvm_us"] for r in ok) / 1e3),
            "zoo_ms_ort": float(sum(r["count"] * r["ort_us"] for r in ok) / 1e3),
            "zoo_ms_baseline": (float(sum(r["count"] * r["baseline_us"] for r in ok) / 1e3)
                                if all("baseline_us" in r for r in ok) else None),
            "geomean_onednn_ratio": (float(np.exp(np.mean(np.log(
                [r["ratio_onednn_over_ort"] for r in ok if "ratio_onednn_over_ort" in r]))))
                if any("ratio_onednn_over_ort" in r for r in ok) else None),
            "geomean_baseline_ratio": (float(np.exp(np.mean(np.log(
                [r["ratio_baseline_over_ort"] for r in ok])))) if all(
                    "baseline_us" in r for r in ok) else None),
            "by_kind": {},
        }
        for r in ok:
            sp = r["spec"]
            kind = ("depthwise" if sp.get("group", 1) > 1 and sp["group"] == sp["in"][1] else
                    "grouped" if sp.get("group", 1) > 1 else
                    f"{sp['weight'][-2]}x{sp['weight'][-1]}/s{sp['strides'][0]}"
                    if sp["op"] == "conv2d" else sp["op"])
            d = summary["by_kind"].setdefault(kind, {"n": 0, "tvm_ms": 0.0, "ort_ms": 0.0})
            d["n"] += 1
            d["tvm_ms"] += r["count"] * r["tvm_us"] / 1e3
            d["ort_ms"] += r["count"] * r["ort_us"] / 1e3
        print(f"geomean tvm/ort {summary['geomean_ratio']:.2f}, FLOP-weighted "
              f"{summary['flop_weighted_ratio']:.2f}; zoo time on these shapes: tvm "
              f"{summary['zoo_ms_tvm']:.1f} ms, ort {summary['zoo_ms_ort']:.1f} ms")
        if summary["geomean_onednn_ratio"] is not None:
            print(f"oneDNN geomean /ort {summary['geomean_onednn_ratio']:.2f}")
        if summary["zoo_ms_baseline"] is not None:
            print(f"baseline ({baseline}) geomean /ort {summary['geomean_baseline_ratio']:.2f}, "
                  f"zoo time on these shapes {summary['zoo_ms_baseline']:.1f} ms")
        for kind, d in sorted(summary["by_kind"].items(), key=lambda kv: -kv[1]["tvm_ms"]):
            print(f"  {kind:12} n={d['n']:3}  tvm {d['tvm_ms']:8.1f} ms  ort {d['ort_ms']:8.1f} ms"
                  f"  x{d['tvm_ms'] / d['ort_ms']:.2f}")
    doc = {"benchmark": "ios-tvm kernels vs ONNX Runtime (single ops)",
           "command": [sys.executable, *sys.argv], "settings": vars(args),
           "baseline_constants": baseline if args.baseline else None,
           "target": str(target), "machine": machine_info(), "threads": threads,
           "peak": peak, "distinct_shapes": len(rows), "zoo_gflop": total_zoo,
           "results": results, "summary": summary, "seconds": time.time() - started}
    date = dt.date.today().isoformat()
    tag = f"-{threads}t" if args.threads else ""
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"kernels-cpu-{date}{tag}.json")
    write_result(out, doc)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
