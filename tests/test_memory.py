"""Concurrency-safe storage planning: nothing live in the same stage shares memory."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ios_tvm import IosTvmError, OpGraph, SearchConfig, Stage, search, sequential_schedule
from ios_tvm.memory import StoragePlan, check_storage, plan_storage, stage_lifetimes
from ios_tvm.schedule import make_schedule


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


@settings(max_examples=100)
@given(graph_and_schedule())
def test_tensors_live_in_one_stage_never_share(case):
    graph, schedule = case
    plan = plan_storage(graph, schedule)
    # Recompute liveness by walking the stages, independent of stage_lifetimes.
    stage_of = {op: si for si, s in enumerate(schedule.stages) for g in s.groups for op in g}
    last = len(schedule.stages) - 1
    for si in range(len(schedule.stages)):
        live = []
        for op, node in enumerate(graph.nodes):
            t = node.outputs[0]
            readers = [stage_of[v] for v in graph.succs[op]]
            end = last if t in graph.outputs else max(readers, default=stage_of[op])
            if stage_of[op] <= si <= end:
                live.append(t)
        storages = [plan.storage_of[t] for t in live]
        assert len(storages) == len(set(storages)), f"stage {si} aliases {live}"


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
    with pytest.raises(IosTvmError, match="share storage 1 while both are live"):
        check_storage(graph, sched, bad)
    small = StoragePlan({"t0": 0, "t1": 1, "t2": 2}, (4, 4, 4), {})
    with pytest.raises(IosTvmError, match="does not fit storage"):
        check_storage(graph, sched, small)
