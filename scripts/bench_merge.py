#!/usr/bin/env python
"""IOS's schedule table on this machine: Sequential / Greedy / Merge / Concurrent / Both.

For each model the five plans of the IOS paper's "different schedules" table (our brief §4.2)
are built from the *same* compiled kernels and timed with the ios-tvm executor:

* **Sequential**: one kernel per stage, in order.
* **Greedy**: IOS's wavefront baseline (every ready kernel in the stage, at most
  ``--max-groups``).
* **Merge** (IOS-Merge): the DP with merge stages only (convs / matmuls sharing an input
  become one kernel; :mod:`ios_tvm.scheduler.merge`).
* **Concurrent** (IOS-Parallel): the DP with concurrent stages only.
* **Both** (IOS-Both): the DP with both.

The DP searches with the measured cost model (every candidate stage timed on this machine by
the executor's ``profile_stage``, merged kernels generated, checked and timed on demand) or,
with ``--cost analytic``, with the roofline model; either way the whole plans are then timed
round-robin (``--rounds`` rounds of at least ``--min-ms`` each; medians), so load drift hits
all variants alike. Every plan's output is compared with the sequential plan's.

Models: ``sample`` (the IOS sample block), ``inception`` (tests/onnx_models' inception
block, 4 branches), and the zoo's ``squeezenet`` and ``inception_v3`` when
:mod:`ios_tvm.models` has them (skipped otherwise). Results are printed as a table and
written as JSON (machine, command line, settings) under ``benchmarks/results/``.

Examples
--------
::

    python scripts/bench_merge.py
    python scripts/bench_merge.py --models squeezenet --cost analytic --rounds 3
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

from ios_tvm.bench.timing import machine_info, time_rounds  # noqa: E402
from ios_tvm.compiler.extract import graph_from_model  # noqa: E402
from ios_tvm.compiler.library import build_kernel_library  # noqa: E402
from ios_tvm.compiler.merge import MergeCompiler  # noqa: E402
from ios_tvm.compiler.plan_lowering import lower_schedule as lower  # noqa: E402
from ios_tvm.compiler.profiling import measured_cost  # noqa: E402
from ios_tvm.cost.analytic import AnalyticCost  # noqa: E402
from ios_tvm.cost.base import ProfileSettings  # noqa: E402
from ios_tvm.cost.cache import MeasurementCache  # noqa: E402
from ios_tvm.scheduler.config import SearchConfig  # noqa: E402
from ios_tvm.scheduler.merge import merge_predicate  # noqa: E402
from ios_tvm.scheduler.search import search  # noqa: E402
from ios_tvm.scheduler.stage_cost import StageCostCache  # noqa: E402

STRATEGIES = ("sequential", "greedy", "merge", "concurrent", "both")
LABELS = {"sequential": "Sequential", "greedy": "Greedy", "merge": "Merge",
          "concurrent": "Concurrent", "both": "Both"}


def _models() -> dict[str, Callable[[], onnx.ModelProto]]:
    import onnx_models as om

    from ios_tvm import models as zoo

    out: dict[str, Callable[[], onnx.ModelProto]] = {
        "sample": zoo.sample_block,
        "inception": lambda: om.inception_block(channels=32, size=17),
    }
    for name in ("squeezenet", "inception_v3"):
        builder = getattr(zoo, "BUILTIN_MODELS", {}).get(name)
        if builder is not None:
            out[name] = builder
    return out



def kernels_parallel(lib: Any) -> bool:
    """Whether the kernel library launches TVM's thread pool (parallel loops)."""
    names = [lib, *getattr(lib, "imports", [])]
    for m in names:
        with contextlib.suppress(Exception):
            if "TVMBackendParallelLaunch" in m.inspect_source("ll"):
                return True
    return False


def bench_model(name: str, model: onnx.ModelProto, args: argparse.Namespace) -> dict[str, Any]:
    """Search the five schedules of one model, lower them, time them, check them."""
    t0 = time.perf_counter()
    ex = graph_from_model(model)
    graph = ex.graph
    lib = build_kernel_library(ex.mod, ex.target)
    t_compile = time.perf_counter() - t0
    merges = MergeCompiler(ex, lib=lib)
    settings = ProfileSettings(args.warmup, args.number, args.repeat)
    measured = None
    if args.cost == "measured":
        cache = MeasurementCache(args.cache) if args.cache else None
        measured = measured_cost(ex, max_groups=args.max_groups, cache=cache, settings=settings,
                                lib=lib, merges=merges)
        base_cost: Any = measured
    else:
        base_cost = AnalyticCost(graph, "cpu")
    cost = StageCostCache(base_cost)
    row: dict[str, Any] = {"model": name, "kernels": len(graph.nodes), "edges": graph.num_edges,
                           "width": graph.width, "cost_model": args.cost,
                           "compile_s": t_compile, "variants": {}}
    artifacts = {}
    for strategy in STRATEGIES:
        cfg = SearchConfig(strategy=strategy, max_groups=args.max_groups,
                           max_group_size=args.max_group_size, max_part_size=args.max_part_size,
                           greedy_max_streams=args.max_groups)
        merging = strategy in ("merge", "both")
        t1 = time.perf_counter()
        res = search(graph, cost, cfg, can_merge=merge_predicate if merging else None)
        t_search = time.perf_counter() - t1
        sch = res.schedule
        t2 = time.perf_counter()
        artifacts[strategy] = lower(ex, sch, lib=lib, merges=merges)
        merged = [s for s in sch.stages if s.strategy == "merge"]
        row["variants"][strategy] = {
            "schedule": sch.summary(), "stages": len(sch.stages),
            "merged_stages": len(merged),
            "merged_kernels": sum(len(s.ops) for s in merged),
            "concurrent_stages": sum(1 for s in sch.stages
                                     if s.strategy == "concurrent" and len(s.groups) > 1),
            "streams": artifacts[strategy].plan.num_streams,
            "estimated_ms": (sch.cost or 0.0) * 1e3, "search_s": t_search,
            "stages_costed": res.stats.stages_costed, "lower_s": time.perf_counter() - t2,
            "schedule_json": sch.to_json()}
        print(f"  {strategy:<10} {sch.summary()}  (search {t_search:.1f} s)", flush=True)
    if measured is not None:
        row["stages_measured"] = measured.measured
        row["stages_from_cache"] = measured.cache_hits
    row["kernels_parallel"] = kernels_parallel(lib)
    # Whole plans, round-robin; outputs checked against the sequential plan.
    shape = graph.tensors[graph.inputs[0]].shape
    x = np.random.default_rng(0).standard_normal(shape).astype("float32")
    executors = {k: a.executor() for k, a in artifacts.items()}
    ref = executors["sequential"](x)
    for k, e in executors.items():
        out = e(x)
        err = max(float(np.abs(a - b).max()) for a, b in zip(out, ref, strict=True))
        scale = max(float(np.abs(r).max()) for r in ref)
        row["variants"][k]["max_abs_diff_vs_sequential"] = err
        if not err <= 1e-3 * max(scale, 1.0):
            raise AssertionError(f"{name}/{k}: output differs from sequential by {err}")
    samples = time_rounds({k: e._run for k, e in executors.items()}, args.rounds, args.min_ms,
                          warmup=1)
    for k, s in samples.items():
        row["variants"][k]["median_ms"] = statistics.median(s) * 1e3
        row["variants"][k]["samples_ms"] = [v * 1e3 for v in s]
    seq = row["variants"]["sequential"]["median_ms"]
    for k in STRATEGIES:
        row["variants"][k]["speedup_vs_sequential"] = seq / row["variants"][k]["median_ms"]
    row["seconds"] = time.perf_counter() - t0
    return row


def print_table(rows: Sequence[dict[str, Any]]) -> None:
    """The schedule table: median ms per variant, speed-up vs sequential, merged stages."""
    print("\nMedian latency (ms) of each plan on the same kernels; (speed-up vs Sequential)")
    head = f"{'model':14}" + "".join(f"{LABELS[k]:>18}" for k in STRATEGIES)
    print(head)
    for r in rows:
        cells = []
        for k in STRATEGIES:
            v = r["variants"][k]
            cells.append(f"{v['median_ms']:9.3f} ({v['speedup_vs_sequential']:.2f}x)")
        print(f"{r['model']:14}" + "".join(f"{c:>18}" for c in cells))
    print("\nStages (merged stages / kernels merged / concurrent stages)")
    print(f"{'model':14}" + "".join(f"{LABELS[k]:>18}" for k in STRATEGIES))
    for r in rows:
        cells = [f"{v['stages']} ({v['merged_stages']}/{v['merged_kernels']}/"
                 f"{v['concurrent_stages']})" for v in (r["variants"][k] for k in STRATEGIES)]
        print(f"{r['model']:14}" + "".join(f"{c:>18}" for c in cells))
    if len(rows) > 1:
        geo = {k: float(np.exp(np.mean([np.log(r["variants"][k]["median_ms"]) for r in rows])))
               for k in STRATEGIES}
        print(f"{'geomean':14}" + "".join(f"{geo[k]:18.3f}" for k in STRATEGIES))


def default_out() -> Path:
    date = _dt.date.today().isoformat()
    host = re.sub(r"[^A-Za-z0-9-]+", "-", platform.node().split(".")[0])[:24].strip("-")
    return ROOT / "benchmarks" / "results" / f"merge-{date}-{host or 'host'}.json"


def main(argv: Sequence[str] | None = None) -> int:
    models = _models()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(models),
                    help=f"comma-separated, from {', '.join(models)}")
    ap.add_argument("--cost", choices=("measured", "analytic"), default="measured",
                    help="stage cost model of the search (default measured here)")
    ap.add_argument("--cache", default=None,
                    help="measurement cache file (default: measure everything afresh)")
    ap.add_argument("--max-groups", type=int, default=os.cpu_count() or 2,
                    help="groups per concurrent stage, IOS s (default: the core count)")
    ap.add_argument("--max-group-size", type=int, default=3, help="ops per group, IOS r")
    ap.add_argument("--max-part-size", type=int, default=40, help="ops per searched part")
    ap.add_argument("--warmup", type=int, default=1, help="stage profiling warm-up runs")
    ap.add_argument("--number", type=int, default=3, help="stage profiling runs per repeat")
    ap.add_argument("--repeat", type=int, default=3, help="stage profiling repeats")
    ap.add_argument("--rounds", type=int, default=7, help="whole-plan timing rounds")
    ap.add_argument("--min-ms", type=float, default=50.0, help="each timing sample lasts this")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON output (default benchmarks/results/merge-<date>-<host>.json)")
    args = ap.parse_args(argv)
    names = [n for n in args.models.split(",") if n]
    skipped = [n for n in names if n not in models]
    for n in skipped:
        print(f"skipping {n}: not available (ios_tvm.models has no such model)")
    t0 = time.perf_counter()
    machine = machine_info()
    out = args.out or default_out()
    out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for name in (n for n in names if n in models):
        print(f"{name} ...", flush=True)
        rows.append(bench_model(name, models[name](), args))
        # Written after every model, so a long run that is cut short keeps what it measured.
        doc = {
            "format": "ios_tvm.bench_merge", "version": 1,
            "date": _dt.datetime.now().isoformat(timespec="seconds"),
            "command": [Path(sys.executable).name, *sys.argv],
            "machine": machine,
            "settings": {k: (str(v) if isinstance(v, Path) else v)
                         for k, v in vars(args).items()},
            "skipped": skipped, "seconds": time.perf_counter() - t0, "models": rows,
        }
        with contextlib.suppress(OSError):
            doc["machine"]["load_average_at_end"] = list(os.getloadavg())
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        tmp.replace(out)
    print_table(rows)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
