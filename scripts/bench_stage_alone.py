#!/usr/bin/env python
"""Why a concurrent stage timed alone differs from the same stage in its plan (issue 18).

The search times every stage alone on a *profiling* artifact (no memory reuse, one stream
per possible group); the plan runs it on its *own* artifact (memory planned, as many streams
as its widest stage), between other stages. For the multi-group stages of a model's greedy
plan, this times each stage, in interleaved rounds (order rotated), on:

* ``profiling``: the search's artifact (:func:`ios_tvm.compiler.profiling.profiling_artifact`);
* ``plan``: the plan's artifact, ``profile_stage`` (alone, repeated);
* ``plan_no_reuse``: the plan lowered without memory reuse (its streams);
* ``plan_8_streams``: the plan lowered with ``min_streams=8`` (memory reused);
* ``plan_no_share``: the plan's artifact with ``IOS_TVM_THREAD_SHARE=0`` (TVM's own thread
  pools: every group's kernels on all cores);
* ``in_plan``: the stage inside whole runs of the plan (``profile_run``).

``--variance N``: instead, how much the *same* stage's timing moves over time on the
profiling artifact: the first multi-group stage of the greedy plan, one of its kernels alone,
two of its kernels chained in one group, the same two as two groups, and the whole stage,
interleaved in N rounds a second apart.

Usage::

    flock -x /tmp/measure.lock .venv/bin/python scripts/bench_stage_alone.py \\
        --models sample,inception_v3 [--rounds 7] [--stages 4] [-o FILE]

Writes ``benchmarks/results/stage-alone-cpu-<date>.json`` (machine, load, command).
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ios_tvm.bench.timing import machine_info, write_result  # noqa: E402
from ios_tvm.compiler.build import load_and_extract  # noqa: E402
from ios_tvm.compiler.inputs import profiling_inputs  # noqa: E402
from ios_tvm.compiler.plan_lowering import lower_schedule  # noqa: E402
from ios_tvm.compiler.profiling import profiling_artifact  # noqa: E402
from ios_tvm.compiler.target import resolve_target  # noqa: E402
from ios_tvm.models import resolve_model  # noqa: E402
from ios_tvm.scheduler.search import greedy_schedule  # noqa: E402


def executor(art: Any, inputs: list[Any], share: bool = True) -> Any:
    """An executor of ``art`` with its inputs set (IOS_TVM_THREAD_SHARE read at creation)."""
    old = os.environ.get("IOS_TVM_THREAD_SHARE")
    if not share:
        os.environ["IOS_TVM_THREAD_SHARE"] = "0"
    try:
        ex = art.executor()
    finally:
        if old is None:
            os.environ.pop("IOS_TVM_THREAD_SHARE", None)
        else:
            os.environ["IOS_TVM_THREAD_SHARE"] = old
    ex.run(*inputs)
    return ex


def run_model(name: str, target: Any, rounds: int, most: int) -> dict[str, Any]:
    extraction, lib = load_and_extract(resolve_model(name), target)
    inputs = profiling_inputs(extraction)
    plan = greedy_schedule(extraction.graph)
    multi = [i for i, s in enumerate(plan.stages) if len(s.groups) > 1][:most]
    exes = {
        "profiling": executor(profiling_artifact(extraction, lib=lib), inputs),
        "plan": executor(lower_schedule(extraction, plan, lib=lib), inputs),
        "plan_no_reuse": executor(lower_schedule(extraction, plan, lib=lib,
                                                 reuse_memory=False), inputs),
        "plan_8_streams": executor(lower_schedule(extraction, plan, lib=lib, min_streams=8),
                                   inputs),
        "plan_no_share": executor(lower_schedule(extraction, plan, lib=lib), inputs,
                                  share=False),
    }
    names = list(exes)
    alone: dict[str, dict[int, list[float]]] = {n: {i: [] for i in multi} for n in names}
    in_plan: dict[int, list[float]] = {i: [] for i in multi}
    for r in range(rounds):
        shift = r % len(names)
        for n in names[shift:] + names[:shift]:
            time.sleep(0.1)
            for i in multi:
                t = exes[n].profile_stage(plan.stages[i].groups, warmup=2, number=6, repeat=6)
                alone[n][i].append(statistics.median(t))
        rows = exes["plan"].profile_run(warmup=1, repeat=5)
        for i in multi:
            in_plan[i].append(statistics.median(row[i] for row in rows))
    stages = []
    for i in multi:
        med = {n: statistics.median(alone[n][i]) * 1e3 for n in names}
        med["in_plan"] = statistics.median(in_plan[i]) * 1e3
        stages.append({"stage": i, "groups": [list(g) for g in plan.stages[i].groups],
                       "median_ms": med,
                       "samples_ms": {n: [x * 1e3 for x in alone[n][i]] for n in names}})
        print(f"{name} stage {i} {[len(g) for g in plan.stages[i].groups]}: "
              + ", ".join(f"{k} {v:.3f}" for k, v in med.items()), flush=True)
    return {"model": name, "kernels": len(extraction.graph.nodes),
            "plan_streams": max(len(s.groups) for s in plan.stages), "stages": stages}


def variance(name: str, target: Any, rounds: int) -> dict[str, Any]:
    """The spread over time of one stage's timing (see the module docstring)."""
    extraction, lib = load_and_extract(resolve_model(name), target)
    inputs = profiling_inputs(extraction)
    plan = greedy_schedule(extraction.graph)
    stage = next(s for s in plan.stages if len(s.groups) > 1)
    a, b = stage.groups[0][0], stage.groups[1][0]
    kinds = {"one": [[a]], "chain": [[a, b]], "two_groups": [[a], [b]],
             "stage": [list(g) for g in stage.groups]}
    ex = executor(profiling_artifact(extraction, lib=lib), inputs)
    samples: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(rounds):
        for k, groups in kinds.items():
            t = ex.profile_stage(groups, warmup=2, number=6, repeat=6)
            samples[k].append(statistics.median(t) * 1e3)
        time.sleep(1.0)
    summary = {k: {"median_ms": statistics.median(v), "min_ms": min(v), "max_ms": max(v),
                   "max_over_min": max(v) / min(v)} for k, v in samples.items()}
    for k, v in summary.items():
        print(f"{name} {k:<10} {kinds[k]}: median {v['median_ms']:.3f} ms, "
              f"{v['min_ms']:.3f}-{v['max_ms']:.3f} ({v['max_over_min']:.2f}x)", flush=True)
    return {"model": name, "stages": kinds, "samples_ms": samples, "summary": summary}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="sample,inception_v3")
    ap.add_argument("--target", default="host")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--stages", type=int, default=4, help="multi-group stages per model")
    ap.add_argument("--variance", type=int, default=0, metavar="N",
                    help="time one stage's spread over N rounds instead (see above)")
    ap.add_argument("-o", "--output", default=None)
    args = ap.parse_args()
    date = datetime.date.today().isoformat()
    kind = "stage-variance" if args.variance else "stage-alone"
    out = Path(args.output or ROOT / "benchmarks" / "results" / f"{kind}-cpu-{date}.json")
    machine = machine_info()
    target = resolve_target(args.target)
    results = [variance(m, target, args.variance) if args.variance
               else run_model(m, target, args.rounds, args.stages)
               for m in args.models.split(",")]
    doc = {"benchmark": "bench_stage_alone", "command": sys.argv, "date": date,
           "machine": machine, "load_after": list(os.getloadavg()),
           "settings": {"rounds": args.variance or args.rounds, "profile_stage": [2, 6, 6]},
           "results": results}
    write_result(out, doc)
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
