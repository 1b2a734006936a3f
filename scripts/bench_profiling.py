"""Profiling cost of the measured cost model, per model, with a cold and a warm cache.

Usage: .venv/bin/python scripts/bench_profiling.py [--models a,b] [--warmup 2 --number 6
       --repeat 6] [--max-groups 8] [--rpc-tracker HOST:PORT --rpc-key KEY] [--out FILE]

For each model: lower and compile it once (``compile_s``), then run the IOS search with the
measured cost model twice on one cache file:

  cold  a fresh cache: every distinct stage is profiled on this machine (``measured``);
  warm  the same cache again: nothing is profiled, every stage is a cache hit.

Columns: ``stages`` distinct stages the DP costs; ``measured`` / ``cached`` how many were
profiled / read back (stages with the same kernels on the same shapes, e.g. two identical
branches, are profiled once); ``profile_s`` seconds inside the profiler; ``search_s`` the
whole search including profiling; ``per_stage_ms`` profiling time per measured stage;
``setup_s`` building the profiling executor (every tensor its own buffer; over RPC: starting
the worker processes and preparing a remote executor per server).

With ``--rpc-tracker`` and ``--rpc-key`` the stages are profiled on the tracker's servers
instead (enumerated first, measured in one batch spread over every free server, then
searched; see ios_tvm/cost/rpc.py); ``servers`` then counts stages per server.

Results go to benchmarks/results/profiling-<date>-<host>.json with the machine and the
command line.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import onnx_models as om  # noqa: E402

from ios_tvm.bench.timing import machine_info  # noqa: E402
from ios_tvm.compiler.extract import graph_from_model  # noqa: E402
from ios_tvm.compiler.library import build_kernel_library  # noqa: E402
from ios_tvm.compiler.profiling import measured_cost, profiling_artifact  # noqa: E402
from ios_tvm.cost.base import ProfileSettings  # noqa: E402
from ios_tvm.cost.cache import MeasurementCache  # noqa: E402
from ios_tvm.models import sample_block  # noqa: E402
from ios_tvm.scheduler.config import SearchConfig  # noqa: E402
from ios_tvm.scheduler.search import candidate_stages, search  # noqa: E402

MODELS: dict[str, Callable[[], Any]] = {
    "sample-32x14": lambda: sample_block(channels=32, size=14),
    "sample-64x28": lambda: sample_block(channels=64, size=28),
    "inception": lambda: om.inception_block(channels=16, size=16),
    "residual": lambda: om.residual_block(channels=32, size=14),
    "transformer": lambda: om.transformer_layer(seq=32, dim=64),
    # The zoo (ios_tvm/models), NHWC convs as build() lowers them on CPU.
    "sample": lambda: zoo("sample"),
    "squeezenet": lambda: zoo("squeezenet"),
    "inception_v3": lambda: zoo("inception_v3"),
    "resnet50": lambda: zoo("resnet50"),
    "randwire": lambda: zoo("randwire"),
    "nasnet": lambda: zoo("nasnet"),
}
ZOO = ("sample", "squeezenet", "inception_v3", "resnet50", "randwire", "nasnet")
#: The models run by default (the zoo's large ones take minutes to measure; name them).
DEFAULT_MODELS = ("sample-32x14", "sample-64x28", "inception", "residual", "transformer")


def zoo(name: str) -> Any:
    from ios_tvm.models import resolve_model

    return resolve_model(name)


class TimedProfiler:
    """Wraps a profiler; counts stages and seconds spent measuring."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.seconds = 0.0
        self.stages = 0

    def profile(self, groups: Sequence[Sequence[int]]) -> list[float]:
        t = time.perf_counter()
        try:
            return self.inner.profile(groups)
        finally:
            self.seconds += time.perf_counter() - t
            self.stages += 1

    def profile_many(self, stages: Sequence[Sequence[Sequence[int]]]) -> list[list[float]]:
        t = time.perf_counter()
        try:
            many = getattr(self.inner, "profile_many", None)
            if many is None:
                return [self.inner.profile(s) for s in stages]
            return many(stages)
        finally:
            self.seconds += time.perf_counter() - t
            self.stages += len(stages)


def run_once(extraction: Any, lib: Any, cache_path: Path, settings: ProfileSettings,
             cfg: SearchConfig, rpc: tuple[str, str] | None,
             adaptive: bool = True) -> dict[str, Any]:
    """One measured search on ``cache_path``; its counters and timings."""
    t0 = time.perf_counter()
    remote = None
    if rpc is None:
        cost = measured_cost(extraction, max_groups=cfg.max_groups,
                            cache=MeasurementCache(cache_path), settings=settings, lib=lib)
        cost.profiler.adaptive = adaptive
        cost.profiler = timed = TimedProfiler(cost.profiler)
    else:
        from ios_tvm.cost.rpc import RPCProfiler

        remote = RPCProfiler(profiling_artifact(extraction, max_groups=cfg.max_groups, lib=lib),
                             rpc[0], rpc[1], settings=settings)
        remote.open()  # sessions start here (setup_s), not inside the measurements
        timed = TimedProfiler(remote)
        cost = measured_cost(extraction, max_groups=cfg.max_groups,
                            cache=MeasurementCache(cache_path), settings=settings,
                            profiler=timed, device=remote.device_name())
    setup_s = time.perf_counter() - t0
    try:
        t1 = time.perf_counter()
        if remote is not None:
            cost.prefetch(candidate_stages(extraction.graph, cfg))
        result = search(extraction.graph, cost, cfg)
        search_s = time.perf_counter() - t1
    finally:
        if remote is not None:
            servers = dict(remote.counts)
            remote.close()
    out = {"stages": result.stats.stages_costed, "measured": cost.measured,
           "cached": cost.cache_hits, "profile_s": timed.seconds, "search_s": search_s,
           "setup_s": setup_s,
           "per_stage_ms": 1e3 * timed.seconds / cost.measured if cost.measured else None,
           "stage_runs": getattr(timed.inner, "runs", None),
           "dp_and_rest_s": search_s - timed.seconds,
           "schedule": result.schedule.summary(),
           "estimated_ms": 1e3 * (result.schedule.cost or 0.0)}
    if remote is not None:
        out["servers"] = servers
    return out


def bench_model(name: str, model: Any, settings: ProfileSettings, cfg: SearchConfig,
                rpc: tuple[str, str] | None, adaptive: bool = True) -> dict[str, Any]:
    t0 = time.perf_counter()
    layout = "NHWC" if name in ZOO else None
    extraction = graph_from_model(model, "llvm", cpu_layout=layout)
    lib = build_kernel_library(extraction.mod, extraction.target)
    compile_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="ios_bench_prof_") as tmp:
        path = Path(tmp) / "m.sqlite"
        cold = run_once(extraction, lib, path, settings, cfg, rpc, adaptive)
        warm = run_once(extraction, lib, path, settings, cfg, rpc, adaptive)
    return {"model": name, "kernels": len(extraction.graph.nodes),
            "width": extraction.graph.width, "compile_s": compile_s, "cold": cold,
            "warm": warm}



def print_table(rows: Sequence[dict[str, Any]]) -> None:
    print(f"\n{'model':14}{'kernels':>8}{'stages':>8}{'measured':>9}{'cached':>8}"
          f"{'profile_s':>10}{'search_s':>9}{'ms/stage':>9}{'warm meas':>10}{'warm s':>8}"
          f"{'setup_s':>8}{'compile_s':>10}")
    for r in rows:
        c, w = r["cold"], r["warm"]
        per = f"{c['per_stage_ms']:9.2f}" if c["per_stage_ms"] else f"{'-':>9}"
        print(f"{r['model']:14}{r['kernels']:8d}{c['stages']:8d}{c['measured']:9d}"
              f"{c['cached']:8d}{c['profile_s']:10.2f}{c['search_s']:9.2f}{per}"
              f"{w['measured']:10d}{w['search_s']:8.3f}{c['setup_s']:8.2f}"
              f"{r['compile_s']:10.2f}")
        if "servers" in c:
            print(f"{'':14}stages per server: {c['servers']}")


def default_out() -> Path:
    date = _dt.date.today().isoformat()
    host = re.sub(r"[^A-Za-z0-9-]+", "-", platform.node().split(".")[0])[:24].strip("-")
    return ROOT / "benchmarks" / "results" / f"profiling-{date}-{host or 'host'}.json"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS),
                    help=f"comma-separated, from {', '.join(MODELS)}")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--number", type=int, default=6)
    ap.add_argument("--repeat", type=int, default=6)
    ap.add_argument("--max-groups", type=int, default=8)
    ap.add_argument("--fixed", action="store_true",
                    help="time every stage with all --repeat repeats (no adaptive stop)")
    ap.add_argument("--rpc-tracker", help="profile on the servers of this tracker (HOST:PORT)")
    ap.add_argument("--rpc-key", help="device key of the RPC servers")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON output (default benchmarks/results/profiling-<date>-<host>.json)")
    args = ap.parse_args(argv)
    names = [n for n in args.models.split(",") if n]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    if (args.rpc_tracker is None) != (args.rpc_key is None):
        ap.error("--rpc-tracker and --rpc-key go together")
    rpc = (args.rpc_tracker, args.rpc_key) if args.rpc_tracker else None
    settings = ProfileSettings(args.warmup, args.number, args.repeat)
    cfg = SearchConfig(max_groups=args.max_groups)
    machine = machine_info()
    print(f"load average {machine.get('load_average')}", flush=True)
    t0 = time.perf_counter()
    rows = []
    for name in names:
        print(f"{name} ...", flush=True)
        rows.append(bench_model(name, MODELS[name](), settings, cfg, rpc, not args.fixed))
    print_table(rows)
    doc = {
        "format": "ios_tvm.bench_profiling", "version": 1,
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "command": [Path(sys.executable).name, *sys.argv],
        "machine": machine,
        "settings": {"warmup": settings.warmup, "number": settings.number,
                     "repeat": settings.repeat, "max_groups": cfg.max_groups,
                     "adaptive": not args.fixed,
                     "rpc_tracker": args.rpc_tracker, "rpc_key": args.rpc_key},
        "seconds": time.perf_counter() - t0,
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
    sys.exit(main())
