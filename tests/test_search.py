"""The IOS dynamic program against brute force, on random DAGs with random cost tables."""

from __future__ import annotations

import itertools
import random
import zlib
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ios_tvm import OpGraph, SearchConfig, Stage, sequential_schedule, validate_schedule
from ios_tvm._native import native_available
from ios_tvm.cost import AnalyticCost
from ios_tvm.errors import ConfigError
from ios_tvm.ir.schedule import Schedule
from ios_tvm.scheduler.search import greedy_schedule, search
from ios_tvm.scheduler.stage_cost import StageCostCache, group_bound

# Both DP implementations (Python and the C++ one in passes/) must be exactly optimal.
IMPLEMENTATIONS = pytest.mark.parametrize("native", [
    False, pytest.param(True, marks=pytest.mark.skipif(not native_available(),
                                                       reason="native library not built"))])


# -- random inputs -------------------------------------------------------------------------
@st.composite
def dags(draw: st.DrawFn, max_nodes: int = 9) -> OpGraph:
    """Random DAGs with ids in topological order (edges low -> high)."""
    n = draw(st.integers(1, max_nodes))
    pairs = [(u, v) for v in range(n) for u in range(v)]
    density = draw(st.sampled_from([0.15, 0.3, 0.5]))
    edges = [p for p in pairs if draw(st.floats(0, 1)) < density]
    return OpGraph.from_edges(n, edges)


def stable_seed(*key: object) -> int:
    """A seed from ``key`` that is the same in every process (``hash`` of a str is not:
    it changes with PYTHONHASHSEED, and so would every cost table below)."""
    return zlib.crc32(repr(key).encode())


@st.composite
def chained_dags(draw: st.DrawFn, max_units: int = 6, max_chain: int = 3) -> OpGraph:
    """Random DAGs whose nodes are replaced by chains of 1 to ``max_chain`` kernels (what
    TVM's fusion leaves of a ReLU-SepConv unit), so that chain collapsing has work to do."""
    n = draw(st.integers(1, max_units))
    density = draw(st.sampled_from([0.15, 0.3, 0.5]))
    base = [(u, v) for v in range(n) for u in range(v) if draw(st.floats(0, 1)) < density]
    lengths = [draw(st.integers(1, max_chain)) for _ in range(n)]
    heads = [sum(lengths[:i]) for i in range(n)]
    edges = [(h + k, h + k + 1) for h, length in zip(heads, lengths, strict=True)
             for k in range(length - 1)]
    edges += [(heads[u] + lengths[u] - 1, heads[v]) for u, v in base]
    return OpGraph.from_edges(sum(lengths), edges)


class RandomCost:
    """A random but fixed cost per (op set, strategy): no structure for the DP to exploit."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __call__(self, stage: Stage) -> float:
        rng = random.Random(stable_seed(self.seed, stage.mask, stage.strategy))
        return rng.uniform(0.1, 2.0) * len(stage.ops) ** rng.uniform(0.3, 1.2)


class StreamCost:
    """Groups run side by side, each its ops one after another (random fixed op times), plus a
    fixed price for every group of several ops: a cost model under which keeping a chain of
    kernels in one group (as the unit search must) loses to greedy's one op per group."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def op_seconds(self, op: int) -> float:
        return random.Random(stable_seed(self.seed, "op", op)).uniform(0.1, 2.0)

    def __call__(self, stage: Stage) -> float:
        return max(sum(self.op_seconds(op) for op in g) for g in stage.groups) + sum(
            1.0 for g in stage.groups if len(g) > 1)


def merge_table(seed: int):
    """A random but fixed merge predicate per op set."""

    def can_merge(graph: OpGraph, ops: tuple[int, ...]) -> bool:
        return random.Random(stable_seed(seed, "merge", ops)).random() < 0.5

    return can_merge


def test_random_cost_is_the_same_in_every_process():
    """The cost tables must not depend on PYTHONHASHSEED, or a failure cannot be replayed."""
    import subprocess
    import sys

    code = ("from test_search import RandomCost; from ios_tvm import Stage; "
            "print(RandomCost(7)(Stage(((0, 1), (2,)), 'concurrent')))")
    out = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, env={**__import__("os").environ, "PYTHONHASHSEED": seed,
                                           "PYTHONPATH": str(Path(__file__).parent)}
                          ).stdout for seed in ("1", "2")}
    assert len(out) == 1 and out != {""}


# -- brute force, written independently of the DP's ending enumeration -----------------------
def _components(graph: OpGraph, ops: list[int]) -> list[list[int]]:
    parent = {op: op for op in ops}

    def find(a: int) -> int:
        while parent[a] != a:
            a = parent[a]
        return a

    for v in ops:
        for u in graph.preds[v]:
            if u in parent:
                parent[find(u)] = find(v)
    comps: dict[int, list[int]] = {}
    for op in ops:
        comps.setdefault(find(op), []).append(op)
    return sorted(sorted(c) for c in comps.values())


def brute_force(graph: OpGraph, cost, strategy: str, r: int, s: int, can_merge=None) -> float:
    """Minimum over every schedule of the search space, by trying every subset as last stage."""
    n = len(graph.nodes)
    concurrent = strategy in ("concurrent", "both")
    merge = strategy in ("merge", "both") and can_merge is not None

    @cache
    def best(state: int) -> float:
        if state == 0:
            return 0.0
        ops_left = [i for i in range(n) if state >> i & 1]
        result = float("inf")
        for k in range(1, len(ops_left) + 1):
            for ending in itertools.combinations(ops_left, k):
                emask = sum(1 << i for i in ending)
                rest = state & ~emask
                if any(graph.pred_masks[v] & emask for v in range(n) if rest >> v & 1):
                    continue  # something left behind depends on the ending
                comps = _components(graph, list(ending))
                if (concurrent or k == 1) and len(comps) <= s and all(len(c) <= r for c in comps):
                    stage = Stage(tuple(tuple(c) for c in comps))
                    result = min(result, best(rest) + cost(stage))
                if merge and k >= 2 and len(comps) == k and can_merge(graph, ending):
                    result = min(result, best(rest) + cost(Stage((ending,), "merge")))
        return result

    return best((1 << n) - 1)


def all_schedules(graph: OpGraph, r: int, s: int):
    """Every concurrent schedule of a tiny graph, listed explicitly (checks brute_force)."""
    n = len(graph.nodes)

    def rec(done: int, prefix: list[Stage]):
        if done == (1 << n) - 1:
            yield Schedule(tuple(prefix))
            return
        left = [i for i in range(n) if not done >> i & 1]
        for k in range(1, len(left) + 1):
            for first in itertools.combinations(left, k):
                if any(graph.pred_masks[v] & ~done & ~sum(1 << i for i in first)
                       for v in first):
                    continue  # needs an op that has not run
                comps = _components(graph, list(first))
                if len(comps) > s or any(len(c) > r for c in comps):
                    continue
                yield from rec(done | sum(1 << i for i in first),
                               [*prefix, Stage(tuple(tuple(c) for c in comps))])

    yield from rec(0, [])


def schedule_cost(schedule: Schedule, cost) -> float:
    return sum(cost(stage) for stage in schedule.stages)


# -- optimality ---------------------------------------------------------------------------
@settings(max_examples=60)
@given(graph=dags(max_nodes=6), seed=st.integers(0, 10_000), r=st.integers(1, 3),
       s=st.integers(1, 3))
def test_brute_force_matches_explicit_enumeration(graph, seed, r, s):
    cost = RandomCost(seed)
    explicit = min(schedule_cost(sch, cost) for sch in all_schedules(graph, r, s))
    assert brute_force(graph, cost, "concurrent", r, s) == pytest.approx(explicit, rel=1e-12)


@IMPLEMENTATIONS
@settings(max_examples=150)
@given(graph=dags(), seed=st.integers(0, 10_000), r=st.integers(1, 4), s=st.integers(1, 4),
       strategy=st.sampled_from(["concurrent", "merge", "both"]))
def test_dp_is_optimal(native, graph, seed, r, s, strategy):
    cost = RandomCost(seed)
    can_merge = merge_table(seed)
    cfg = SearchConfig(strategy=strategy, max_groups=s, max_group_size=r)
    result = search(graph, cost, cfg, can_merge=can_merge, native=native)
    expected = brute_force(graph, cost, strategy, r, s, can_merge)
    assert result.schedule.cost == pytest.approx(expected, rel=1e-9)
    # The schedule is valid, keeps the limits, and really costs what the DP says.
    validate_schedule(graph, result.schedule, max_groups=s, max_group_size=r)
    assert schedule_cost(result.schedule, cost) == pytest.approx(result.schedule.cost, rel=1e-9)
    for stage in result.schedule.stages:
        if stage.strategy == "merge":
            assert strategy != "concurrent" and can_merge(graph, stage.ops)
        elif strategy == "merge":
            assert len(stage.ops) == 1
    # Never worse than sequential under its own cost model.
    assert result.schedule.cost <= schedule_cost(sequential_schedule(graph), cost) * (1 + 1e-9)


@IMPLEMENTATIONS
@settings(max_examples=40)
@given(graph=dags(max_nodes=10), seed=st.integers(0, 10_000))
def test_dp_is_optimal_on_ten_ops(native, graph, seed):
    cost = RandomCost(seed)
    result = search(graph, cost, SearchConfig(max_groups=8, max_group_size=3), native=native)
    assert result.schedule.cost == pytest.approx(brute_force(graph, cost, "concurrent", 3, 8),
                                                 rel=1e-9)
    validate_schedule(graph, result.schedule, max_groups=8, max_group_size=3)


@IMPLEMENTATIONS
def test_group_with_two_roots_sharing_a_descendant(native):
    """IOS issue #10: {a, b, c} with a->c, b->c must be reachable as ONE group."""
    graph = OpGraph.from_edges(3, [(0, 2), (1, 2)])
    one_group = Stage(((0, 1, 2),))

    def cost(stage: Stage) -> float:
        return 1.0 if stage == one_group else 10.0

    result = search(graph, cost, SearchConfig(max_group_size=3), native=native)
    assert result.schedule.stages == (one_group,)
    assert result.schedule.cost == 1.0


def test_optimal_on_inception_like_block_with_analytic_cost():
    # 4 branches from one input, joined by a concat.
    edges = [(0, 1), (0, 2), (0, 3), (0, 4), (2, 5), (3, 6), (6, 7), (4, 8),
             (1, 9), (5, 9), (7, 9), (8, 9)]
    graph = OpGraph.from_edges(10, edges, flops=[1e9, 2e8, 1e8, 1e8, 5e7, 9e8, 5e8, 8e8,
                                                  2e8, 1e6])
    cost = AnalyticCost(graph, "v100")
    result = search(graph, cost)
    assert result.schedule.cost == pytest.approx(brute_force(graph, cost, "concurrent", 3, 8))
    seq = schedule_cost(sequential_schedule(graph), cost)
    assert result.schedule.cost < seq  # the branches do run concurrently
    assert result.schedule.max_groups >= 2


# -- counters and memoisation -------------------------------------------------------------
def test_cost_is_memoised_and_counted():
    graph = OpGraph.from_edges(6, [(0, 1), (0, 2), (1, 3), (2, 3), (3, 4), (3, 5)])
    calls: list[int] = []

    def cost(stage: Stage) -> float:
        calls.append(stage.mask)
        return float(len(stage.ops))

    cache = StageCostCache(cost)
    first = search(graph, cache)
    assert first.stats.stages_costed == len(calls) == len(set(calls))
    assert first.stats.cost_calls >= first.stats.stages_costed
    # The DP costs one stage per transition; then the two baselines are priced.
    baselines = len(sequential_schedule(graph)) + len(greedy_schedule(graph, 8))
    assert first.stats.transitions + baselines == first.stats.cost_calls
    assert first.stats.states > 0
    again = search(graph, cache)
    assert again.stats.stages_costed == 0  # everything came from the cache
    assert again.schedule == first.schedule


def test_cost_model_returning_nan_is_rejected():
    graph = OpGraph.from_edges(2, [(0, 1)])
    with pytest.raises(ValueError, match="cost model returned nan"):
        search(graph, lambda stage: float("nan"))


@IMPLEMENTATIONS
def test_cost_model_returning_inf_is_rejected_except_for_merges(native):
    """Infinite means impossible, which only a merge may be; it used to end the DP in an
    AssertionError (Python) or a TVM RuntimeError (C++)."""
    graph = OpGraph.from_edges(3, [(0, 1), (0, 2)])
    with pytest.raises(ValueError, match="cost model returned inf for the concurrent stage"):
        search(graph, lambda stage: float("inf"), native=native)

    def no_merge(stage: Stage) -> float:
        return float("inf") if stage.strategy == "merge" else 1.0

    result = search(graph, no_merge, SearchConfig(strategy="both"),
                    can_merge=lambda g, ops: True, native=native)
    assert result.schedule.cost < float("inf")
    assert all(s.strategy != "merge" for s in result.schedule.stages)


def test_partition_rejects_a_part_size_below_one():
    from ios_tvm.scheduler.partition import partition

    graph = OpGraph.from_edges(3, [(0, 1), (1, 2)])
    for bad in (0, -1):
        with pytest.raises(ValueError, match="max_part_size must be a positive integer"):
            partition(graph, bad)


# -- baselines -----------------------------------------------------------------------------
def test_sequential_and_greedy_baselines():
    graph = OpGraph.from_edges(7, [(0, 1), (0, 2), (0, 3), (1, 4), (2, 4), (3, 5), (4, 6), (5, 6)])
    seq = sequential_schedule(graph)
    assert [s.groups for s in seq.stages] == [((i,),) for i in range(7)]
    greedy = greedy_schedule(graph)
    assert [s.groups for s in greedy.stages] == [((0,),), ((1,), (2,), (3,)), ((4,), (5,)),
                                                 ((6,),)]
    capped = greedy_schedule(graph, max_streams=2)
    assert max(len(s.groups) for s in capped.stages) == 2
    for sch in (seq, greedy, capped):
        validate_schedule(graph, sch)
    result = search(graph, lambda s: 1.0, SearchConfig(strategy="greedy"))
    assert result.schedule.stages == greedy.stages and result.schedule.cost == 4.0


@settings(max_examples=50)
@given(graph=dags(max_nodes=12), cap=st.integers(1, 4))
def test_greedy_is_valid_and_capped(graph, cap):
    sch = greedy_schedule(graph, cap)
    validate_schedule(graph, sch, max_groups=cap, max_group_size=1)


# -- partitioned search -------------------------------------------------------------------
def _blocks(num_blocks: int, width: int) -> OpGraph:
    """Blocks of ``width`` parallel ops between single-op joins: 0 -> (1..w) -> w+1 -> ..."""
    edges = []
    join = 0
    n = 1
    for _ in range(num_blocks):
        branch = list(range(n, n + width))
        nxt = n + width
        edges += [(join, b) for b in branch] + [(b, nxt) for b in branch]
        join, n = nxt, nxt + 1
    return OpGraph.from_edges(n, edges)


def test_partitioned_search_cuts_at_block_joins():
    graph = _blocks(num_blocks=6, width=3)  # 25 ops
    cost = AnalyticCost(graph)
    cfg = SearchConfig(max_part_size=9)
    result = search(graph, cost, cfg)
    validate_schedule(graph, result.schedule, max_groups=8, max_group_size=3)
    parts = result.schedule.meta["parts"]
    assert all(hi - lo <= 9 for lo, hi in parts)
    # Every cut sits right after a join op (ids 0, 4, 8, ...): the graph is one tensor wide there.
    assert all(lo % 4 == 1 for lo, _ in parts[1:])
    # Cutting at joins loses nothing on this graph: same cost as the unpartitioned search.
    whole = search(graph, cost, SearchConfig(max_part_size=100))
    assert result.schedule.cost == pytest.approx(whole.schedule.cost)
    assert result.stats.transitions < whole.stats.transitions


def test_empty_graph():
    graph = OpGraph([], {})
    result = search(graph, lambda s: 1.0)
    assert result.schedule.stages == () and result.schedule.cost == 0.0


@settings(max_examples=60)
@given(graph=dags(max_nodes=14), seed=st.integers(0, 10_000), part=st.integers(2, 6))
def test_partitioned_search_never_loses_to_greedy(graph, seed, part):
    """Parts are searched apart; the result still costs no more than the wavefront baseline."""
    cost = RandomCost(seed)
    cfg = SearchConfig(max_groups=3, max_group_size=2, max_part_size=part)
    result = search(graph, cost, cfg)
    validate_schedule(graph, result.schedule, max_groups=3)
    greedy = greedy_schedule(graph, 3)
    assert result.schedule.cost <= schedule_cost(greedy, cost) * (1 + 1e-9)
    assert result.schedule.cost == pytest.approx(schedule_cost(result.schedule, cost))


def test_analytic_cpu_cost_gains_nothing_from_concurrency():
    """On a CPU every kernel already uses every core: splitting cores between groups cannot
    beat running the ops one after another, so the search keeps them sequential; on a GPU
    the same small ops gain from running side by side."""
    from dataclasses import replace

    from ios_tvm.cost.analytic import DEVICES

    g = OpGraph.from_edges(4, [(0, 1), (0, 2), (1, 3), (2, 3)], flops=[1e9, 2e8, 3e8, 1e9])
    cpu = AnalyticCost(g, replace(DEVICES["cpu"], cores=4))
    both = Stage(((1,), (2,)))
    assert cpu(both) > cpu(Stage(((1,),))) + cpu(Stage(((2,),)))
    result = search(g, cpu, SearchConfig())
    assert all(len(s.groups) == 1 for s in result.schedule.stages)
    gpu = AnalyticCost(g, "v100")
    assert gpu(both) < gpu(Stage(((1,),))) + gpu(Stage(((2,),)))


@pytest.mark.parametrize("cores", [1, 2, 16])
def test_analytic_cpu_stage_never_beats_its_ops_one_by_one(cores: int) -> None:
    """Wide stages of tiny ops too: a CPU worker pays each kernel's dispatch, so no stage of
    several groups costs less than its ops run alone in sequence (it used to, by sharing
    launch overhead, from 16 ops on: NASNet's analytic CPU schedule then ran 0.83x)."""
    from dataclasses import replace

    from ios_tvm.cost.analytic import DEVICES

    chains, length = 8, 3
    n = chains * length
    edges = [(c * length + k, c * length + k + 1) for c in range(chains)
             for k in range(length - 1)]
    rng = np.random.default_rng(cores)
    g = OpGraph.from_edges(n, edges, flops=list(rng.uniform(1e3, 1e8, n)))
    cpu = AnalyticCost(g, replace(DEVICES["cpu"], cores=cores))
    alone = [cpu(Stage(((i,),))) for i in range(n)]
    for k in range(2, chains + 1):
        for size in range(1, length + 1):
            groups = tuple(tuple(range(c * length, c * length + size)) for c in range(k))
            assert cpu(Stage(groups)) > sum(alone[i] for grp in groups for i in grp)
    assert all(len(s.groups) == 1 for s in search(g, cpu, SearchConfig()).schedule.stages)


# -- never worse than the baselines, whatever the path --------------------------------------
def _baseline_costs(graph: OpGraph, cost, cfg: SearchConfig) -> list[float]:
    """The costs of the baselines a strategy's search must never lose to."""
    costs = [schedule_cost(sequential_schedule(graph), cost)]
    if cfg.strategy in ("concurrent", "both"):
        greedy = greedy_schedule(graph, min(cfg.greedy_max_streams, cfg.max_groups))
        costs.append(schedule_cost(greedy, cost))
    return costs


@IMPLEMENTATIONS
def test_unit_search_in_one_part_never_loses_to_greedy(native):
    """Issue 17 #12: 0 -> 2 is a chain, so with 3 ops > max_part_size=2 the search collapses it
    into a unit; the two units then fit in one part, and greedy's {0}|{1}, {2} (0.2) was never
    compared with the unit DP's {0, 2}, {1} (2.0)."""
    graph = OpGraph.from_edges(3, [(0, 2)])

    def cost(stage: Stage) -> float:
        if stage.groups in (((0,), (1,)), ((2,),)):
            return 0.1
        return 5.0 if len(stage.groups) > 1 else 1.0

    cfg = SearchConfig(max_part_size=2)
    result = search(graph, cost, cfg, native=native)
    validate_schedule(graph, result.schedule)
    assert result.schedule.cost == pytest.approx(0.2)
    assert schedule_cost(result.schedule, cost) == pytest.approx(0.2)
    assert result.schedule.meta["chosen"] == "greedy"


@IMPLEMENTATIONS
@settings(max_examples=200)
@given(graph=st.one_of(dags(max_nodes=12), chained_dags()), seed=st.integers(0, 10_000),
       part=st.integers(1, 6),
       r=st.integers(1, 3), s=st.integers(1, 4),
       strategy=st.sampled_from(["concurrent", "merge", "both"]),
       collapse=st.sampled_from([None, True, False]),
       cost_model=st.sampled_from([RandomCost, StreamCost]))
def test_search_never_loses_to_its_baselines(native, graph, seed, part, r, s, strategy,
                                             collapse, cost_model):
    """On every path (one part, parts, chains collapsed into units, units in one part or
    several) the schedule costs, under the search's own cost model, no more than sequential
    and, for the concurrent strategies, no more than greedy within the same stream limit."""
    cost = cost_model(seed)
    cfg = SearchConfig(strategy=strategy, max_groups=s, max_group_size=r, max_part_size=part,
                       collapse_chains=collapse)
    result = search(graph, cost, cfg, can_merge=merge_table(seed), native=native)
    validate_schedule(graph, result.schedule, max_groups=s)
    actual = schedule_cost(result.schedule, cost)
    assert result.schedule.cost == pytest.approx(actual, rel=1e-9)
    assert actual <= min(_baseline_costs(graph, cost, cfg)) * (1 + 1e-9)


# -- settings are checked where they are made ------------------------------------------------
@pytest.mark.parametrize("field", ["max_groups", "max_group_size", "max_part_size",
                                   "greedy_max_streams"])
@pytest.mark.parametrize("value", [0, -5, True, 2.0, "3"])
def test_search_config_rejects_bad_limits(field, value):
    from ios_tvm.errors import ConfigError

    with pytest.raises(ConfigError, match=f"{field} must be a positive integer") as info:
        SearchConfig(**{field: value})
    assert isinstance(info.value, ValueError)  # a user's mistake


@pytest.mark.parametrize("field", ["max_groups", "greedy_max_streams"])
def test_search_config_caps_streams_at_the_executors_limit(field):
    from ios_tvm.errors import ConfigError
    from ios_tvm.ir.plan import MAX_STREAMS

    SearchConfig(**{field: MAX_STREAMS})
    with pytest.raises(ConfigError, match=f"{field} must be at most {MAX_STREAMS}"):
        SearchConfig(**{field: MAX_STREAMS + 1})


def test_unknown_analytic_device_names_the_presets():
    from ios_tvm.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown analytic device 'nonsense'.*cpu, h100, v100"):
        AnalyticCost(OpGraph.from_edges(1, []), "nonsense")


# -- pruning: measure only the stages the DP can still choose --------------------------------
class BoundedCost:
    """A fake measured cost that keeps the assumptions of ``group_bound`` and of the pruned
    search: a group alone takes its kernels' summed fixed random times, times a random factor
    in [0.6, 1] for chains (a chain runs faster than its kernels one by one), plus a fixed
    random price ``pen``; a stage of several groups takes
    ``max(max_g v(g), sum_g v(g) / cores) + sum_g pen(g)``, which never drops when a group
    is dropped. Merges are random. Counts the stages it is asked for."""

    def __init__(self, seed: int, cores: int | None) -> None:
        self.seed = seed
        self.cores = cores
        self.asked: set[tuple[int, str]] = set()

    def _rng(self, *key: object) -> random.Random:
        return random.Random(stable_seed(self.seed, *key))

    def group(self, g: tuple[int, ...]) -> tuple[float, float]:
        v = sum(self._rng("op", op).uniform(0.1, 2.0) for op in g)
        if len(g) > 1:
            v *= self._rng("chain", g).uniform(0.6, 1.0)
        return v, self._rng("pen", g).uniform(0.0, 0.5)

    def __call__(self, stage: Stage) -> float:
        self.asked.add((stage.mask, stage.strategy))
        if stage.strategy == "merge":
            return self._rng(stage.mask).uniform(0.1, 2.0) * len(stage.ops) ** 0.5
        vs, pens = zip(*(self.group(g) for g in stage.groups), strict=True)
        busy = max(max(vs), sum(vs) / self.cores if self.cores else 0.0)
        return busy + sum(pens)


@IMPLEMENTATIONS
@settings(max_examples=150)
@given(graph=st.one_of(dags(max_nodes=10), chained_dags(max_units=5)),
       seed=st.integers(0, 10_000), part=st.sampled_from([3, 6, 20]),
       r=st.integers(1, 3), s=st.integers(1, 4),
       strategy=st.sampled_from(["concurrent", "both"]),
       collapse=st.sampled_from([None, True, False]), cores=st.sampled_from([None, 2, 4]))
def test_pruning_never_changes_the_schedule(native, graph, seed, part, r, s, strategy,
                                            collapse, cores):
    """With a bound that holds, the pruned search returns exactly the unpruned schedule and
    cost (on one part, parts and units), and costs no stage the unpruned search does not."""
    cfg = SearchConfig(strategy=strategy, max_groups=s, max_group_size=r, max_part_size=part,
                       collapse_chains=collapse)
    full_cost = BoundedCost(seed, cores)
    full = search(graph, StageCostCache(full_cost), cfg, can_merge=merge_table(seed),
                  native=native)
    pruned_cost = BoundedCost(seed, cores)
    memo = StageCostCache(pruned_cost)
    memo.lower_bound = group_bound(memo, cores)
    pruned = search(graph, memo, cfg, can_merge=merge_table(seed), native=native)
    assert pruned.schedule.cost == pytest.approx(full.schedule.cost, rel=1e-12)
    assert pruned.schedule.stages == full.schedule.stages
    assert pruned_cost.asked <= full_cost.asked
    assert pruned.stats.stages_costed == len(pruned_cost.asked)
    assert pruned.stats.bound_violations == 0
    assert pruned.stats.rounds >= 1
    # prune=False ignores the bound: the same search as without one.
    off = search(graph, StageCostCache(BoundedCost(seed, cores), memo.lower_bound), cfg,
                 can_merge=merge_table(seed), native=native, prune=False)
    assert off.stats.stages_costed == full.stats.stages_costed


@IMPLEMENTATIONS
def test_pruning_measures_fewer_stages_on_a_wide_graph(native):
    """Eight independent branches of two ops each: the bound rules out most wide stages."""
    graph = _blocks(2, 8)
    cfg = SearchConfig(max_groups=8, max_group_size=3)
    full_cost, pruned_cost = BoundedCost(7, 2), BoundedCost(7, 2)
    full = search(graph, full_cost, cfg, native=native)
    memo = StageCostCache(pruned_cost)
    memo.lower_bound = group_bound(memo, 2)
    pruned = search(graph, memo, cfg, native=native)
    assert pruned.schedule.stages == full.schedule.stages
    assert len(pruned_cost.asked) < 0.75 * len(full_cost.asked)
    assert pruned.stats.stages_bounded > 0


def test_pruning_needs_a_bound():
    with pytest.raises(ConfigError, match="lower bound"):
        search(_blocks(1, 3), RandomCost(0), SearchConfig(), prune=True)


def test_bound_violations_are_counted():
    """A cost below its bound breaks exactness; the search says how often it happened."""

    def cost(stage: Stage) -> float:
        return float(len(stage.ops)) if len(stage.groups) == 1 else 0.1 * len(stage.ops)

    memo = StageCostCache(cost)
    memo.lower_bound = group_bound(memo)
    result = search(_blocks(1, 3), memo, SearchConfig(), native=False)
    assert result.stats.bound_violations > 0


@IMPLEMENTATIONS
@pytest.mark.parametrize("collapse", [False, True])
def test_a_pruned_search_on_known_costs_runs_one_pass_per_part(native, collapse):
    """Costs the model already has (``peek``: a warm measurement cache) are used as they are,
    also through the unit graph, so a warm pruned search needs no second DP pass."""

    class Known(BoundedCost):
        def peek(self, stage: Stage) -> float:
            return BoundedCost.__call__(self, stage)

    graph = OpGraph.from_edges(6, [(0, 1), (1, 2), (0, 3), (3, 4), (2, 5), (4, 5)])
    cfg = SearchConfig(collapse_chains=collapse)
    full = search(graph, BoundedCost(3, 2), cfg, native=native)
    memo = StageCostCache(Known(3, 2))
    memo.lower_bound = group_bound(memo, 2)
    warm = search(graph, memo, cfg, native=native)
    assert warm.stats.rounds == warm.stats.parts == 1
    assert warm.stats.stages_bounded == 0
    assert warm.schedule.stages == full.schedule.stages


# -- the calibrated bound: prune on what concurrency has paid so far --------------------------
class CpuLikeCost(BoundedCost):
    """Concurrency never pays (a CPU whose kernels already use every core): a stage of several
    groups costs its groups' sum times a fixed random factor in [1.0, 1.3]. Chains gain a
    random 0-40% (``additive=False``) or nothing: a chain costs its ops one by one."""

    def __init__(self, seed: int, cores: int | None, additive: bool = False) -> None:
        super().__init__(seed, cores)
        self.additive = additive

    def alone(self, g: tuple[int, ...]) -> float:
        if self.additive:
            return sum(sum(BoundedCost.group(self, (op,))) for op in g)
        return sum(self.group(g))

    def __call__(self, stage: Stage) -> float:
        self.asked.add((stage.mask, stage.strategy))
        if len(stage.groups) == 1:
            return self.alone(stage.groups[0])
        total = sum(self.alone(g) for g in stage.groups)
        return total * self._rng("stage", stage.mask).uniform(1.0, 1.3)


def _searched(graph: OpGraph, cost, bound: str, cores: int | None, native: bool):
    memo = StageCostCache(cost)
    memo.lower_bound = group_bound(memo, cores)
    return search(graph, memo, SearchConfig(max_groups=8, max_group_size=3, bound=bound),
                  native=native)


@IMPLEMENTATIONS
@pytest.mark.parametrize("seed", range(4))
def test_calibrated_bound_measures_far_fewer_stages_where_concurrency_never_pays(native, seed):
    """Chains that gain nothing: the calibrated search finds the exact optimum with under
    half the measurements."""
    graph = _blocks(3, 8)
    exact_cost, cal_cost = CpuLikeCost(seed, 2, True), CpuLikeCost(seed, 2, True)
    exact = _searched(graph, exact_cost, "exact", 2, native)
    cal = _searched(graph, cal_cost, "calibrated", 2, native)
    assert cal.schedule.cost == pytest.approx(exact.schedule.cost, rel=1e-12)
    assert cal.stats.bound_ratio is not None and cal.stats.bound_ratio >= 1.0
    assert cal.stats.chain_ratio == pytest.approx(1.0)
    assert exact.stats.bound_ratio is None and exact.stats.chain_ratio is None
    assert cal.stats.bound_violations == 0
    assert len(cal_cost.asked) < 0.5 * len(exact_cost.asked)


@IMPLEMENTATIONS
@pytest.mark.parametrize("seed", range(4))
def test_calibrated_bound_is_close_when_chains_gain_unevenly(native, seed):
    """Chains that gain a random 0-40%: chains the lowest ratio prices above their cost may
    be missed, which the search reports as violations; the plan stays within 1%."""
    graph = _blocks(3, 8)
    exact_cost, cal_cost = CpuLikeCost(seed, 2), CpuLikeCost(seed, 2)
    exact = _searched(graph, exact_cost, "exact", 2, native)
    cal = _searched(graph, cal_cost, "calibrated", 2, native)
    assert exact.schedule.cost <= cal.schedule.cost <= 1.01 * exact.schedule.cost
    assert 0.0 < (cal.stats.chain_ratio or 0.0) < 1.0  # chains (with per-group prices) gain
    assert len(cal_cost.asked) < 0.5 * len(exact_cost.asked)


@IMPLEMENTATIONS
@pytest.mark.parametrize("seed", range(6))
def test_calibrated_bound_still_finds_the_concurrency_that_pays(native, seed):
    """GPU-like costs (a stage takes its slowest group plus small per-group prices): the
    ratio calibrates low and the plan stays close to the exact one, far below sequential."""
    graph = _blocks(2, 8)
    exact = _searched(graph, BoundedCost(seed, None), "exact", None, native)
    cal = _searched(graph, BoundedCost(seed, None), "calibrated", None, native)
    seq = sum(BoundedCost(seed, None)(s) for s in sequential_schedule(graph).stages)
    assert cal.stats.bound_ratio is not None and cal.stats.bound_ratio < 0.7
    assert cal.schedule.cost <= 1.05 * exact.schedule.cost
    assert cal.schedule.cost < 0.7 * seq


def test_calibrated_bound_learns_the_lowest_ratio_once_it_has_enough():
    from ios_tvm.scheduler.stage_cost import CalibratedBound

    def cost(stage: Stage) -> float:
        return float(len(stage.ops))

    bound = CalibratedBound(group_bound(cost, 2), cost, min_samples=2)
    two = Stage(((0,), (1,)))
    assert bound(two) == pytest.approx(1.0)  # group_bound alone: max(1, 2 / 2)
    bound.observe(Stage(((0,),)), 0.1)  # one group: not a concurrent stage, ignored
    bound.observe(two, 3.0)
    assert bound.ratio is None
    bound.observe(Stage(((2,), (3,))), 1.8)
    assert bound.ratio == pytest.approx(0.9)
    assert bound(Stage(((4,), (5,), (6,)))) == pytest.approx(2.7)


def test_search_config_rejects_an_unknown_bound():
    with pytest.raises(ConfigError, match="unknown bound 'loose'.*exact, calibrated"):
        SearchConfig(bound="loose")


@IMPLEMENTATIONS
@pytest.mark.parametrize("seed", range(4))
def test_a_warm_calibrated_search_measures_nothing_new(native, seed):
    """The stages a cold search measured are in the cache (``peek``); a second search over
    them calibrates on them too, so it measures nothing new and finds the same plan."""

    class Cached(CpuLikeCost):
        def __init__(self, seed: int, cores: int, cached: set[tuple[int, str]]) -> None:
            super().__init__(seed, cores)
            self.cached = cached

        def peek(self, stage: Stage) -> float | None:
            if (stage.mask, stage.strategy) not in self.cached:
                return None
            return CpuLikeCost.__call__(self, stage)

    graph = _blocks(3, 8)
    cold_cost = CpuLikeCost(seed, 2)
    cold = _searched(graph, cold_cost, "calibrated", 2, native)
    warm_cost = Cached(seed, 2, set(cold_cost.asked))
    warm = _searched(graph, warm_cost, "calibrated", 2, native)
    assert warm_cost.asked <= cold_cost.asked
    assert warm.schedule.stages == cold.schedule.stages
