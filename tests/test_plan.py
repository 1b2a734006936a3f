"""Plan validation (ios_tvm.ir.plan.Plan.validate): fields, limits and the happens-before.

Pure Python except the zoo test: hand-made plans that break one rule each are rejected with a
PlanFormatError naming the tensor or call; every plan the lowering makes is accepted (zoo
models under sequential, greedy and IOS schedules; random graphs under random schedules); and
on random storage assignments the validator agrees with the storage planner's own checker
(ios_tvm.compiler.memory.check_storage) and never accepts one that is unsafe in some interleaving of
the groups.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ios_tvm import IosTvmError, OpGraph, SearchConfig, Stage
from ios_tvm.compiler.memory import StoragePlan, check_storage
from ios_tvm.compiler.plan_lowering import make_plan
from ios_tvm.errors import PlanFormatError
from ios_tvm.ir.plan import (
    MAX_JSON_DEPTH,
    MAX_NBYTES,
    MAX_STREAMS,
    Plan,
    PlanCall,
    PlanStage,
    PlanTensor,
)
from ios_tvm.scheduler.search import greedy_schedule, search, sequential_schedule

F = (4,)  # every tensor of the hand-made plans: 4 float32, 16 bytes


def plan_of(tensors: Sequence[tuple[str, str, int]], calls: Sequence[tuple[Sequence[int], int]],
            stages: Sequence[Sequence[Sequence[int]]], outputs: Sequence[int],
            storages: int = 8, **kw) -> Plan:
    """A plan from (name, place, ref) tensors, (args, num_outputs) calls of kernel "k" and
    stages as lists of groups of call ids. Inputs are the tensors placed "input"."""
    ts = tuple(PlanTensor(n, F, "float32", p, r) for n, p, r in tensors)
    cs = tuple(PlanCall("k", tuple(a), n, f"node{i}") for i, (a, n) in enumerate(calls))
    ss = tuple(PlanStage(tuple(tuple(g) for g in s)) for s in stages)
    inputs = tuple(i for i, t in enumerate(ts) if t.place == "input")
    return Plan("llvm", "cpu", ts, (16,) * storages, cs, ss, inputs, tuple(outputs), **kw)


def diamond(a_storage: int = 0, b_storage: int = 1, c_storage: int = 2,
            stages: Sequence[Sequence[Sequence[int]]] = (((0,), (1,)), ((2,),))) -> Plan:
    """x -> a, x -> b (concurrent groups of stage 0), c = k(a, b) in stage 1; output c."""
    return plan_of([("x", "input", -1), ("a", "storage", a_storage),
                    ("b", "storage", b_storage), ("c", "storage", c_storage)],
                   [((0, 1), 1), ((0, 2), 1), ((1, 2, 3), 1)], stages, [3])


def chain(storages: Sequence[int]) -> Plan:
    """One group: t0 = k(x), t1 = k(t0), t2 = k(t1), t3 = k(t2); output t3."""
    tensors = [("x", "input", -1)] + [(f"t{i}", "storage", s) for i, s in enumerate(storages)]
    calls = [((i, i + 1), 1) for i in range(4)]
    return plan_of(tensors, calls, [[[0, 1, 2, 3]]], [4])


def rejected(plan: Plan, match: str) -> None:
    with pytest.raises(PlanFormatError, match=match):
        plan.validate()
    with pytest.raises(PlanFormatError, match=match):  # and the same through JSON
        Plan.loads(plan.dumps())


# -- happens-before --------------------------------------------------------------------------
def test_valid_hand_made_plans() -> None:
    diamond().validate()
    diamond(c_storage=3).validate()
    chain([0, 1, 0, 2]).validate()  # group-local reuse by position, as memory.py plans it
    chain([0, 1, 2, 3]).validate()


def test_concurrent_groups_writing_one_storage() -> None:
    rejected(diamond(b_storage=0), r"tensors 'a' \(stages 0-1\) and 'b' \(stages 0-1\) "
                                   r"share storage 0 while both may be live")


def test_write_after_read_across_groups() -> None:
    """Stage 1: group 0 reads a; group 1 writes d into a's storage."""
    plan = plan_of([("x", "input", -1), ("a", "storage", 0), ("c", "storage", 1),
                    ("d", "storage", 0)],
                   [((0, 1), 1), ((1, 2), 1), ((0, 3), 1)], [[[0]], [[1], [2]]], [2, 3])
    rejected(plan, r"tensors 'a' \(stages 0-1\) and 'd' \(stages 1-1\) share storage 0")
    dataclasses.replace(plan, tensors=(*plan.tensors[:3],
                                       PlanTensor("d", F, "float32", "storage", 2))).validate()


def test_stage_order_violating_a_dependency() -> None:
    rejected(diamond(stages=[[[2]], [[0], [1]]]),
             r"call 2 \(node2; stage 0, group 0\) reads tensor 'a' before call 0 \(node0; "
             r"stage 1, group 0\) writes it: the stage order breaks a dependency")


def test_read_of_a_concurrent_groups_output() -> None:
    rejected(diamond(stages=[[[0], [1, 2]]]),
             r"call 2 .* reads tensor 'a', which call 0 .* writes concurrently in the same stage")


def test_read_later_in_the_same_group() -> None:
    rejected(diamond(stages=[[[2, 0, 1]]]), r"reads tensor 'a' before call 0")


def test_group_local_positions_overlap() -> None:
    # t1 = k(t0) reads t0 while writing t1: one storage for both would alias a kernel's input
    # and output.
    rejected(chain([0, 0, 1, 2]), r"tensors 't0' \(stage 0 group 0 positions 0-1\) and 't1' "
                                  r"\(positions 1-2\) share storage 0")
    rejected(chain([0, 1, 2, 0]), r"'t0' \(stage 0 group 0\) and 't3' \(stages 0-0\)")


def test_group_locals_of_concurrent_groups() -> None:
    """Two chains in concurrent groups; their locals may never share a storage."""
    tensors = [("x", "input", -1), ("a0", "storage", 0), ("a1", "storage", 1),
               ("b0", "storage", 0), ("b1", "storage", 2)]
    calls = [((0, 1), 1), ((1, 2), 1), ((0, 3), 1), ((3, 4), 1)]
    rejected(plan_of(tensors, calls, [[[0, 1], [2, 3]]], [2, 4]),
             r"'a0' \(stage 0 group 0\) and 'b0' \(stage 0 group 1, concurrent\) share storage")
    ok = [*tensors[:3], ("b0", "storage", 3), ("b1", "storage", 2)]
    plan_of(ok, calls, [[[0, 1], [2, 3]]], [2, 4]).validate()


def test_reads_and_writes_that_cannot_be() -> None:
    base = [("x", "input", -1), ("w", "param", -1), ("a", "storage", 0), ("b", "storage", 1)]
    rejected(plan_of(base, [((0, 2), 1), ((3, 1), 1)], [[[0]], [[1]]], [2]),
             r"call 1 \(node1; stage 1, group 0\) writes tensor 'w', a param")
    rejected(plan_of(base, [((0, 2), 1), ((2, 0), 1)], [[[0]], [[1]]], [2]),
             r"writes tensor 'x', a input")
    rejected(plan_of(base, [((0, 2), 1), ((0, 2), 1)], [[[0]], [[1]]], [2]),
             r"tensor 'a' is written by call 0 .* and by call 1")
    rejected(plan_of(base, [((3, 2), 1)], [[[0]]], [2]), r"reads tensor 'b', which no call "
                                                         r"writes")
    rejected(plan_of(base, [((0, 2), 1)], [[[0]]], [2, 3]), r"graph output 'b' is never written")
    view = [*base, ("v", "view", 2)]
    rejected(plan_of(view, [((0, 2), 1), ((0, 4), 1)], [[[0]], [[1]]], [2]),
             r"writes tensor 'v', a view")
    plan_of(view, [((0, 2), 1), ((4, 3), 1)], [[[0]], [[1]]], [3]).validate()
    # a read through a view keeps the viewed tensor alive
    rejected(plan_of([*base[:3], ("b", "storage", 0), ("v", "view", 2), ("c", "storage", 1)],
                     [((0, 2), 1), ((0, 3), 1), ((4, 5), 1)], [[[0]], [[1]], [[2]]], [5]),
             r"'b' \(stage 1 group 0\) and 'a' \(stages 0-2\) share storage 0")


# -- fields and limits -----------------------------------------------------------------------
def doc() -> dict:
    return diamond().to_json()


def loads_rejects(d: dict, match: str) -> None:
    with pytest.raises(PlanFormatError, match=match):
        Plan.loads(json.dumps(d))


@pytest.mark.parametrize(("path", "value", "match"), [
    (("storages", 0), 2**60, r"storage 0: size 1152921504606846976 is not in 0\.\.1099511627776"),
    (("storages", 0), -1, r"storage 0: size -1 is not in"),
    (("storages", 0), 16.0, r"plan: 'storages' must be a list of integers, got \[16\.0"),
    (("storages", 0), "16", r"'storages' must be a list of integers"),
    (("storages", 0), True, r"'storages' must be a list of integers"),
    (("storages", 0), 2**64, r"'storages' must be a list of integers"),
    (("min_streams",), 1_000_000, rf"min_streams 1000000 is not in 1\.\.{MAX_STREAMS}"),
    (("min_streams",), 0, r"min_streams 0 is not in"),
    (("device_type",), "cuda", r"target kind 'llvm' runs on 'cpu' devices, but the plan says "
                               r"device type 'cuda'"),
    (("device_type",), "tpu", r"unknown device type 'tpu'"),
    (("tensors", 1, "shape"), [-4], r"tensor 1 \('a'\): shape \(-4,\) is not a list of at "
                                    r"most 32 non-negative integers"),
    (("tensors", 1, "shape"), [4.5], r"tensor 1: 'shape' must be a list of integers"),
    (("tensors", 1, "shape"), [1] * 40, r"at most 32"),
    (("tensors", 1, "shape"), [2**31, 2**31], r"tensor 1 \('a'\): 18446744073709551616 bytes, "
                                              r"more than the limit"),
    (("tensors", 1, "dtype"), "float33", r"tensor 1 \('a'\): unknown dtype 'float33'"),
    (("tensors", 1, "dtype"), "float32x4", r"unknown dtype 'float32x4'"),
    (("tensors", 1, "dtype"), 32, r"tensor 1: 'dtype' must be a string"),
    (("tensors", 1, "name"), "x", r"tensor 1 \('x'\): the name is also tensor 0's"),
    (("tensors", 1, "place"), "heap", r"unknown place 'heap'"),
    (("tensors", 1, "ref"), 99, r"storage 99 does not exist"),
    (("tensors", 0, "place"), "param", r"tensor 0 \(x\): listed as an input, but its place"),
    (("tensors", 1, "place"), "input", r"an input buffer missing from the plan's inputs"),
    (("calls", 0, "args"), [0, 77], r"call 0 \(k\): argument tensor 77 does not exist"),
    (("calls", 0, "num_outputs"), 3, r"call 0 \(k\): num_outputs 3 is not in 0\.\.2"),
    (("calls", 0, "kernel"), "", r"call 0: the kernel name must be a non-empty string"),
    (("calls", 0, "kernel"), "_library_bin", r"call 0: kernel name '_library_bin' is reserved"),
    (("calls", 0), [0, 1], r"call 0 must be an object"),
    (("stages", 0, "groups"), [], r"stage 0 has no groups"),
    (("stages", 0, "groups"), [[0], []], r"stage 0: group 1 is empty"),
    (("stages", 0, "groups"), [[0], [1, 1]], r"call 1 appears in stages 0 and 0"),
    (("stages", 0, "groups", 0, 0), 9, r"stage 0: call 9 does not exist"),
    (("inputs",), [0, 0], r"name a tensor twice"),
    (("outputs",), [-1], r"graph output tensor -1 does not exist"),
    (("meta",), [], r"'meta' must be an object"),
    (("target",), 7, r"plan: 'target' must be a string, got 7"),
])
def test_bad_fields_are_named(path: tuple, value: object, match: str) -> None:
    d = doc()
    node = d
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    loads_rejects(d, match)


def test_missing_fields_are_named() -> None:
    for key in ("tensors", "storages", "calls", "stages", "inputs", "outputs", "target"):
        d = doc()
        del d[key]
        loads_rejects(d, rf"plan lacks '{key}'")
    d = doc()
    del d["tensors"][1]["dtype"]
    loads_rejects(d, r"tensor 1 lacks 'dtype'")


def test_too_many_concurrent_groups() -> None:
    n = MAX_STREAMS + 1
    tensors = [("x", "input", -1)] + [(f"t{i}", "storage", i) for i in range(n)]
    plan = plan_of(tensors, [((0, i + 1), 1) for i in range(n)], [[[i] for i in range(n)]],
                   list(range(1, n + 1)), storages=n)
    rejected(plan, rf"stage 0 has {n} concurrent groups; at most {MAX_STREAMS} are supported")


def test_huge_storage_total() -> None:
    d = doc()
    d["storages"] = [MAX_NBYTES // 2 + 16] * 3
    loads_rejects(d, r"the storages take \d+ bytes, more than the limit")


@pytest.mark.parametrize("text", [
    "[" * 100_000 + "]" * 100_000,
    '{"format": "ios_tvm.Plan", "meta": ' + "[" * 100_000 + "]" * 100_000 + "}",
])
def test_deeply_nested_json(text: str) -> None:
    with pytest.raises(PlanFormatError, match="nested too deeply"):
        Plan.loads(text)


def test_nesting_just_past_the_limit() -> None:
    d = doc()
    d["meta"] = {"x": json.loads("[" * (MAX_JSON_DEPTH - 2) + "]" * (MAX_JSON_DEPTH - 2))}
    Plan.loads(json.dumps(d))
    d["meta"] = {"x": json.loads("[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1))}
    loads_rejects(d, "nested too deeply")


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity", "1" * 5000])
def test_non_json_numbers(bad: str) -> None:
    text = diamond().dumps().replace('"storages": [16', f'"storages": [{bad}', 1)
    with pytest.raises(PlanFormatError, match=r"plan is not valid JSON"):
        Plan.loads(text)


def test_view_offsets_need_version_2() -> None:
    plan = plan_of([("x", "input", -1), ("a", "storage", 0)], [((0, 1), 1)], [[[0]]], [1])
    d = plan.to_json()
    d["tensors"][1]["shape"] = [32]
    d["storages"] = [128] * 8
    d["tensors"].append({"name": "v", "shape": [16], "dtype": "float32", "place": "view",
                         "ref": 1, "offset": 64})
    d["outputs"] = [2]
    assert d["version"] == 1
    loads_rejects(d, r"plan version 1 has view offsets, which need version 2")
    d["version"] = 2
    Plan.loads(json.dumps(d))


def test_every_fault_is_a_plan_format_error() -> None:
    """Whatever the document, from_json raises PlanFormatError or returns a plan."""
    rng = random.Random(5)
    values = [None, True, 1, -1, 2**70, 1.5, "", "x", [], [1], {}, {"a": 1}]
    base = doc()
    paths = list(_paths(base))
    for _ in range(400):
        d = json.loads(json.dumps(base))
        path = rng.choice(paths)
        node = d
        for key in path[:-1]:
            node = node[key]
        if rng.random() < 0.3 and isinstance(node, dict):
            del node[path[-1]]
        else:
            node[path[-1]] = rng.choice(values)
        try:
            Plan.from_json(d)
        except PlanFormatError:
            pass


def _paths(value: object, prefix: tuple = ()):  # noqa: ANN202
    if isinstance(value, dict):
        for k, v in value.items():
            yield (*prefix, k)
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield (*prefix, i)
            yield from _paths(v, (*prefix, i))


# -- every plan the lowering makes is valid ----------------------------------------------------
@st.composite
def graph_and_schedule(draw: st.DrawFn) -> tuple[OpGraph, object]:
    n = draw(st.integers(1, 10))
    edges = [(u, v) for v in range(n) for u in range(v) if draw(st.floats(0, 1)) < 0.3]
    graph = OpGraph.from_edges(n, edges, shape=(4,))
    seed = draw(st.integers(0, 1000))

    def cost(stage: Stage) -> float:
        return random.Random(hash((seed, stage.mask))).uniform(0.1, 2.0)

    kind = draw(st.sampled_from(["search", "greedy", "sequential"]))
    if kind == "greedy":
        return graph, greedy_schedule(graph, draw(st.integers(1, 4)))
    if kind == "sequential":
        return graph, sequential_schedule(graph)
    r, s = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    return graph, search(graph, cost, SearchConfig(max_groups=s, max_group_size=r)).schedule


@settings(max_examples=100, deadline=None)
@given(case=graph_and_schedule(), data=st.data())
def test_validator_agrees_with_the_storage_checker(case: tuple, data: st.DataObject) -> None:
    """make_plan's plans pass; on random storage assignments the plan validator and
    memory.check_storage agree, and neither accepts an assignment that is unsafe."""
    graph, schedule = case
    plan = make_plan(graph, schedule)   # validates
    names = [t.name for t in plan.tensors if t.place == "storage"]
    k = data.draw(st.integers(1, len(names)), label="storages")
    assign = {n: data.draw(st.integers(0, k - 1), label=n) for n in names}
    tensors = tuple(dataclasses.replace(t, ref=assign[t.name]) if t.place == "storage" else t
                    for t in plan.tensors)
    sizes = (max(t.nbytes for t in plan.tensors),) * k
    candidate = dataclasses.replace(plan, tensors=tensors, storages=sizes)
    try:
        check_storage(graph, schedule, StoragePlan(assign, sizes, {}))
        checker_ok = True
    except IosTvmError:
        checker_ok = False
    try:
        candidate.validate()
        validator_ok = True
    except PlanFormatError:
        validator_ok = False
    assert validator_ok == checker_ok, (schedule.summary(), assign)
    if validator_ok:
        assert_safe(graph, schedule, assign)


def assert_safe(graph: OpGraph, schedule, assign: dict[str, int]) -> None:  # noqa: ANN001
    """For two tensors in one storage, every use of one finishes before the other is written
    in every interleaving of the groups (stages join; a group's ops run in order)."""
    where = {op: (si, gi, pos) for si, s in enumerate(schedule.stages)
             for gi, g in enumerate(s.groups) for pos, op in enumerate(g)}

    def hb(x: int, y: int) -> bool:
        (sx, gx, px), (sy, gy, py) = where[x], where[y]
        return sx < sy or (sx == sy and gx == gy and px < py)

    producer = {node.outputs[0]: op for op, node in enumerate(graph.nodes)}
    uses = {t: [op for op, node in enumerate(graph.nodes) if t in node.inputs]
            for t in producer}
    for a in assign:
        for b in assign:
            if a < b and assign[a] == assign[b]:
                pa, pb = producer[a], producer[b]
                first, second = (a, b) if hb(pa, pb) else (b, a)
                p1, p2 = producer[first], producer[second]
                assert hb(p1, p2) and first not in graph.outputs and \
                    all(hb(u, p2) for u in uses[first]), (a, b, schedule.summary())


# -- zoo models -----------------------------------------------------------------------------
ZOO = ["sample", "squeezenet", pytest.param("resnet50", marks=pytest.mark.slow),
       pytest.param("inception_v3", marks=pytest.mark.slow),
       pytest.param("randwire", marks=pytest.mark.slow),
       pytest.param("nasnet", marks=pytest.mark.slow)]


@pytest.mark.parametrize("name", ZOO)
def test_zoo_plans_are_valid(name: str) -> None:
    """Sequential, greedy and IOS (analytic cost) plans of the zoo pass validation, with and
    without memory reuse; JSON round trips too."""
    pytest.importorskip("tvm")
    from ios_tvm.compiler.extract import graph_from_model
    from ios_tvm.cost import AnalyticCost
    from ios_tvm.models import BUILTIN_MODELS

    graph = graph_from_model(BUILTIN_MODELS[name](batch=1), target="llvm").graph
    ios = search(graph, AnalyticCost(graph, "v100"), SearchConfig(strategy="concurrent"))
    for schedule in (sequential_schedule(graph), greedy_schedule(graph), ios.schedule):
        for reuse in (True, False):
            plan = make_plan(graph, schedule, reuse_memory=reuse)
            assert Plan.loads(plan.dumps()) == plan
