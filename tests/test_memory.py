"""Concurrency-safe storage planning: nothing live in the same stage shares memory."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ios_tvm import IosTvmError, OpGraph, SearchConfig, Stage, sequential_schedule
from ios_tvm.compiler.memory import StoragePlan, check_storage, plan_storage, stage_lifetimes
from ios_tvm.ir.schedule import make_schedule
from ios_tvm.scheduler.search import search


@st.composite
def graph_and_schedule(draw: st.DrawFn):
    n = draw(st.integers(1, 12))
    edges = [(u, v) for v in range(n) for u in range(v) if draw(st.floats(0, 1)) < 0.3]
    graph = OpGraph.from_edges(n, edges)
    seed = draw(st.integers(0, 1000))

    def cost(stage: Stage) -> float:  # random costs give varied (valid) schedules
        return random.Random(hash((seed, stage.mask))).uniform(0.1, 2.0)

    r, s = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    return graph, search(graph, cost, SearchConfig(max_groups=s, max_group_size=r)).schedule


def _happens_before(schedule):
    """x -> y: op x finishes before op y starts, whatever the concurrent groups do."""
    where = {op: (si, gi, pos) for si, s in enumerate(schedule.stages)
             for gi, g in enumerate(s.groups) for pos, op in enumerate(g)}

    def hb(x, y) -> bool:
        (sx, gx, px), (sy, gy, py) = where[x], where[y]
        return sx < sy or (sx == sy and gx == gy and px < py)

    return hb


@settings(max_examples=150)
@given(graph_and_schedule())
def test_tensors_sharing_storage_are_never_live_together(case):
    """Independent of the planner's lifetimes: for two tensors in one storage, every use of
    one must finish before the other is written, in every interleaving of the groups."""
    graph, schedule = case
    plan = plan_storage(graph, schedule)
    hb = _happens_before(schedule)
    end = object()  # graph outputs are read after the last stage

    def uses(op: int) -> list:
        t = graph.nodes[op].outputs[0]
        return list(graph.succs[op]) + ([end] if t in graph.outputs else [])

    def done_before_write(a: int, b: int) -> bool:  # a's value is dead before b writes
        return all(u is not end and hb(u, b) for u in uses(a)) and hb(a, b)

    producer = {node.outputs[0]: op for op, node in enumerate(graph.nodes)}
    by_storage: dict[int, list[int]] = {}
    for t, sid in plan.storage_of.items():
        by_storage.setdefault(sid, []).append(producer[t])
    for ops in by_storage.values():
        for i, a in enumerate(ops):
            for b in ops[i + 1:]:
                assert done_before_write(a, b) or done_before_write(b, a), (
                    f"{graph.nodes[a].outputs[0]} and {graph.nodes[b].outputs[0]} share storage "
                    f"{plan.storage_of[graph.nodes[a].outputs[0]]} in {schedule.stages}")


def test_group_local_tensors_reuse_storage_inside_a_concurrent_stage():
    # Two chains of four ops side by side in one stage, joined by a last op.
    edges = [(0, 1), (1, 2), (2, 3), (4, 5), (5, 6), (6, 7), (3, 8), (7, 8)]
    graph = OpGraph.from_edges(9, edges)
    sched = make_schedule([[[0, 1, 2, 3], [4, 5, 6, 7]], [[8]]])
    plan = plan_storage(graph, sched)
    # Inside each chain the first and third tensors never overlap: they share a storage.
    assert plan.storage_of["t0"] == plan.storage_of["t2"]
    assert plan.storage_of["t4"] == plan.storage_of["t6"]
    # Never across the two groups, which run concurrently.
    left = {plan.storage_of[f"t{i}"] for i in range(4)}
    right = {plan.storage_of[f"t{i}"] for i in range(4, 8)}
    assert not left & right
    stage_level = 8  # with stage lifetimes alone, all eight tensors live in stage 0
    assert len(set(plan.storage_of[f"t{i}"] for i in range(8))) < stage_level


def test_chain_reuses_two_buffers():
    graph = OpGraph.from_edges(6, [(i, i + 1) for i in range(5)])
    plan = plan_storage(graph, sequential_schedule(graph))
    assert len(plan.storage_nbytes) == 2
    assert plan.total_nbytes == 2 * graph.tensors["t0"].nbytes


def test_concurrent_stage_costs_memory_and_is_reported():
    # Three branches from one op; the concurrent plan keeps all three alive at once.
    graph = OpGraph.from_edges(5, [(0, 1), (0, 2), (0, 3), (1, 4), (2, 4), (3, 4)])
    seq = plan_storage(graph, sequential_schedule(graph))
    conc = plan_storage(graph, make_schedule([[[0]], [[1], [2], [3]], [[4]]]))
    assert conc.total_nbytes >= seq.total_nbytes
    assert len(set(conc.storage_of[t] for t in ("t1", "t2", "t3"))) == 3


def test_outputs_stay_live_to_the_end():
    graph = OpGraph.from_edges(3, [(0, 1)])  # outputs: t1 and t2; t0 dies at stage 1
    sched = sequential_schedule(graph)
    assert stage_lifetimes(graph, sched)["t1"] == (1, 2)
    plan = plan_storage(graph, sched)
    assert plan.storage_of["t1"] != plan.storage_of["t2"]


def test_check_storage_rejects_overlap():
    graph = OpGraph.from_edges(3, [(0, 1), (0, 2)])
    sched = make_schedule([[[0]], [[1], [2]]])
    size = graph.tensors["t0"].nbytes
    bad = StoragePlan({"t0": 0, "t1": 1, "t2": 1}, (size, size), {})
    with pytest.raises(IosTvmError, match="share storage 1 while both may be live"):
        check_storage(graph, sched, bad)
    small = StoragePlan({"t0": 0, "t1": 1, "t2": 2}, (4, 4, 4), {})
    with pytest.raises(IosTvmError, match="does not fit storage"):
        check_storage(graph, sched, small)
