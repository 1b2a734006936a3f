"""The IOS schedule search: a dynamic program over predecessor-closed op sets.

For a set ``S`` of ops still to schedule (always a down-set of the part), an *ending* is a
non-empty ``E`` in ``S`` that nothing in ``S - E`` depends on, so it can run as the last
stage. ``cost(S) = min over endings E and strategies of cost(S - E) + L(E)`` with
``cost({}) = 0`` (Ding et al., MLSys 2021, §4).

Concurrent endings. The groups of a concurrent stage are exactly the weakly connected
components of the ending (ops of different groups must not depend on each other, and a
component cannot be split without that). So the search enumerates every ending whose
components number at most ``max_groups`` and have at most ``max_group_size`` ops: it
builds the candidate groups of ``S`` (connected, successor-closed sets of at most ``r``
ops, grown as unions of overlapping descendant closures) and then every collection of at
most ``s`` disjoint candidates. Unlike IOS master this includes groups with several roots
that share a descendant (IOS issue #10).

Merge endings. Any subset of at least two sink ops of ``S`` that the ``can_merge``
predicate accepts becomes one merged kernel (IOS §5). Singletons always remain, so the
sequential schedule is in every strategy's space.

Large graphs are searched in parts, or as units (chains collapsed), which the DP is not
exact over; whatever the path, :func:`search` never returns a schedule that its own cost
model prices above the sequential one or, for the concurrent strategies, the greedy one.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ios_tvm.errors import ConfigError
from ios_tvm.ir.graph import OpGraph
from ios_tvm.ir.schedule import Schedule, Stage
from ios_tvm.scheduler.bits import bits_of
from ios_tvm.scheduler.config import SearchConfig
from ios_tvm.scheduler.native import MAX_NATIVE_OPS, native_search_enabled, solve_part_native
from ios_tvm.scheduler.partition import partition
from ios_tvm.scheduler.stage_cost import CalibratedBound, CostFn, StageCostCache
from ios_tvm.scheduler.units import Units, collapse_chains

logger = logging.getLogger(__name__)
#: ``can_merge(graph, ops)`` says whether ops (ids, ascending) may become one kernel.
MergePredicate = Callable[[OpGraph, tuple[int, ...]], bool]


@dataclass
class SearchStats:
    """Counters of one search (summed over parts)."""

    parts: int = 0
    states: int = 0
    transitions: int = 0
    stages_costed: int = 0
    cost_calls: int = 0
    seconds: float = 0.0
    #: With pruning: DP passes over the parts (one more per batch of stages measured), the
    #: distinct stages priced by their lower bound only (never measured), and the measured
    #: concurrent stages that came in below their bound (the bound's assumption failed).
    rounds: int = 0
    stages_bounded: int = 0
    bound_violations: int = 0
    #: With ``SearchConfig(bound="calibrated")``: the lowest stage-to-groups ratio measured
    #: (None: too few concurrent stages measured to use one).
    bound_ratio: float | None = None
    #: ... and the lowest chain-to-ops ratio of one-group stages of several ops.
    chain_ratio: float | None = None

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return asdict(self)


@dataclass
class SearchResult:
    """The schedule found and how much work finding it took."""

    schedule: Schedule
    stats: SearchStats = field(default_factory=SearchStats)


def sequential_schedule(graph: OpGraph) -> Schedule:
    """One op per stage, in id (topological) order."""
    return Schedule(tuple(Stage(((i,),)) for i in range(len(graph.nodes))),
                    meta={"strategy": "sequential"})


def greedy_schedule(graph: OpGraph, max_streams: int = 10) -> Schedule:
    """IOS's greedy (wavefront) baseline: every ready op in the stage, one op per group.

    When more than ``max_streams`` ops are ready, the first ones (by id) go in and the rest
    wait for the next stage.
    """
    n = len(graph.nodes)
    missing = [len(p) for p in graph.preds]
    ready = [i for i in range(n) if missing[i] == 0]
    stages = []
    while ready:
        ready.sort()
        now, ready = ready[:max_streams], ready[max_streams:]
        stages.append(Stage(tuple((i,) for i in now)))
        for i in now:
            for v in graph.succs[i]:
                missing[v] -= 1
                if missing[v] == 0:
                    ready.append(v)
    return Schedule(tuple(stages), meta={"strategy": "greedy", "max_streams": max_streams})


class _PartSearch:
    """The DP over one part ``[lo, hi)`` of the graph, with local bit indices."""

    def __init__(self, graph: OpGraph, lo: int, hi: int, cfg: SearchConfig,
                 cost: StageCostCache, can_merge: MergePredicate | None) -> None:
        self.graph = graph
        self.lo = lo
        self.n = hi - lo
        full = (1 << self.n) - 1
        self.desc = [(graph.descendant_masks[lo + i] >> lo) & full for i in range(self.n)]
        self.r = cfg.max_group_size
        self.s = cfg.max_groups
        self.concurrent = cfg.strategy in ("concurrent", "both")
        self.merge = cfg.strategy in ("merge", "both") and can_merge is not None
        self.singletons_only = not self.concurrent
        self.cost = cost
        self.can_merge = can_merge
        self.merge_ok: dict[int, bool] = {}
        self.memo: dict[int, float] = {0: 0.0}
        # best ending per state: (ending mask, groups as local masks, strategy)
        self.choice: dict[int, tuple[int, tuple[int, ...], str]] = {}
        self.transitions = 0

    # -- stages ----------------------------------------------------------------------------
    def _stage(self, groups: tuple[int, ...], strategy: str) -> Stage:
        lo = self.lo
        gs = sorted(tuple(lo + b for b in bits_of(g)) for g in groups)
        return Stage(tuple(gs), strategy)

    def _stage_cost(self, groups: tuple[int, ...], mask: int, strategy: str) -> float:
        return self.cost.lookup(mask << self.lo, strategy, lambda: self._stage(groups, strategy))

    # -- candidate groups ------------------------------------------------------------------
    def _groups(self, state: int) -> list[int]:
        """Connected, successor-closed subsets of ``state`` with at most r ops."""
        r = self.r
        closures = []
        for v in bits_of(state):
            c = (self.desc[v] & state) | (1 << v)
            if c.bit_count() <= r:
                closures.append(c)
        if r == 1 or len(closures) <= 1:
            return closures
        found = set(closures)
        frontier = list(found)
        while frontier:
            g = frontier.pop()
            for c in closures:
                if c & g and (c | g) != g:
                    u = c | g
                    if u not in found and u.bit_count() <= r:
                        found.add(u)
                        frontier.append(u)
        return sorted(found)

    # -- the DP ----------------------------------------------------------------------------
    def solve(self, state: int) -> float:
        """Minimum cost of scheduling the down-set ``state``."""
        memo = self.memo
        hit = memo.get(state)
        if hit is not None:
            return hit
        best = float("inf")
        best_choice: tuple[int, tuple[int, ...], str] | None = None
        groups = self._groups(state)
        if self.singletons_only:
            groups = [g for g in groups if g & (g - 1) == 0]
        solve = self.solve
        stage_cost = self._stage_cost
        s = self.s

        # Every collection of <= s pairwise-disjoint candidate groups is a concurrent ending.
        stack: list[tuple[int, int, tuple[int, ...]]] = [(0, 0, ())]
        ng = len(groups)
        while stack:
            start, used, chosen = stack.pop()
            for j in range(start, ng):
                g = groups[j]
                if g & used:
                    continue
                ending = used | g
                picked = (*chosen, g)
                self.transitions += 1
                total = solve(state ^ ending) + stage_cost(picked, ending, "concurrent")
                if total < best:
                    best = total
                    best_choice = (ending, picked, "concurrent")
                if len(picked) < s and not self.singletons_only:
                    stack.append((j + 1, ending, picked))

        if self.merge:
            sinks = [v for v in bits_of(state) if not self.desc[v] & state]
            if len(sinks) >= 2:
                sink_mask = 0
                for v in sinks:
                    sink_mask |= 1 << v
                sub = sink_mask
                while sub:
                    if sub & (sub - 1) and self._mergeable(sub):
                        self.transitions += 1
                        total = solve(state ^ sub) + stage_cost((sub,), sub, "merge")
                        if total < best:
                            best = total
                            best_choice = (sub, (sub,), "merge")
                    sub = (sub - 1) & sink_mask
        assert best_choice is not None, "every non-empty down-set has a singleton ending"
        memo[state] = best
        self.choice[state] = best_choice
        return best

    def _mergeable(self, mask: int) -> bool:
        ok = self.merge_ok.get(mask)
        if ok is None:
            assert self.can_merge is not None
            ok = bool(self.can_merge(self.graph, tuple(self.lo + b for b in bits_of(mask))))
            self.merge_ok[mask] = ok
        return ok

    def stages(self) -> list[Stage]:
        """The optimal stages of the whole part, first to last."""
        state = (1 << self.n) - 1
        self.solve(state)
        out = []
        while state:
            ending, groups, strategy = self.choice[state]
            out.append(self._stage(groups, strategy))
            state ^= ending
        return out[::-1]


def _solve_part(graph: OpGraph, lo: int, hi: int, cfg: SearchConfig, cost: StageCostCache,
                can_merge: MergePredicate | None, use_native: bool
                ) -> tuple[list[Stage], float, int, int]:
    """The DP over the part ``[lo, hi)``: stages, total, states and transitions."""
    if use_native and hi - lo <= MAX_NATIVE_OPS:
        return solve_part_native(graph, lo, hi, cfg, cost, can_merge)
    part = _PartSearch(graph, lo, hi, cfg, cost, can_merge)
    stages = part.stages()
    return stages, part.memo[(1 << (hi - lo)) - 1], len(part.memo) - 1, part.transitions


def _solve_part_pruned(graph: OpGraph, lo: int, hi: int, cfg: SearchConfig,
                       cost: StageCostCache, bound: CostFn, can_merge: MergePredicate | None,
                       use_native: bool, stats: SearchStats
                       ) -> tuple[list[Stage], float, int, int]:
    """The DP over a part, measuring only the concurrent stages it can still choose.

    Each pass runs the DP with every concurrent stage of several groups not yet costed priced
    at a lower bound: the larger of ``bound`` and the cost (or, if not costed, this bound) of
    every stage with one group fewer (adding a group never makes a stage faster). One-group
    stages, merges and stages the cost model already knows (``peek``: a cache hit) are
    costed as asked. When the schedule found uses only costed stages, it is optimal for the
    real costs too: every other schedule costs at least its bound-priced total, which is at
    least this one's. Otherwise its uncosted stages are costed (one batch, through the cost
    model's ``prefetch`` when it has one) and the DP runs again. Exact whenever the bound
    never exceeds the real cost; each pass costs at least one new stage, so it ends.

    A bound that learns (:class:`~ios_tvm.scheduler.stage_cost.CalibratedBound`) is shown
    every stage measured or found in the cache, prices chains (one group of several ops)
    too, and a pass in which it learnt something is rerun before anything is measured.
    """
    known = cost.table
    observe = getattr(bound, "observe", None)  # a bound that learns from measurements
    chain_price = getattr(bound, "chain_price", None)
    while True:
        stats.rounds += 1
        learnt = getattr(bound, "state", None)
        bounded: set[tuple[int, str]] = set()
        lower: dict[int, float] = {}  # this pass's bound by op mask

        def lower_bound(stage: Stage, lower: dict[int, float] = lower) -> float:
            value = known.get((stage.mask, "concurrent"))
            if value is not None:
                return value
            lb = lower.get(stage.mask)
            if lb is None:
                lb = bound(stage)
                if len(stage.groups) > 2:
                    for i in range(len(stage.groups)):
                        fewer = Stage(stage.groups[:i] + stage.groups[i + 1:])
                        lb = max(lb, lower_bound(fewer))
                lower[stage.mask] = lb
            return lb

        def optimistic(stage: Stage, bounded: set[tuple[int, str]] = bounded) -> float:
            key = (stage.mask, stage.strategy)
            value = known.get(key)
            if value is not None:
                return value
            if stage.strategy != "concurrent":
                return cost(stage)
            if len(stage.groups) == 1:
                if len(stage.ops) > 1 and chain_price is not None and cost.peek(stage) is None:
                    price = chain_price(stage)  # a calibrated bound's price of a chain
                    if price is not None:
                        bounded.add(key)
                        return price
                value = cost(stage)
                if observe is not None and len(stage.ops) > 1:
                    observe(stage, value)
                return value
            if cost.peek(stage) is not None:  # a cache hit: as good as a measurement
                value = cost(stage)
                if observe is not None:
                    observe(stage, value)
                return value
            bounded.add(key)
            return lower_bound(stage)

        stages, total, states, transitions = _solve_part(
            graph, lo, hi, cfg, StageCostCache(optimistic), can_merge, use_native)
        todo = [st for st in stages if (st.mask, st.strategy) not in known]
        if todo and getattr(bound, "state", None) != learnt:
            # A calibrated bound learnt from cached stages during this pass: price with
            # what it knows now before measuring anything. (Rerunning also when nothing is
            # left to measure makes a warm search follow the cold one exactly, but it kept
            # NASNet's cold search measuring past 10 minutes: the lowest ratios come from
            # noisy outliers. Left as is: a warm NASNet search re-measures ~10%.)
            continue
        if not todo:
            stats.stages_bounded += len(bounded - known.keys())
            # The last pass looked up as many stages as an unpruned DP: count them the same.
            cost.counters.calls += transitions
            return stages, total, states, transitions
        cost.prefetch(todo)
        for st in todo:
            if len(st.groups) > 1:  # before st is costed
                lb = lower_bound(st)
            elif (st.strategy == "concurrent" and len(st.ops) > 1
                  and chain_price is not None):
                lb = chain_price(st) or 0.0
            else:
                lb = 0.0
            value = cost(st)
            if value < lb * (1 - 1e-9):
                stats.bound_violations += 1
                logger.debug("stage %s measured below its lower bound", st)
            if observe is not None and st.strategy == "concurrent":
                observe(st, value)


def _baselines_total(graph: OpGraph, cfg: SearchConfig, cost: StageCostCache
                     ) -> list[tuple[Schedule, float]]:
    """The baselines of ``cfg``'s strategy with their total costs (sequential; greedy too)."""
    baselines = [sequential_schedule(graph)]
    if cfg.strategy in ("concurrent", "both"):
        baselines.append(greedy_schedule(graph, min(cfg.greedy_max_streams, cfg.max_groups)))
    return [(base, sum(cost(s) for s in base.stages)) for base in baselines]


def _no_worse_than_baselines(graph: OpGraph, cfg: SearchConfig, cost: StageCostCache,
                             stages: list[Stage], total: float, meta: dict[str, Any]
                             ) -> tuple[list[Stage], float]:
    """The cheapest of the searched stages and the baselines in the strategy's space.

    The DP is exact only over its own space: parts are searched apart (stages never span a
    cut, where the wavefront baseline may run wide) and units never split a chain across
    stages or groups (sequential and greedy do). Whatever the path, the search must not
    return a schedule that its own cost model prices above sequential or, for the
    concurrent strategies, greedy within the same stream limit. Both baselines are always
    costed, so that the stages a search asks for do not depend on the costs (a measured
    search prefetches exactly them, :func:`ios_tvm.cost.measured.candidate_stages`).
    """
    dp_total = total
    for base, base_total in _baselines_total(graph, cfg, cost):
        if base_total < total:
            stages, total = list(base.stages), base_total
            meta["chosen"] = base.meta["strategy"]
    if total < dp_total:
        logger.info("%s schedule (%.4g s) beats the searched one (%.4g s)", meta["chosen"],
                    total, dp_total)
        meta["dp_cost"] = dp_total
    return stages, total


class _UnitCost:
    """The kernel graph's cost of unit-graph stages (and its ``peek`` and ``prefetch``)."""

    def __init__(self, cost: StageCostCache, units: Units) -> None:
        self.cost = cost
        self.units = units

    def __call__(self, stage: Stage) -> float:
        return self.cost(self.units.expand(stage))

    def peek(self, stage: Stage) -> float | None:
        return self.cost.peek(self.units.expand(stage))

    def prefetch(self, stages: list[Stage]) -> None:
        self.cost.prefetch([self.units.expand(s) for s in stages])


def _units_for(graph: OpGraph, cfg: SearchConfig) -> Units | None:
    """The unit graph to search instead of ``graph``, or None to search kernels."""
    collapse = cfg.collapse_chains
    if collapse is None:
        collapse = len(graph.nodes) > cfg.max_part_size
    if not collapse:
        return None
    units = collapse_chains(graph)
    return units if units.collapsed else None


def search(graph: OpGraph, cost: CostFn, config: SearchConfig | None = None, *,
           can_merge: MergePredicate | None = None, progress: bool = False,
           native: bool | None = None, prune: bool | None = None,
           lower_bound: CostFn | None = None) -> SearchResult:
    """Find a schedule of ``graph`` minimising the summed stage cost.

    Parameters
    ----------
    graph
        The operator graph.
    cost
        Any callable ``Stage -> seconds``; it is memoised by op set and strategy.
    config
        Strategy and pruning limits (see :class:`SearchConfig`).
    can_merge
        Predicate for merge stages; without it ``merge``/``both`` only use singletons and
        concurrent stages.
    progress
        Show a progress bar over the parts.
    native
        Use the C++ DP for parts of at most 64 ops (same results, faster). Default: when the
        native library loads and ``$IOS_TVM_NATIVE_SEARCH`` is not ``0``.
    prune
        Measure only the concurrent stages the DP can still choose: each part's DP runs with
        the stages not yet costed priced at ``lower_bound``, and is rerun after costing the
        ones its schedule uses, until that schedule uses costed stages only (exact when the
        bound is one; see :func:`~ios_tvm.scheduler.stage_cost.group_bound`). ``None``
        (default): when a bound is given, or when ``config.prune`` and ``cost`` is a
        :class:`~ios_tvm.scheduler.stage_cost.StageCostCache` that has one.
    lower_bound
        Never above the cost of a concurrent stage; default: ``cost.lower_bound``.

    Returns
    -------
    SearchResult
        The schedule (its ``cost`` is the DP's estimate, ``meta`` records the settings) and
        counters: parts, DP states, transitions tried, distinct stages costed.
    """
    cfg = config or SearchConfig()
    t0 = time.perf_counter()
    memo_cost = cost if isinstance(cost, StageCostCache) else StageCostCache(cost)
    bound = lower_bound or memo_cost.lower_bound
    if prune and bound is None:
        raise ConfigError("prune=True needs a lower bound: pass lower_bound= or a "
                          "StageCostCache built with one")
    if prune is None:
        prune = cfg.prune if lower_bound is None else True
    if not prune or cfg.strategy in ("sequential", "greedy"):
        bound = None
    calls0, distinct0 = memo_cost.counters.calls, memo_cost.counters.distinct
    if bound is not None and cfg.bound == "calibrated":
        # The baselines are costed at the end anyway; costing them first lets a calibrated
        # bound learn from their stages in a cold search as it does in a warm one (where
        # they are cache hits from the start), so the two follow the same path.
        _baselines_total(graph, cfg, memo_cost)
    stats = SearchStats()
    meta: dict[str, Any] = {**cfg.to_json(), "num_ops": len(graph.nodes)}
    if cfg.strategy in ("sequential", "greedy"):
        base = (sequential_schedule(graph) if cfg.strategy == "sequential"
                else greedy_schedule(graph, cfg.greedy_max_streams))
        total = sum(memo_cost(s) for s in base.stages)
        stages = list(base.stages)
    elif (units := _units_for(graph, cfg)) is not None:
        # Search the unit graph (chains collapsed) and expand its stages back to kernels.
        unit_cost = _UnitCost(memo_cost, units)

        unit_merge = None
        if can_merge is not None:
            def unit_merge(_: OpGraph, us: tuple[int, ...]) -> bool:
                ops = units.single_kernel(us)
                return ops is not None and can_merge(graph, ops)

        unit_bound = None
        if bound is not None:
            def unit_bound(stage: Stage) -> float:
                return bound(units.expand(stage))

        inner = search(units.graph, unit_cost, replace(cfg, collapse_chains=False),
                       can_merge=unit_merge, progress=progress, native=native,
                       prune=bound is not None, lower_bound=unit_bound)
        stages = [units.expand(s) for s in inner.schedule.stages]
        total = float(inner.schedule.cost or 0.0)
        stats.parts, stats.states = inner.stats.parts, inner.stats.states
        stats.transitions = inner.stats.transitions
        stats.rounds, stats.stages_bounded = inner.stats.rounds, inner.stats.stages_bounded
        stats.bound_violations = inner.stats.bound_violations
        stats.bound_ratio = inner.stats.bound_ratio
        stats.chain_ratio = inner.stats.chain_ratio
        meta["units"] = len(units.members)  # "parts" below are ranges of unit ids
        if "parts" in inner.schedule.meta:
            meta["parts"] = inner.schedule.meta["parts"]
        if "chosen" in inner.schedule.meta:  # a baseline over units: still a unit schedule
            meta["unit_chosen"] = inner.schedule.meta["chosen"]
    else:
        parts = partition(graph, cfg.max_part_size)
        stats.parts = len(parts)
        stages = []
        total = 0.0
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(limit, 4 * cfg.max_part_size + 1000))
        try:
            iterator: Any = parts
            if progress:
                from tqdm import tqdm

                iterator = tqdm(parts, desc="IOS search", unit="part")
            use_native = native_search_enabled() if native is None else native
            if bound is not None and cfg.bound == "calibrated":
                bound = CalibratedBound(bound, memo_cost)
            for lo, hi in iterator:
                if bound is None:
                    part_stages, part_total, part_states, part_transitions = _solve_part(
                        graph, lo, hi, cfg, memo_cost, can_merge, use_native)
                else:
                    part_stages, part_total, part_states, part_transitions = (
                        _solve_part_pruned(graph, lo, hi, cfg, memo_cost, bound, can_merge,
                                           use_native, stats))
                stages.extend(part_stages)
                total += part_total
                stats.states += part_states
                stats.transitions += part_transitions
        finally:
            sys.setrecursionlimit(limit)
        if isinstance(bound, CalibratedBound):
            stats.bound_ratio = bound.ratio
            stats.chain_ratio = bound.chain_ratio
        meta["parts"] = [list(p) for p in parts]
    if cfg.strategy not in ("sequential", "greedy"):
        stages, total = _no_worse_than_baselines(graph, cfg, memo_cost, stages, total, meta)
    stats.cost_calls = memo_cost.counters.calls - calls0
    stats.stages_costed = memo_cost.counters.distinct - distinct0
    stats.seconds = time.perf_counter() - t0
    logger.debug("search %s: %s", cfg.strategy, stats)
    return SearchResult(Schedule(tuple(stages), total, meta), stats)


def candidate_stages(graph: Any, config: Any = None) -> list[Stage]:
    """Every distinct stage the IOS search of ``graph`` with ``config`` will ask the cost of.

    The DP visits every state and costs every ending whatever the costs are, so one search
    with a constant cost model records exactly the stages a measured search needs; measure
    them in one batch with :meth:`MeasuredCost.prefetch`.
    """
    seen: dict[tuple[int, str], Stage] = {}

    def record(stage: Stage) -> float:
        seen.setdefault((stage.mask, stage.strategy), stage)
        return 1.0

    search(graph, record, config)
    return list(seen.values())
