#!/usr/bin/env python
"""Exact vs calibrated pruning bound on one model: plans and their whole runs, paired.

Searches the model with measured costs and the exact bound on a fresh cache, then with the
calibrated bound on a second fresh cache, and times both plans and the sequential one in
paired rounds (order rotated). Reports each search's time and stages measured, each plan's
estimate, and the median per-round ratio calibrated/exact of whole runs.

Usage::

    flock -x /work/wt/measure.lock .venv/bin/python scripts/bench_bound.py \\
        [--model inception_v3] [--rounds 9] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ios_tvm.runtime.executor import default_cpu_threads  # noqa: E402

default_cpu_threads()

from ios_tvm.bench.timing import machine_info, write_result  # noqa: E402
from ios_tvm.compiler.build import load_and_extract  # noqa: E402
from ios_tvm.compiler.inputs import profiling_inputs  # noqa: E402
from ios_tvm.compiler.plan_lowering import lower_schedule  # noqa: E402
from ios_tvm.compiler.profiling import make_stage_cost  # noqa: E402
from ios_tvm.compiler.target import resolve_target  # noqa: E402
from ios_tvm.models import resolve_model  # noqa: E402
from ios_tvm.scheduler.config import SearchConfig  # noqa: E402
from ios_tvm.scheduler.search import search, sequential_schedule  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="inception_v3")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--target", default="host")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    extraction, lib = load_and_extract(resolve_model(args.model), resolve_target(args.target))
    inputs = profiling_inputs(extraction)
    rows: dict[str, Any] = {}
    schedules = {"sequential": sequential_schedule(extraction.graph)}
    for bound in ("exact", "calibrated"):
        cfg = SearchConfig(bound=bound)
        cache = str(Path(tempfile.mkdtemp()) / "m.sqlite")
        cost, measured = make_stage_cost(extraction, "measured", cache=cache,
                                         max_groups=cfg.max_groups, lib=lib, inputs=inputs)
        t = time.perf_counter()
        try:
            result = search(extraction.graph, cost, cfg)
        finally:
            measured.close()
        schedules[bound] = result.schedule
        rows[bound] = {"search_s": time.perf_counter() - t, "measured": measured.measured,
                       "estimate_ms": 1e3 * (result.schedule.cost or 0.0),
                       "stages": len(result.schedule.stages),
                       "concurrent_stages": sum(len(s.groups) > 1
                                                for s in result.schedule.stages),
                       "stats": result.stats.to_json()}
        print(bound, rows[bound], flush=True)
    executors = {}
    for key, sch in schedules.items():
        ex = lower_schedule(extraction, sch, lib=lib).executor()
        ex.run(*inputs)
        executors[key] = ex
    keys = list(executors)
    runs: dict[str, list[float]] = {k: [] for k in keys}
    for r in range(args.rounds):
        shift = r % len(keys)
        for key in keys[shift:] + keys[:shift]:
            time.sleep(0.1)
            rows_ = executors[key].profile_run(warmup=1, repeat=5)
            runs[key].append(statistics.median(row[-1] for row in rows_))
    ratio = [c / e for c, e in zip(runs["calibrated"], runs["exact"], strict=True)]
    doc = {"command": " ".join(sys.argv), "machine": machine_info(), "model": args.model,
           "searches": rows, "runs_ms": {k: [x * 1e3 for x in v] for k, v in runs.items()},
           "median_ms": {k: statistics.median(v) * 1e3 for k, v in runs.items()},
           "calibrated_over_exact_paired": statistics.median(ratio),
           "load_average": list(os.getloadavg())}
    print({k: round(v, 2) for k, v in doc["median_ms"].items()},
          "calibrated/exact paired", round(doc["calibrated_over_exact_paired"], 3), flush=True)
    date = _dt.date.today().isoformat()
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"bound-cpu-{date}-{args.model}.json")
    write_result(out, doc)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
