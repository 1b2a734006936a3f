"""The PyTorch baseline (ios_tvm/torch_baseline.py): the ONNX graph run with torch equals
ONNX Runtime on every zoo model and on each supported operator; what it cannot run is refused
up front, naming the node."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ios_tvm.bench.torch_onnx import SUPPORTED_OPS, torch_module, torch_runner
from ios_tvm.errors import UnsupportedGraphError
from ios_tvm.models import BUILTIN_MODELS

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

TOL = 1e-4


def input_arrays(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    inits = {i.name for i in model.graph.initializer}
    return {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim])
            .astype("float32") for i in model.graph.input if i.name not in inits}


def ort_outputs(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


def torch_outputs(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    m = torch_module(model)
    with torch.inference_mode():
        outs = m(*[torch.from_numpy(x) for x in feed.values()])
    return [o.numpy() for o in outs]


def assert_close(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        scale = max(1.0, float(np.abs(w).max()))
        np.testing.assert_allclose(g, w, rtol=TOL, atol=TOL * scale)


@pytest.mark.parametrize("name", sorted(BUILTIN_MODELS))
def test_zoo_model_equals_onnxruntime(name: str) -> None:
    model = BUILTIN_MODELS[name]()
    feed = input_arrays(model)
    assert_close(torch_outputs(model, feed), ort_outputs(model, feed))


# -- one small graph per operator and attribute the interpreter handles ----------------------------
def _graph(nodes: list, inputs: dict[str, list[int]], out: str, out_shape: list[int],
           weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
                     for n, s in inputs.items()],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(v, k) for k, v in weights.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(m)
    return m


_R = np.random.default_rng(1)


def _w(*shape: int) -> np.ndarray:
    return _R.standard_normal(shape).astype("float32")


CASES = {
    "conv_asymmetric_pads_groups_dilation": _graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[0, 1, 2, 1], strides=[2, 1],
                          dilations=[1, 2], group=2)],
        {"x": [1, 4, 9, 9]}, "y", [1, 6, 5, 7], {"w": _w(6, 2, 3, 3), "b": _w(6)}),
    "maxpool_asymmetric_ceil": _graph(
        [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                          pads=[0, 0, 1, 1], ceil_mode=1)],
        {"x": [1, 3, 8, 8]}, "y", [1, 3, 5, 5], {}),
    "averagepool_include_pad": _graph(
        [helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                          count_include_pad=1)],
        {"x": [1, 3, 6, 6]}, "y", [1, 3, 6, 6], {}),
    "averagepool_exclude_pad": _graph(
        [helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                          strides=[2, 2])],
        {"x": [1, 3, 7, 7]}, "y", [1, 3, 4, 4], {}),
    "batchnorm_sigmoid_mul": _graph(
        [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["n"],
                          epsilon=1e-3),
         helper.make_node("Sigmoid", ["n"], ["g"]),
         helper.make_node("Mul", ["n", "g"], ["y"])],
        {"x": [2, 3, 4, 4]}, "y", [2, 3, 4, 4],
        {"s": _w(3), "b": _w(3), "m": _w(3), "v": np.abs(_w(3)) + 0.5}),
    "globalpool_flatten_gemm": _graph(
        [helper.make_node("GlobalAveragePool", ["x"], ["p"]),
         helper.make_node("Flatten", ["p"], ["f"], axis=1),
         helper.make_node("Gemm", ["f", "w", "c"], ["y"], transB=1, alpha=0.5, beta=2.0)],
        {"x": [2, 8, 5, 5]}, "y", [2, 10], {"w": _w(10, 8), "c": _w(10)}),
    "matmul_sum_concat_two_inputs": _graph(
        [helper.make_node("MatMul", ["x", "w"], ["a"]),
         helper.make_node("Sum", ["a", "z", "a"], ["s"]),
         helper.make_node("Relu", ["s"], ["r"]),
         helper.make_node("Concat", ["r", "s"], ["y"], axis=1)],
        {"x": [3, 4], "z": [3, 5]}, "y", [3, 10], {"w": _w(4, 5)}),
}


def test_every_supported_op_is_covered() -> None:
    used = {n.op_type for m in CASES.values() for n in m.graph.node}
    used |= {n.op_type for f in BUILTIN_MODELS.values() for n in f().graph.node}
    assert used == set(SUPPORTED_OPS)


@pytest.mark.parametrize("case", sorted(CASES))
def test_operator_equals_onnxruntime(case: str) -> None:
    model = CASES[case]
    feed = input_arrays(model, seed=2)
    assert_close(torch_outputs(model, feed), ort_outputs(model, feed))


# -- refused up front ------------------------------------------------------------------------------
def test_unsupported_op_names_the_node() -> None:
    model = _graph([helper.make_node("Relu", ["x"], ["r"], name="first"),
                    helper.make_node("Softsign", ["r"], ["y"], name="odd_one")],
                   {"x": [1, 4]}, "y", [1, 4], {})
    with pytest.raises(UnsupportedGraphError, match=r"node 'odd_one': ONNX op Softsign"):
        torch_module(model)


def test_auto_pad_is_refused_naming_the_node() -> None:
    model = _graph([helper.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER",
                                     name="c1")],
                   {"x": [1, 2, 5, 5]}, "y", [1, 2, 5, 5], {"w": _w(2, 2, 3, 3)})
    with pytest.raises(UnsupportedGraphError, match="node 'c1': auto_pad"):
        torch_module(model)


def test_asymmetric_average_pool_is_refused() -> None:
    model = _graph([helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2, 2],
                                     pads=[0, 0, 1, 1])],
                   {"x": [1, 2, 4, 4]}, "y", [1, 2, 4, 4], {})
    with pytest.raises(UnsupportedGraphError, match="node 'AveragePool_0': asymmetric"):
        torch_module(model)


def test_module_loads_a_path(tmp_path) -> None:
    path = tmp_path / "m.onnx"
    model = CASES["globalpool_flatten_gemm"]
    onnx.save(model, path)
    feed = input_arrays(model)
    assert_close(torch_outputs(onnx.load(path), feed), torch_outputs(model, feed))
    assert torch_module(str(path)).input_names == ["x"]


# -- the benchmark runners -----------------------------------------------------------------------
def test_runner_eager_and_compiled_agree_with_onnxruntime() -> None:
    """torch.compile compiles here (inductor, C++ on the CPU): its outputs equal eager's up
    to float reassociation, and both equal ONNX Runtime."""
    model = BUILTIN_MODELS["sample"]()
    feed = input_arrays(model, seed=3)
    want = ort_outputs(model, feed)
    run, eager, _ = torch_runner(model, list(feed.values()), warmup=1)
    run()
    assert_close(eager, want)
    run_c, compiled, took = torch_runner(model, list(feed.values()), compile=True, warmup=2)
    assert_close(compiled, want)
    assert took > 0
    run_c()


def test_runner_takes_inputs_by_name_in_any_order() -> None:
    model = CASES["matmul_sum_concat_two_inputs"]
    feed = input_arrays(model, seed=4)
    assert list(feed) == ["x", "z"]
    want = ort_outputs(model, feed)
    _, by_name, _ = torch_runner(model, {"z": feed["z"], "x": feed["x"]}, warmup=1)
    assert_close(by_name, want)
    with pytest.raises(UnsupportedGraphError, match=r"no value for input\(s\) \['z'\]"):
        torch_runner(model, {"x": feed["x"]})
