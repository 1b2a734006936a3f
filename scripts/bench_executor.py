#!/usr/bin/env python
"""Benchmark the ios-tvm stage executor against TVM's Relax VM on the CPU.

Three measurements, printed as tables and written as JSON (with the machine, the date and the
command line) under ``benchmarks/results/``:

1. **Overhead per kernel call.** A chain of ``--chain`` tiny elementwise ops on a (1, 16)
   tensor, lowered with FuseOps disabled so that every op stays its own kernel. The executor
   runs the sequential plan; the Relax VM runs the *same* lowered module (the same fused
   kernels, only TVM's dataflow-lowering and finalize passes added), timed by the VM's own
   C++ ``time_evaluator`` loop (the executor's loop is Python, so the comparison favours the
   VM). Reported: median run time / kernel calls, for each, their ratio, and the kernels'
   own time (each kernel timed alone with ``time_evaluator``) so the overhead above the
   kernels can be read off.
2. **Plans on small models.** The sample block, an Inception block, a residual block and a
   transformer layer: the sequential, greedy (wavefront) and IOS plans (IOS searched with the
   measured cost model, i.e. stage latencies profiled on this machine, at most
   ``--max-groups`` groups per stage) against the Relax VM on the same kernels. Medians of
   ``--repeat`` rounds; the variants are measured round-robin so that load drift hits all of
   them alike. Also the peak activation bytes of each plan against the sequential plan.
3. **profile_stage**: the two heaviest independent calls of each model's widest concurrent
   stage timed as 2 groups (2 worker threads) and as 1 group (one after the other).

TVM's untuned CPU kernels are single-threaded (no parallel loops; the script checks the
kernel library for ``TVMBackendParallelLaunch``), so a plan with 2 worker threads on a 2-core
machine uses twice the cores of the sequential plan and of the VM: part of any speed-up
measured here is thread count, not scheduling. The JSON says so too.

Examples
--------
::

    python scripts/bench_executor.py
    python scripts/bench_executor.py --models inception,transformer --repeat 9
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import onnx  # noqa: E402
import onnx_models as om  # noqa: E402
import tvm  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402
from tvm import relax  # noqa: E402

from ios_tvm.bench.timing import machine_info  # noqa: E402
from ios_tvm.compiler.extract import Extraction, graph_from_model  # noqa: E402
from ios_tvm.compiler.library import build_kernel_library, weights_of  # noqa: E402
from ios_tvm.compiler.plan_lowering import make_plan  # noqa: E402
from ios_tvm.compiler.profiling import measured_cost  # noqa: E402
from ios_tvm.ir.plan import Plan  # noqa: E402
from ios_tvm.ir.schedule import Schedule  # noqa: E402
from ios_tvm.models import sample_block  # noqa: E402
from ios_tvm.runtime.executor import Executor  # noqa: E402
from ios_tvm.scheduler.config import SearchConfig  # noqa: E402
from ios_tvm.scheduler.search import greedy_schedule, search, sequential_schedule  # noqa: E402

SINGLE_THREAD_NOTE = (
    "TVM's untuned CPU kernels are single-threaded (no parallel loops), so a plan with 2 worker "
    "threads on a 2-core machine uses twice the cores of the sequential plan and of the Relax "
    "VM: part of any speed-up of a concurrent plan measured here is thread count, not "
    "scheduling.")

MODELS: dict[str, Callable[[], onnx.ModelProto]] = {
    "sample": sample_block,
    "inception": om.inception_block,
    "residual": om.residual_block,
    "transformer": om.transformer_layer,
}


# ---------------------------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------------------------
def chain_model(length: int, width: int = 16) -> onnx.ModelProto:
    """``length`` elementwise ops (Tanh, Sigmoid, Neg, Abs, ...) in a chain on (1, width)."""
    ops = ("Tanh", "Sigmoid", "Neg", "Abs")
    nodes = []
    prev = "x"
    for i in range(length):
        out = "y" if i == length - 1 else f"t{i}"
        nodes.append(helper.make_node(ops[i % len(ops)], [prev], [out], name=f"op{i}"))
        prev = out
    graph = helper.make_graph(
        nodes, "elementwise_chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def vm_of(ex: Extraction) -> tuple[Any, Any]:
    """(executable, VM) of the Relax VM on the same fused kernels as the executor: the lowered
    module with only TVM's dataflow-lowering and finalize passes added (as ``ios_tvm.build``
    compares)."""
    target = ex.target
    backend = (relax.backend.cuda.pipeline if target.kind.name == "cuda"
               else relax.backend.cpu_generic.pipeline)
    rest = tvm.transform.Sequential([*backend.dataflow_lower_passes(target),
                                     *backend.finalize_passes(target)])
    exe = tvm.compile(ex.mod, target=target, relax_pipeline=rest)
    return exe, relax.VirtualMachine(exe, tvm.cpu())


def vm_kernel_calls(exe: Any) -> int:
    """Kernel calls per run in the VM bytecode (``call`` instructions of non-builtins)."""
    return sum(1 for line in exe.as_text().splitlines()
               if line.strip().startswith("call") and "vm.builtin." not in line)


def random_inputs(plan: Plan, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(plan.tensors[i].shape).astype(plan.tensors[i].dtype)
            for i in plan.inputs]


def time_batch(fn: Callable[[], Any], min_seconds: float) -> float:
    """Seconds per call of ``fn``, run in a batch lasting at least ``min_seconds``."""
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds or n >= 1 << 20:
            return elapsed / n
        n = max(n * 2, int(n * min_seconds / max(elapsed, 1e-9)) + 1)


def round_robin(variants: dict[str, Callable[[], float]], repeat: int) -> dict[str, list[float]]:
    """Call every variant's timer ``repeat`` times, interleaved; returns the samples."""
    samples: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeat):
        for name, timer in variants.items():
            samples[name].append(timer())
    return samples


def uses_parallel_launch(lib: Any) -> bool:
    """Whether any kernel of the library launches TVM's thread pool."""
    try:
        return "TVMBackendParallelLaunch" in lib.inspect_source("ll")
    except Exception:
        return False


# ---------------------------------------------------------------------------------------------
# 1. overhead per kernel call
# ---------------------------------------------------------------------------------------------
def bench_overhead(length: int, repeat: int, min_seconds: float) -> dict[str, Any]:
    with tvm.transform.PassContext(disabled_pass=["FuseOps"]):
        ex = graph_from_model(chain_model(length))
    lib = build_kernel_library(ex.mod, ex.target)
    plan = make_plan(ex.graph, sequential_schedule(ex.graph), target=str(ex.target))
    e = Executor(plan, lib, weights_of(ex))
    (x,) = random_inputs(plan)
    e.set_input(0, x)
    run = e._run

    exe, vm = vm_of(ex)
    dev = tvm.cpu()
    xt = tvm.runtime.tensor(x, dev)
    vm_calls = vm_kernel_calls(exe)
    timer = vm.time_evaluator("main", dev, number=1, repeat=1,
                              min_repeat_ms=max(1, round(min_seconds * 1e3)))

    out_vm = vm["main"](xt).numpy()
    e.run()
    assert np.array_equal(e.get_output(0).numpy(), out_vm), "executor and VM disagree"

    # The kernels alone: each distinct kernel timed by TVM, times its number of calls.
    args = {c.kernel: c.args for c in plan.calls}
    counts: dict[str, int] = {}
    for c in plan.calls:
        counts[c.kernel] = counts.get(c.kernel, 0) + 1
    bufs = {i: tvm.runtime.tensor(np.zeros(t.shape, t.dtype) + 0.5, dev)
            for i, t in enumerate(plan.tensors)}

    def kernels_alone() -> float:
        total = 0.0
        for k, n in counts.items():
            ev = lib.time_evaluator(k, dev, number=1000, repeat=1)
            total += n * ev(*[bufs[a] for a in args[k]]).mean
        return total

    samples = round_robin({
        "executor": lambda: time_batch(run, min_seconds),
        "relax_vm": lambda: float(timer(xt).mean),
        "kernels_alone": kernels_alone,
    }, repeat)
    med = {k: statistics.median(v) for k, v in samples.items()}
    calls = len(plan.calls)
    return {
        "model": f"chain of {length} elementwise ops on (1, 16), FuseOps disabled",
        "kernel_calls": {"executor": calls, "relax_vm": vm_calls},
        "distinct_kernels": len(counts),
        "median_run_us": {k: v * 1e6 for k, v in med.items()},
        "us_per_call": {k: v * 1e6 / calls for k, v in med.items()},
        "overhead_us_per_call": {k: (med[k] - med["kernels_alone"]) * 1e6 / calls
                                 for k in ("executor", "relax_vm")},
        "executor_vs_vm": med["executor"] / med["relax_vm"],
        "timing": {"executor": "Python loop over Executor.run (inputs set once)",
                   "relax_vm": "VM time_evaluator (C++ loop, input passed per call)",
                   "kernels_alone": "sum over kernels of TVM time_evaluator mean x calls"},
        "samples_us": {k: [s * 1e6 for s in v] for k, v in samples.items()},
    }


# ---------------------------------------------------------------------------------------------
# 2. plans on small models, 3. profile_stage
# ---------------------------------------------------------------------------------------------
def ios_schedule(ex: Extraction, lib: Any, max_groups: int) -> tuple[Schedule, dict[str, Any]]:
    t0 = time.perf_counter()
    cost = measured_cost(ex, max_groups=max_groups, lib=lib)
    result = search(ex.graph, cost, SearchConfig(strategy="concurrent", max_groups=max_groups))
    return result.schedule, {"search_seconds": time.perf_counter() - t0,
                             "stages_measured": cost.measured,
                             "estimated_ms": (result.schedule.cost or 0.0) * 1e3}


def heavy_pair(plan: Plan, ex: Extraction) -> tuple[int, int] | None:
    """Two heaviest calls, in different groups, of the plan's widest stage."""
    stage = max(plan.stages, key=lambda s: len(s.groups))
    if len(stage.groups) < 2:
        return None
    flops = [n.flops for n in ex.graph.nodes]
    best = sorted((max(g, key=lambda c: flops[c]) for g in stage.groups),
                  key=lambda c: flops[c], reverse=True)
    return best[0], best[1]


def bench_model(name: str, model: onnx.ModelProto, repeat: int, min_seconds: float,
                max_groups: int) -> dict[str, Any]:
    ex = graph_from_model(model)
    lib = build_kernel_library(ex.mod, ex.target)
    weights = weights_of(ex)
    ios, search_info = ios_schedule(ex, lib, max_groups)
    schedules = {"sequential": sequential_schedule(ex.graph),
                 "greedy": greedy_schedule(ex.graph, max_streams=max_groups),
                 "ios": ios}
    plans = {k: make_plan(ex.graph, s, target=str(ex.target)) for k, s in schedules.items()}
    executors = {k: Executor(p, lib, weights) for k, p in plans.items()}
    inputs = random_inputs(plans["sequential"])
    for e in executors.values():
        for i, x in enumerate(inputs):
            e.set_input(i, x)
        e.run()
    exe, vm = vm_of(ex)
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(x, dev) for x in inputs]
    want = executors["sequential"].get_output(0).numpy()
    got_vm = vm["main"](*args)
    got_vm = got_vm if isinstance(got_vm, tvm.runtime.Tensor) else got_vm[0]
    np.testing.assert_allclose(got_vm.numpy(), want, rtol=1e-5, atol=1e-5)
    for k, e in executors.items():
        assert np.array_equal(e.get_output(0).numpy(), want), f"{name}: {k} plan differs"
    vm_timer = vm.time_evaluator("main", dev, number=1, repeat=1,
                                 min_repeat_ms=max(1, round(min_seconds * 1e3)))
    timers: dict[str, Callable[[], float]] = {
        k: (lambda e=e: time_batch(e._run, min_seconds)) for k, e in executors.items()}
    timers["relax_vm"] = lambda: float(vm_timer(*args).mean)
    samples = round_robin(timers, repeat)
    med = {k: statistics.median(v) for k, v in samples.items()}
    seq_bytes = plans["sequential"].activation_nbytes
    row: dict[str, Any] = {
        "model": name, "kernels": len(ex.graph.nodes), "vm_kernel_calls": vm_kernel_calls(exe),
        "kernels_use_thread_pool": uses_parallel_launch(lib),
        "median_ms": {k: v * 1e3 for k, v in med.items()},
        "speedup_vs_vm": {k: med["relax_vm"] / v for k, v in med.items()},
        "speedup_vs_sequential": {k: med["sequential"] / v for k, v in med.items()},
        "activation_bytes": {k: p.activation_nbytes for k, p in plans.items()},
        "activation_vs_sequential": {k: p.activation_nbytes / seq_bytes
                                     for k, p in plans.items()},
        "num_streams": {k: p.num_streams for k, p in plans.items()},
        "schedules": {k: s.summary() for k, s in schedules.items()},
        "ios_stages": [[list(g) for g in s.groups] for s in ios.stages],
        "ios_search": search_info,
        "samples_ms": {k: [s * 1e3 for s in v] for k, v in samples.items()},
    }
    # 3. profile_stage: two independent heavy calls as 2 groups vs 1 group.
    prof_plan = plans["greedy"] if plans["greedy"].num_streams > 1 else plans["ios"]
    pair = heavy_pair(prof_plan, ex)
    if pair is not None:
        pe = Executor(prof_plan, lib, weights)
        a, b = pair
        number = max(1, int(min_seconds / max(med["sequential"], 1e-6)))
        two: list[float] = []
        one: list[float] = []
        for _ in range(repeat):
            two += pe.profile_stage([[a], [b]], warmup=1, number=number, repeat=1)
            one += pe.profile_stage([[a, b]], warmup=1, number=number, repeat=1)
        row["profile_stage"] = {
            "calls": [ex.graph.nodes[a].name, ex.graph.nodes[b].name],
            "two_groups_us": statistics.median(two) * 1e6,
            "one_group_us": statistics.median(one) * 1e6,
            "two_over_one": statistics.median(two) / statistics.median(one)}
    return row


def parallel_capacity(nbytes: int = 64 << 20, rounds: int = 3) -> dict[str, float]:
    """How much two threads really get here: the same work (SHA-256 of a buffer; hashlib
    releases the GIL) on one thread and split over two. 2.0 = two free cores; about 1.0 = the
    machine is busy (or one core), so no concurrent plan can gain."""
    import hashlib
    import threading

    data = os.urandom(nbytes // 2)

    def work() -> None:
        hashlib.sha256(data).digest()

    def one() -> float:
        t0 = time.perf_counter()
        work()
        work()
        return time.perf_counter() - t0

    def two() -> float:
        threads = [threading.Thread(target=work) for _ in range(2)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - t0

    t1 = statistics.median(one() for _ in range(rounds))
    t2 = statistics.median(two() for _ in range(rounds))
    return {"one_thread_s": t1, "two_threads_s": t2, "speedup": t1 / t2}


# ---------------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------------

def print_tables(overhead: dict[str, Any] | None, rows: Sequence[dict[str, Any]]) -> None:
    if overhead is not None:
        print(f"\nOverhead per kernel call: {overhead['model']}")
        print(f"{'':14}{'run (us)':>10}{'us/call':>10}{'above kernels':>15}")
        for k in ("executor", "relax_vm", "kernels_alone"):
            above = overhead["overhead_us_per_call"].get(k)
            print(f"{k:14}{overhead['median_run_us'][k]:10.1f}{overhead['us_per_call'][k]:10.3f}"
                  + (f"{above:15.3f}" if above is not None else f"{'':15}"))
        print(f"executor / VM = {overhead['executor_vs_vm']:.2f} "
              f"({overhead['kernel_calls']['executor']} kernel calls each)")
    if rows:
        print("\nMedian latency (ms); speed-up vs the Relax VM on the same kernels; "
              "activation bytes vs sequential")
        head = (f"{'model':12}{'kernels':>8}{'VM':>9}{'seq':>9}{'greedy':>9}{'ios':>9}"
                f"{'seq/VM':>8}{'grdy/VM':>8}{'ios/VM':>8}{'streams':>9}{'mem grdy':>9}"
                f"{'mem ios':>8}")
        print(head)
        for r in rows:
            m, s, a = r["median_ms"], r["speedup_vs_vm"], r["activation_vs_sequential"]
            streams = f"{r['num_streams']['greedy']}/{r['num_streams']['ios']}"
            print(f"{r['model']:12}{r['kernels']:8d}{m['relax_vm']:9.3f}{m['sequential']:9.3f}"
                  f"{m['greedy']:9.3f}{m['ios']:9.3f}{s['sequential']:8.2f}{s['greedy']:8.2f}"
                  f"{s['ios']:8.2f}{streams:>9}{a['greedy']:9.2f}{a['ios']:8.2f}")
        print("(speed-up columns: VM time / plan time, >1 = faster than the VM; streams = "
              "worker threads of the greedy/ios plans)")
        prof = [r for r in rows if "profile_stage" in r]
        if prof:
            print("\nprofile_stage: two independent heavy calls as 2 groups vs 1 group (us)")
            for r in prof:
                p = r["profile_stage"]
                print(f"{r['model']:12}{p['two_groups_us']:10.1f}{p['one_group_us']:10.1f}"
                      f"   2 groups / 1 group = {p['two_over_one']:.2f}")
    print(f"\nNOTE: {SINGLE_THREAD_NOTE}")


def default_out() -> Path:
    date = _dt.date.today().isoformat()
    host = re.sub(r"[^A-Za-z0-9-]+", "-", platform.node().split(".")[0])[:24].strip("-")
    return ROOT / "benchmarks" / "results" / f"executor-{date}-{host or 'host'}.json"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS),
                    help=f"comma-separated, from {', '.join(MODELS)} (empty: none)")
    ap.add_argument("--chain", type=int, default=200,
                    help="ops in the overhead benchmark's chain (0 skips it)")
    ap.add_argument("--repeat", type=int, default=11, help="rounds per measurement")
    ap.add_argument("--min-ms", type=float, default=20.0,
                    help="each sample runs at least this long")
    ap.add_argument("--max-groups", type=int, default=os.cpu_count() or 2,
                    help="most groups per stage for the IOS search and the greedy plan")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON output (default benchmarks/results/executor-<date>-<host>.json)")
    args = ap.parse_args(argv)
    names = [n for n in args.models.split(",") if n]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    min_s = args.min_ms / 1e3
    t0 = time.perf_counter()
    machine = machine_info()
    capacity_start = parallel_capacity()
    print(f"parallel capacity (2 threads vs 1, ideal 2.0): {capacity_start['speedup']:.2f}; "
          f"load average {machine.get('load_average')}", flush=True)
    overhead = None
    if args.chain > 0:
        print(f"overhead: chain of {args.chain} ops ...", flush=True)
        overhead = bench_overhead(args.chain, args.repeat, min_s)
    rows = []
    for name in names:
        print(f"{name} ...", flush=True)
        rows.append(bench_model(name, MODELS[name](), args.repeat, min_s, args.max_groups))
    capacity_end = parallel_capacity()
    print_tables(overhead, rows)
    print(f"parallel capacity (2 threads vs 1, ideal 2.0): {capacity_start['speedup']:.2f} at "
          f"the start, {capacity_end['speedup']:.2f} at the end")
    doc = {
        "format": "ios_tvm.bench_executor", "version": 1,
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "command": [Path(sys.executable).name, *sys.argv],
        "machine": machine,
        "parallel_capacity": {"start": capacity_start, "end": capacity_end,
                              "what": " ".join(parallel_capacity.__doc__.split())},
        "note": SINGLE_THREAD_NOTE,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "seconds": time.perf_counter() - t0,
        "overhead": overhead,
        "models": rows,
    }
    with contextlib.suppress(OSError):
        doc["machine"]["load_average_at_end"] = list(os.getloadavg())
    out = args.out or default_out()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
