"""Tests of the model zoo (ios_tvm.models): structure, shapes, ONNX Runtime runs, TVM import.

The large networks (Inception V3, RandWire, NASNet, ResNet-50) are built once per session;
their ONNX Runtime and TVM runs are marked slow.
"""

from __future__ import annotations

import functools
import os
from collections import Counter

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from onnx import helper  # noqa: E402

from ios_tvm.models import BUILTIN_MODELS, MODEL_INFO, export_model  # noqa: E402
from ios_tvm.models.opgraph import BENCH_GRAPHS  # noqa: E402
from ios_tvm.models.randwire import RANDWIRE_GRAPHS, load_randwire_graph  # noqa: E402

SMALL = ("sample", "squeezenet")
LARGE = ("inception_v3", "randwire", "nasnet", "resnet50")
ALL = SMALL + LARGE


def _slow_unless_small(names: tuple[str, ...]) -> list:
    return [n if n in SMALL else pytest.param(n, marks=pytest.mark.slow) for n in names]


@functools.cache
def _model(name: str) -> onnx.ModelProto:
    """Each model at batch 1, built once per session (treat as read-only)."""
    return BUILTIN_MODELS[name](batch=1)


def _dims(value_info: onnx.ValueInfoProto) -> tuple[int, ...]:
    return tuple(d.dim_value for d in value_info.type.tensor_type.shape.dim)


def _ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def _depthwise(model: onnx.ModelProto) -> int:
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    count = 0
    for n in model.graph.node:
        if n.op_type != "Conv":
            continue
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        if group > 1 and group == shapes[n.input[1]][0]:
            count += 1
    return count


def _ort_session(model: onnx.ModelProto, all_outputs: bool = False):
    ort = pytest.importorskip("onnxruntime")
    if all_outputs:
        model = onnx.ModelProto.FromString(model.SerializeToString())
        extra = [n.output[0] for n in model.graph.node if n.output[0] != "y"]
        model.graph.output.extend(
            [helper.make_tensor_value_info(e, onnx.TensorProto.FLOAT, None) for e in extra])
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def _input(name: str, batch: int, seed: int = 1) -> np.ndarray:
    shape = (batch, *MODEL_INFO[name].input_shape)
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------
def test_registry_names() -> None:
    assert set(BUILTIN_MODELS) == set(ALL)
    assert set(MODEL_INFO) == set(ALL)
    assert MODEL_INFO["inception_v3"].units == 119
    assert MODEL_INFO["randwire"].units == 120
    assert MODEL_INFO["nasnet"].units == 374
    assert MODEL_INFO["squeezenet"].units == 50
    for info in MODEL_INFO.values():
        assert info.description and "\n" not in info.description


# ---------------------------------------------------------------------------------------------
# structure (every model, batch 1; building the large ones takes a few seconds)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_builds_checks_and_names(name: str) -> None:
    model = _model(name)
    onnx.checker.check_model(model)
    assert model.opset_import[0].version == 17
    info = MODEL_INFO[name]
    assert [i.name for i in model.graph.input] == ["x"]
    assert [o.name for o in model.graph.output] == ["y"]
    assert _dims(model.graph.input[0]) == (1, *info.input_shape)
    assert _dims(model.graph.output[0]) == (1, *info.output_shape)
    names = [n.name for n in model.graph.node]
    assert all(names) and len(set(names)) == len(names)
    outputs = [o for n in model.graph.node for o in n.output]
    assert len(set(outputs)) == len(outputs)


@pytest.mark.parametrize("name", _slow_unless_small(ALL))
def test_shape_inference_gives_output_shape(name: str) -> None:
    model = onnx.ModelProto.FromString(_model(name).SerializeToString())
    model.graph.output[0].type.tensor_type.ClearField("shape")
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    assert _dims(inferred.graph.output[0]) == (1, *MODEL_INFO[name].output_shape)


@pytest.mark.parametrize("name", ALL)
def test_conv_counts(name: str) -> None:
    assert _ops(_model(name))["Conv"] == MODEL_INFO[name].convs


#: ONNX op types and the anchor ops of the OpGraph nodes they become.
_GRAPH_OPS = {"Conv": "conv2d", "MaxPool": "max_pool2d", "AveragePool": "avg_pool2d",
              "GlobalAveragePool": "mean", "Concat": "concat"}


@pytest.mark.parametrize("name", ALL)
def test_opgraph_backend_matches_onnx(name: str) -> None:
    """One definition, two backends: the same convs, pools and concats, by name and shape."""
    model = _model(name)
    build_graph = BENCH_GRAPHS["nasnet_large" if name == "nasnet" else name]
    graph = build_graph()
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    onnx_ops = {n.name: (_GRAPH_OPS[n.op_type], shapes.get(n.input[1]) if n.op_type == "Conv"
                         else None)
                for n in model.graph.node if n.op_type in _GRAPH_OPS}
    graph_ops = {n.name: (n.attrs["op"], tuple(n.attrs["weight_shape"])
                          if n.attrs["op"] == "conv2d" else None)
                 for n in graph.nodes if n.attrs["op"] in _GRAPH_OPS.values()}
    assert graph_ops == onnx_ops
    assert sum(op == "conv2d" for op, _ in graph_ops.values()) == MODEL_INFO[name].convs
    assert [graph.tensors[t].shape for t in graph.outputs] == [(1, *MODEL_INFO[name].output_shape)]
    units = build_graph(granularity="ios")
    # IOS's ResNet has no global pool; ours has, and counts it.
    assert len(units.nodes) == MODEL_INFO[name].units + (name == "resnet50")


def test_inception_v3_units() -> None:
    ops = _ops(_model("inception_v3"))
    assert ops["Conv"] == 94 and ops["Relu"] == 94
    pools = ops["MaxPool"] + ops["AveragePool"] + ops["GlobalAveragePool"]
    assert (ops["MaxPool"], ops["AveragePool"], ops["GlobalAveragePool"]) == (4, 9, 1)
    assert ops["Concat"] == 11
    assert ops["Conv"] + pools + ops["Concat"] == 119  # = 7 + 3*9 + 6 + 4*12 + 8 + 2*11 + 1


def test_squeezenet_units() -> None:
    ops = _ops(_model("squeezenet"))
    assert (ops["Conv"], ops["Concat"], ops["Add"]) == (30, 8, 8)
    assert ops["MaxPool"] == 3 and ops["GlobalAveragePool"] == 1
    # front 2, four fires with identity bypass x 5, four with conv bypass x 6, 2 pools, tail 2
    assert sum(ops[k] for k in ("Conv", "Concat", "Add", "MaxPool", "GlobalAveragePool")) == 50


def test_randwire_units() -> None:
    model = _model("randwire")
    ops = _ops(model)
    dw = _depthwise(model)
    assert dw == 16 + 3 * 32  # one separable unit per graph node
    assert ops["Conv"] == 2 * dw + 2  # + front conv + tail conv
    exits = [n for n in model.graph.node if n.op_type == "Add" and "/exit" in n.name]
    sinks = {"ws-16-4-0.75-2": 1, "ws-32-4-0.75-3": 5, "ws-32-4-0.75-4": 2,
             "ws-32-4-0.75-5": 4}
    assert len(exits) == sum(s - 1 for s in sinks.values())
    # IOS units: front 1 + separable units + 4 stage exits + tail (ReLU, conv, GAP)
    assert 1 + dw + 4 + 3 == 120


def test_nasnet_units() -> None:
    model = _model("nasnet")
    ops = _ops(model)
    dw = _depthwise(model)
    assert dw == 2 * (5 + 5 + 3 * 5 + 15 * 5 + 2 * 5)  # two separable units per branch
    relu_convs = ops["Conv"] - 2 * dw - 1  # minus the stem conv
    assert relu_convs == 1 + 3 + 3 * 3 + 15 * 2 + 2 * 2
    pools = ops["MaxPool"] + ops["AveragePool"]
    # max: 2 per stem and reduction cell; avg: 2 per stem and reduction cell, 3 per other cell
    assert (ops["MaxPool"], ops["AveragePool"]) == (4 * 2, 4 * 2 + 18 * 3)
    # IOS Identity units that are explicit sums: c0/c1 of the stems and reductions, and
    # cell_stem_1's summed right path; the other sums fold into their consumers' inputs.
    named = [n.name for n in model.graph.node if n.op_type == "Add"]
    explicit = [n for n in named if (n.startswith(("cell_stem", "reduction_cell"))
                                     and n.rsplit("/", 1)[1] in ("comb_iter_0", "comb_iter_1"))
                or n == "cell_stem_1/final_path"]
    assert len(explicit) == 2 * 4 + 1
    units = dw + 1 + relu_convs + pools + ops["Concat"] + len(explicit) + 2  # + ReLU + GAP
    assert units == 374
    assert _dims(model.graph.output[0]) == (1, 3360, 1, 1)


def test_resnet50_structure() -> None:
    ops = _ops(_model("resnet50"))
    assert ops["Conv"] == 1 + 16 * 3 + 4
    assert ops["Add"] == 16
    assert ops["Relu"] == 1 + 16 * 3  # stem, two fused per bottleneck, one after the add
    assert ops["Conv"] + ops["Add"] + 16 + ops["MaxPool"] == 86  # IOS's count (no GAP)


@pytest.mark.parametrize("graph", RANDWIRE_GRAPHS)
def test_randwire_graph_files(graph: str) -> None:
    n, edges = load_randwire_graph(graph)
    expect = {"ws-16-4-0.75-2": (16, 6, 1), "ws-32-4-0.75-3": (32, 4, 5),
              "ws-32-4-0.75-4": (32, 5, 2), "ws-32-4-0.75-5": (32, 6, 4)}[graph]
    assert n == expect[0] and len(edges) == 2 * n
    assert all(0 <= u < v < n for u, v in edges)
    sources = n - len({v for _, v in edges})
    sinks = n - len({u for u, _ in edges})
    assert (sources, sinks) == expect[1:]


# ---------------------------------------------------------------------------------------------
# batch and seed
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", _slow_unless_small(ALL))
def test_batch_changes_shapes_only(name: str) -> None:
    m3 = BUILTIN_MODELS[name](batch=3)
    info = MODEL_INFO[name]
    assert _dims(m3.graph.input[0]) == (3, *info.input_shape)
    assert _dims(m3.graph.output[0]) == (3, *info.output_shape)
    m1 = _model(name)
    assert len(m3.graph.initializer) == len(m1.graph.initializer)
    # the weights do not depend on the batch
    for a, b in zip(m1.graph.initializer[:8], m3.graph.initializer[:8], strict=True):
        assert a.name == b.name and a.raw_data == b.raw_data


def test_seed_is_deterministic() -> None:
    a = BUILTIN_MODELS["squeezenet"](seed=0)
    b = BUILTIN_MODELS["squeezenet"](seed=0)
    c = BUILTIN_MODELS["squeezenet"](seed=1)
    assert a.SerializeToString() == b.SerializeToString()
    assert a.graph.initializer[0].raw_data != c.graph.initializer[0].raw_data


def test_bad_batch() -> None:
    with pytest.raises(ValueError, match="batch"):
        BUILTIN_MODELS["squeezenet"](batch=0)


# ---------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------
def test_export_model(tmp_path) -> None:
    path = export_model("squeezenet", tmp_path / "sub" / "squeezenet.onnx", batch=2)
    assert path.exists()
    assert os.listdir(path.parent) == ["squeezenet.onnx"]  # no temporary file left behind
    loaded = onnx.load(str(path))
    assert _dims(loaded.graph.input[0]) == (2, 3, 224, 224)
    assert loaded.SerializeToString() == BUILTIN_MODELS["squeezenet"](batch=2).SerializeToString()
    export_model("squeezenet", path)  # overwrite in place
    assert _dims(onnx.load(str(path)).graph.input[0]) == (1, 3, 224, 224)
    with pytest.raises(KeyError, match="unknown model"):
        export_model("vgg", tmp_path / "vgg.onnx")


# ---------------------------------------------------------------------------------------------
# ONNX Runtime
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("name", SMALL)
def test_ort_runs_small(name: str, batch: int) -> None:
    model = BUILTIN_MODELS[name](batch=batch)
    x = _input(name, batch)
    (y,) = _ort_session(model).run(None, {"x": x})
    assert y.shape == (batch, *MODEL_INFO[name].output_shape)
    assert np.isfinite(y).all()
    if batch == 2:  # samples are independent
        (y0,) = _ort_session(_model(name)).run(None, {"x": x[:1]})
        np.testing.assert_allclose(y[:1], y0, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", _slow_unless_small(ALL[1:]))
def test_activations_stay_order_one(name: str) -> None:
    """The weight scaling keeps every intermediate tensor's RMS within a small range."""
    sess = _ort_session(_model(name), all_outputs=True)
    outs = sess.run(None, {"x": _input(name, 1)})
    rms = [float(np.sqrt(np.mean(np.square(o, dtype=np.float64)))) for o in outs]
    assert np.isfinite(rms).all()
    assert 0.05 < min(rms) and max(rms) < 20.0, (min(rms), max(rms))


# ---------------------------------------------------------------------------------------------
# TVM import
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", _slow_unless_small(ALL))
def test_tvm_import(name: str) -> None:
    pytest.importorskip("tvm")
    from ios_tvm.compiler.frontend import load_model

    mod = load_model(_model(name))
    func = mod["main"]
    assert len(func.params) == 1
    assert [int(d) for d in func.params[0].ty.shape.values] == [1, *MODEL_INFO[name].input_shape]
