"""Tests of model loading (ios_tvm.compiler.frontend) and graph extraction
(ios_tvm.compiler.extract).

The models are small ONNX graphs from ``tests/onnx_models.py``; lowering runs on the CPU
("llvm") and, compile-only, for CUDA sm_90 (no GPU needed).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
onnx = pytest.importorskip("onnx")

from tvm import relax, te  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import onnx_models  # noqa: E402

from ios_tvm.compiler.extract import Extraction, extract_graph, graph_from_model  # noqa: E402
from ios_tvm.compiler.frontend import load_model, parse_input_shapes  # noqa: E402
from ios_tvm.compiler.kernels import KERNEL_INFO_ATTR, kernel_flops, lower_to_kernels  # noqa: E402
from ios_tvm.compiler.target import resolve_target  # noqa: E402
from ios_tvm.errors import ModelLoadError, UnsupportedGraphError  # noqa: E402
from ios_tvm.ir.graph import OpGraph  # noqa: E402

CALL_TIR_OPS = ("relax.call_tir", "relax.call_tir_inplace", "relax.call_dps_packed")


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def bindings(mod: tvm.IRModule, fname: str) -> list:
    return [b for blk in mod[fname].body.blocks for b in blk.bindings]


def _kernel_calls(mod: tvm.IRModule, fname: str = "main") -> list:
    return [b for b in bindings(mod, fname) if isinstance(b.value, relax.Call)
            and isinstance(b.value.op, tvm.ir.Op) and b.value.op.name in CALL_TIR_OPS]


def _expected_preds(ex: Extraction) -> list[set[int]]:
    """Data dependencies recomputed independently from the Relax bindings.

    A node depends on the kernel call whose result reaches one of its arguments through
    aliases, tuple items and reshapes/views.
    """
    node_of_var = {v: i for i, v in enumerate(ex.var_of_node)}
    value_of = {b.var: b.value for b in bindings(ex.mod, ex.func_name)}

    def producers(e) -> set[int]:
        if isinstance(e, relax.Var):
            if e in node_of_var:
                return {node_of_var[e]}
            if e not in value_of:  # a function parameter
                return set()
            return producers(value_of[e])
        if isinstance(e, relax.Tuple):
            return set().union(*[producers(f) for f in e.fields]) if e.fields else set()
        if isinstance(e, relax.TupleGetItem):
            return producers(e.tuple_value)
        if isinstance(e, relax.Call) and e.op.name in ("relax.reshape", "relax.memory.view"):
            return producers(e.args[0])
        return set()  # constants

    return [producers(call.args[1]) for call in ex.call_of_node]


def _check_graph_against_relax(ex: Extraction) -> None:
    g = ex.graph
    assert len(g) == len(_kernel_calls(ex.mod, ex.func_name))
    assert [set(p) for p in g.preds] == _expected_preds(ex)
    # node ids are a topological order and the graph survives a JSON round trip
    assert all(u < v for u, v in g.edges)
    g2 = OpGraph.from_json(json.loads(g.dumps()))
    assert g2.edges == g.edges and g2.outputs == g.outputs
    for n in g.nodes:
        assert n.nbytes == sum(g.tensors[t].nbytes for t in dict.fromkeys(n.inputs + n.outputs))
        assert n.flops >= 0


def _reaches(g: OpGraph, u: int, v: int) -> bool:
    return bool(g.ancestor_masks[v] >> u & 1)


@pytest.fixture(scope="module")
def inception() -> Extraction:
    return graph_from_model(onnx_models.inception_block())


# ---------------------------------------------------------------------------------------------
# structure
# ---------------------------------------------------------------------------------------------
def test_inception_branches_are_independent(inception: Extraction) -> None:
    g = inception.graph
    _check_graph_against_relax(inception)
    assert inception.func_name == "main"
    assert g.inputs == ("x",) and g.tensors["x"].kind == "input"
    assert g.width >= 4
    # the branch heads are the nodes that read the graph input x
    heads = [i for i, n in enumerate(g.nodes) if "x" in n.inputs]
    assert len(heads) == 4
    for a in heads:
        for b in heads:
            if a != b:
                assert not _reaches(g, a, b)
    (concat,) = [i for i, n in enumerate(g.nodes) if n.attrs["op"] == "concat"]
    assert concat == len(g) - 1
    assert len(g.preds[concat]) == 4
    assert all(_reaches(g, h, concat) for h in heads)
    assert g.outputs == g.nodes[concat].outputs
    kinds = {t.kind for t in g.tensors.values()}
    assert kinds == {"input", "const", "activation"}
    # constants are referenced, not copied: the Extraction gives the GenericConst
    for name, c in inception.constants.items():
        assert tuple(c.value.shape) == g.tensors[name].shape


def test_inception_lowering_equals_zero_pipeline() -> None:
    mod = load_model(onnx_models.inception_block())
    # Without ios-tvm's default CPU schedules (ios_tvm.compiler.kernel_schedules), exactly TVM's
    # lowering.
    lowered = lower_to_kernels(mod, "llvm", cpu_schedule=False)
    zero = relax.get_pipeline("zero")(mod)
    # the inception block has no reshape, so RewriteDataflowReshape changes nothing here
    tvm.ir.assert_structural_equal(tvm.IRModule(dict(lowered.functions.items())),
                                   tvm.IRModule(dict(zero.functions.items())))
    assert KERNEL_INFO_ATTR in lowered.attrs


def test_conv_attrs_and_flops(inception: Extraction) -> None:
    g = inception.graph
    convs = [n for n in g.nodes if n.attrs["op"] == "conv2d"]
    assert len(convs) == 6
    for n in convs:
        a = n.attrs
        assert a["kernel"] == n.kernel and a["pattern_kind"] == "out_elemwise_fusable"
        assert a["ops"][0] == "conv2d" and "relu" in a["ops"]
        nb, c, h, w = a["data_shape"]
        k, c2, r, s = a["weight_shape"]
        assert c2 == c and a["groups"] == 1 and a["strides"] == [1, 1]
        assert a["padding"] == [r // 2] * 4 and a["dilation"] == [1, 1]
        analytic = 2 * nb * k * c * r * s * h * w  # same-padding, stride 1: output is h x w
        assert analytic / 2 <= n.flops <= 2 * analytic, (n.name, n.flops, analytic)
    big = max(convs, key=lambda n: n.flops)
    assert big.attrs["weight_shape"][2:] == [5, 5]
    # the record stored by lower_to_kernels agrees with a fresh count on the PrimFunc
    assert kernel_flops(inception.mod[big.kernel]) == big.flops
    pool = next(n for n in g.nodes if n.attrs["op"] == "max_pool2d")
    assert pool.attrs["pool_size"] == [3, 3]


def test_residual_block() -> None:
    ex = graph_from_model(onnx_models.residual_block())
    g = ex.graph
    _check_graph_against_relax(ex)
    last = len(g) - 1
    assert g.outputs == g.nodes[last].outputs
    # the skip connection: whichever kernel does the add reads x, and depends on both convs
    adders = [i for i, n in enumerate(g.nodes) if "x" in n.inputs and i > 0]
    assert adders, "the skip add must read the block input"
    assert all(_reaches(g, 0, i) for i in adders)
    assert all(_reaches(g, i, last) or i == last for i in range(len(g)))
    assert sum(n.attrs["op"] == "conv2d" for n in g.nodes) == 2
    assert g.width == 1


def test_two_outputs() -> None:
    ex = graph_from_model(onnx_models.two_output_model())
    g = ex.graph
    _check_graph_against_relax(ex)
    assert len(g.outputs) == 2
    heads = [g.producer[t] for t in g.outputs]
    assert len(set(heads)) == 2
    assert not _reaches(g, heads[0], heads[1]) and not _reaches(g, heads[1], heads[0])
    assert all(_reaches(g, 0, h) for h in heads)
    assert g.width == 2
    assert g.tensors[g.outputs[1]].shape == (1, 16, 8, 8)


@pytest.mark.parametrize("use_flatten", [False, True])
def test_reshape_becomes_view(use_flatten: bool) -> None:
    ex = graph_from_model(onnx_models.flatten_gemm_model(use_flatten=use_flatten))
    g = ex.graph
    _check_graph_against_relax(ex)
    views = [t for t in g.tensors.values() if t.alias_of is not None]
    assert len(views) == 1
    (view,) = views
    assert view.shape == (1, 64) and g.tensors[view.alias_of].shape == (1, 4, 4, 4)
    assert ex.sources[view.name].kind == "view"
    assert not any("reshape" in n.kernel for n in g.nodes)
    assert view.name not in g.producer
    conv = g.producer[view.alias_of]
    (gemm,) = [i for i, n in enumerate(g.nodes) if view.name in n.inputs]
    assert g.preds[gemm] == (conv,)
    assert g.source_node(view.name) == conv
    assert [n.attrs["op"] for n in g.nodes] == ["conv2d", "matmul", "matmul"]


def test_transformer_layer() -> None:
    ex = graph_from_model(onnx_models.transformer_layer())
    g = ex.graph
    _check_graph_against_relax(ex)
    ops = [n.attrs["op"] for n in g.nodes]
    assert "softmax" in ops and "layer_norm" in ops
    qkv = [i for i, n in enumerate(g.nodes) if "x" in n.inputs and n.attrs["op"] == "matmul"
           and len(n.inputs) == 2]
    assert len(qkv) == 3
    assert g.width >= 3
    ln = ops.index("layer_norm")
    assert g.nodes[ln].attrs["axes"] == [-1]


def test_multi_output_kernel() -> None:
    ex = graph_from_model(onnx_models.split_model())
    g = ex.graph
    _check_graph_against_relax(ex)
    (split,) = [i for i, n in enumerate(g.nodes) if len(n.outputs) == 2]
    a, b = g.nodes[split].outputs
    assert g.tensors[a].shape == g.tensors[b].shape == (1, 4, 8, 8)
    assert ex.sources[b].output_index == 1 and ex.sources[b].node == split
    readers = [i for i, n in enumerate(g.nodes) if a in n.inputs or b in n.inputs]
    assert len(readers) == 2 and all(split in g.preds[i] for i in readers)


def _handmade_module(race: bool = False) -> tvm.IRModule:
    """call_tir (1 and 2 outputs), memory.view, call_dps_packed, call_tir_inplace, aliases."""
    A = te.placeholder((4, 4), name="A")
    B = te.compute((4, 4), lambda i, j: A[i, j] + 1.0, name="B")
    C = te.compute((4, 4), lambda i, j: A[i, j] * 2.0, name="C")
    bb = relax.BlockBuilder()
    add_one = bb.add_func(te.create_prim_func([A, B]), "add_one")
    two_out = bb.add_func(te.create_prim_func([A, B, C]), "two_out")
    T = relax.TensorType((4, 4), "float32")
    x = relax.Var("x", T)
    w = relax.Var("w", T)
    with bb.function("main", [x, w], attrs={"num_input": 1}):
        with bb.dataflow():
            a = bb.emit(relax.call_tir(add_one, relax.Tuple([x]), T))
            t = bb.emit(relax.call_tir(two_out, relax.Tuple([a]), [T, T]))
            b = bb.emit(relax.TupleGetItem(t, 0))
            c = bb.emit(relax.TupleGetItem(t, 1))
            alias = bb.emit(c)
            v = bb.emit(relax.op.memory.view(alias, relax.ShapeExpr([16]), "float32", 0))
            p = bb.emit(relax.call_dps_packed("my_ext_func", relax.Tuple([b, w]), T))
            extra = bb.emit(relax.call_tir(add_one, relax.Tuple([p if race else w]), T))
            q = bb.emit(relax.op.call_tir_inplace(add_one, relax.Tuple([p]), 0, T))
            out = bb.emit_output(relax.Tuple([q, v, extra]))
        bb.emit_func_output(out)
    return bb.get()


def test_handmade_bindings() -> None:
    ex = extract_graph(_handmade_module())
    g = ex.graph
    _check_graph_against_relax(ex)
    assert [n.kernel for n in g.nodes] == ["add_one", "two_out", "my_ext_func", "add_one",
                                           "add_one"]
    assert g.inputs == ("x", "w") and g.tensors["w"].kind == "param"
    assert ex.params == ["x", "w"]
    packed = g.nodes[2]
    assert packed.attrs["op"] == "packed" and isinstance(ex.kernel_of_node[2], relax.ExternFunc)
    assert isinstance(ex.kernel_of_node[0], tvm.ir.GlobalVar)
    assert g.nodes[0].flops == 16  # one add per element, counted by TVM's estimator
    view = g.tensors[g.outputs[1]]
    assert view.alias_of == g.nodes[1].outputs[1] and view.shape == (16,)
    assert g.source_node(view.name) == 1
    inplace = g.nodes[4]
    assert inplace.attrs["inplace_indices"] == [0]
    assert ex.inplace == {inplace.outputs[0]: packed.outputs[0]}


def test_inplace_race_is_rejected() -> None:
    with pytest.raises(UnsupportedGraphError, match=r"call_tir_inplace.*race"):
        extract_graph(_handmade_module(race=True))


# ---------------------------------------------------------------------------------------------
# targets
# ---------------------------------------------------------------------------------------------
def test_resolve_target() -> None:
    t = resolve_target("cuda")
    assert t.kind.name == "cuda" and str(t.attrs["arch"]) == "sm_90"
    assert t.host is not None and t.host.kind.name == "llvm"
    assert resolve_target("llvm").kind.name == "llvm"
    assert str(resolve_target({"kind": "cuda", "arch": "sm_80"}).attrs["arch"]) == "sm_80"
    assert str(resolve_target("cuda -arch=sm_86").attrs["arch"]) == "sm_86"
    assert resolve_target(t) is t


def test_cuda_lowering_without_gpu(inception: Extraction) -> None:
    mod = load_model(onnx_models.inception_block())
    ex = extract_graph(lower_to_kernels(mod, "cuda"))
    g, ref = ex.graph, inception.graph
    _check_graph_against_relax(ex)
    assert ex.target.kind.name == "cuda"
    assert g.edges == ref.edges and g.width == ref.width
    for n, m in zip(g.nodes, ref.nodes, strict=True):
        assert ex.mod[n.kernel].attrs["tirx.is_scheduled"]
        assert n.flops == m.flops  # logical FLOPs, counted before dlight pads the loops
        assert n.attrs["op"] == m.attrs["op"]


# ---------------------------------------------------------------------------------------------
# other frontends
# ---------------------------------------------------------------------------------------------
def _nn_block():
    from tvm.relax.frontend import nn

    class Block(nn.Module):
        def __init__(self) -> None:
            self.c1 = nn.Conv2D(8, 8, 1)
            self.c2 = nn.Conv2D(8, 8, 3, padding=1)
            self.fc = nn.Linear(8 * 16, 4)

        def forward(self, x):
            y = nn.relu(self.c1(x)) + nn.relu(self.c2(x))
            return self.fc(y.reshape(1, 8 * 16))

    return Block()


def test_nn_module() -> None:
    ex = graph_from_model(_nn_block(), input_shapes={"x": (1, 8, 4, 4)})
    g = ex.graph
    _check_graph_against_relax(ex)
    assert ex.func_name == "forward"
    assert g.inputs == ("x",) and g.tensors[g.outputs[0]].shape == (1, 4)
    assert any(t.alias_of for t in g.tensors.values())
    assert [n.attrs["op"] for n in g.nodes].count("conv2d") == 2
    # deterministic random weights
    ex2 = graph_from_model(_nn_block(), input_shapes={"x": (1, 8, 4, 4)})
    a = [c.value.numpy() for c in ex.constants.values()]
    b = [c.value.numpy() for c in ex2.constants.values()]
    assert all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))


def test_nn_module_given_params() -> None:
    w = np.full((8, 8, 1, 1), 0.5, np.float32)
    mod = load_model(_nn_block(), {"x": (1, 8, 4, 4)}, params={"c1.weight": w})
    assert [p.name for p in mod["forward"].params] == ["x"]
    with pytest.raises(ModelLoadError, match="nope"):
        load_model(_nn_block(), {"x": (1, 8, 4, 4)}, params={"nope": w})
    with pytest.raises(ModelLoadError, match="input_shapes"):
        load_model(_nn_block())


def test_relax_module_with_symbolic_dims() -> None:
    from tvm.relax.frontend.onnx import from_onnx

    mod = from_onnx(onnx_models.inception_block(batch="N"))  # TVM keeps N symbolic
    with pytest.raises(UnsupportedGraphError, match=r"input 'x' has symbolic dim 'N' \(axis 0\)"):
        extract_graph(lower_to_kernels(mod))
    ex = graph_from_model(mod, input_shapes={"x": (3, 8, 8, 8)})
    assert ex.graph.tensors["x"].shape == (3, 8, 8, 8)
    assert ex.graph.tensors[ex.graph.outputs[0]].shape == (3, 32, 8, 8)


def test_onnx_keep_params_in_input_module() -> None:
    from tvm.relax.frontend.onnx import from_onnx

    mod = from_onnx(onnx_models.residual_block(), keep_params_in_input=True)
    assert len(mod["main"].params) == 5
    ex = graph_from_model(mod)
    assert ex.graph.inputs == ("x",) and len(ex.constants) == 4


def test_parse_input_shapes() -> None:
    assert parse_input_shapes("x:1,3,224,224;mask:1,128") == {"x": (1, 3, 224, 224),
                                                              "mask": (1, 128)}
    with pytest.raises(ModelLoadError):
        parse_input_shapes("x=1,2")


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------
def test_malformed_onnx_file(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ModelLoadError, match=r"garbage\.onnx") as info:
        load_model(bad)
    assert info.value.__cause__ is not None
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ModelLoadError, match=r"empty\.onnx"):
        load_model(str(empty))
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "missing.onnx")


def test_onnx_file_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "res.onnx"
    onnx.save(onnx_models.residual_block(), str(path))
    ex = graph_from_model(str(path))
    assert len(ex.graph) == 2


def test_unsupported_onnx_op() -> None:
    with pytest.raises(UnsupportedGraphError,
                       match=rf"{onnx_models.UNSUPPORTED_OP} \(node 'dft_0'\)"):
        load_model(onnx_models.unsupported_op_model())
    with pytest.raises(UnsupportedGraphError, match=r"com\.example\.FancyOp \(node 'fancyop_0'\)"):
        load_model(onnx_models.custom_domain_model())


def test_dynamic_batch_needs_shapes() -> None:
    model = onnx_models.inception_block(batch="N")
    with pytest.raises(UnsupportedGraphError) as info:
        load_model(model)
    msg = str(info.value)
    assert "input 'x'" in msg and "'N'" in msg and "axis 0" in msg
    assert "input_shapes={'x': (1, 8, 8, 8)}" in msg and "--input-shapes x:1,8,8,8" in msg
    ex = graph_from_model(model, input_shapes={"x": (2, 8, 8, 8)})
    assert ex.graph.tensors["x"].shape == (2, 8, 8, 8)
    assert ex.graph.width >= 4
    with pytest.raises(ModelLoadError, match="rank"):
        load_model(model, {"x": (2, 8)})
    with pytest.raises(ModelLoadError, match="'y'"):
        load_model(model, {"x": (2, 8, 8, 8), "y": (1,)})


def test_control_flow_is_rejected() -> None:
    mod = load_model(onnx_models.if_model())
    with pytest.raises(UnsupportedGraphError, match=r"binding '\w+' is control flow.*'cond'"):
        extract_graph(lower_to_kernels(mod))


def test_unlowered_module_is_rejected() -> None:
    mod = load_model(onnx_models.residual_block())
    with pytest.raises(UnsupportedGraphError,
                       match=r"binding 'lv' calls relax\.nn\.conv2d.*lower_to_kernels"):
        extract_graph(mod)
    with pytest.raises(UnsupportedGraphError, match="no Relax function 'nope'"):
        extract_graph(mod, "nope")


@pytest.mark.parametrize("builder", ["inception_block", "split_model", "transformer_layer",
                                     "two_output_model"])
def test_lowered_module_matches_onnxruntime(builder: str) -> None:
    """The model builders are valid ONNX and the lowered module still compiles and agrees."""
    ort = pytest.importorskip("onnxruntime")
    model = getattr(onnx_models, builder)()
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(0).standard_normal(shape).astype("float32")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {"x": x})
    lowered = lower_to_kernels(load_model(model), "llvm")
    vm = relax.VirtualMachine(tvm.compile(lowered, target="llvm"), tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x))
    outs = [out] if isinstance(out, tvm.runtime.Tensor) else list(out)
    assert len(outs) == len(ref)
    for o, r in zip(outs, ref, strict=True):
        np.testing.assert_allclose(o.numpy(), r, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# end to end with the scheduler
# ---------------------------------------------------------------------------------------------
def test_search_on_extracted_inception(inception: Extraction) -> None:
    from ios_tvm.cost import AnalyticCost
    from ios_tvm.ir.schedule import validate_schedule
    from ios_tvm.scheduler.search import search

    g = inception.graph
    result = search(g, AnalyticCost(g))
    validate_schedule(g, result.schedule)
    assert result.schedule.num_ops == len(g)


def test_search_on_extracted_inception_net() -> None:
    from ios_tvm.cost import AnalyticCost
    from ios_tvm.ir.schedule import validate_schedule
    from ios_tvm.scheduler.search import search

    ex = graph_from_model(onnx_models.inception_net(blocks=2))
    g = ex.graph
    _check_graph_against_relax(ex)
    assert len(g) == 18 and g.width == 4
    result = search(g, AnalyticCost(g))
    validate_schedule(g, result.schedule)


# -- conv layout on CPU --------------------------------------------------------------------------
def test_cpu_convs_are_lowered_nhwc_with_the_same_outputs() -> None:
    from ios_tvm.compiler.extract import graph_from_model
    from ios_tvm.compiler.kernels import KERNEL_INFO_ATTR
    from ios_tvm.compiler.plan_lowering import lower_schedule as lower
    from ios_tvm.models import sample_block
    from ios_tvm.scheduler.search import sequential_schedule

    model = sample_block()
    nhwc = graph_from_model(model, "llvm", cpu_layout="NHWC")
    nchw = graph_from_model(model, "llvm", cpu_layout="NCHW")
    assert json.loads(nhwc.mod.attrs[KERNEL_INFO_ATTR])["cpu_layout"] == "NHWC"

    def conv_shapes(ex) -> list[tuple[int, ...]]:
        return [ex.graph.tensors[n.outputs[0]].shape for n in ex.graph.nodes
                if "conv2d" in n.kernel]

    assert conv_shapes(nhwc) == [(1, 28, 28, 64)] * 4
    assert conv_shapes(nchw) == [(1, 64, 28, 28)] * 4
    # One transpose of the shared input, not one per consumer (common subexpressions merged).
    transposes = [n for n in nhwc.graph.nodes if n.kernel.startswith("transpose")]
    assert len(transposes) == 1
    x = np.random.default_rng(0).standard_normal((1, 64, 28, 28)).astype("float32")
    outs = [lower(ex, sequential_schedule(ex.graph)).executor()(x)[0] for ex in (nhwc, nchw)]
    assert outs[0].shape == outs[1].shape == (1, 192, 28, 28)  # the model's own layout
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-4, atol=1e-4)


def test_cuda_keeps_the_model_layout_and_bad_layouts_are_named() -> None:
    from ios_tvm.compiler.extract import graph_from_model
    from ios_tvm.errors import IosTvmError
    from ios_tvm.models import sample_block

    ex = graph_from_model(sample_block(), "cuda", cpu_layout="NHWC")  # not a CPU: no effect
    convs = [n for n in ex.graph.nodes if "conv2d" in n.kernel]
    assert convs and all(ex.graph.tensors[n.outputs[0]].shape == (1, 64, 28, 28) for n in convs)
    with pytest.raises(IosTvmError, match="unknown CPU conv layout 'NCHW8c'"):
        graph_from_model(sample_block(), "llvm", cpu_layout="NCHW8c")
