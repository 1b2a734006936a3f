#!/usr/bin/env python
"""Honest CPU baselines (issue 7): the same models under three kinds of kernels, in one table.

For each model (``sample``: the IOS sample block; ``squeezenet`` and others when
:mod:`ios_tvm.models` has them, skipped otherwise):

* **ONNX Runtime** (default CPU provider, all cores), the reference.
* **tvm.compile**: TVM's own default llvm build (its CPU pipeline fuses nothing and schedules
  nothing), run by the Relax VM.
* Three kernel variants, each built with :func:`ios_tvm.build` (measured stage costs, a
  temporary measurement cache) and timed as the Relax VM, the sequential plan and the IOS plan
  on the *same* kernels:

  - ``unscheduled``: TVM's fused kernels as FuseTIR leaves them (``cpu_schedule=False``);
  - ``default``: ios-tvm's default CPU schedules (:mod:`ios_tvm.compiler.kernel_schedules`);
  - ``tuned``: a MetaSchedule database (:func:`ios_tvm.compiler.tune.tune`, ``--trials`` per model,
    kept under ``--database-root`` so a later run resumes and adds trials), default schedules
    for kernels it lacks.

Every plan's output is checked against ONNX Runtime. Whole runs are timed round-robin
(``--rounds`` rounds, each runner at least ``--min-ms`` per round; medians), so load drift on
a shared machine hits all variants alike. ``shipped`` is what :func:`ios_tvm.build` would ship
(IOS only if at least 3% faster than sequential). A concurrency probe times two independent
convs of the sample block alone, back to back and concurrently, with the executor's per-group
kernel threads on and off (``IOS_TVM_THREAD_SHARE``).

The table is printed; JSON (machine, load averages, command line, settings, every sample)
goes to ``benchmarks/results/cpu-<date>.json``.

Examples
--------
::

    python scripts/bench_cpu.py                       # sample + squeezenet, 48 trials each
    python scripts/bench_cpu.py --models sample --trials 128 --rounds 9
    python scripts/bench_cpu.py --no-tune             # skip the tuned variant
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ios_tvm.runtime.executor import default_cpu_threads  # noqa: E402

THREADS = default_cpu_threads()

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import tvm  # noqa: E402
from tvm import relax  # noqa: E402

from ios_tvm import models as zoo  # noqa: E402
from ios_tvm.bench.timing import machine_info, time_rounds  # noqa: E402
from ios_tvm.compiler.build import build  # noqa: E402
from ios_tvm.compiler.extract import graph_from_model  # noqa: E402
from ios_tvm.compiler.frontend import load_model  # noqa: E402
from ios_tvm.compiler.kernel_schedules import schedule_report  # noqa: E402
from ios_tvm.compiler.library import build_kernel_library  # noqa: E402
from ios_tvm.compiler.plan_lowering import lower_schedule as lower  # noqa: E402
from ios_tvm.compiler.target import host_target, resolve_target  # noqa: E402
from ios_tvm.cost.base import ProfileSettings  # noqa: E402
from ios_tvm.scheduler.search import sequential_schedule  # noqa: E402

VARIANTS = ("unscheduled", "default", "tuned")
MARGIN = 0.03


def _models(names: Sequence[str]) -> dict[str, onnx.ModelProto]:
    out = {}
    for name in names:
        builder = zoo.BUILTIN_MODELS.get(name)
        if builder is None:
            print(f"skipping {name}: not in ios_tvm.models ({', '.join(zoo.BUILTIN_MODELS)})")
            continue
        out[name] = builder()
    return out


def _ort(model: onnx.ModelProto, x: np.ndarray) -> tuple[Callable[[], Any], np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x}
    return (lambda: sess.run(None, feed)), sess.run(None, feed)[0]


def _vm(exe: Any, x: np.ndarray, func: str = "main") -> tuple[Callable[[], Any], np.ndarray]:
    vm = relax.VirtualMachine(exe, tvm.cpu())
    arg = tvm.runtime.tensor(x)
    fn = vm[func]
    return (lambda: fn(arg)), fn(arg).numpy()


def _lowered_vm(mod: tvm.IRModule, target: Any) -> Any:
    backend = relax.backend.cpu_generic.pipeline
    rest = tvm.transform.Sequential([*backend.dataflow_lower_passes(target),
                                     *backend.finalize_passes(target)])
    return tvm.compile(mod, target=target, relax_pipeline=rest)


# -- one model ----------------------------------------------------------------------------------
def bench_model(name: str, model: onnx.ModelProto, args: argparse.Namespace,
                target: dict[str, Any], cache_dir: Path) -> dict[str, Any]:
    tgt = resolve_target(target)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(0).standard_normal(shape).astype("float32")
    runners: dict[str, Callable[[], Any]] = {}
    outputs: dict[str, np.ndarray] = {}
    doc: dict[str, Any] = {"input_shape": shape, "variants": {}}

    runners["onnxruntime"], ref = _ort(model, x)
    t0 = time.perf_counter()
    exe = tvm.compile(load_model(model), target=tgt)
    doc["tvm_compile_seconds"] = time.perf_counter() - t0
    runners["tvm.compile"], outputs["tvm.compile"] = _vm(exe, x)
    variants = [v for v in VARIANTS if not (v == "tuned" and args.no_tune)
                and not (v == "unscheduled" and args.no_unscheduled)]
    for variant in variants:
        info: dict[str, Any] = {}
        database = None
        # TVM's own kernels keep the model's layout; ios-tvm's use --cpu-layout (NHWC).
        layout = None if variant == "unscheduled" else args.cpu_layout
        info["cpu_layout"] = layout
        if variant == "tuned":
            from ios_tvm.compiler.tune import tune

            database = Path(args.database_root) / f"{name}-{target.get('mcpu', 'generic')}"
            t0 = time.perf_counter()
            tuned = tune(model, target, args.trials, database, trials_per_iter=args.trials_per_iter,
                         progress=not args.quiet, model_name=name, cpu_layout=layout)
            info["tuning"] = {"database": str(database), "budget": tuned.budget,
                              "trials_run_now": tuned.trials_run,
                              "seconds_now": time.perf_counter() - t0,
                              "kernels": len(tuned.tasks),
                              "records": sum(t.trials_after for t in tuned.tasks)}
        cost = args.unscheduled_cost if variant == "unscheduled" else "measured"
        settings = ProfileSettings(1, 2, 3) if variant == "unscheduled" else ProfileSettings()
        t0 = time.perf_counter()
        # margin=-inf: ship the searched plan whatever it measures (this script times both).
        result = build(model, target, cost=cost, cache=str(cache_dir / f"{name}.sqlite"),
                       settings=settings, margin=-1e9, compare_vm=False, progress=False,
                       database=database, cpu_schedule=variant != "unscheduled",
                       cpu_layout=layout)
        info["build_seconds"] = time.perf_counter() - t0
        info["kernel_schedules"] = result.kernel_schedules
        info["schedule"] = result.schedule.summary()
        info["search"] = result.search_stats.to_json()
        info["stages_measured"] = result.stages_measured
        info["cost"] = cost
        # The same kernels again, for the sequential plan and the Relax VM.
        ex = graph_from_model(model, target, cpu_schedule=variant != "unscheduled",
                              database=database, cpu_layout=layout)
        lib = build_kernel_library(ex.mod, ex.target)
        report = schedule_report(ex.mod)
        info["kernels"] = len(ex.graph.nodes)
        info["schedule_report"] = report.counts if report else {}
        ios = lower(ex, result.schedule, lib=lib).executor()
        seq = lower(ex, sequential_schedule(ex.graph), lib=lib).executor()
        runners[f"{variant}/relax_vm"], outputs[f"{variant}/relax_vm"] = _vm(
            _lowered_vm(ex.mod, ex.target), x, ex.func_name)
        for plan, executor in (("sequential", seq), ("ios", ios)):
            key = f"{variant}/{plan}"
            outputs[key] = executor(x)[0]
            runners[key] = executor._run
        doc["variants"][variant] = info
    doc["max_abs_err_vs_onnxruntime"] = {
        k: float(np.max(np.abs(v - ref))) for k, v in outputs.items()}
    bad = {k: e for k, e in doc["max_abs_err_vs_onnxruntime"].items()
           if e > 1e-3 * max(1.0, float(np.max(np.abs(ref))))}
    if bad:
        print(f"WARNING {name}: outputs differ from ONNX Runtime: {bad}")
    doc["load_average_before_timing"] = list(os.getloadavg())
    samples = time_rounds(runners, args.rounds, args.min_ms)
    doc["samples_s"] = samples
    doc["median_ms"] = {k: statistics.median(v) * 1e3 for k, v in samples.items()}
    doc["load_average_after_timing"] = list(os.getloadavg())
    med = doc["median_ms"]
    for variant in variants:
        seq_ms, ios_ms = med[f"{variant}/sequential"], med[f"{variant}/ios"]
        shipped = "ios" if ios_ms <= seq_ms * (1 - MARGIN) else "sequential"
        doc["variants"][variant]["shipped"] = shipped
        doc["variants"][variant]["shipped_ms"] = min(seq_ms, ios_ms) if shipped == "ios" \
            else seq_ms
    return doc


def print_table(results: dict[str, dict[str, Any]]) -> None:
    print()
    head = (f"{'model':<11} {'kernels':<12} {'relax_vm':>9} {'sequential':>10} {'ios':>9} "
            f"{'ios/seq':>7} {'shipped':>9} {'/ORT':>6}  schedules")
    print(head)
    print("-" * len(head))
    for name, doc in results.items():
        med = doc["median_ms"]
        ort = med["onnxruntime"]
        print(f"{name:<11} {'onnxruntime':<12} {'':>9} {'':>10} {'':>9} {'':>7} "
              f"{ort:>9.3f} {1.0:>6.2f}")
        print(f"{name:<11} {'tvm.compile':<12} {med['tvm.compile']:>9.3f} {'':>10} {'':>9} "
              f"{'':>7} {med['tvm.compile']:>9.3f} {med['tvm.compile'] / ort:>6.2f}  "
              "TVM default pipeline (no fusion, no schedules)")
        for variant, info in doc["variants"].items():
            vm, seq, ios = (med[f"{variant}/{k}"] for k in ("relax_vm", "sequential", "ios"))
            counts = ", ".join(f"{n} {k}" for k, n in sorted(info["schedule_report"].items()))
            print(f"{name:<11} {variant:<12} {vm:>9.3f} {seq:>10.3f} {ios:>9.3f} "
                  f"{seq / ios:>6.2f}x {info['shipped_ms']:>9.3f} "
                  f"{info['shipped_ms'] / ort:>6.2f}  {counts}")
    print("(median ms per run; ios/seq > 1: the IOS plan is faster; /ORT: shipped plan vs "
          "ONNX Runtime)")


# -- concurrency probe --------------------------------------------------------------------------
def concurrency_probe(target: dict[str, Any], rounds: int, min_ms: float) -> dict[str, Any]:
    """Two independent convs of the sample block: alone, back to back, concurrently; with the
    executor's per-group kernel threads (share) on and off."""
    from ios_tvm.compiler.profiling import profiling_artifact

    ex = graph_from_model(zoo.sample_block(), target)
    convs = [i for i, n in enumerate(ex.graph.nodes) if ex.graph.inputs[0] in n.inputs][:2]
    a, b = convs
    art = profiling_artifact(ex, max_groups=2)
    out: dict[str, Any] = {"kernel": ex.graph.nodes[a].kernel, "threads": THREADS}
    executors = {}
    for share in ("1", "0"):
        os.environ["IOS_TVM_THREAD_SHARE"] = share
        executors[share] = art.executor()  # reads IOS_TVM_THREAD_SHARE when created
    os.environ.pop("IOS_TVM_THREAD_SHARE", None)
    stages = {"a alone": [[a]], "a;b back to back": [[a, b]], "a|b concurrent": [[a], [b]]}
    runners = {}
    for share, e in executors.items():
        for label, groups in stages.items():
            runners[f"share={share} {label}"] = (
                lambda e=e, g=groups: e.profile_stage(g, warmup=0, number=1, repeat=1))
    samples = time_rounds(runners, rounds, min_ms)
    out["median_ms"] = {k: statistics.median(v) * 1e3 for k, v in samples.items()}
    return out


def default_out() -> Path:
    day = _dt.date.today().isoformat()
    return ROOT / "benchmarks" / "results" / f"cpu-{day}.json"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["sample", "squeezenet"])
    ap.add_argument("--target", help="target JSON (default: llvm with this CPU's mcpu)")
    ap.add_argument("--trials", type=int, default=48, help="tuning budget per model (default 48)")
    ap.add_argument("--trials-per-iter", type=int, default=8)
    ap.add_argument("--database-root", default=str(ROOT / "benchmarks" / "tuning"),
                    help="tuning databases, one per model and CPU (resumed when present)")
    ap.add_argument("--cpu-layout", choices=("NHWC", "NCHW"), default="NHWC",
                    help="conv layout of the default and tuned variants (default NHWC)")
    ap.add_argument("--no-tune", action="store_true", help="skip the tuned variant")
    ap.add_argument("--no-unscheduled", action="store_true", help="skip the unscheduled variant")
    ap.add_argument("--unscheduled-cost", choices=("analytic", "measured"), default="analytic",
                    help="search cost for unscheduled kernels (measuring their stages is slow)")
    ap.add_argument("--rounds", type=int, default=7, help="whole-run timing rounds")
    ap.add_argument("--min-ms", type=float, default=100.0, help="time per runner per round")
    ap.add_argument("--no-probe", action="store_true", help="skip the concurrency probe")
    ap.add_argument("-q", "--quiet", action="store_true")
    ap.add_argument("-o", "--out", type=Path, default=default_out())
    args = ap.parse_args(argv)
    target = json.loads(args.target) if args.target else host_target()
    machine = machine_info()
    print(f"target {json.dumps(target)}; {machine.get('cpu')} x{machine['affinity']}, "
          f"TVM_NUM_THREADS={machine['TVM_NUM_THREADS']}, load {machine['load_average']}")
    results: dict[str, Any] = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in _models(args.models).items():
            print(f"== {name}", flush=True)
            results[name] = bench_model(name, model, args, target, Path(tmp))
            print_table({name: results[name]})
    probe = None if args.no_probe else concurrency_probe(target, args.rounds, args.min_ms)
    print_table(results)
    if probe:
        print("\nconcurrency probe (sample block conv, median ms):")
        for k, v in probe["median_ms"].items():
            print(f"  {k:<34} {v:8.3f}")
    machine["load_average_at_end"] = list(os.getloadavg())
    doc = {"benchmark": "cpu", "command": [sys.executable, *sys.argv], "target": target,
           "machine": machine, "settings": vars(args) | {"out": str(args.out)},
           "seconds": time.perf_counter() - t0, "models": results, "concurrency_probe": probe}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_name(args.out.name + ".tmp")
    tmp_out.write_text(json.dumps(doc, indent=1, default=str))
    tmp_out.replace(args.out)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
