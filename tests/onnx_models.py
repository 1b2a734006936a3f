"""Small ONNX models built with ``onnx.helper`` for tests and examples.

Each builder returns an ``onnx.ModelProto`` (opset 17, checked with ``onnx.checker``) whose
weights are deterministic initializers, so ``ios_tvm.compiler.frontend.load_model`` turns them into
Relax constants. The models are deliberately tiny (a few channels, small spatial sizes) so
that import, lowering and reference runs with ONNX Runtime take well under a second.

Builders:

- :func:`inception_block`: 4 branches (1x1; 1x1->3x3; 1x1->5x5; maxpool->1x1) and a concat,
  the canonical IOS example (width 4); :func:`inception_net` chains several.
- :func:`residual_block`: conv-relu-conv + skip add + relu.
- :func:`two_output_model`: two independent heads on one stem, two graph outputs.
- :func:`flatten_gemm_model`: conv -> Reshape/Flatten -> Gemm -> MatMul (views).
- :func:`transformer_layer`: single-head attention + LayerNorm + MLP.
- :func:`split_model`: a Split, i.e. a kernel with two outputs.
- :func:`unsupported_op_model`, :func:`custom_domain_model`: ops TVM's ONNX importer lacks.
- :func:`if_model`: control flow (an ONNX If).
- :func:`aliased_outputs_model`: outputs that are another output, the input, a constant.
- :func:`two_tower_model`: float features + int64 ids -> embedding Gather -> concat -> MatMul.
- :func:`indexing_model`: one GatherElements / GatherND / ScatterElements / ScatterND.
- :func:`sum_conv_model`, :func:`range_model`, :func:`nonzero_model`: ops around convs that
  TVM's NHWC layout conversion could not handle (issue 17).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

OPSET = 17


class _Builder:
    """Accumulates nodes and initializers with unique names."""

    def __init__(self, seed: int = 0) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.rng = np.random.default_rng(seed)
        self._count: dict[str, int] = {}

    def name(self, prefix: str) -> str:
        i = self._count.get(prefix, 0)
        self._count[prefix] = i + 1
        return f"{prefix}{i}"

    def weight(self, prefix: str, shape: Sequence[int], scale: float = 0.1) -> str:
        name = self.name(prefix)
        arr = (self.rng.standard_normal(shape) * scale).astype(np.float32)
        self.inits.append(onnx.numpy_helper.from_array(arr, name))
        return name

    def const_i64(self, prefix: str, values: Sequence[int]) -> str:
        name = self.name(prefix)
        self.inits.append(onnx.numpy_helper.from_array(np.asarray(values, np.int64), name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], n_out: int = 1, out: str | None = None,
           **attrs) -> list[str]:
        """Add a node; ``out`` names its (single) output, e.g. a graph output."""
        node_name = self.name(op_type.lower() + "_")
        if out is not None:
            outs = [out]
        else:
            outs = [f"{node_name}_out{i}" if n_out > 1 else f"{node_name}_out"
                    for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=node_name, **attrs))
        return outs

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int = 1,
             relu: bool = True, out: str | None = None) -> str:
        w = self.weight("w", (cout, cin, k, k))
        b = self.weight("b", (cout,))
        (y,) = self.op("Conv", [x, w, b], kernel_shape=[k, k], pads=[k // 2] * 4,
                       strides=[stride, stride], out=None if relu else out)
        if relu:
            (y,) = self.op("Relu", [y], out=out)
        return y

    def model(self, inputs: Sequence[onnx.ValueInfoProto], outputs: Sequence[str],
              name: str) -> onnx.ModelProto:
        outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs]
        graph = helper.make_graph(self.nodes, name, list(inputs), outs, initializer=self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="ios_tvm.tests")
        model.ir_version = 8  # loadable by older onnxruntime releases too
        # Output shapes are left to ONNX shape inference (the checker wants them filled in).
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        onnx.checker.check_model(model)
        return model


def _input(name: str, shape: Sequence[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _inception(b: _Builder, x: str, c: int, out: str | None = None) -> str:
    br1 = b.conv(x, c, c, 1)
    br2 = b.conv(b.conv(x, c, c, 1), c, c, 3)
    br3 = b.conv(b.conv(x, c, c, 1), c, c, 5)
    (pool,) = b.op("MaxPool", [x], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1])
    br4 = b.conv(pool, c, c, 1)
    return b.op("Concat", [br1, br2, br3, br4], axis=1, out=out)[0]


def inception_block(batch: int | str = 1, channels: int = 8, size: int = 8) -> onnx.ModelProto:
    """Inception-style block: 1x1 | 1x1->3x3 | 1x1->5x5 | maxpool->1x1, then concat.

    Input ``x`` of shape ``(batch, channels, size, size)``; pass ``batch="N"`` for a symbolic
    batch dimension. Output ``y`` has ``4 * channels`` channels. Lowers to 8 kernels.
    """
    b = _Builder(seed=1)
    _inception(b, "x", channels, out="y")
    return b.model([_input("x", (batch, channels, size, size))], ["y"],
                   "inception_block")


def inception_net(blocks: int = 3, channels: int = 8, size: int = 8) -> onnx.ModelProto:
    """``blocks`` inception blocks in a chain, joined by 1x1 convs (4c -> c channels).

    About 9 kernels per block; for timing extraction and search on larger graphs.
    """
    b = _Builder(seed=9)
    c = channels
    h = "x"
    for i in range(blocks):
        h = _inception(b, h, c)
        h = b.conv(h, 4 * c, c, 1, out="y" if i == blocks - 1 else None)
    return b.model([_input("x", (1, c, size, size))], ["y"], "inception_net")


def residual_block(channels: int = 8, size: int = 8) -> onnx.ModelProto:
    """Residual block: ``relu(conv(relu(conv(x))) + x)``."""
    b = _Builder(seed=2)
    c = channels
    h = b.conv("x", c, c, 3)
    h = b.conv(h, c, c, 3, relu=False)
    (s,) = b.op("Add", [h, "x"])
    b.op("Relu", [s], out="y")
    return b.model([_input("x", (1, c, size, size))], ["y"], "residual_block")


def two_output_model(channels: int = 8, size: int = 8) -> onnx.ModelProto:
    """A conv stem with two independent heads; graph outputs ``y1`` and ``y2``."""
    b = _Builder(seed=3)
    c = channels
    stem = b.conv("x", c, c, 3)
    b.conv(stem, c, c, 1, out="y1")
    h = b.conv(stem, c, 2 * c, 3, relu=False)
    b.op("Sigmoid", [h], out="y2")
    return b.model([_input("x", (1, c, size, size))], ["y1", "y2"], "two_output_model")


def flatten_gemm_model(channels: int = 4, size: int = 4, hidden: int = 16,
                       use_flatten: bool = False) -> onnx.ModelProto:
    """conv+relu -> Reshape (or Flatten) -> Gemm -> relu -> MatMul; output ``y``.

    The Reshape/Flatten of the conv output is a pure view after lowering.
    """
    b = _Builder(seed=4)
    c = channels
    h = b.conv("x", c, c, 3)
    if use_flatten:
        (flat,) = b.op("Flatten", [h], axis=1)
    else:
        shape = b.const_i64("shape", [1, c * size * size])
        (flat,) = b.op("Reshape", [h, shape])
    w1 = b.weight("w", (hidden, c * size * size))
    b1 = b.weight("b", (hidden,))
    (g,) = b.op("Gemm", [flat, w1, b1], transB=1)
    (g,) = b.op("Relu", [g])
    w2 = b.weight("w", (hidden, 10))
    b.op("MatMul", [g, w2], out="y")
    return b.model([_input("x", (1, c, size, size))], ["y"], "flatten_gemm_model")


def transformer_layer(seq: int = 8, dim: int = 16) -> onnx.ModelProto:
    """One post-norm transformer layer (single head): attention + LayerNorm + MLP.

    Input ``x`` of shape ``(1, seq, dim)``; output ``y`` of the same shape. The Q, K and V
    projections are three independent MatMuls (parallel branches).
    """
    b = _Builder(seed=5)
    d = dim
    q = b.op("MatMul", ["x", b.weight("wq", (d, d))])[0]
    k = b.op("MatMul", ["x", b.weight("wk", (d, d))])[0]
    v = b.op("MatMul", ["x", b.weight("wv", (d, d))])[0]
    (kt,) = b.op("Transpose", [k], perm=[0, 2, 1])
    (s,) = b.op("MatMul", [q, kt])
    scale = b.name("scale")
    b.inits.append(onnx.numpy_helper.from_array(np.float32(1.0 / np.sqrt(d)), scale))
    (s,) = b.op("Mul", [s, scale])
    (p,) = b.op("Softmax", [s], axis=-1)
    (a,) = b.op("MatMul", [p, v])
    (a,) = b.op("MatMul", [a, b.weight("wo", (d, d))])
    (h,) = b.op("Add", ["x", a])
    gamma = b.name("gamma")
    b.inits.append(onnx.numpy_helper.from_array(np.ones(d, np.float32), gamma))
    beta = b.weight("beta", (d,))
    (h,) = b.op("LayerNormalization", [h, gamma, beta], axis=-1, epsilon=1e-5)
    (m,) = b.op("MatMul", [h, b.weight("w1", (d, 2 * d))])
    (m,) = b.op("Relu", [m])
    (m,) = b.op("MatMul", [m, b.weight("w2", (2 * d, d))])
    b.op("Add", [h, m], out="y")
    return b.model([_input("x", (1, seq, d))], ["y"], "transformer_layer")


#: An ONNX op type (in the default domain) that TVM 0.27's Relax importer does not convert.
UNSUPPORTED_OP = "DFT"


def unsupported_op_model() -> onnx.ModelProto:
    """relu -> DFT: a valid ONNX model with an op the TVM importer lacks (node ``dft_0``)."""
    b = _Builder(seed=6)
    (r,) = b.op("Relu", ["x"])
    b.op(UNSUPPORTED_OP, [r], onesided=0, out="y")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 1])
    return b.model([x], ["y"], "unsupported_op_model")


def custom_domain_model() -> onnx.ModelProto:
    """relu -> ``com.example.FancyOp``: an op in a custom domain (node ``fancyop_0``)."""
    b = _Builder(seed=7)
    (r,) = b.op("Relu", ["x"])
    node_name = b.name("fancyop_")
    b.nodes.append(helper.make_node("FancyOp", [r], ["y"], name=node_name,
                                    domain="com.example"))
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    graph = helper.make_graph(b.nodes, "custom_domain_model", [_input("x", (1, 4))], outs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                     helper.make_opsetid("com.example", 1)])
    model.ir_version = 8
    return model


def split_model(channels: int = 8, size: int = 8) -> onnx.ModelProto:
    """conv -> Split (2 outputs) -> one conv per half -> Concat; output ``y``.

    Split lowers to a single kernel with a tuple of outputs.
    """
    b = _Builder(seed=8)
    c = channels
    h = b.conv("x", c, c, 3)
    sizes = b.const_i64("split", [c // 2, c // 2])
    lo, hi = b.op("Split", [h, sizes], n_out=2, axis=1)
    y1 = b.conv(lo, c // 2, c, 3)
    y2 = b.conv(hi, c // 2, c, 1)
    b.op("Add", [y1, y2], out="y")
    return b.model([_input("x", (1, c, size, size))], ["y"], "split_model")


def if_model() -> onnx.ModelProto:
    """``y = If(cond, x + 1, x * 2)``: control flow, which the scheduler cannot handle."""
    one = onnx.numpy_helper.from_array(np.float32(1.0), "one")
    two = onnx.numpy_helper.from_array(np.float32(2.0), "two")
    then_g = helper.make_graph([helper.make_node("Add", ["x", "one"], ["t"])], "then", [],
                               [_input("t", (1, 4))], initializer=[one])
    else_g = helper.make_graph([helper.make_node("Mul", ["x", "two"], ["e"])], "else", [],
                               [_input("e", (1, 4))], initializer=[two])
    node = helper.make_node("If", ["cond"], ["y"], name="if_0", then_branch=then_g,
                            else_branch=else_g)
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    graph = helper.make_graph([node], "if_model", [cond, _input("x", (1, 4))],
                              [_input("y", (1, 4))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def sum_conv_model(channels: int = 4, size: int = 8) -> onnx.ModelProto:
    """Convs fed by multi-input ``Sum`` nodes (imported as ``stack`` + ``sum``); output ``y``.

    ``Sum(x, relu(x), sigmoid(x)) -> conv -> Sum(conv, x, relu) -> conv``.
    """
    b = _Builder(seed=10)
    c = channels
    (r,) = b.op("Relu", ["x"])
    (g,) = b.op("Sigmoid", ["x"])
    (s,) = b.op("Sum", ["x", r, g])
    h = b.conv(s, c, c, 3)
    (s2,) = b.op("Sum", [h, "x", r])
    b.conv(s2, c, c, 3, out="y")
    return b.model([_input("x", (1, c, size, size))], ["y"], "sum_conv_model")


def range_model(channels: int = 4, size: int = 8) -> onnx.ModelProto:
    """``conv(x) + Cast(Range(0, size, 1))``: a Range of constants added to a conv output."""
    b = _Builder(seed=11)
    c = channels
    h = b.conv("x", c, c, 3)
    start, limit, delta = (b.name(n) for n in ("start", "limit", "delta"))
    for name, v in ((start, 0), (limit, size), (delta, 1)):
        b.inits.append(onnx.numpy_helper.from_array(np.int64(v), name))
    (r,) = b.op("Range", [start, limit, delta])
    (rf,) = b.op("Cast", [r], to=TensorProto.FLOAT)
    b.op("Add", [h, rf], out="y")
    return b.model([_input("x", (1, c, size, size))], ["y"], "range_model")


def nonzero_model(channels: int = 4, size: int = 8) -> onnx.ModelProto:
    """conv + (number of non-zeros of a constant mask, via NonZero): a data-dependent shape."""
    b = _Builder(seed=12)
    c = channels
    h = b.conv("x", c, c, 3)
    mask = b.name("mask")
    b.inits.append(onnx.numpy_helper.from_array(
        (np.arange(size) % 3 == 0).astype(np.float32).reshape(1, size), mask))
    (nz,) = b.op("NonZero", [mask])
    (nzf,) = b.op("Cast", [nz], to=TensorProto.FLOAT)
    (s,) = b.op("ReduceSum", [nzf], keepdims=0)
    b.op("Add", [h, s], out="y")
    return b.model([_input("x", (1, c, size, size))], ["y"], "nonzero_model")


def aliased_outputs_model(channels: int = 4, size: int = 4) -> onnx.ModelProto:
    """Outputs ``y`` (conv+relu), ``same`` (Identity of ``y``), ``echo`` (Identity of the input
    ``x``) and ``k`` (a Constant), in that order."""
    b = _Builder(seed=13)
    c = channels
    b.conv("x", c, c, 3, out="y")
    b.op("Identity", ["y"], out="same")
    b.op("Identity", ["x"], out="echo")
    b.nodes.append(helper.make_node("Constant", [], ["k"], name="const_k",
                                    value=onnx.numpy_helper.from_array(
                                        np.arange(6, dtype=np.float32).reshape(2, 3))))
    return b.model([_input("x", (1, c, size, size))], ["y", "same", "echo", "k"],
                   "aliased_outputs_model")


def two_tower_model(features: int = 8, ids: int = 4, vocab: int = 50, dim: int = 8,
                    hidden: int = 16) -> onnx.ModelProto:
    """Inputs ``features`` (float32, ``(1, features)``) and ``ids`` (int64, ``(1, ids)``).

    ``y = relu(concat(features, flatten(Gather(table, ids))) @ W)``: the ids index the rows of
    an embedding ``table`` of ``vocab`` rows, so valid ids lie in ``[-vocab, vocab)``.
    """
    b = _Builder(seed=14)
    table = b.weight("table", (vocab, dim), scale=1.0)
    (emb,) = b.op("Gather", [table, "ids"], axis=0)
    (flat,) = b.op("Reshape", [emb, b.const_i64("shape", [1, ids * dim])])
    (cat,) = b.op("Concat", ["features", flat], axis=1)
    (h,) = b.op("MatMul", [cat, b.weight("w", (features + ids * dim, hidden))])
    b.op("Relu", [h], out="y")
    inputs = [_input("features", (1, features)),
              helper.make_tensor_value_info("ids", TensorProto.INT64, [1, ids])]
    return b.model(inputs, ["y"], "two_tower_model")


#: Index inputs of :func:`indexing_model`, valid ones (negatives included), per op.
INDEXING_CASES = {
    "GatherElements": [[0, 4, -5], [1, -1, 3]],
    "GatherND": [[0, 2], [-1, -3]],
    "ScatterElements": [[0, -1, 1], [1, 2, -5]],
    "ScatterND": [[0], [-2]],
}


def indexing_model(op: str) -> onnx.ModelProto:
    """``y = op(x, i[, u])`` with data ``x`` (5, 3), int64 indices ``i`` and updates ``u``.

    ``op`` is a key of :data:`INDEXING_CASES` (axis 0 where the op has one).
    """
    shape = np.asarray(INDEXING_CASES[op]).shape
    inputs = [_input("x", (5, 3)),
              helper.make_tensor_value_info("i", TensorProto.INT64, list(shape))]
    names = ["x", "i"]
    if op.startswith("Scatter"):
        inputs.append(_input("u", (2, 3)))
        names.append("u")
    attrs = {"axis": 0} if op.endswith("Elements") else {}
    node = helper.make_node(op, names, ["y"], name=op.lower(), **attrs)
    graph = helper.make_graph([node], f"{op.lower()}_model", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model)
