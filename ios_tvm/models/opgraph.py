"""The zoo's networks as operator graphs (no TVM): the OpGraph backend of the model definitions.

:class:`OpGraphBuilder` implements the builder interface of :mod:`ios_tvm.models._builder`
(:class:`~ios_tvm.models._builder.NetBuilder`), so each zoo network, defined once in its
module, also comes out as an :class:`~ios_tvm.ir.graph.OpGraph` for search benchmarks and tests
that must run without the compiler. Node ids follow the definition order (a topological
order), tensors carry NCHW float32 shapes, node and tensor names are the ONNX model's
(``scope/name``; weights ``<node>.weight`` and ``<node>.bias``), and nodes carry FLOPs, bytes
moved and attributes in the form :func:`ios_tvm.compiler.extract.extract_graph` gives real kernels,
so
that :func:`ios_tvm.scheduler.merge.merge_predicate` decides merges here as it does on compiled
models.

Granularity
-----------
``granularity="kernel"`` (the default) approximates the kernels TVM's ``FuseOps`` makes:

* conv2d + bias + activation is one kernel. A ReLU *in front of* a conv (``relu_conv``, the ReLU
  of a separable unit) is fused into it as well (its ``ops`` then start with ``"relu"``, which
  keeps such convs out of merges, as IOS's ``Sequential`` units are).
* A separable unit ReLU -> depthwise kxk -> pointwise 1x1 is two kernels: the depthwise conv
  (``groups == channels``) and the pointwise conv.
* A pooling is one kernel; a concat is one kernel of its own that reads every branch output.
* An element-wise sum of ``k`` values is one ``add`` kernel (``ops`` lists ``k - 1`` adds).
  TVM usually fuses such a sum into its producer or consumer; keeping it separate makes every
  sum a schedulable op (a little pessimistic for the sequential schedule).
* A standalone ReLU is fused into the kernel that produces its input (no node; ``"relu"`` is
  appended to that kernel's ``ops``).

``granularity="ios"`` reproduces IOS's scheduling units instead (Ding et al., MLSys 2021, §3): a
separable
unit is one ``sep_conv`` node; a ``lazy_sum`` (a sum IOS folds into a consumer's input term)
gets no node and its consumer reads every summand; ``add`` (IOS ``Identity`` units: concats,
explicit sums, the RandWire stage exits) is a node, an ``identity`` node for a single value; a
standalone ReLU is a node. The node counts then match the paper's unit counts: Inception V3
119, RandWire 120, NASNet 374, SqueezeNet 50. Inception V3, SqueezeNet and the sample block
are the same graph at both granularities.

Costs
-----
``flops``: ``2 * N * K * C / groups * R * S * Hout * Wout`` for a conv (plus one FLOP per
summed element when it reads a sum at IOS granularity), output elements times window size for
a pool, input elements for a global pool, ``(k - 1) * elements`` for a sum of ``k`` tensors,
output elements for a concat or a ReLU. ``nbytes``: every input (activations and weights) plus
the output, in float32.

Attributes
----------
As :func:`ios_tvm.compiler.extract.extract_graph` records them: ``op`` (the anchor op: ``"conv2d"``,
``"max_pool2d"``, ``"avg_pool2d"``, ``"mean"`` for a global average pool, ``"concat"``,
``"add"``, ``"relu"``; at IOS granularity also ``"sep_conv"`` and ``"identity"``), ``kernel``
(the kernel name, as :attr:`OpNode.kernel`), ``ops`` (the fused op list, e.g.
``["conv2d", "add", "relu"]``), ``relax_op``, ``arg_shapes``, ``out_shape``, and per op: for a
conv ``strides``, ``padding`` (top, left, bottom, right), ``dilation``, ``groups``,
``data_layout``/``kernel_layout``/``out_layout``, ``out_dtype``, ``data_shape``,
``weight_shape`` (a ``sep_conv`` adds ``pw_weight_shape``); for a pool ``pool_size``,
``strides``, ``padding``, ``dilation``, ``ceil_mode``, ``count_include_pad``, ``layout``,
``out_layout``; ``axis`` (and ``keepdims``) for a concat or a mean. Biases have shape
``(1, C, 1, 1)``, as TVM's ONNX importer makes them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ios_tvm.errors import UnsupportedGraphError
from ios_tvm.ir.graph import OpGraph, OpNode, TensorInfo
from ios_tvm.models._builder import IntPair, ScopedNames, _out_size, _pair, check_batch
from ios_tvm.models.inception_v3 import define_inception_block, define_inception_v3
from ios_tvm.models.nasnet import define_nasnet_large
from ios_tvm.models.randwire import RANDWIRE_GRAPHS, define_randwire, load_randwire_graph
from ios_tvm.models.resnet import define_resnet50
from ios_tvm.models.sample import define_sample_block
from ios_tvm.models.squeezenet import define_squeezenet

__all__ = [
    "BENCH_GRAPHS", "GRANULARITIES", "RANDWIRE_GRAPHS", "OpGraphBuilder", "Value",
    "inception_block", "inception_v3", "load_randwire_graph", "nasnet_large", "randwire",
    "randwire_stage_graph", "resnet50", "sample_block", "squeezenet",
]

#: Accepted values of the ``granularity`` argument.
GRANULARITIES = ("kernel", "ios")

_CONV_LAYOUT = {"data_layout": "NCHW", "kernel_layout": "OIHW", "out_layout": "NCHW",
                "out_dtype": None, "dilation": [1, 1]}
_POOL_LAYOUT = {"layout": "NCHW", "out_layout": "NCHW", "dilation": [1, 1], "ceil_mode": False}


@dataclass(frozen=True)
class Value:
    """A value flowing between ops: the names of the tensors summed element-wise to make it.

    It has one name, except at IOS granularity where a sum folded into its consumer lists every
    summand.
    """

    names: tuple[str, ...]
    shape: tuple[int, int, int, int]

    @property
    def channels(self) -> int:
        """``C``."""
        return self.shape[1]


def _kernel_name(ops: Sequence[str]) -> str:
    """TVM's naming of a fused kernel: its ops joined, ``fused_`` when there are several."""
    names = ["concatenate" if op == "concat" else op for op in ops]
    return names[0] if len(names) == 1 else "fused_" + "_".join(names)


class OpGraphBuilder(ScopedNames):
    """Accumulates nodes and tensors in definition order and turns them into an OpGraph.

    Parameters
    ----------
    granularity
        ``"kernel"`` or ``"ios"`` (see the module docstring).
    """

    def __init__(self, granularity: str = "kernel") -> None:
        if granularity not in GRANULARITIES:
            raise UnsupportedGraphError(f"unknown granularity {granularity!r}; choose one of "
                                        f"{', '.join(GRANULARITIES)}")
        super().__init__()
        self.ios = granularity == "ios"
        self.nodes: list[OpNode] = []
        self.tensors: dict[str, TensorInfo] = {}
        self.inputs: list[str] = []

    def _sum_flops(self, x: Value) -> float:
        n, c, h, w = x.shape
        return float((len(x.names) - 1) * n * c * h * w)

    def _emit(self, name: str, ops: Sequence[str], data: Sequence[str],
              params: Sequence[TensorInfo], out_shape: tuple[int, int, int, int], flops: float,
              attrs: dict[str, Any], summed: int = 0) -> Value:
        """Add node ``name`` (already unique) writing tensor ``name``.

        ``summed`` data inputs beyond the first ones an op reads are summands folded into it
        (IOS granularity): each adds an ``add`` in front of the node's ops.
        """
        for p in params:
            self.tensors[p.name] = p
        out = TensorInfo(name, tuple(out_shape))
        self.tensors[name] = out
        inputs = (*data, *(p.name for p in params))
        ops = ["add"] * summed + list(ops)
        kernel = _kernel_name(ops)
        node_attrs = {"op": attrs.pop("op"), "kernel": kernel, "ops": ops, **attrs,
                      "out_shape": list(out_shape)}
        nbytes = sum(self.tensors[t].nbytes for t in inputs) + out.nbytes
        self.nodes.append(OpNode(name, kernel, inputs, (name,), float(flops), nbytes,
                                 node_attrs))
        return Value((name,), out_shape)

    def _params(self, base: str, weight: tuple[int, ...], channels: int) -> list[TensorInfo]:
        return [TensorInfo(f"{base}.weight", weight, kind="param"),
                TensorInfo(f"{base}.bias", (1, channels, 1, 1), kind="param")]

    # -- graph ends ------------------------------------------------------------------------
    def input(self, batch: int, channels: int, height: int, width: int,
              name: str = "x") -> Value:
        """Declare the graph input ``(batch, channels, height, width)``."""
        shape = (check_batch(batch), channels, height, width)
        self.tensors[name] = TensorInfo(name, shape, kind="input")
        self._used.add(name)
        self.inputs.append(name)
        return Value((name,), shape)

    def finish(self, output: Value) -> OpGraph:
        """Return the graph with ``output`` (a single tensor) as its output."""
        if len(output.names) != 1:
            raise UnsupportedGraphError("a graph output must be a single tensor, not a sum")
        return OpGraph(self.nodes, self.tensors, self.inputs, [output.names[0]])

    # -- convolutions ----------------------------------------------------------------------
    def conv(self, x: Value, out: int, kernel: IntPair, stride: IntPair = 1, pad: IntPair = 0,
             groups: int = 1, act: str | None = "relu", name: str = "conv",
             pre_relu: bool = False) -> Value:
        """conv2d + bias + ``act`` (one kernel); ``pre_relu`` fuses a ReLU on the input."""
        n, c, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw) = _pair(kernel), _pair(stride), _pair(pad)
        if c % groups or out % groups:
            raise UnsupportedGraphError(f"conv {name}: channels {c}->{out} not divisible by "
                                        f"groups {groups}")
        ho, wo = _out_size(h, kh, sh, ph), _out_size(w, kw, sw, pw)
        if ho < 1 or wo < 1:
            raise UnsupportedGraphError(f"conv {name}: kernel {kh}x{kw} does not fit input "
                                        f"{h}x{w}")
        if act not in (None, "identity", "relu"):
            raise UnsupportedGraphError(f"conv {name}: unknown activation {act!r}")
        base = self._name(name)
        weight = (out, c // groups, kh, kw)
        ops = [*(["relu"] if pre_relu else []), "conv2d", "add",
               *(["relu"] if act == "relu" else [])]
        flops = 2.0 * n * out * (c // groups) * kh * kw * ho * wo + self._sum_flops(x)
        attrs = {"op": "conv2d", "relax_op": "relax.nn.conv2d",
                 "arg_shapes": [list(x.shape), list(weight)], **_CONV_LAYOUT,
                 "groups": groups, "padding": [ph, pw, ph, pw], "strides": [sh, sw],
                 "data_shape": list(x.shape), "weight_shape": list(weight)}
        return self._emit(base, ops, x.names, self._params(base, weight, out), (n, out, ho, wo),
                          flops, attrs, len(x.names) - 1)

    def relu_conv(self, x: Value, out: int, kernel: IntPair = 1, stride: IntPair = 1,
                  pad: IntPair = 0, name: str = "relu_conv") -> Value:
        """ReLU -> conv without activation: one kernel (the ReLU fused in front)."""
        return self.conv(x, out, kernel, stride, pad, act=None, name=name, pre_relu=True)

    def sep_conv(self, x: Value, out: int, kernel: int, stride: int = 1,
                 pad: int | None = None, name: str = "sep") -> Value:
        """The separable unit ReLU -> depthwise ``kernel`` -> pointwise 1x1 to ``out``.

        Two kernels (depthwise, pointwise) at kernel granularity, one ``sep_conv`` node at IOS
        granularity.
        """
        pad = kernel // 2 if pad is None else pad
        n, c, h, w = x.shape
        if not self.ios:
            dw = self.conv(x, c, kernel, stride, pad, groups=c, act=None, name=f"{name}/dw",
                           pre_relu=True)
            return self.conv(dw, out, 1, act=None, name=f"{name}/pw")
        ho, wo = _out_size(h, kernel, stride, pad), _out_size(w, kernel, stride, pad)
        if ho < 1 or wo < 1:
            raise UnsupportedGraphError(f"sep_conv {name}: kernel {kernel} does not fit input "
                                        f"{h}x{w}")
        base = self._name(name)
        dw, pw = (c, 1, kernel, kernel), (out, c, 1, 1)
        params = [*self._params(f"{base}/dw", dw, c), *self._params(f"{base}/pw", pw, out)]
        flops = (2.0 * n * c * kernel * kernel * ho * wo + 2.0 * n * out * c * ho * wo
                 + self._sum_flops(x))
        attrs = {"op": "sep_conv", "arg_shapes": [list(x.shape), list(dw), list(pw)],
                 **_CONV_LAYOUT, "groups": c, "padding": [pad] * 4, "strides": [stride] * 2,
                 "data_shape": list(x.shape), "weight_shape": list(dw),
                 "pw_weight_shape": list(pw)}
        ops = ["relu", "conv2d", "add", "conv2d", "add"]
        return self._emit(base, ops, x.names, params, (n, out, ho, wo), flops, attrs,
                          len(x.names) - 1)

    # -- pools -----------------------------------------------------------------------------
    def _pool(self, op: str, x: Value, kernel: IntPair, stride: IntPair, pad: IntPair,
              count_include_pad: bool, name: str) -> Value:
        n, c, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw) = _pair(kernel), _pair(stride), _pair(pad)
        ho, wo = _out_size(h, kh, sh, ph), _out_size(w, kw, sw, pw)
        if ho < 1 or wo < 1:
            raise UnsupportedGraphError(f"pool {name}: window {kh}x{kw} does not fit input "
                                        f"{h}x{w}")
        flops = float(n * c * ho * wo * kh * kw) + self._sum_flops(x)
        attrs = {"op": op, "relax_op": f"relax.nn.{op}", "arg_shapes": [list(x.shape)],
                 **_POOL_LAYOUT, "count_include_pad": count_include_pad,
                 "padding": [ph, pw, ph, pw], "pool_size": [kh, kw], "strides": [sh, sw]}
        return self._emit(self._name(name), [op], x.names, (), (n, c, ho, wo), flops, attrs,
                          len(x.names) - 1)

    def max_pool(self, x: Value, kernel: IntPair = 3, stride: IntPair = 2, pad: IntPair = 0,
                 name: str = "maxpool") -> Value:
        """Max pooling (one kernel)."""
        return self._pool("max_pool2d", x, kernel, stride, pad, False, name)

    def avg_pool(self, x: Value, kernel: IntPair = 3, stride: IntPair = 1, pad: IntPair = 1,
                 count_include_pad: bool = True, name: str = "avgpool") -> Value:
        """Average pooling (one kernel)."""
        return self._pool("avg_pool2d", x, kernel, stride, pad, count_include_pad, name)

    def global_avg_pool(self, x: Value, name: str = "gap") -> Value:
        """Global average pooling to ``(N, C, 1, 1)`` (a ``mean`` kernel, as TVM imports it)."""
        n, c, h, w = x.shape
        attrs = {"op": "mean", "relax_op": "relax.mean", "arg_shapes": [list(x.shape)],
                 "axis": [2, 3], "keepdims": True}
        flops = float(n * c * h * w) + self._sum_flops(x)
        return self._emit(self._name(name), ["mean"], x.names, (), (n, c, 1, 1), flops, attrs,
                          len(x.names) - 1)

    # -- concat, sums, ReLU ----------------------------------------------------------------
    def concat(self, xs: Sequence[Value], name: str = "concat") -> Value:
        """Concatenate on channels (one kernel reading every input, summands included)."""
        n, _, h, w = xs[0].shape
        if any((x.shape[0], *x.shape[2:]) != (n, h, w) for x in xs):
            raise UnsupportedGraphError(f"concat {name}: mismatched shapes "
                                        f"{[x.shape for x in xs]}")
        c = sum(x.channels for x in xs)
        data = [t for x in xs for t in x.names]
        flops = float(n * c * h * w) + sum(self._sum_flops(x) for x in xs)
        attrs = {"op": "concat", "relax_op": "relax.concat",
                 "arg_shapes": [[list(x.shape) for x in xs]], "axis": 1}
        return self._emit(self._name(name), ["concat"], data, (), (n, c, h, w), flops, attrs,
                          len(data) - len(xs))

    def _summands(self, xs: Sequence[Value], name: str) -> Value:
        shapes = {x.shape for x in xs}
        if len(shapes) != 1:
            raise UnsupportedGraphError(f"sum {name}: different shapes {sorted(shapes)}")
        return Value(tuple(t for x in xs for t in x.names), xs[0].shape)

    def add(self, xs: Sequence[Value], name: str = "add") -> Value:
        """An explicit sum (an IOS ``Identity`` unit): one ``add`` node.

        A single value gives no node at kernel granularity and an ``identity`` node at IOS
        granularity.
        """
        s = self._summands(xs, name)
        if len(s.names) == 1 and not self.ios:
            return s
        if len(s.names) == 1:
            attrs = {"op": "identity", "arg_shapes": [list(s.shape)]}
            return self._emit(self._name(name), ["identity"], s.names, (), s.shape, 0.0, attrs)
        attrs = {"op": "add", "relax_op": "relax.add",
                 "arg_shapes": [list(s.shape)] * len(s.names)}
        return self._emit(self._name(name), ["add"] * (len(s.names) - 1), s.names, (), s.shape,
                          self._sum_flops(s), attrs)

    def lazy_sum(self, xs: Sequence[Value], name: str = "add") -> Value:
        """A sum IOS folds into its consumer: an ``add`` kernel at kernel granularity only."""
        if self.ios:
            return self._summands(xs, name)
        return self.add(xs, name)

    def relu(self, x: Value, name: str = "relu") -> Value:
        """A standalone ReLU: fused into its producer at kernel granularity, a node at IOS's."""
        producer = self._producer(x)
        if not self.ios and producer is not None:
            node = self.nodes[producer]
            ops = [*node.attrs["ops"], "relu"]
            kernel = _kernel_name(ops)
            self.nodes[producer] = OpNode(node.name, kernel, node.inputs, node.outputs,
                                          node.flops, node.nbytes,
                                          {**node.attrs, "kernel": kernel, "ops": ops})
            return x
        attrs = {"op": "relu", "relax_op": "relax.nn.relu", "arg_shapes": [list(x.shape)]}
        n, c, h, w = x.shape
        return self._emit(self._name(name), ["relu"], x.names, (), x.shape,
                          float(n * c * h * w) + self._sum_flops(x), attrs, len(x.names) - 1)

    def _producer(self, x: Value) -> int | None:
        """The node writing ``x`` if it is one tensor made by this builder, else None."""
        if len(x.names) != 1:
            return None
        for i in range(len(self.nodes) - 1, -1, -1):
            if self.nodes[i].outputs == x.names:
                return i
        return None


# --------------------------------------------------------------------------------------------
# The zoo's networks as OpGraphs
# --------------------------------------------------------------------------------------------
def inception_v3(batch: int = 1, granularity: str = "kernel") -> OpGraph:
    """Inception V3 (:mod:`ios_tvm.models.inception_v3`): 119 nodes, width 6."""
    return define_inception_v3(OpGraphBuilder(granularity), batch)


def inception_block(batch: int = 1, granularity: str = "kernel", channels: int = 192,
                    size: int = 35, pool_features: int = 32) -> OpGraph:
    """One Inception-A module (the first of Inception V3 by default): 9 nodes, width 4.

    See :func:`ios_tvm.models.inception_v3.define_inception_block` for the parameters.
    """
    return define_inception_block(OpGraphBuilder(granularity), batch, channels, size,
                                  pool_features)


def randwire(batch: int = 1, granularity: str = "kernel", channels: int = 154) -> OpGraph:
    """RandWire-WS (:mod:`ios_tvm.models.randwire`): 120 units at IOS granularity."""
    return define_randwire(OpGraphBuilder(granularity), batch, channels)


def nasnet_large(batch: int = 1, granularity: str = "kernel", stem_filters: int = 96,
                 filters: int = 168) -> OpGraph:
    """NASNet-A Large (:mod:`ios_tvm.models.nasnet`): 374 units at IOS granularity."""
    return define_nasnet_large(OpGraphBuilder(granularity), batch, stem_filters, filters)


def squeezenet(batch: int = 1, granularity: str = "kernel") -> OpGraph:
    """SqueezeNet (:mod:`ios_tvm.models.squeezenet`): 50 nodes, width 3."""
    return define_squeezenet(OpGraphBuilder(granularity), batch)


def resnet50(batch: int = 1, granularity: str = "kernel") -> OpGraph:
    """ResNet-50 (:mod:`ios_tvm.models.resnet`), the control with little parallelism."""
    return define_resnet50(OpGraphBuilder(granularity), batch)


def sample_block(batch: int = 1, granularity: str = "kernel", channels: int = 64,
                 size: int = 28) -> OpGraph:
    """The IOS sample block (:mod:`ios_tvm.models.sample`): 5 nodes, width 3."""
    return define_sample_block(OpGraphBuilder(granularity), batch, channels, size)


def randwire_stage_graph(path: str | os.PathLike[str], **kwargs: Any) -> OpGraph:
    """One RandWire graph file as a plain DAG (:meth:`OpGraph.from_edges`).

    Parameters
    ----------
    path
        File path or packaged graph name, as for :func:`load_randwire_graph`.
    **kwargs
        Passed to :meth:`OpGraph.from_edges` (``shape``, ``flops``, ``names``).

    Returns
    -------
    OpGraph
        One node per graph node, ids as in the file.
    """
    n, edges = load_randwire_graph(path)
    return OpGraph.from_edges(n, edges, **kwargs)


#: Benchmark graphs by name: ``builder(batch=1, granularity="kernel") -> OpGraph``.
BENCH_GRAPHS: dict[str, Callable[..., OpGraph]] = {
    "inception_v3": inception_v3,
    "randwire": randwire,
    "nasnet_large": nasnet_large,
    "squeezenet": squeezenet,
    "inception_block": inception_block,
    "resnet50": resnet50,
    "sample": sample_block,
}
