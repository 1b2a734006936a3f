"""IOS-Merge: the merge rules, merged kernels, plans with sliced views, search and build."""

from __future__ import annotations

import itertools
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).parent))

from onnx_models import inception_block  # noqa: E402

from ios_tvm.compiler.extract import graph_from_model
from ios_tvm.compiler.merge import MergeCompiler, merged_weights, rewrite_merges
from ios_tvm.cost.analytic import AnalyticCost
from ios_tvm.errors import IosTvmError, MergeError, PlanFormatError
from ios_tvm.ir.plan import Plan, PlanTensor
from ios_tvm.ir.schedule import Schedule, Stage, validate_schedule
from ios_tvm.scheduler.config import SearchConfig
from ios_tvm.scheduler.merge import merge_predicate, merge_problem, merge_spec
from ios_tvm.scheduler.search import search, sequential_schedule

ort = pytest.importorskip("onnxruntime")


# --------------------------------------------------------------------------------------------
# models: several convs (or matmuls) on one input, each conv's output a graph output
# --------------------------------------------------------------------------------------------
@dataclass
class Conv:
    """One conv of :func:`convs_model`."""

    cout: int = 8
    k: tuple[int, int] = (3, 3)
    pads: tuple[int, int, int, int] | None = None  # ONNX order: top, left, bottom, right
    stride: int = 1
    dilation: int = 1
    group: int = 1
    act: str | None = "Relu"
    bias: bool = True
    src: str = "x"  # "x" or "r" (= Relu(x), another tensor)

    def onnx_pads(self) -> list[int]:
        if self.pads is not None:
            return list(self.pads)
        ph = (self.k[0] - 1) * self.dilation // 2
        pw = (self.k[1] - 1) * self.dilation // 2
        return [ph, pw, ph, pw]


def convs_model(convs: Sequence[Conv], cin: int = 8, size: int = 8, batch: int = 1,
                seed: int = 0) -> onnx.ModelProto:
    """Convs on ``x`` (or ``Relu(x)``); conv ``i``'s output is graph output ``y{i}``."""
    rng = np.random.default_rng(seed)
    nodes, inits, outs = [], [], []
    if any(c.src == "r" for c in convs):
        nodes.append(helper.make_node("Relu", ["x"], ["r"]))
    for i, c in enumerate(convs):
        w = (rng.standard_normal((c.cout, cin // c.group, *c.k)) / np.sqrt(cin * c.k[0] * c.k[1]))
        inits.append(numpy_helper.from_array(w.astype("float32"), f"w{i}"))
        ins = [c.src, f"w{i}"]
        if c.bias:
            inits.append(numpy_helper.from_array(
                (0.1 * rng.standard_normal(c.cout)).astype("float32"), f"b{i}"))
            ins.append(f"b{i}")
        y = f"c{i}" if c.act else f"y{i}"
        nodes.append(helper.make_node("Conv", ins, [y], kernel_shape=list(c.k),
                                      pads=c.onnx_pads(), strides=[c.stride] * 2,
                                      dilations=[c.dilation] * 2, group=c.group))
        if c.act:
            nodes.append(helper.make_node(c.act, [y], [f"y{i}"]))
        outs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None))
    graph = helper.make_graph(
        nodes, "convs", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                       [batch, cin, size, size])], outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model)
    return model


def dense_model(features: Sequence[int], k: int = 32, act: str | None = "Relu",
                rows: int = 1, gemm: bool = True, seed: int = 0) -> onnx.ModelProto:
    """Dense layers on one input ``x`` of shape ``(rows, k)``; outputs ``y{i}``."""
    rng = np.random.default_rng(seed)
    nodes, inits, outs = [], [], []
    for i, n in enumerate(features):
        w = (rng.standard_normal((n, k) if gemm else (k, n)) / np.sqrt(k)).astype("float32")
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        y = f"d{i}" if act else f"y{i}"
        if gemm:
            inits.append(numpy_helper.from_array(
                (0.1 * rng.standard_normal(n)).astype("float32"), f"b{i}"))
            nodes.append(helper.make_node("Gemm", ["x", f"w{i}", f"b{i}"], [y], transB=1))
        else:
            nodes.append(helper.make_node("MatMul", ["x", f"w{i}"], [y]))
        if act:
            nodes.append(helper.make_node(act, [y], [f"y{i}"]))
        outs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None))
    graph = helper.make_graph(
        nodes, "dense", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, k])],
        outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model)
    return model


def anchors(graph, op: str = "conv2d") -> list[int]:  # noqa: ANN001
    """Node ids of the convs (or matmuls), in model order."""
    return [i for i, n in enumerate(graph.nodes) if n.attrs.get("op") == op]


def ort_outputs(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})


def merge_all_schedule(graph, ops: Sequence[int]) -> Schedule:  # noqa: ANN001
    """``ops`` merged in the first stage, every other op after it, one per stage."""
    rest = [i for i in range(len(graph.nodes)) if i not in ops]
    return Schedule((Stage((tuple(sorted(ops)),), "merge"), *(Stage(((i,),)) for i in rest)))


def run_plan(extraction, schedule: Schedule, x: np.ndarray, **kw) -> list[np.ndarray]:  # noqa: ANN001
    from ios_tvm.compiler.plan_lowering import lower_schedule as lower

    return lower(extraction, schedule, **kw).executor()(x)


def rand_input(extraction, seed: int = 0) -> np.ndarray:  # noqa: ANN001
    shape = extraction.graph.tensors[extraction.graph.inputs[0]].shape
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


# --------------------------------------------------------------------------------------------
# merged kernels compute what the original ones do
# --------------------------------------------------------------------------------------------
EQUIVALENT = {
    "k1_3_5": [Conv(8, (1, 1)), Conv(8, (3, 3)), Conv(8, (5, 5))],
    "asym_1x7_7x1_3x3": [Conv(8, (1, 7)), Conv(8, (7, 1)), Conv(8, (3, 3))],
    "channels_16_8_24": [Conv(16, (3, 3)), Conv(8, (1, 1)), Conv(24, (5, 5))],
    "no_act": [Conv(8, (1, 1), act=None), Conv(16, (3, 3), act=None)],
    "sigmoid_no_bias": [Conv(8, (3, 3), act="Sigmoid", bias=False),
                        Conv(8, (1, 1), act="Sigmoid", bias=True)],
    "stride2": [Conv(8, (3, 3), stride=2), Conv(8, (1, 1), stride=2, pads=(0, 0, 0, 0))],
    "dilation2": [Conv(8, (3, 3), dilation=2), Conv(8, (1, 1), dilation=2)],
}


@pytest.mark.parametrize("name", sorted(EQUIVALENT))
def test_merged_outputs_equal_unmerged(name: str) -> None:
    model = convs_model(EQUIVALENT[name])
    ex = graph_from_model(model)
    convs = anchors(ex.graph)
    assert len(convs) == len(EQUIVALENT[name])
    assert merge_problem(ex.graph, convs) is None
    x = rand_input(ex)
    merged = run_plan(ex, merge_all_schedule(ex.graph, convs), x)
    plain = run_plan(ex, sequential_schedule(ex.graph), x)
    ref = ort_outputs(model, x)
    for got, seq, want in zip(merged, plain, ref, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got, seq, rtol=1e-4, atol=1e-5)


def test_every_subset_of_a_block_merges_correctly() -> None:
    model = convs_model([Conv(8, (1, 1)), Conv(16, (3, 3)), Conv(8, (1, 7)), Conv(8, (7, 1))])
    ex = graph_from_model(model)
    convs = anchors(ex.graph)
    x = rand_input(ex)
    ref = ort_outputs(model, x)
    compiler = MergeCompiler(ex)
    for r in (2, 3):
        for ops in itertools.combinations(convs, r):
            if merge_problem(ex.graph, ops) is not None:
                # 1x7 with 7x1 pads to 7x7 and stays centred; every pair here is legal.
                raise AssertionError(merge_problem(ex.graph, ops))
            out = run_plan(ex, merge_all_schedule(ex.graph, ops), x, merges=compiler)
            for got, want in zip(out, ref, strict=True):
                np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
            assert compiler.check(ops) < 1e-5


def test_merged_weights_layout() -> None:
    ex = graph_from_model(convs_model([Conv(2, (1, 1)), Conv(3, (3, 1), bias=False)], cin=2))
    convs = anchors(ex.graph)
    spec = merge_spec(ex.graph, convs)
    assert spec.kernel == (3, 1) and spec.padding == (1, 0, 1, 0)
    assert spec.weight_shape == (5, 2, 3, 1) and spec.channel_starts == (0, 2)
    values = {n: c.value.numpy() for n, c in ex.constants.items()}
    w = merged_weights(spec, values)
    w1 = values[spec.members[0].weight]
    np.testing.assert_array_equal(w["weight"][:2, :, 1:2, :], w1)
    np.testing.assert_array_equal(w["weight"][:2, :, [0, 2], :], 0)
    np.testing.assert_array_equal(w["weight"][2:], values[spec.members[1].weight])
    b1 = values[spec.members[0].bias].reshape(-1)
    np.testing.assert_array_equal(w["bias"].reshape(-1), np.concatenate([b1, np.zeros(3)]))


def test_dense_layers_sharing_an_input_merge() -> None:
    for gemm, act in ((True, "Relu"), (False, None), (True, "Tanh")):
        model = dense_model([16, 32, 16], act=act, gemm=gemm)
        ex = graph_from_model(model)
        mms = anchors(ex.graph, "matmul")
        assert len(mms) == 3 and merge_problem(ex.graph, mms) is None
        x = rand_input(ex)
        out = run_plan(ex, merge_all_schedule(ex.graph, mms), x)
        for got, want in zip(out, ort_outputs(model, x), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------
# illegal merges are never produced
# --------------------------------------------------------------------------------------------
ILLEGAL = {
    "different_stride": ([Conv(8, (1, 1), stride=2, pads=(0, 0, 0, 0)),
                          Conv(8, (3, 3), stride=1)], "strides|output sizes"),
    "grouped_conv": ([Conv(8, (3, 3), group=2), Conv(8, (3, 3))], "grouped"),
    "different_inputs": ([Conv(8, (3, 3)), Conv(8, (3, 3), src="r")], "different tensors"),
    "different_dilation": ([Conv(8, (3, 3), dilation=2), Conv(8, (3, 3), dilation=1)],
                           "dilation"),
    "not_same_centred": ([Conv(8, (1, 1)), Conv(8, (3, 3), pads=(0, 0, 2, 2))], "centred"),
    "even_kernel_difference": ([Conv(8, (2, 2), pads=(0, 0, 1, 1)), Conv(8, (3, 3))],
                               "cannot be centred"),
    "different_activation": ([Conv(8, (3, 3), act="Relu"), Conv(8, (3, 3), act="Sigmoid")],
                             "activation"),
    "misaligned_slice": ([Conv(3, (3, 3)), Conv(8, (1, 1))], "multiple of 64"),
}


@pytest.mark.parametrize("name", sorted(ILLEGAL))
def test_illegal_merges_are_rejected(name: str) -> None:
    convs_spec, reason = ILLEGAL[name]
    size = 3 if name == "misaligned_slice" else 8
    ex = graph_from_model(convs_model(convs_spec, size=size))
    convs = anchors(ex.graph)
    assert len(convs) == 2
    problem = merge_problem(ex.graph, convs)
    assert problem is not None and re.search(reason, problem), problem
    assert not merge_predicate(ex.graph, tuple(convs))
    with pytest.raises(MergeError):
        merge_spec(ex.graph, convs)


def test_batch_and_rows_above_one_are_rejected() -> None:
    ex = graph_from_model(convs_model([Conv(8, (1, 1)), Conv(8, (3, 3))], batch=2))
    assert "contiguous" in (merge_problem(ex.graph, anchors(ex.graph)) or "")
    ex = graph_from_model(dense_model([16, 16], rows=4))
    assert "contiguous" in (merge_problem(ex.graph, anchors(ex.graph, "matmul")) or "")


def test_residual_add_and_non_convs_are_rejected() -> None:
    from ios_tvm.ir.graph import OpGraph, OpNode
    from ios_tvm.scheduler.merge import merge_member

    ex = graph_from_model(inception_block())
    g = ex.graph
    pool = next(i for i, n in enumerate(g.nodes) if n.attrs.get("op") == "max_pool2d")
    conv_on_x = [i for i in anchors(g) if g.nodes[i].inputs[0] == "x"]
    assert "max_pool2d" in (merge_problem(g, (conv_on_x[0], pool)) or "")
    assert merge_problem(g, (conv_on_x[0],)) is not None  # one op is no merge
    # A conv whose fused epilogue also adds another tensor (SqueezeNet's bypass) is left alone.
    nodes = list(g.nodes)
    node = nodes[conv_on_x[0]]
    nodes[conv_on_x[0]] = OpNode(node.name, node.kernel, node.inputs, node.outputs, node.flops,
                                 node.nbytes,
                                 {**node.attrs, "ops": ["conv2d", "add", "relu", "add"]})
    g2 = OpGraph(nodes, g.tensors, g.inputs, g.outputs)
    assert "fused ops" in str(merge_member(g2, conv_on_x[0]))
    assert merge_problem(g2, conv_on_x) is not None
    assert merge_problem(g2, conv_on_x[1:]) is None


def _free_merges(graph):  # noqa: ANN001, ANN202
    """A cost that makes every merge nearly free: the search merges whatever it may."""
    analytic = AnalyticCost(graph, "cpu")

    def cost(stage: Stage) -> float:
        if stage.strategy == "merge":
            return 1e-9
        return analytic(stage)

    return cost


@pytest.mark.parametrize("strategy", ["merge", "both"])
def test_search_never_emits_illegal_merges(strategy: str) -> None:
    # Legal: the three 1x1/3x3/5x5 convs on x. Illegal partners: stride 2, grouped,
    # dilated, other input, not same-centred, other activation.
    convs = [Conv(8, (1, 1)), Conv(8, (3, 3)), Conv(8, (5, 5)),
             Conv(8, (1, 1), stride=2, pads=(0, 0, 0, 0)), Conv(8, (3, 3), group=2),
             Conv(8, (3, 3), dilation=2), Conv(8, (3, 3), src="r"),
             Conv(8, (3, 3), pads=(0, 0, 2, 2)), Conv(8, (3, 3), act="Sigmoid")]
    model = convs_model(convs)
    ex = graph_from_model(model)
    g = ex.graph
    ids = anchors(g)
    asked: list[tuple[int, ...]] = []

    def spy(graph, ops):  # noqa: ANN001, ANN202
        asked.append(ops)
        return merge_predicate(graph, ops)

    result = search(g, _free_merges(g), SearchConfig(strategy=strategy, max_part_size=40),
                    can_merge=spy)
    validate_schedule(g, result.schedule)
    merged = [s.ops for s in result.schedule.stages if s.strategy == "merge"]
    assert merged, "free merges must be taken"
    assert asked
    legal = set(ids[:3])
    for ops in merged:
        assert merge_problem(g, ops) is None
        assert set(ops) <= legal, f"illegal merge {ops}"
    # The three legal convs end up in one kernel (the cheapest under this cost).
    assert tuple(sorted(ids[:3])) in merged
    # And the schedule runs and matches ONNX Runtime.
    x = rand_input(ex)
    for got, want in zip(run_plan(ex, result.schedule, x), ort_outputs(model, x), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_concurrent_strategy_has_no_merges() -> None:
    ex = graph_from_model(inception_block())
    g = ex.graph
    result = search(g, _free_merges(g), SearchConfig(strategy="concurrent"),
                    can_merge=merge_predicate)
    assert all(s.strategy != "merge" for s in result.schedule.stages)


# --------------------------------------------------------------------------------------------
# plans: views with byte offsets
# --------------------------------------------------------------------------------------------
def test_rewrite_turns_outputs_into_offset_views() -> None:
    ex = graph_from_model(inception_block(channels=16))
    g = ex.graph
    ops = tuple(i for i in anchors(g) if g.nodes[i].inputs[0] == "x")
    assert len(ops) == 3
    compiler = MergeCompiler(ex)
    schedule = merge_all_schedule(g, ops)
    rw = rewrite_merges(g, schedule, {ops: compiler.kernel(ops)})
    assert len(rw.graph.nodes) == len(g.nodes) - 2
    assert rw.strategies[0] == "merge" and rw.schedule.stages[0].strategy == "concurrent"
    validate_schedule(rw.graph, rw.schedule)
    spec = compiler.spec(ops)
    offsets = [rw.graph.tensors[g.nodes[o].outputs[0]].offset for o in ops]
    assert offsets == [0, 16 * 64 * 4, 2 * 16 * 64 * 4] == list(spec.offsets)
    base = rw.graph.tensors[g.nodes[ops[0]].outputs[0]].alias_of
    assert base is not None and rw.graph.tensors[base].shape == (1, 48, 8, 8)
    assert {rw.node_of[o] for o in ops} == {ops[0]}
    from ios_tvm.ir.graph import OpGraph

    back = OpGraph.from_json(json.loads(rw.graph.dumps()))
    assert [t.offset for t in back.tensors.values()] == [
        t.offset for t in rw.graph.tensors.values()]
    from ios_tvm.compiler.plan_lowering import make_plan

    with pytest.raises(IosTvmError, match="merge stages"):
        make_plan(g, schedule)
    plan = make_plan(g, schedule, merges={ops: compiler.kernel(ops)})
    assert plan.version == 2 and plan.stages[0].strategy == "merge"
    assert plan.meta["merged_calls"] == {"0": [g.nodes[o].name for o in ops]}
    again = Plan.loads(plan.dumps())
    assert [t.offset for t in again.tensors] == [t.offset for t in plan.tensors]
    # Plans without offsets stay version 1 (readable by older executors).
    assert make_plan(g, sequential_schedule(g)).version == 1


def _empty_library():  # noqa: ANN202
    import tvm
    from tvm import te

    a = te.placeholder((4,), name="a")
    b = te.compute((4,), lambda i: a[i], name="b")
    func = te.create_prim_func([a, b]).with_attr("global_symbol", "copy4")
    return tvm.tirx.build(tvm.IRModule({"copy4": func}), target=tvm.target.Target("llvm"))


def test_bad_view_offsets_are_rejected() -> None:
    from ios_tvm.runtime.executor import Executor

    lib = _empty_library()

    # (v views the input: a view of storage nothing writes is an invalid plan.)
    tensors = (PlanTensor("x", (1, 64), "float32", "input"),
               PlanTensor("s", (1, 64), "float32", "storage", 0),
               PlanTensor("v", (1, 16), "float32", "view", 0, 4))
    d = {"format": "ios_tvm.Plan", "version": 2, "target": "llvm", "device_type": "cpu",
         "tensors": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype,
                      "place": t.place, "ref": t.ref, "offset": t.offset} for t in tensors],
         "storages": [256], "calls": [], "stages": [], "inputs": [0], "outputs": [2]}
    with pytest.raises(PlanFormatError, match="multiple of 64"):
        Plan.from_json(d)
    d["tensors"][2]["offset"] = 256
    with pytest.raises(PlanFormatError, match="do not fit"):
        Plan.from_json(d)
    d["tensors"][2]["offset"] = 192
    plan = Plan.from_json(d)
    out = Executor(plan, lib, {})
    assert out.get_output(0).shape == (1, 16)
    # The native executor checks too (a plan that skipped validation).
    bad = Plan(plan.target, plan.device_type, (*plan.tensors[:2], PlanTensor(
        "v", (1, 16), "float32", "view", 1, 4)), plan.storages, (), (), (0,), (2,))
    with pytest.raises(Exception, match="multiple of 64"):
        Executor(bad, lib, {})
    d["version"] = 3
    with pytest.raises(PlanFormatError, match="plan version 3"):
        Plan.from_json(d)


def test_views_share_the_merged_output() -> None:
    """The consumers of merged convs read slices of one buffer, no copy kernels."""
    from ios_tvm.compiler.plan_lowering import lower_schedule as lower

    ex = graph_from_model(inception_block(channels=16))
    g = ex.graph
    ops = tuple(i for i in anchors(g) if g.nodes[i].inputs[0] == "x")
    art = lower(ex, merge_all_schedule(g, ops))
    assert len(art.plan.calls) == len(g.nodes) - 2
    views = [t for t in art.plan.tensors if t.offset]
    assert len(views) == 2 and all(art.plan.tensors[t.ref].shape[1] == 48 for t in views)
    # Only the merged weights (not the originals') ship.
    assert not any(n in art.params for o in ops for n in g.nodes[o].inputs[1:])


# --------------------------------------------------------------------------------------------
# measuring merge stages, building with merge / both, the CLI
# --------------------------------------------------------------------------------------------
def test_measured_cost_times_merge_stages(monkeypatch: pytest.MonkeyPatch) -> None:
    from ios_tvm.compiler.merge import MergeCompiler
    from ios_tvm.compiler.profiling import measured_cost
    from ios_tvm.cost.base import ProfileSettings

    ex = graph_from_model(convs_model([Conv(8, (1, 1)), Conv(8, (1, 1)), Conv(8, (3, 3))]))
    a, b, c = anchors(ex.graph)
    merges = MergeCompiler(ex)
    cost = measured_cost(ex, max_groups=2, settings=ProfileSettings(1, 2, 2), merges=merges)
    stage = Stage(((a, c),), "merge")
    assert cost.stage_key(stage).startswith("merge:")
    t = cost(stage)
    assert 0 < t < 1.0 and cost.measured == 1
    assert cost(Stage(((a, b),), "merge")) > 0 and cost.measured == 2
    # (b, c) has the same kernels as (a, c): its twin's measurement is reused.
    assert cost(Stage(((b, c),), "merge")) == t and cost.measured == 2
    # A merge whose kernel does not reproduce the originals costs infinity.
    def broken(o: Sequence[int]) -> float:
        raise MergeError("does not reproduce the original kernels")

    monkeypatch.setattr(merges, "check", broken)
    assert cost(Stage(((a, b, c),), "merge")) == float("inf")


@pytest.mark.parametrize("strategy", ["merge", "both"])
def test_build_with_merges_equals_onnxruntime(strategy: str, tmp_path: Path) -> None:
    from ios_tvm.compiler.build import build

    model = inception_block(channels=16)
    # IOS-Merge merges NCHW convs; build's CPU default is NHWC.
    result = build(model, "llvm", config=SearchConfig(strategy=strategy),
                   cost=_free_merges_factory(), measure=False, compare_vm=False, cache=False,
                   cpu_layout="NCHW")
    plan = result.artifact.plan
    assert any(s.strategy == "merge" for s in result.schedule.stages)
    assert any(s.strategy == "merge" for s in plan.stages)
    assert plan.version == 2
    x = np.random.default_rng(1).standard_normal((1, 16, 8, 8)).astype("float32")
    (want,) = ort_outputs(model, x)
    np.testing.assert_allclose(result(x)[0], want, rtol=1e-4, atol=1e-5)
    # Export, load, show.
    out = result.export(str(tmp_path / "art"))
    from ios_tvm.cli import main
    from ios_tvm.runtime.artifact import load

    np.testing.assert_allclose(load(str(out))(x)[0], want, rtol=1e-4, atol=1e-5)
    assert main(["show", str(out), "--no-pictures"]) == 0
    meta = json.loads((out / "plan.json").read_text())["meta"]
    assert meta["merged_calls"]


def _free_merges_factory():  # noqa: ANN202
    """A build cost: merges nearly free, other stages by op count (deterministic)."""

    def cost(stage: Stage) -> float:
        if stage.strategy == "merge":
            return 1e-9
        return 1e-3 * sum(len(g) for g in stage.groups)

    return cost


def test_build_with_measured_merges_runs() -> None:
    """The real thing on a tiny block: measured costs, merges considered, output right."""
    from ios_tvm.compiler.build import build
    from ios_tvm.cost.base import ProfileSettings

    model = inception_block()
    result = build(model, "llvm", config=SearchConfig(strategy="both"),
                   settings=ProfileSettings(1, 2, 2), cache=False, compare_vm=False)
    x = np.random.default_rng(2).standard_normal((1, 8, 8, 8)).astype("float32")
    (want,) = ort_outputs(model, x)
    np.testing.assert_allclose(result(x)[0], want, rtol=1e-4, atol=1e-5)
    assert result.stages_measured > 0


def test_cli_schedule_marks_merges(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from ios_tvm.cli import main

    path = tmp_path / "block.onnx"
    onnx.save(inception_block(channels=16), str(path))
    assert main(["schedule", str(path), "--strategy", "merge", "--device", "cpu",
                 "--show-stages", "-o", str(tmp_path / "s.json")]) == 0
    text = capsys.readouterr().out
    assert "merge" in text
    doc = json.loads((tmp_path / "s.json").read_text())
    assert doc["meta"]["strategy"] == "merge"


def test_merge_on_nhwc_cpu_convs_warns_and_merges_nothing(caplog: pytest.LogCaptureFixture) -> None:
    from ios_tvm.compiler.build import build

    with caplog.at_level("WARNING", logger="ios_tvm.compiler.layout"):
        result = build(inception_block(channels=16), "llvm", config=SearchConfig(strategy="merge"),
                       cost=_free_merges_factory(), measure=False, compare_vm=False, cache=False)
    assert "cpu_layout='NCHW'" in caplog.text
    assert not any(s.strategy == "merge" for s in result.schedule.stages)
