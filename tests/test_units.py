"""Chains collapsed into scheduling units: the unit graph, and the search over it."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_search import IMPLEMENTATIONS, RandomCost, brute_force, dags, merge_table, schedule_cost

from ios_tvm import OpGraph, SearchConfig, sequential_schedule, validate_schedule
from ios_tvm.cost import AnalyticCost
from ios_tvm.errors import IosTvmError
from ios_tvm.models.opgraph import nasnet_large
from ios_tvm.scheduler.search import greedy_schedule, search
from ios_tvm.scheduler.units import collapse_chains


def test_chains_of_a_small_graph() -> None:
    #      0 -> 1 -> 2 -> 5 -> 6
    #      0 -> 3 -> 4 -> 5         (5 joins two branches, so it starts a new unit)
    #                   7           (a lone source)
    g = OpGraph.from_edges(8, [(0, 1), (1, 2), (2, 5), (0, 3), (3, 4), (4, 5), (5, 6)])
    units = collapse_chains(g)
    assert units.members == ((0,), (1, 2), (3, 4), (5, 6), (7,))
    assert units.unit_of == (0, 1, 1, 2, 2, 3, 3, 4)
    assert units.graph.edges == [(0, 1), (0, 2), (1, 3), (2, 3)]
    assert units.collapsed == 3
    assert units.single_kernel((0, 4)) == (0, 7)
    assert units.single_kernel((0, 1)) is None


def test_a_branching_node_ends_its_chain() -> None:
    # 0 -> 1, and 1 feeds both 2 and 3: 1 ends the chain {0, 1}; 2 and 3 are units alone.
    g = OpGraph.from_edges(4, [(0, 1), (1, 2), (1, 3)])
    assert collapse_chains(g).members == ((0, 1), (2,), (3,))


@settings(max_examples=200)
@given(graph=dags(max_nodes=14))
def test_units_partition_the_graph_and_keep_its_order(graph: OpGraph) -> None:
    units = collapse_chains(graph)
    ops = sorted(op for m in units.members for op in m)
    assert ops == list(range(len(graph.nodes)))
    for u, chain in enumerate(units.members):
        assert all(units.unit_of[op] == u for op in chain)
        for a, b in zip(chain, chain[1:], strict=False):  # a real chain: b is a's only successor
            assert graph.succs[a] == (b,) and graph.preds[b] == (a,)
    # Maximal: no edge between two units could have been collapsed.
    for u, v in units.graph.edges:
        tail, head = units.members[u][-1], units.members[v][0]
        assert not (graph.succs[tail] == (head,) and graph.preds[head] == (tail,))
    # Edges of the unit graph are exactly the kernel edges between different units.
    expected = {(units.unit_of[a], units.unit_of[b]) for a, b in graph.edges
                if units.unit_of[a] != units.unit_of[b]}
    assert set(units.graph.edges) == expected


@IMPLEMENTATIONS
@settings(max_examples=120)
@given(graph=dags(max_nodes=10), seed=st.integers(0, 10_000), r=st.integers(1, 3),
       s=st.integers(1, 3), strategy=st.sampled_from(["concurrent", "merge", "both"]))
def test_unit_search_is_optimal_over_unit_schedules(native, graph, seed, r, s, strategy):
    cost = RandomCost(seed)
    can_merge = merge_table(seed)
    cfg = SearchConfig(strategy=strategy, max_groups=s, max_group_size=r, collapse_chains=True)
    result = search(graph, cost, cfg, can_merge=can_merge, native=native)
    units = collapse_chains(graph)

    def unit_cost(stage):
        return cost(units.expand(stage))

    def unit_merge(_, us):
        ops = units.single_kernel(us)
        return ops is not None and can_merge(graph, ops)

    # The best unit schedule, or a baseline (outside the unit space) when cheaper: sequential,
    # and greedy for the concurrent strategies.
    sequential = schedule_cost(sequential_schedule(graph), cost)
    baselines = [sequential]
    if strategy != "merge":
        baselines.append(schedule_cost(greedy_schedule(graph, s), cost))
    expected = min(brute_force(units.graph, unit_cost, strategy, r, s, unit_merge), *baselines)
    assert result.schedule.cost == pytest.approx(expected, rel=1e-9)
    # A valid kernel schedule that costs what the search says; groups hold <= r units.
    validate_schedule(graph, result.schedule, max_groups=s)
    assert schedule_cost(result.schedule, cost) == pytest.approx(result.schedule.cost, rel=1e-9)
    unit_schedule = "chosen" not in result.schedule.meta
    for stage in result.schedule.stages:
        for group in stage.groups if unit_schedule else ():
            if stage.strategy == "concurrent":
                assert len({units.unit_of[op] for op in group}) <= r
            # A unit is never split across groups or stages.
            for op in group:
                assert set(units.members[units.unit_of[op]]) <= set(group)
        if stage.strategy == "merge":
            assert can_merge(graph, stage.ops)
    assert result.schedule.cost <= sequential * (1 + 1e-9)


@settings(max_examples=60)
@given(graph=dags(max_nodes=14), seed=st.integers(0, 10_000), part=st.integers(2, 6))
def test_auto_collapses_only_graphs_that_must_be_cut(graph, seed, part):
    cost = RandomCost(seed)
    result = search(graph, cost, SearchConfig(max_groups=3, max_part_size=part))
    collapsed = collapse_chains(graph).collapsed > 0
    assert ("units" in result.schedule.meta) == (len(graph.nodes) > part and collapsed)
    validate_schedule(graph, result.schedule, max_groups=3)
    # Still never worse than the kernel-level wavefront baseline.
    assert result.schedule.cost <= schedule_cost(greedy_schedule(graph, 3), cost) * (1 + 1e-9)


def test_collapsing_helps_nasnet() -> None:
    # NASNet's ReLU-SepConv units are 2-3 kernel chains: searching units lets each part of
    # 20 nodes cover twice the graph, which finds a faster schedule in less time.
    g = nasnet_large()
    cost = AnalyticCost(g, "v100")
    units = search(g, cost, SearchConfig(collapse_chains=True))
    kernels = search(g, cost, SearchConfig(collapse_chains=False))
    assert units.schedule.meta["units"] < 0.6 * len(g.nodes)
    assert units.stats.parts < kernels.stats.parts
    assert units.schedule.cost < 0.95 * kernels.schedule.cost
    validate_schedule(g, units.schedule, max_groups=8)


def test_collapse_chains_must_be_a_bool_or_none() -> None:
    with pytest.raises(IosTvmError, match="collapse_chains"):
        SearchConfig(collapse_chains="yes")  # type: ignore[arg-type]
