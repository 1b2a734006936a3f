"""Time the part DP: Python ``_PartSearch`` vs the C++ ``solve_part_native``, on one RandWire graph.

Usage: .venv/bin/python scripts/bench_native_dp.py [ws-32-4-0.75-3.txt] [--r 3] [--s 8]
       [--strategy concurrent] [--repeat 3]

Three numbers per engine (best of --repeat):
  cold  a fresh StageCostCache (the AnalyticCost model runs once per distinct stage),
  warm  a cache already holding every stage (DP + cache lookups only),
and for native also "core": a constant cost callback (the C++ DP plus FFI callbacks only).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ios_tvm import OpGraph, SearchConfig, _native
from ios_tvm.cost import AnalyticCost
from ios_tvm.scheduler.native import _get_solve_part, _to_i64, solve_part_native
from ios_tvm.scheduler.search import _PartSearch
from ios_tvm.scheduler.stage_cost import StageCostCache

ROOT = Path(__file__).resolve().parents[1]
DIRS = [ROOT / "ios_tvm" / "models" / "randwire_graphs",
        Path("/work/shared/reference/randwire_graphs")]


def load_randwire(name: str) -> OpGraph:
    for d in DIRS:
        if (d / name).is_file():
            w = (d / name).read_text().split()
            n, m = int(w[0]), int(w[1])
            return OpGraph.from_edges(n, [(int(w[2 + 2 * i]), int(w[3 + 2 * i])) for i in range(m)])
    raise SystemExit(f"{name} not found in {DIRS}")


def best_of(repeat: int, fn, make_cache) -> float:
    best = float("inf")
    for _ in range(repeat):
        cache = make_cache()
        t = time.perf_counter()
        fn(cache)
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("graph", nargs="?", default="ws-32-4-0.75-3.txt")
    ap.add_argument("--r", type=int, default=3)
    ap.add_argument("--s", type=int, default=8)
    ap.add_argument("--strategy", default="concurrent", choices=["concurrent", "merge", "both"])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    g = load_randwire(args.graph)
    n = len(g.nodes)
    cfg = SearchConfig(strategy=args.strategy, max_group_size=args.r, max_groups=args.s,
                       max_part_size=max(n, 1))
    can_merge = None if args.strategy == "concurrent" else (lambda graph, ops: len(ops) <= 3)
    _native.load()

    def py(cache: StageCostCache) -> None:
        _PartSearch(g, 0, n, cfg, cache, can_merge).stages()

    def nat(cache: StageCostCache) -> None:
        solve_part_native(g, 0, n, cfg, cache, can_merge)

    def cold() -> StageCostCache:
        return StageCostCache(AnalyticCost(g))

    def warm() -> StageCostCache:
        cache = cold()
        py(cache)
        return cache

    part = _PartSearch(g, 0, n, cfg, cold(), can_merge)
    part.stages()
    print(f"{args.graph}: {n} ops, strategy {args.strategy}, r={args.r}, s={args.s}: "
          f"{len(part.memo) - 1} states, {part.transitions} transitions")
    for label, make in (("cold", cold), ("warm", warm)):
        tp, tn = best_of(args.repeat, py, make), best_of(args.repeat, nat, make)
        print(f"  {label} cost cache: python {tp:.3f} s, native {tn:.3f} s ({tp / tn:.1f}x)")

    solve = _get_solve_part()
    full = (1 << n) - 1
    desc = [_to_i64(m & full) for m in g.descendant_masks]
    merge = can_merge is not None
    t = time.perf_counter()
    for _ in range(args.repeat):
        solve(n, desc, args.r, args.s, args.strategy != "merge", merge, False,
              lambda m, gs, s: 1.0, (lambda m: True) if merge else None)
    core = (time.perf_counter() - t) / args.repeat
    print(f"  native core (constant-cost callback): {core:.3f} s")


if __name__ == "__main__":
    main()
