#!/usr/bin/env python3
"""Measured vs learned stage costs on zoo models (issue 18, item 4).

For each model (default: sample, squeezenet, inception_v3):

1. **Measured search, cold cache**: every stage the IOS search can ask for is timed (its own
   cache file); stages measured, search seconds, the plan.
2. **Held-out prediction error**: the learned model trained on the *other* models' caches only
   (leave one model out) predicts every multi-kernel candidate stage of this model; relative
   error against this model's measurements (the one-kernel stages, its features, come from
   its own cache).
3. **Learned search**: a cache holding only the other models' measurements; the learned
   model measures this model's one-kernel stages, the stages it is unsure of and those of
   the plans it picks (:mod:`ios_tvm.cost.learned`); stages measured, search seconds, plan.
4. **Plans compared**: both plans priced by the fully measured search's stage latencies (the
   learned plan's regret, free of plan-timing noise), and both timed in interleaved rounds
   (order alternating; the median of the per-round ratios). Identical plans are not timed
   (ratio 1 by construction).

Stage measurement and plan timing hold the exclusive lock (/work/wt/measure.lock by default,
``--lock``), compilation the shared one. JSON to benchmarks/results/learned-cpu-<date>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ios_tvm.compiler.build import load_and_extract  # noqa: E402
from ios_tvm.compiler.inputs import profiling_inputs  # noqa: E402
from ios_tvm.compiler.plan_lowering import lower_schedule  # noqa: E402
from ios_tvm.compiler.profiling import device_cores, measured_cost  # noqa: E402
from ios_tvm.cost.base import ProfileSettings  # noqa: E402
from ios_tvm.cost.cache import MeasurementCache  # noqa: E402
from ios_tvm.cost.learned import (  # noqa: E402
    LearnedCost,
    cache_rows,
    fit_ensemble,
    kernels_file,
    read_kernel_features,
    read_model_kernels,
    stage_features,
)
from ios_tvm.ir.schedule import Stage  # noqa: E402
from ios_tvm.models import BUILTIN_MODELS  # noqa: E402
from ios_tvm.scheduler.config import SearchConfig  # noqa: E402
from ios_tvm.scheduler.search import candidate_stages, search  # noqa: E402
from ios_tvm.scheduler.stage_cost import StageCostCache  # noqa: E402


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


@contextlib.contextmanager
def lock(path: str | None, exclusive: bool):
    if not path:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def merge_caches(dst: Path, srcs: list[Path], context: str) -> None:
    """A cache holding the rows (and kernel features) of ``srcs``."""
    out = MeasurementCache(dst)
    doc: dict[str, Any] = {"kernels": {}, "models": {}}
    for src in srcs:
        c = MeasurementCache(src)
        for key, value, _ in c.items(context):
            out.put(context, key, value, [value])
        part = json.loads(kernels_file(c).read_text())
        doc["kernels"].update(part["kernels"])
        doc["models"].update(part["models"])
        c.close()
    kernels_file(out).write_text(json.dumps(doc))
    out.close()


def held_out_error(lc: LearnedCost, own: Any, train_cache: MeasurementCache,
                   cands: list[Stage]) -> dict[str, Any]:
    """Train on ``train_cache`` only; relative error on the model's own measured stages."""
    table = read_kernel_features(train_cache)
    x, y, origin = lc.training_set({k: v for k, v, _ in cache_rows(train_cache, own.context)},
                                   table, read_model_kernels(train_cache))
    if not x:
        return {"train_rows": 0}
    ens, config, cv = fit_ensemble(x, y, origin)
    feats, truth, sums = [], [], []
    seen: set[str] = set()
    for s in cands:
        key = own.stage_key(s)
        if len(s.ops) < 2 or key in seen:
            continue
        seen.add(key)
        members = [[(own(Stage(((op,),))), lc.infos[op]) for op in g] for g in s.groups]
        feats.append(stage_features(members, lc.cores))
        truth.append(own(s))
        sums.append(sum(lat for g in members for lat, _ in g))
    mean, spread = ens.predict(feats)
    pred = [sm * math.exp(mu) for sm, mu in zip(sums, mean, strict=True)]
    err = sorted(abs(p - t) / t for p, t in zip(pred, truth, strict=True))
    base = sorted(abs(sm - t) / t for sm, t in zip(sums, truth, strict=True))

    def q(v: list[float], f: float) -> float:
        return v[min(len(v) - 1, int(f * len(v)))]

    return {"train_rows": len(x), "test_stages": len(truth), "config": config, "cv_error": cv,
            "rel_error_median": statistics.median(err), "rel_error_mean": statistics.fmean(err),
            "rel_error_p90": q(err, 0.9),
            "kernel_sum_baseline_rel_error_median": statistics.median(base),
            "spread_median": statistics.median(spread)}




def time_pair(extraction: Any, lib: Any, plans: dict[str, Any], inputs: list[Any],
              rounds: int, settings: ProfileSettings) -> dict[str, Any]:
    """Interleaved paired timing of two plans: medians and the median per-round ratio."""
    exes = {}
    for name, sch in plans.items():
        ex = lower_schedule(extraction, sch, lib=lib).executor()
        ex.run(*inputs)
        exes[name] = ex
    names = list(plans)
    samples: dict[str, list[float]] = {n: [] for n in names}
    ratios = []
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        got = {}
        for n in order:
            b = exes[n].benchmark(warmup=settings.warmup, number=settings.number,
                                  repeat=settings.repeat, min_repeat_ms=20)
            got[n] = b["median"]
            samples[n].append(b["median"])
        ratios.append(got[names[1]] / got[names[0]])
    return {"median_ms": {n: statistics.median(v) * 1e3 for n, v in samples.items()},
            "samples_ms": {n: [x * 1e3 for x in v] for n, v in samples.items()},
            "ratio_learned_over_measured_median": statistics.median(ratios),
            "ratios": ratios}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="sample,squeezenet,inception_v3")
    ap.add_argument("--rounds", type=int, default=7, help="paired timing rounds")
    ap.add_argument("--profile", type=int, nargs=3, default=(1, 3, 3),
                    metavar=("WARMUP", "NUMBER", "REPEAT"), help="stage/plan timing settings")
    ap.add_argument("--lock", default="/work/wt/measure.lock")
    ap.add_argument("--shared-only", action="store_true",
                    help="time under the shared lock (when the exclusive one is not to be had; "
                         "recorded in the results)")
    ap.add_argument("--workdir", default=None, help="keep the caches here (default: temp)")
    ap.add_argument("--resume", action="store_true",
                    help="reuse the measured searches an earlier run left in --workdir")
    ap.add_argument("-o", "--output", default=None)
    ap.add_argument("--phase1-seconds", default="",
                    help="NAME=SECONDS,...: search times of resumed searches without a record")
    args = ap.parse_args()
    args.phase1_seconds = {k: float(v) for k, v in (kv.split("=") for kv in
                                                    args.phase1_seconds.split(",") if kv)}
    names = args.models.split(",")
    settings = ProfileSettings(*args.profile)
    cfg = SearchConfig()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_learned_"))
    work.mkdir(parents=True, exist_ok=True)
    date = datetime.date.today().isoformat()
    out_path = Path(args.output or ROOT / "benchmarks" / "results" / f"learned-cpu-{date}.json")
    t_start = time.perf_counter()
    models: dict[str, Any] = {}
    res: dict[str, Any] = {}
    for name in names:
        with lock(args.lock, exclusive=False):
            t = time.perf_counter()
            extraction, lib = load_and_extract(BUILTIN_MODELS[name](), "llvm")
            inputs = profiling_inputs(extraction)
            print(f"{name}: {len(extraction.graph.nodes)} kernels, compiled in "
                  f"{time.perf_counter() - t:.1f} s", flush=True)
        models[name] = (extraction, lib, inputs)
        # 1. measured search, cold cache (or, with --resume, the one an earlier run recorded)
        own = MeasurementCache(work / f"{name}.sqlite")
        phase1 = work / f"{name}.measured.json"
        if args.resume and len(own) and (phase1.is_file() or name in args.phase1_seconds):
            m = measured_cost(extraction, cache=own, settings=settings, lib=lib, inputs=inputs)
            r = search(extraction.graph, StageCostCache(m), cfg)  # every stage from the cache
            assert m.measured == 0
            if phase1.is_file():
                res[name] = json.loads(phase1.read_text())
                assert r.schedule.to_json() == res[name]["measured"]["schedule"]
            else:  # measured by a run that kept no record: the cache holds what it measured
                res[name] = {"kernels": len(extraction.graph.nodes), "measured": {
                    "stages_measured": len(own.items(m.context)),
                    "stages_costed": r.stats.stages_costed,
                    "search_seconds": args.phase1_seconds.get(name),
                    "estimated_ms": (r.schedule.cost or 0) * 1e3,
                    "schedule": r.schedule.to_json(), "uptime": "not recorded"}}
            res[name]["measured"]["resumed"] = True
        else:
            own.clear()
            with lock(args.lock, exclusive=not args.shared_only):
                load = uptime()
                m = measured_cost(extraction, cache=own, settings=settings, lib=lib,
                                  inputs=inputs)
                t = time.perf_counter()
                r = search(extraction.graph, StageCostCache(m), cfg)
                sec = time.perf_counter() - t
            res[name] = {"kernels": len(extraction.graph.nodes), "measured": {
                "stages_measured": m.measured, "stages_costed": r.stats.stages_costed,
                "search_seconds": sec, "estimated_ms": (r.schedule.cost or 0) * 1e3,
                "schedule": r.schedule.to_json(), "uptime": load}}
            phase1.write_text(json.dumps(res[name]))
        res[name]["_plan_m"] = r.schedule
        res[name]["_m"] = m
        print(f"  measured: {res[name]['measured']}", flush=True)
    for name in names:
        extraction, lib, inputs = models[name]
        others = [work / f"{o}.sqlite" for o in names if o != name]
        m_own = res[name].pop("_m")
        context = m_own.context
        loo = work / f"loo-{name}.sqlite"
        for p in loo.parent.glob(loo.name + "*"):
            p.unlink()
        merge_caches(loo, others, context)
        # 2. held-out prediction error (trained on the other models only)
        train_cache = MeasurementCache(loo)
        probe = LearnedCost(extraction.graph, m_own, config=cfg, cores=device_cores(extraction))
        cands = candidate_stages(extraction.graph, cfg)
        res[name]["held_out"] = held_out_error(probe, m_own, train_cache, cands)
        print(f"  held-out: {res[name]['held_out']}", flush=True)
        # 3. learned search on the other models' cache
        with lock(args.lock, exclusive=not args.shared_only):
            load = uptime()
            m = measured_cost(extraction, cache=train_cache, settings=settings, lib=lib,
                              inputs=inputs)
            lc = LearnedCost(extraction.graph, m, config=cfg, cores=device_cores(extraction))
            t = time.perf_counter()
            r = search(extraction.graph, StageCostCache(lc), cfg)
            sec = time.perf_counter() - t
        plan_m = res[name].pop("_plan_m")
        same = r.schedule.stages == plan_m.stages
        res[name]["learned"] = {
            "stages_measured": m.measured, "search_seconds": sec,
            "estimated_ms": (r.schedule.cost or 0) * 1e3, "report": lc.summary(),
            "schedule": r.schedule.to_json(), "same_plan_as_measured": same, "uptime": load}
        res[name]["fewer_stages_measured"] = (res[name]["measured"]["stages_measured"]
                                              / max(m.measured, 1))
        # Both plans priced by the fully measured search's stage latencies (every candidate
        # was measured there): the learned plan's regret without plan-timing noise.
        plan_cost = {k: sum(m_own(s) for s in sch.stages) * 1e3
                     for k, sch in (("measured", plan_m), ("learned", r.schedule))}
        res[name]["plans_under_measured_costs_ms"] = plan_cost
        res[name]["learned_over_measured_under_measured_costs"] = (plan_cost["learned"]
                                                                   / plan_cost["measured"])
        print(f"  learned: {m.measured} stages measured, {sec:.1f} s, same plan: {same}, "
              f"priced by the measured costs: {plan_cost}", flush=True)
        # 4. the two plans timed paired
        if same:
            res[name]["plans"] = {"ratio_learned_over_measured_median": 1.0,
                                  "note": "identical plans, not timed"}
        else:
            with lock(args.lock, exclusive=not args.shared_only):
                load = uptime()
                res[name]["plans"] = time_pair(extraction, lib, {"measured": plan_m,
                                                                 "learned": r.schedule},
                                               inputs, args.rounds, settings)
                res[name]["plans"]["uptime"] = load
        print(f"  plans: learned/measured "
              f"{res[name]['plans']['ratio_learned_over_measured_median']:.3f}", flush=True)
        train_cache.close()
    doc = {"benchmark": "bench_learned", "command": sys.argv, "date": date,
           "machine": {"cpu": platform.processor() or platform.machine(),
                       "cores": os.cpu_count(), "uptime_end": uptime()},
           "settings": {"profile": list(args.profile), "rounds": args.rounds,
                        "lock": "shared" if args.shared_only else "exclusive",
                        "search": cfg.to_json()},
           "goal": ">= 10x fewer stages measured, final plan within 3% of the measured "
                   "search's plan",
           "results": res, "seconds": time.perf_counter() - t_start}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(doc, indent=1))
    print(f"written {out_path}")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
