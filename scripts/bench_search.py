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
import cProfile
import datetime as _dt
import io
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
    args = p.parse_args(argv)

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
