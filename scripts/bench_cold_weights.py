#!/usr/bin/env python
"""Which way of timing a stage alone predicts it inside a whole run? (issue 18, fidelity)

For each model, the sequential plan of its kernels is timed three ways, in rounds:

* ``inplan``: each stage inside whole runs (the executor's ``profile_run``); the truth;
* ``warm``: each stage alone, over and over (``profile_stage``; its weights stay cached);
* ``cold``: each stage alone, its weights evicted from the caches before each run
  (``profile_stage_cold``: what the measured cost uses when the weights outgrow the
  cores' private caches);
* ``flushN``: each stage alone after writing N MiB of other memory (everything evicted,
  activations too), for comparison.

Prints and writes, per way, the sum of the stages against the whole run and the median
per-stage error against ``inplan``.

Usage::

    flock -x /work/wt/measure.lock .venv/bin/python scripts/bench_cold_weights.py \\
        --models resnet50,squeezenet,inception_v3,sample [--flush-mib 64] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ios_tvm.runtime.executor import default_cpu_threads  # noqa: E402

default_cpu_threads()

import numpy as np  # noqa: E402

from ios_tvm.bench.timing import machine_info, write_result  # noqa: E402
from ios_tvm.compiler.build import load_and_extract  # noqa: E402
from ios_tvm.compiler.inputs import profiling_inputs  # noqa: E402
from ios_tvm.compiler.plan_lowering import lower_schedule  # noqa: E402
from ios_tvm.compiler.profiling import cpu_cache_bytes, use_cold_weights, weight_bytes  # noqa: E402
from ios_tvm.compiler.target import resolve_target  # noqa: E402
from ios_tvm.models import resolve_model  # noqa: E402
from ios_tvm.scheduler.search import sequential_schedule  # noqa: E402


def compare(name: str, *, rounds: int, flush_mib: list[int], target: Any) -> dict[str, Any]:
    """Per way of timing: each stage's median over rounds, their sum and the whole run."""
    extraction, lib = load_and_extract(resolve_model(name), target)
    ex = lower_schedule(extraction, sequential_schedule(extraction.graph), lib=lib).executor()
    ex.run(*profiling_inputs(extraction))  # real values: garbage may hold slow denormals
    stages = [[list(g) for g in s.groups] for s in ex.plan.stages]
    scratch = {m: np.zeros(m << 18, dtype=np.float32) for m in flush_mib}

    def flushed(groups: list[list[int]], mib: int, n: int = 7) -> float:
        out: list[float] = []
        for _ in range(n):
            scratch[mib] += 1.0  # writes every line: evicts what the stage left cached
            out += ex.profile_stage(groups, warmup=0, number=1, repeat=1)
        return statistics.median(out)

    ways: dict[str, list[list[float]]] = {"inplan": [], "warm": [], "cold": []}
    ways.update({f"flush{m}": [] for m in flush_mib})
    runs: list[float] = []
    for _ in range(rounds):
        rows = ex.profile_run(warmup=2, repeat=10)
        ways["inplan"].append([statistics.median(r[i] for r in rows)
                               for i in range(len(stages))])
        runs.append(statistics.median(r[-1] for r in rows))
        ways["warm"].append([statistics.median(ex.profile_stage(g, warmup=2, number=6,
                                                                repeat=6)) for g in stages])
        ways["cold"].append([statistics.median(ex.profile_stage_cold(g, warmup=1, repeat=7))
                             for g in stages])
        for m in flush_mib:
            ways[f"flush{m}"].append([flushed(g, m) for g in stages])
    run = statistics.median(runs)
    inplan = [statistics.median(r[i] for r in ways["inplan"]) for i in range(len(stages))]
    out: dict[str, Any] = {"model": name, "stages": len(stages), "run_ms": run * 1e3,
                           "weight_bytes": weight_bytes(extraction),
                           "cold_by_default": use_cold_weights(extraction), "ways": {}}
    print(f"{name}: whole run {run * 1e3:.2f} ms, weights {weight_bytes(extraction) / 2**20:.1f}"
          f" MiB, cold by default: {out['cold_by_default']}")
    for way, per_round in ways.items():
        per = [statistics.median(r[i] for r in per_round) for i in range(len(stages))]
        err = statistics.median(abs(a - b) / b for a, b in zip(per, inplan, strict=True))
        out["ways"][way] = {"sum_ms": sum(per) * 1e3, "vs_run": (sum(per) - run) / run,
                            "median_stage_error": err, "stage_ms": [x * 1e3 for x in per]}
        print(f"  {way:>8}: sum {sum(per) * 1e3:9.2f} ms  vs run {(sum(per) - run) / run:+6.1%}"
              f"  median |stage - in plan| {err:6.1%}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="resnet50,squeezenet,inception_v3,sample")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--flush-mib", default="64", help="comma-separated MiB (empty: none)")
    ap.add_argument("--target", default="host")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    flush = [int(x) for x in args.flush_mib.split(",") if x.strip()]
    date = _dt.date.today().isoformat()
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"cold-weights-cpu-{date}.json")
    doc: dict[str, Any] = {"command": " ".join(sys.argv), "machine": machine_info(),
                           "cpu_cache_bytes": cpu_cache_bytes(), "settings": vars(args),
                           "models": []}
    target = resolve_target(args.target)
    for name in args.models.split(","):
        doc["models"].append(compare(name, rounds=args.rounds, flush_mib=flush, target=target))
        write_result(out, doc)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
