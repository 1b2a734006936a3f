#!/usr/bin/env python3
"""Measured vs learned stage costs on zoo models (issue 18, item 4).

For each model (default: sample, squeezenet, inception_v3):

1. **Measured search, cold cache**: every stage the IOS search can ask for is timed (its own
   cache file); stages measured, search seconds, the plan.
2. **Held-out prediction error**: the learned model trained on the *other* models' caches only
   (leave one model out) predicts every multi-kernel candidate stage of this model; relative
   error against this model's measurements (the one-kernel stages, its features, come from
   its own cache).
3. **Learned searches**, each on a cache holding only the other models' measurements (of
   either weights context: :func:`~ios_tvm.cost.learned.sibling_contexts`):
   ``learned`` measures this model's one-kernel stages, the stages it is unsure of and
   those of the plans it picks (:mod:`ios_tvm.cost.learned`); ``budget`` predicts kernels
   too and measures at most ``--budget`` times the measured search's stages
   (``LearnedSettings.budget``). Stages measured, search seconds, plan.
4. **Plans compared**: each plan priced by the fully measured search's stage latencies (the
   learned plan's regret, free of plan-timing noise), and the distinct plans timed in
   interleaved rounds (:func:`ios_tvm.bench.timing.time_rounds`; the median of the
   per-round ratios to the measured search's plan). A plan identical to it is not timed
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

from ios_tvm.bench.timing import machine_info, time_rounds, write_result  # noqa: E402
from ios_tvm.compiler.build import load_and_extract  # noqa: E402
from ios_tvm.compiler.inputs import profiling_inputs  # noqa: E402
from ios_tvm.compiler.plan_lowering import lower_schedule  # noqa: E402
from ios_tvm.compiler.profiling import (  # noqa: E402
    device_cores,
    make_stage_cost,
    measured_cost,
)
from ios_tvm.compiler.target import resolve_target  # noqa: E402
from ios_tvm.cost.base import ProfileSettings  # noqa: E402
from ios_tvm.cost.cache import MeasurementCache  # noqa: E402
from ios_tvm.cost.learned import (  # noqa: E402
    LearnedCost,
    LearnedSettings,
    fit_ensemble,
    fit_kernel_model,
    kernel_infos,
    kernels_file,
    read_kernel_features,
    read_model_kernels,
    stage_features,
    training_rows,
    weights_cold,
)
from ios_tvm.ir.schedule import Schedule, Stage  # noqa: E402
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


def merge_caches(dst: Path, srcs: list[Path]) -> None:
    """A cache holding the rows of every context (and the kernel features) of ``srcs``."""
    out = MeasurementCache(dst)
    doc: dict[str, Any] = {"kernels": {}, "models": {}}
    for src in srcs:
        c = MeasurementCache(src)
        for context in c.contexts():
            for key, value, _ in c.items(context):
                out.put(context, key, value, [value])
        part = json.loads(kernels_file(c).read_text())
        doc["kernels"].update(part["kernels"])
        doc["models"].update(part["models"])
        c.close()
    kernels_file(out).write_text(json.dumps(doc))
    out.close()


def known(m: Any, stage: Stage) -> bool:
    """Whether the measured model ``m`` has ``stage`` (measured or in its cache)."""
    key = m.stage_key(stage)
    return key in m.values or (m.cache is not None and m.cache.get(m.context, key) is not None)


def reference_cost(extraction: Any, cache: MeasurementCache, settings: ProfileSettings,
                   lib: Any, inputs: Any, cfg: SearchConfig, pruned: bool) -> tuple[Any, Any]:
    """The measured search's stage cost and its measured model.

    It measures every candidate, or (``pruned``) only those the search can still choose, as
    ``ios-tvm compile`` does.
    """
    if pruned:
        return make_stage_cost(extraction, "measured", cache=cache, settings=settings, lib=lib,
                               inputs=inputs, config=cfg)
    m = measured_cost(extraction, cache=cache, settings=settings, lib=lib, inputs=inputs)
    return StageCostCache(m), m


def held_out_error(lc: LearnedCost, own: Any, train_cache: MeasurementCache,
                   cands: list[Stage]) -> dict[str, Any]:
    """Train on ``train_cache`` only; relative error on the model's own measured stages."""
    table = read_kernel_features(train_cache)
    models = read_model_kernels(train_cache)
    rows = {ctx: {k: v for k, v, _ in r}
            for ctx, r in training_rows(train_cache, own.context).items()}
    x, y, origin = [], [], []
    for by_key in rows.values():
        cx, cy, co = lc.training_set(by_key, table, models)
        x, y, origin = x + cx, y + cy, origin + co
    if not x:
        return {"train_rows": 0}
    ens, config, cv = fit_ensemble(x, y, origin)
    kernel = {}
    km = fit_kernel_model(rows, table, models, lc.cores)
    if km is not None:
        lat, _ = km.predict(kernel_infos(lc.graph), lc.cores, weights_cold(own.context))
        truth_k = [own(Stage(((op,),))) for op in range(len(lc.graph.nodes))]
        kerr = sorted(abs(p - t) / t for p, t in zip(lat, truth_k, strict=True))
        kernel = {"train_rows": km.train_rows, "config": km.config, "cv_error": km.cv_error,
                  "rel_error_median": statistics.median(kerr),
                  "rel_error_p90": kerr[min(len(kerr) - 1, int(0.9 * len(kerr)))]}
    feats, truth, sums = [], [], []
    seen: set[str] = set()
    for s in cands:
        key = own.stage_key(s)
        if len(s.ops) < 2 or key in seen or not known(own, s):
            continue  # (a pruned reference search did not measure every candidate)
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
            "spread_median": statistics.median(spread), "kernel_model": kernel}




def time_plans(extraction: Any, lib: Any, plans: dict[str, Any], inputs: list[Any],
               rounds: int) -> dict[str, Any]:
    """The plans timed in interleaved rounds: medians, and each plan's median per-round
    ratio to the first (the measured search's plan)."""
    exes = {name: lower_schedule(extraction, sch, lib=lib).executor()
            for name, sch in plans.items()}
    samples = time_rounds({n: (lambda ex=ex: ex.run(*inputs)) for n, ex in exes.items()},
                          rounds, min_ms=20.0)
    first = next(iter(plans))
    return {"median_ms": {n: statistics.median(v) * 1e3 for n, v in samples.items()},
            "samples_ms": {n: [x * 1e3 for x in v] for n, v in samples.items()},
            "ratio_over_measured_median": {
                n: statistics.median(a / b for a, b in zip(v, samples[first], strict=True))
                for n, v in samples.items() if n != first}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="sample,squeezenet,inception_v3")
    ap.add_argument("--target", default="host",
                    help="target (default host: llvm for this CPU; a bare llvm is generic "
                         "x86-64, several times slower)")
    ap.add_argument("--rounds", type=int, default=7, help="paired timing rounds")
    ap.add_argument("--variants", default="learned,budget",
                    help="learned searches to run: learned (every kernel measured), budget")
    ap.add_argument("--pruned", action="store_true",
                    help="the measured search measures only the stages it can still choose "
                         "(as ios-tvm compile does; default: every candidate, a fully "
                         "measured search)")
    ap.add_argument("--bound", choices=("exact", "calibrated"), default="exact",
                    help="the pruned measured search's bound (SearchConfig.bound)")
    ap.add_argument("--budget", type=float, default=0.1,
                    help="the budget variant measures at most this fraction of the stages the "
                         "measured search measured (default 0.1: the issue's 10x)")
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
    args = ap.parse_args(argv)
    args.phase1_seconds = {k: float(v) for k, v in (kv.split("=") for kv in
                                                    args.phase1_seconds.split(",") if kv)}
    names = args.models.split(",")
    args.variants = [v for v in args.variants.split(",") if v]
    if not set(args.variants) <= {"learned", "budget"}:
        ap.error(f"--variants: learned and/or budget, not {args.variants}")
    settings = ProfileSettings(*args.profile)
    cfg = SearchConfig(bound=args.bound)
    target = resolve_target(args.target)
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
            extraction, lib = load_and_extract(BUILTIN_MODELS[name](), target)
            inputs = profiling_inputs(extraction)
            print(f"{name}: {len(extraction.graph.nodes)} kernels, compiled in "
                  f"{time.perf_counter() - t:.1f} s", flush=True)
        models[name] = (extraction, lib, inputs)
        # 1. measured search, cold cache (or, with --resume, the one an earlier run recorded)
        own = MeasurementCache(work / f"{name}.sqlite")
        phase1 = work / f"{name}.measured.json"
        if args.resume and len(own) and phase1.is_file():
            # The recorded plan (a calibrated search on a warm cache may take another path).
            m = measured_cost(extraction, cache=own, settings=settings, lib=lib, inputs=inputs)
            res[name] = json.loads(phase1.read_text())
            res[name]["measured"]["resumed"] = True
            res[name]["_plan_m"] = Schedule.from_json(res[name]["measured"]["schedule"])
            res[name]["_m"] = m
            continue
        if args.resume and len(own) and name in args.phase1_seconds:
            memo, m = reference_cost(extraction, own, settings, lib, inputs, cfg, args.pruned)
            r = search(extraction.graph, memo, cfg)  # every stage from the cache
            assert m.measured == 0
            # measured by a run that kept no record: the cache holds what it measured
            res[name] = {"kernels": len(extraction.graph.nodes), "measured": {
                "stages_measured": len(own.items(m.context)),
                "stages_costed": r.stats.stages_costed,
                "search_seconds": args.phase1_seconds.get(name),
                "estimated_ms": (r.schedule.cost or 0) * 1e3,
                "schedule": r.schedule.to_json(), "uptime": "not recorded", "resumed": True}}
        else:
            own.clear()
            with lock(args.lock, exclusive=not args.shared_only):
                load = uptime()
                memo, m = reference_cost(extraction, own, settings, lib, inputs, cfg,
                                         args.pruned)
                t = time.perf_counter()
                r = search(extraction.graph, memo, cfg)
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
        loo = work / f"loo-{name}.sqlite"
        for p in loo.parent.glob(loo.name + "*"):
            p.unlink()
        merge_caches(loo, others)
        # 2. held-out prediction error (trained on the other models only)
        train_cache = MeasurementCache(loo)
        probe = LearnedCost(extraction.graph, m_own, config=cfg, cores=device_cores(extraction))
        cands = candidate_stages(extraction.graph, cfg)
        res[name]["held_out"] = held_out_error(probe, m_own, train_cache, cands)
        print(f"  held-out: {res[name]['held_out']}", flush=True)
        # 3. learned searches, each on a fresh copy of the other models' cache
        plan_m = res[name].pop("_plan_m")
        n_measured = res[name]["measured"]["stages_measured"]
        plans: dict[str, Any] = {"measured": plan_m}
        found: dict[str, Any] = {}
        for variant in args.variants:
            budget = (max(1, int(args.budget * n_measured)) if variant == "budget" else None)
            vcache = work / f"loo-{name}-{variant}.sqlite"
            for f in vcache.parent.glob(vcache.name + "*"):
                f.unlink()
            merge_caches(vcache, others)
            vc = MeasurementCache(vcache)
            with lock(args.lock, exclusive=not args.shared_only):
                load = uptime()
                m = measured_cost(extraction, cache=vc, settings=settings, lib=lib,
                                  inputs=inputs)
                lc = LearnedCost(extraction.graph, m, config=cfg,
                                 cores=device_cores(extraction),
                                 settings=LearnedSettings(budget=budget))
                t = time.perf_counter()
                r = search(extraction.graph, StageCostCache(lc), cfg)
                sec = time.perf_counter() - t
            vc.close()
            found[variant] = r.schedule.stages
            same = r.schedule.stages == plan_m.stages
            # Priced by the fully measured search's stage latencies (every candidate was
            # measured there): the plan's regret without plan-timing noise.
            under = sum(m_own(s) for s in r.schedule.stages) / sum(m_own(s)
                                                                    for s in plan_m.stages)
            res[name][variant] = {
                "budget": budget, "stages_measured": m.measured,
                "fewer_stages_measured": n_measured / max(m.measured, 1),
                "search_seconds": sec, "estimated_ms": (r.schedule.cost or 0) * 1e3,
                "report": lc.summary(), "schedule": r.schedule.to_json(),
                "same_plan_as_measured": same, "over_measured_under_measured_costs": under,
                "uptime": load}
            print(f"  {variant}: {m.measured} stages measured "
                  f"({n_measured / max(m.measured, 1):.1f}x fewer), {sec:.1f} s, same plan: "
                  f"{same}, priced by the measured costs: {under:.3f}x", flush=True)
            if not same and all(r.schedule.stages != q.stages for q in plans.values()):
                plans[variant] = r.schedule
        # 4. the distinct plans timed side by side
        if len(plans) > 1:
            with lock(args.lock, exclusive=not args.shared_only):
                load = uptime()
                res[name]["plans"] = time_plans(extraction, lib, plans, inputs, args.rounds)
                res[name]["plans"]["uptime"] = load
        else:
            res[name]["plans"] = {"note": "every plan identical to the measured search's, "
                                          "not timed", "ratio_over_measured_median": {}}
        ratios = res[name]["plans"]["ratio_over_measured_median"]
        for variant in args.variants:
            stages = found[variant]
            twin = next((k for k, q in plans.items() if q.stages == stages), None)
            res[name][variant]["plan_ratio_over_measured"] = (
                1.0 if twin == "measured" else ratios.get(twin))
            print(f"  plans: {variant}/measured "
                  f"{res[name][variant]['plan_ratio_over_measured']}", flush=True)
        train_cache.close()
    doc = {"benchmark": "bench_learned", "command": [sys.argv[0], *(argv or sys.argv[1:])],
           "date": date,
           "machine": {**machine_info(), "uptime_end": uptime()},
           "settings": {"target": str(target), "profile": list(args.profile),
                        "rounds": args.rounds,
                        "reference": "pruned" if args.pruned else "full",
                        "variants": args.variants, "budget": args.budget,
                        "lock": "shared" if args.shared_only else "exclusive",
                        "search": cfg.to_json()},
           "goal": ">= 10x fewer stages measured, final plan within 3% of the measured "
                   "search's plan",
           "results": res, "seconds": time.perf_counter() - t_start}
    write_result(out_path, doc)
    print(f"written {out_path}")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
