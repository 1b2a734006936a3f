#!/usr/bin/env python
"""Benchmark the IOS schedule search on the IOS benchmark networks (no compiler, no device).

For each model of :data:`ios_tvm.models.opgraph.BENCH_GRAPHS` and each search strategy, the
script runs :func:`ios_tvm.scheduler.search.search` with the analytic cost model (merges decided by
:func:`ios_tvm.scheduler.merge.merge_predicate`, as in ``build``) and records the size of
the search (parts, DP states, transitions, distinct stages costed), its wall time, and the cost
of the schedule found against the sequential and greedy baselines under the same model. It
prints a table and writes everything as JSON, with the machine and the command line.

Examples
--------
Default run (r=3, s=8; Inception V3, NasNet, RandWire, SqueezeNet; kernel granularity)::

    python scripts/bench_search.py

IOS's own units and parts (one part per NasNet cell), with the pruning grid::

    python scripts/bench_search.py --granularity ios --max-part-size 40,nasnet_large=21 --grid

Both granularities in one file (the results committed under ``benchmarks/results/``)::

    python scripts/bench_search.py --granularity all --max-part-size 40,nasnet_large:ios=21
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime as _dt
import hashlib
import io
import itertools
import json
import platform
import pstats
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ios_tvm.bench.timing import machine_info  # noqa: E402
from ios_tvm.cost import AnalyticCost  # noqa: E402
from ios_tvm.ir.graph import OpGraph  # noqa: E402
from ios_tvm.ir.schedule import Stage, validate_schedule  # noqa: E402
from ios_tvm.models.opgraph import BENCH_GRAPHS, GRANULARITIES  # noqa: E402
from ios_tvm.scheduler.config import SearchConfig  # noqa: E402
from ios_tvm.scheduler.merge import merge_predicate  # noqa: E402
from ios_tvm.scheduler.native import MAX_NATIVE_OPS, native_search_enabled  # noqa: E402
from ios_tvm.scheduler.partition import cut_widths, partition  # noqa: E402
from ios_tvm.scheduler.search import search  # noqa: E402

DEFAULT_MODELS = ("inception_v3", "nasnet_large", "randwire", "squeezenet")
DEFAULT_STRATEGIES = ("concurrent", "both")
#: Search-time targets (seconds, r=3, s=8) on a 2-core development machine.
TARGET_SECONDS = {"inception_v3": 5.0, "nasnet_large": 60.0}
GRID = [(r, s) for r in (1, 2, 3) for s in (3, 8)]


class SearchTimeout(Exception):
    """A search ran past ``--timeout``."""


class _DeadlineCost:
    """A cost model that raises :class:`SearchTimeout` once its deadline has passed.

    Checked on every call, i.e. once per distinct stage costed. Raising from the cost model
    (rather than from a signal handler) is safe with the native DP, whose callbacks forward
    exceptions; an asynchronous exception that lands inside the FFI glue is not.
    """

    def __init__(self, cost: AnalyticCost, seconds: float) -> None:
        self.cost = cost
        self.deadline = time.perf_counter() + seconds if seconds > 0 else float("inf")
        self.calls = 0

    def __call__(self, stage: Stage) -> float:
        if time.perf_counter() > self.deadline:
            raise SearchTimeout
        self.calls += 1
        return self.cost(stage)


def partition_info(graph: OpGraph, max_part_size: int) -> dict[str, Any]:
    """Sizes, widths and cut widths of the parts the search will use."""
    parts = partition(graph, max_part_size)
    widths = cut_widths(graph)
    return {
        "parts": len(parts),
        "sizes": [hi - lo for lo, hi in parts],
        "widths": [graph.range_width(lo, hi) for lo, hi in parts],
        "cut_widths": [widths[lo] for lo, _ in parts[1:]],
    }



def _parse_part_sizes(text: str) -> tuple[int, dict[str, int]]:
    """``"40"`` or ``"40,nasnet_large:ios=21"`` -> default and overrides.

    An override key is a model name, or ``model:granularity`` for one granularity only.
    """
    default = SearchConfig().max_part_size
    per_model: dict[str, int] = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        if "=" in item:
            name, value = item.split("=", 1)
            per_model[name.strip()] = int(value)
        else:
            default = int(item)
    return default, per_model


def run_one(graph: OpGraph, cost: AnalyticCost, cfg: SearchConfig, timeout: float,
            profile: int, progress: bool, native: bool | None) -> dict[str, Any]:
    """One search; returns its counters, cost and (optionally) a profile excerpt."""
    prof = cProfile.Profile() if profile else None
    row: dict[str, Any] = {}
    t0 = time.perf_counter()
    limited = _DeadlineCost(cost, timeout)
    try:
        if prof is not None:
            prof.enable()
        try:
            result = search(graph, limited, cfg,
                            can_merge=merge_predicate, progress=progress, native=native)
        finally:
            if prof is not None:
                prof.disable()
    except SearchTimeout:
        row.update(timed_out=True, seconds=time.perf_counter() - t0,
                   stages_costed_before_timeout=limited.calls)
    else:
        sched = result.schedule
        # Searched over chains of kernels ("units"), a group holds at most r units, not r
        # kernels.
        max_size = None if "units" in sched.meta else cfg.max_group_size
        validate_schedule(graph, sched, max_groups=cfg.max_groups, max_group_size=max_size)
        row.update(
            timed_out=False, **result.stats.to_json(), cost=sched.cost,
            stages=len(sched.stages),
            concurrent_stages=sum(1 for s in sched.stages
                                  if s.strategy == "concurrent" and len(s.groups) > 1),
            merged_stages=sum(1 for s in sched.stages if s.strategy == "merge"),
            max_groups_used=sched.max_groups,
            # search() falls back to the greedy schedule when that beats the partitioned DP.
            chosen=sched.meta.get("chosen", "dp"),
        )
    if prof is not None:
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(profile)
        row["profile"] = buf.getvalue()
    return row


# -- measured search (--cost measured): where a cold and a warm search spend their time ---------

class _TimedProfiler:
    """Wraps a stage profiler; counts stages, runs and seconds spent measuring."""

    def __init__(self, inner: Any, deadline: float = float("inf")) -> None:
        self.inner = inner
        self.seconds = 0.0
        self.stages = 0
        self.calls = 0
        self.deadline = deadline

    def profile(self, groups: Sequence[Sequence[int]]) -> list[float]:
        if time.perf_counter() > self.deadline:
            raise SearchTimeout
        t = time.perf_counter()
        try:
            return self.inner.profile(groups)
        finally:
            self.seconds += time.perf_counter() - t
            self.stages += 1
            self.calls += 1

    def profile_many(self, stages: Sequence[Sequence[Sequence[int]]]) -> list[list[float]]:
        if time.perf_counter() > self.deadline:  # a batch of stages: the search's prefetch
            raise SearchTimeout
        t = time.perf_counter()
        try:
            many = getattr(self.inner, "profile_many", None)
            if many is None:
                return [self.inner.profile(s) for s in stages]
            return many(stages)
        finally:
            self.seconds += time.perf_counter() - t
            self.stages += len(stages)
            self.calls += 1


def _timed_cache(cache: Any) -> dict[str, float]:
    """Patch ``cache``'s get/put to add their seconds to the returned dict."""
    spent = {"seconds": 0.0}
    for name in ("get", "put"):
        inner = getattr(cache, name)

        def timed(*a: Any, _inner: Any = inner) -> Any:
            t = time.perf_counter()
            try:
                return _inner(*a)
            finally:
                spent["seconds"] += time.perf_counter() - t

        setattr(cache, name, timed)
    return spent


def _zoo_extraction(model: str, lib_dir: Path | None) -> tuple[Any, Any, float, float]:
    """The model lowered as ``build`` lowers it on CPU, its kernel library, and the seconds
    spent lowering and compiling (a library saved in ``lib_dir`` is loaded instead)."""
    import tvm

    from ios_tvm.compiler.extract import graph_from_model
    from ios_tvm.compiler.library import build_kernel_library
    from ios_tvm.compiler.target import resolve_target

    # The kernels users get (this CPU's features, as bench.py and ios-tvm compile build them):
    # the portable "llvm" target has no AVX, and its 2-4x slower stages made measuring slower.
    target = resolve_target("host")
    t0 = time.perf_counter()
    extraction = graph_from_model(model, target, cpu_layout="NHWC")
    lower_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    tag = hashlib.sha256(str(target).encode()).hexdigest()[:8]
    path = lib_dir / f"{model}-{tag}.so" if lib_dir is not None else None
    if path is not None and path.exists():
        lib = tvm.runtime.load_module(str(path))
    else:
        lib = build_kernel_library(extraction.mod, extraction.target)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            lib.export_library(str(path))
    return extraction, lib, lower_s, time.perf_counter() - t1


def measured_run(extraction: Any, lib: Any, cache_path: Path, cfg: SearchConfig,
                 settings: Any, prune: bool, seconds: float = 0.0) -> dict[str, Any]:
    """One measured search on ``cache_path``: counters and where its seconds went.

    With ``seconds`` > 0 measuring stops (``timed_out``) after that long; what was measured
    stays in the cache, so a later run on the same file goes on from there.
    """
    from ios_tvm.compiler.profiling import make_stage_cost
    from ios_tvm.cost.cache import MeasurementCache

    cache = MeasurementCache(cache_path)
    cache_time = _timed_cache(cache)
    t0 = time.perf_counter()
    stage_cost, measured = make_stage_cost(extraction, "measured", cache=cache,
                                           settings=settings, max_groups=cfg.max_groups,
                                           lib=lib, config=cfg)
    assert measured is not None
    setup_s = time.perf_counter() - t0
    timed = _TimedProfiler(measured.profiler,
                           t0 + seconds if seconds > 0 else float("inf"))
    measured.profiler = timed
    t1 = time.perf_counter()
    try:
        result = search(extraction.graph, stage_cost, cfg, prune=prune)
    except SearchTimeout:
        inner = timed.inner
        setup = getattr(inner, "setup_seconds", 0.0)
        cache.close()
        return {"prune": prune, "timed_out": True, "total_s": time.perf_counter() - t0,
                "setup_s": setup_s + setup, "measure_s": timed.seconds - setup,
                "cache_io_s": cache_time["seconds"], "stages_measured": measured.measured,
                "cache_hits": measured.cache_hits, "reused": measured.reused,
                "stage_runs": getattr(inner, "runs", None)}
    search_s = time.perf_counter() - t1
    total_s = time.perf_counter() - t0
    inner = timed.inner
    row = {
        "prune": prune, "timed_out": False, "total_s": total_s, "search_s": search_s,
        "setup_s": setup_s + getattr(inner, "setup_seconds", 0.0),
        "measure_s": timed.seconds - getattr(inner, "setup_seconds", 0.0),
        "cache_io_s": cache_time["seconds"],
        "stages_costed": result.stats.stages_costed, "stages_measured": measured.measured,
        "cache_hits": measured.cache_hits, "reused": measured.reused,
        "profile_calls": timed.calls, "stage_runs": getattr(inner, "runs", None),
        "states": result.stats.states, "parts": result.stats.parts,
        "search_stats": result.stats.to_json(),
        "estimated_ms": 1e3 * (result.schedule.cost or 0.0),
        "schedule": result.schedule.summary(),
        "concurrent_stages": sum(1 for s in result.schedule.stages if len(s.groups) > 1),
    }
    row["dp_and_rest_s"] = (row["search_s"] - row["measure_s"] - row["cache_io_s"]
                            - getattr(inner, "setup_seconds", 0.0))
    cache.close()
    return row


def measured_main(args: argparse.Namespace, models: list[str]) -> list[dict[str, Any]]:
    """Cold and warm measured searches of each model (``--cost measured``)."""
    import os
    import tempfile

    from ios_tvm.cost.base import ProfileSettings

    settings = ProfileSettings()
    rows = []
    for model in models:
        extraction, lib, lower_s, compile_s = _zoo_extraction(model, args.lib_dir)
        from ios_tvm.compiler.profiling import use_cold_weights

        for prune, bound in itertools.product(args.prune, args.bound):
            cfg = SearchConfig(max_groups=args.max_groups, max_group_size=args.max_group_size,
                               bound=bound)
            with contextlib.ExitStack() as stack:
                if args.resume is not None:  # go on measuring into an earlier run's cache
                    tmp = str(args.resume.parent)
                elif args.cache is not None:  # kept, for a look at what was measured
                    args.cache.mkdir(parents=True, exist_ok=True)
                    tmp = tempfile.mkdtemp(prefix=f"{model}-prune{int(prune)}-{bound}-",
                                           dir=args.cache)
                else:
                    tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="ios_search_"))
                path = args.resume if args.resume is not None else Path(tmp) / "m.sqlite"
                row = {"model": model, "kernels": len(extraction.graph.nodes),
                       "width": extraction.graph.width, "lower_s": lower_s,
                       "compile_s": compile_s, "config": cfg.to_json(),
                       "cold_weights": use_cold_weights(extraction)}
                row["load_before"] = list(os.getloadavg())
                row["resumed"] = args.resume is not None
                row["cold"] = measured_run(extraction, lib, path, cfg, settings, prune,
                                           args.seconds)
                if not row["cold"]["timed_out"]:
                    row["warm"] = measured_run(extraction, lib, path, cfg, settings, prune)
                row["load_after"] = list(os.getloadavg())
                row["cache_file"] = str(path) if args.cache is not None else None
            rows.append(row)
            c, w = row["cold"], row.get("warm")
            if w is None:
                print(f"{model} prune={prune} bound={bound}: stopped after "
                      f"{c['total_s']:.1f}s (setup {c['setup_s']:.1f}, measure "
                      f"{c['measure_s']:.1f}); "
                      f"{c['stages_measured']} measured, {c['cache_hits']} from the cache; "
                      f"load {row['load_before']}", flush=True)
                continue
            print(f"{model} prune={prune} bound={bound}: cold {c['total_s']:.1f}s (setup "
                  f"{c['setup_s']:.1f}, measure {c['measure_s']:.1f}, cache "
                  f"{c['cache_io_s']:.2f}, DP+rest "
                  f"{c['dp_and_rest_s']:.1f}; {c['stages_measured']} measured of "
                  f"{c['stages_costed']} costed, {c['stage_runs']} runs), warm "
                  f"{w['total_s']:.2f}s; est {c['estimated_ms']:.1f} ms, "
                  f"{c['concurrent_stages']} concurrent stages; load {row['load_before']}",
                  flush=True)
    return rows


def pruned_count(graph: OpGraph, cost: AnalyticCost, cfg: SearchConfig, cores: int,
                 full: dict[str, Any], native: bool | None) -> dict[str, Any]:
    """How many stages a pruned search costs, with the analytic cost standing in for the
    measured one (``group_bound`` with ``cores``; 0: no per-core term)."""
    from ios_tvm.scheduler.stage_cost import StageCostCache, group_bound

    memo = StageCostCache(cost)
    memo.lower_bound = group_bound(memo, cores or None)
    t = time.perf_counter()
    result = search(graph, memo, cfg, can_merge=merge_predicate, native=native, prune=True)
    return {"cores": cores, "seconds": time.perf_counter() - t,
            "stages_costed": result.stats.stages_costed, "rounds": result.stats.rounds,
            "bound_violations": result.stats.bound_violations,
            "same_cost": abs((result.schedule.cost or 0.0) - full["cost"])
            <= 1e-9 * full["cost"],
            "fraction_of_full": result.stats.stages_costed / full["stages_costed"]}


def _fmt_ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1e3:.3f}"


def _fmt_int(x: Any) -> str:
    return "-" if x is None else f"{x:,}"


def print_table(rows: Sequence[dict[str, Any]]) -> None:
    """Print the results as an aligned text table."""
    head = ["model", "gran", "engine", "strategy", "r", "s", "nodes", "edges", "width", "parts",
            "part n/w", "states", "transitions", "stages costed", "search s", "DP ms",
            "seq ms", "greedy ms", "seq/DP", "greedy/DP", "target"]
    lines = []
    for r in rows:
        dp = r.get("cost")
        seq, greedy = r["sequential_cost"], r["greedy_cost"]
        part = r["partition"]
        target = TARGET_SECONDS.get(r["model"]) if (r["r"], r["s"]) == (3, 8) else None
        if target is None:
            tmark = ""
        elif r["timed_out"]:
            tmark = f"{'MISS' if r['seconds'] >= target else '?'} (<{target:g}s)"
        else:
            tmark = f"{'ok' if r['seconds'] < target else 'MISS'} (<{target:g}s)"
        lines.append([
            r["model"], r["granularity"], r["engine"], r["strategy"], str(r["r"]), str(r["s"]),
            str(r["nodes"]), str(r["edges"]), str(r["width"]), str(part["parts"]),
            f"{max(part['sizes'])}/{max(part['widths'])}",
            _fmt_int(r.get("states")), _fmt_int(r.get("transitions")),
            _fmt_int(r.get("stages_costed")),
            (f">{r['seconds']:.0f} TIMEOUT" if r["timed_out"] else f"{r['seconds']:.2f}"),
            _fmt_ms(dp) + ("*" if r.get("chosen") == "greedy" else ""), _fmt_ms(seq),
            _fmt_ms(greedy),
            "-" if dp is None else f"{seq / dp:.2f}x",
            "-" if dp is None else f"{greedy / dp:.2f}x",
            tmark,
        ])
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h)
              for i, h in enumerate(head)]
    print("  ".join(h.rjust(w) for h, w in zip(head, widths, strict=True)))
    for line in lines:
        print("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)))
    if any(r.get("chosen") == "greedy" for r in rows):
        print("* the greedy schedule beat the partitioned DP and was returned instead")


def _default_out() -> Path:
    date = _dt.date.today().isoformat()
    host = re.sub(r"[^A-Za-z0-9-]+", "-", platform.node().split(".")[0])[:24].strip("-")
    return ROOT / "benchmarks" / "results" / f"search-{date}-{host or 'host'}.json"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; see ``--help``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", default=",".join(DEFAULT_MODELS),
                   help=f"comma-separated, from {', '.join(BENCH_GRAPHS)}")
    p.add_argument("--strategies", default=",".join(DEFAULT_STRATEGIES),
                   help="comma-separated search strategies (concurrent, merge, both)")
    p.add_argument("--granularity", default="kernel", choices=(*GRANULARITIES, "all"),
                   help="graph granularity (see ios_tvm.models.opgraph); 'all' runs both")
    p.add_argument("--grid", action="store_true",
                   help="also run r in {1,2,3} x s in {3,8} (IOS's pruning study)")
    p.add_argument("--max-groups", "-s", type=int, default=8, help="s when not --grid")
    p.add_argument("--max-group-size", "-r", type=int, default=3, help="r when not --grid")
    p.add_argument("--max-part-size", default=str(SearchConfig().max_part_size),
                   help="part size limit, optionally per model or model:granularity, "
                        "e.g. '40,nasnet_large:ios=21' (IOS's one part per NasNet cell)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--device", default="v100", help="AnalyticCost device preset")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds per search before it is abandoned (0 = none)")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="cProfile each search and print its top N functions")
    p.add_argument("--engine", default="auto", choices=("auto", "native", "python"),
                   help="DP implementation: the C++ one (parts of <= 64 ops), the Python one, "
                        "or auto (native when its library loads)")
    p.add_argument("--progress", action="store_true", help="tqdm bar over each search's parts")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON output (default benchmarks/results/search-<date>-<host>.json)")
    p.add_argument("--cost", default="analytic", choices=("analytic", "measured"),
                   help="analytic: the DP alone on the IOS graphs; measured: a cold and a warm "
                        "measured search of zoo models compiled for this CPU, timed by part "
                        "(setup, measuring, cache I/O, DP and the rest)")
    p.add_argument("--prune", default="1",
                   help="with --cost measured: comma-separated 0/1, search without/with "
                        "bound pruning (measure only the stages the DP can still choose)")
    p.add_argument("--bound", default="exact",
                   help="with --cost measured: comma-separated lower bounds of the pruned "
                        "search, exact and/or calibrated (SearchConfig.bound)")
    p.add_argument("--cache", type=Path, default=None,
                   help="with --cost measured: keep each run's (fresh) cache file in a new "
                        "folder here (default: a temporary folder, deleted)")
    p.add_argument("--lib-dir", type=Path, default=None,
                   help="with --cost measured: keep compiled kernel libraries here and reuse "
                        "them (the model's compile is not part of the search)")
    p.add_argument("--seconds", type=float, default=0.0,
                   help="with --cost measured: stop measuring after this long (0: never); "
                        "go on later with --resume on the kept cache file")
    p.add_argument("--resume", type=Path, default=None,
                   help="with --cost measured: measure into this cache file of an earlier, "
                        "stopped run (one model, one --prune)")
    p.add_argument("--prune-cores", type=int, default=None,
                   help="with --cost analytic: also count the stages a pruned search costs, "
                        "the analytic cost standing in for the measured one (group bound "
                        "with this many cores; 0: no per-core term)")
    args = p.parse_args(argv)
    if args.cost == "measured":
        from ios_tvm.models import BUILTIN_MODELS

        models = [m.strip() for m in args.models.split(",") if m.strip()]
        bad = [m for m in models if m not in BUILTIN_MODELS]
        if bad:
            p.error(f"unknown zoo model(s) {bad}; choose from {sorted(BUILTIN_MODELS)}")
        args.prune = [bool(int(x)) for x in args.prune.split(",") if x.strip()]
        args.bound = [x.strip() for x in args.bound.split(",") if x.strip()]
        t0 = time.perf_counter()
        rows = measured_main(args, models)
        out = args.out or _default_out()
        out.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "format": "ios_tvm.bench_search_measured", "version": 1,
            "date": _dt.datetime.now().isoformat(timespec="seconds"),
            "command": [Path(sys.executable).name, *sys.argv],
            "machine": machine_info(),
            "settings": {k: (str(v) if isinstance(v, Path) else v)
                         for k, v in vars(args).items()},
            "targets_seconds": {"inception_v3": {"cold": 30.0, "warm": 2.0},
                                "nasnet": {"cold": 600.0}, "randwire": {"cold": 600.0}},
            "seconds": time.perf_counter() - t0,
            "results": rows,
        }
        out.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {out}")
        return 0

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in BENCH_GRAPHS]
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(BENCH_GRAPHS)}")
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    grans = list(GRANULARITIES) if args.granularity == "all" else [args.granularity]
    default_mps, mps_per_model = _parse_part_sizes(args.max_part_size)
    grid = GRID if args.grid else [(args.max_group_size, args.max_groups)]
    if args.grid and (args.max_group_size, args.max_groups) not in grid:
        grid.append((args.max_group_size, args.max_groups))

    native = {"auto": None, "native": True, "python": False}[args.engine]
    native_ok = native_search_enabled()
    if native and not native_ok:
        p.error("--engine native: the native library is not available")
    use_native = native_ok if native is None else native

    rows: list[dict[str, Any]] = []
    for gran in grans:
        for model in models:
            graph = BENCH_GRAPHS[model](args.batch, gran)
            cost = AnalyticCost(graph, args.device)
            mps = mps_per_model.get(f"{model}:{gran}", mps_per_model.get(model, default_mps))
            seq = search(graph, cost, SearchConfig(strategy="sequential")).schedule
            greedy = search(graph, cost, SearchConfig(strategy="greedy")).schedule
            pinfo = partition_info(graph, mps)
            base = {
                "model": model, "granularity": gran, "batch": args.batch,
                "device": args.device, "nodes": len(graph.nodes), "edges": graph.num_edges,
                "width": graph.width, "max_part_size": mps,
                "partition": pinfo,
                "engine": ("python" if not use_native else
                           "native" if max(pinfo["sizes"]) <= MAX_NATIVE_OPS else "mixed"),
                "sequential_cost": seq.cost, "greedy_cost": greedy.cost,
                "greedy_stages": len(greedy.stages), "greedy_max_groups": greedy.max_groups,
            }
            for strategy in strategies:
                for r, s in grid:
                    cfg = SearchConfig(strategy=strategy, max_groups=s, max_group_size=r,
                                       max_part_size=mps)
                    row = {**base, "strategy": strategy, "r": r, "s": s}
                    row.update(run_one(graph, cost, cfg, args.timeout, args.profile,
                                       args.progress, native))
                    if args.prune_cores is not None and not row["timed_out"]:
                        row["pruned"] = pruned_count(graph, cost, cfg, args.prune_cores,
                                                     row, native)
                    rows.append(row)
                    status = ("TIMEOUT" if row["timed_out"]
                              else f"{row['seconds']:.2f}s, {row['states']:,} states")
                    print(f"[{gran}] {model} {strategy} r={r} s={s}: {status}", flush=True)
                    if args.profile and "profile" in row:
                        print(row["profile"])

    print()
    print_table(rows)
    out = args.out or _default_out()
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "format": "ios_tvm.bench_search", "version": 1,
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "command": [Path(sys.executable).name, *sys.argv],
        "machine": machine_info(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "targets_seconds": TARGET_SECONDS,
        "results": rows,
    }
    out.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
