"""Operator graphs of the IOS benchmark networks, built directly as :class:`OpGraph` (no TVM).

The four networks of the IOS paper (Inception V3, RandWire, NasNet-A large, SqueezeNet; topology
as in IOS's own model files, see §3 of the project's IOS brief) plus a single Inception-A module,
for search benchmarks and tests that must run without the compiler. Every builder takes the
batch size and returns an :class:`OpGraph` whose node ids follow the definition order of the
model (a topological order), whose tensors carry NCHW float32 shapes, and whose nodes carry
FLOPs, bytes moved and the attributes a merge predicate needs.

Granularity
-----------
``granularity="kernel"`` (the default) approximates the kernels TVM's ``FuseOps`` makes of these
networks:

* conv2d + bias + activation is one kernel. A ReLU *in front of* a conv (NasNet's ``relu_conv``,
  the ReLU of a separable unit) is fused as well and gets no node of its own.
* A separable unit ReLU -> depthwise kxk -> pointwise 1x1 (IOS's ``Sequential`` unit) is two
  kernels: the depthwise conv (``groups == channels``) and the pointwise conv.
* A pooling is one kernel; a concat is one kernel of its own that reads every branch output.
* An element-wise sum of branch outputs is one ``add`` kernel of its own. TVM usually fuses
  such a sum into its producer or its consumer (with a following ReLU or concat); keeping it
  separate is a simplification that makes every sum a schedulable op (a little pessimistic for
  the sequential schedule, since each add costs one launch).
* A standalone ReLU (NasNet before the global pool, RandWire's tail) is fused into the kernel
  that produces its input: no node.

``granularity="ios"`` reproduces IOS's scheduling units instead (brief §1.1): a separable unit
is one ``sep_conv`` node; sums that IOS folds into a consumer's input term get no node (the
consumer reads every summand); IOS ``Identity`` units (concats, explicit sums, the RandWire stage
exits) are nodes; a standalone ReLU is a node. The node counts then match the paper's unit
counts: Inception V3 119, RandWire 120, NasNet 374, SqueezeNet 50. Inception V3 and SqueezeNet
are the same graph at both granularities.

Costs
-----
``flops``: ``2 * N * K * C / groups * R * S * Hout * Wout`` for a conv (plus one FLOP per summed
element when it reads a sum at IOS granularity), output elements times window size for a pool,
``(k - 1) * elements`` for a sum of ``k`` tensors, output elements for a concat.
``nbytes``: every input (activations and weights) plus the output, in float32.

Attributes
----------
``attrs["op"]`` is ``"conv2d"``, ``"pool"``, ``"concat"``, ``"add"``, ``"identity"`` (IOS
granularity only: a one-input Identity unit), ``"relu"`` or ``"sep_conv"`` (IOS granularity
only). Convs add ``in``, ``out``, ``kernel`` ``[kh, kw]``, ``stride`` ``[sh, sw]``, ``padding``
``[ph, pw]``, ``groups``, ``act`` (fused activation after the conv) and ``pre_act`` (fused ReLU
before it, or ``None``); pools add ``pool`` (``max``/``avg``/``global_avg``), ``kernel``,
``stride``, ``padding``. Weights are ``param`` tensors ``<node>.weight`` and ``<node>.bias``
listed after the data inputs of their node.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from typing import Any

from .errors import UnsupportedGraphError
from .graph import OpGraph, OpNode, TensorInfo

__all__ = [
    "BENCH_GRAPHS", "GRANULARITIES", "RANDWIRE_STAGE_GRAPHS", "conv_merge_predicate",
    "inception_block", "inception_v3", "load_randwire_graph", "nasnet_large", "randwire",
    "randwire_stage_graph", "squeezenet",
]

#: Accepted values of the ``granularity`` argument of the builders.
GRANULARITIES = ("kernel", "ios")

#: The RandWire-WS graphs of IOS's four random stages, in stage order.
RANDWIRE_STAGE_GRAPHS = ("ws-16-4-0.75-2", "ws-32-4-0.75-3", "ws-32-4-0.75-4", "ws-32-4-0.75-5")

#: A value flowing between ops: the names of tensors summed element-wise. It has one name,
#: except at IOS granularity where a sum folded into its consumer lists every summand.
Handle = tuple[str, ...]


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    a, b = v
    return int(a), int(b)


class _Builder:
    """Accumulates nodes and tensors in definition order and turns them into an OpGraph."""

    def __init__(self, batch: int, granularity: str) -> None:
        if not isinstance(batch, int) or batch < 1:
            raise UnsupportedGraphError(f"batch must be a positive integer, got {batch!r}")
        if granularity not in GRANULARITIES:
            raise UnsupportedGraphError(f"unknown granularity {granularity!r}; choose one of "
                                        f"{', '.join(GRANULARITIES)}")
        self.batch = batch
        self.ios = granularity == "ios"
        self.nodes: list[OpNode] = []
        self.tensors: dict[str, TensorInfo] = {}
        self.inputs: list[str] = []
        self._prefix = ""
        self._used: dict[str, int] = {}

    # -- bookkeeping -----------------------------------------------------------------------
    @contextmanager
    def scope(self, name: str) -> Iterator[None]:
        """Prefix the names of the nodes made inside the block with ``name.``."""
        old = self._prefix
        self._prefix = f"{old}{name}."
        try:
            yield
        finally:
            self._prefix = old

    def _name(self, base: str) -> str:
        name = f"{self._prefix}{base}"
        k = self._used.get(name, 0)
        self._used[name] = k + 1
        return name if k == 0 else f"{name}_{k}"

    def shape(self, x: Handle) -> tuple[int, int, int, int]:
        """NCHW shape of the value ``x`` (all its summands share it)."""
        shapes = {self.tensors[t].shape for t in x}
        if len(shapes) != 1:
            raise UnsupportedGraphError(f"summed tensors {x} have different shapes {shapes}")
        n, c, h, w = next(iter(shapes))
        return n, c, h, w

    def _sum_flops(self, x: Handle) -> float:
        n, c, h, w = self.shape(x)
        return float((len(x) - 1) * n * c * h * w)

    def _emit(self, base: str, kernel: str, data: Sequence[str], params: Sequence[TensorInfo],
              out_shape: tuple[int, ...], flops: float, attrs: dict[str, Any]) -> Handle:
        return self._emit_named(self._name(base), kernel, data, params, out_shape, flops, attrs)

    def _emit_named(self, name: str, kernel: str, data: Sequence[str],
                    params: Sequence[TensorInfo], out_shape: tuple[int, ...], flops: float,
                    attrs: dict[str, Any]) -> Handle:
        """Add node ``name`` (already made unique) writing tensor ``name``."""
        for p in params:
            self.tensors[p.name] = p
        out = TensorInfo(name, tuple(out_shape))
        self.tensors[name] = out
        inputs = (*data, *(p.name for p in params))
        nbytes = sum(self.tensors[t].nbytes for t in inputs) + out.nbytes
        self.nodes.append(OpNode(name, kernel, inputs, (name,), float(flops), nbytes, attrs))
        return (name,)

    def input(self, channels: int, height: int, width: int, name: str = "x") -> Handle:
        """Declare the graph input ``(batch, channels, height, width)``."""
        self.tensors[name] = TensorInfo(name, (self.batch, channels, height, width),
                                        kind="input")
        self.inputs.append(name)
        return (name,)

    def finish(self, *outputs: Handle) -> OpGraph:
        """Return the graph with the given values as its outputs."""
        names = []
        for out in outputs:
            if len(out) != 1:
                raise UnsupportedGraphError("a graph output must be a single tensor")
            names.append(out[0])
        return OpGraph(self.nodes, self.tensors, self.inputs, names)

    # -- ops -------------------------------------------------------------------------------
    def conv(self, x: Handle, out: int, kernel: int | Sequence[int],
             stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0,
             groups: int = 1, act: str = "relu", pre_act: str | None = None,
             name: str = "conv") -> Handle:
        """conv2d + bias + ``act`` (one kernel); ``pre_act`` is a fused ReLU on the input."""
        n, c, h, w = self.shape(x)
        (kh, kw), (sh, sw), (ph, pw) = _pair(kernel), _pair(stride), _pair(padding)
        if c % groups or out % groups:
            raise UnsupportedGraphError(f"conv {name}: channels {c}->{out} not divisible by "
                                        f"groups {groups}")
        ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        if ho < 1 or wo < 1:
            raise UnsupportedGraphError(f"conv {name}: empty output for input {h}x{w}")
        base = self._name(name)
        weight = TensorInfo(f"{base}.weight", (out, c // groups, kh, kw), kind="param")
        bias = TensorInfo(f"{base}.bias", (out,), kind="param")
        flops = 2.0 * n * out * (c // groups) * kh * kw * ho * wo + self._sum_flops(x)
        attrs = {"op": "conv2d", "in": c, "out": out, "kernel": [kh, kw], "stride": [sh, sw],
                 "padding": [ph, pw], "groups": groups, "act": act, "pre_act": pre_act}
        kname = "fused_conv2d_add" + ("" if act == "identity" else f"_{act}")
        return self._emit_named(base, kname, x, (weight, bias), (n, out, ho, wo), flops, attrs)

    def relu_conv(self, x: Handle, out: int, kernel: int | Sequence[int] = 1,
                  stride: int | Sequence[int] = 1, name: str = "relu_conv") -> Handle:
        """NasNet's ``relu_conv``: ReLU -> conv (no activation after); one kernel."""
        return self.conv(x, out, kernel, stride, 0, act="identity", pre_act="relu", name=name)

    def sep_conv(self, x: Handle, out: int, kernel: int, stride: int = 1,
                 name: str = "sep") -> Handle:
        """IOS's separable unit ReLU -> depthwise ``kernel`` -> pointwise 1x1 to ``out``.

        Two kernels (depthwise, pointwise) at kernel granularity, one ``sep_conv`` node at IOS
        granularity. Padding is ``kernel // 2``.
        """
        pad = kernel // 2
        if not self.ios:
            c = self.shape(x)[1]
            dw = self.conv(x, c, kernel, stride, pad, groups=c, act="identity", pre_act="relu",
                           name=f"{name}.dw")
            return self.conv(dw, out, 1, act="identity", name=f"{name}.pw")
        n, c, h, w = self.shape(x)
        ho, wo = (h + 2 * pad - kernel) // stride + 1, (w + 2 * pad - kernel) // stride + 1
        base = self._name(name)
        params = (TensorInfo(f"{base}.dw.weight", (c, 1, kernel, kernel), kind="param"),
                  TensorInfo(f"{base}.pw.weight", (out, c, 1, 1), kind="param"),
                  TensorInfo(f"{base}.pw.bias", (out,), kind="param"))
        flops = (2.0 * n * c * kernel * kernel * ho * wo + 2.0 * n * out * c * ho * wo
                 + self._sum_flops(x))
        attrs = {"op": "sep_conv", "in": c, "out": out, "kernel": [kernel, kernel],
                 "stride": [stride, stride], "padding": [pad, pad], "groups": c,
                 "act": "identity", "pre_act": "relu"}
        return self._emit_named(base, "sep_conv", x, params, (n, out, ho, wo), flops, attrs)

    def pool(self, x: Handle, kind: str, kernel: int = 3, stride: int = 1, padding: int = 0,
             name: str = "pool") -> Handle:
        """A ``max`` or ``avg`` pooling (one kernel)."""
        n, c, h, w = self.shape(x)
        ho, wo = (h + 2 * padding - kernel) // stride + 1, (w + 2 * padding - kernel) // stride + 1
        flops = float(n * c * ho * wo * kernel * kernel) + self._sum_flops(x)
        attrs = {"op": "pool", "pool": kind, "kernel": [kernel, kernel], "stride": [stride, stride],
                 "padding": [padding, padding]}
        return self._emit(name, f"{kind}_pool2d", x, (), (n, c, ho, wo), flops, attrs)

    def global_pool(self, x: Handle, name: str = "gap") -> Handle:
        """Global average pooling to ``(N, C, 1, 1)``."""
        n, c, h, w = self.shape(x)
        attrs = {"op": "pool", "pool": "global_avg", "kernel": [h, w], "stride": [1, 1],
                 "padding": [0, 0]}
        flops = float(n * c * h * w) + self._sum_flops(x)
        return self._emit(name, "adaptive_avg_pool2d", x, (), (n, c, 1, 1), flops, attrs)

    def concat(self, xs: Sequence[Handle], name: str = "concat") -> Handle:
        """Concatenate on channels (one kernel reading every input)."""
        shapes = [self.shape(x) for x in xs]
        n, _, h, w = shapes[0]
        if any(s[0] != n or s[2:] != (h, w) for s in shapes):
            raise UnsupportedGraphError(f"concat {name}: mismatched shapes {shapes}")
        c = sum(s[1] for s in shapes)
        data = [t for x in xs for t in x]
        flops = float(n * c * h * w) + sum(self._sum_flops(x) for x in xs)
        return self._emit(name, "concatenate", data, (), (n, c, h, w), flops,
                          {"op": "concat", "axis": 1, "num_inputs": len(data)})

    def add(self, xs: Sequence[Handle], name: str = "add") -> Handle:
        """An explicit sum node (an IOS ``Identity`` unit).

        A single input gives no node at kernel granularity and an ``identity`` node at IOS
        granularity.
        """
        data = [t for x in xs for t in x]
        shape = self.shape(tuple(data))
        if len(data) == 1:
            if not self.ios:
                return (data[0],)
            return self._emit(name, "identity", data, (), shape, 0.0, {"op": "identity"})
        flops = self._sum_flops(tuple(data))
        return self._emit(name, "add", data, (), shape, flops,
                          {"op": "add", "num_inputs": len(data)})

    def lazy_sum(self, xs: Sequence[Handle], name: str = "add") -> Handle:
        """A sum IOS folds into its consumer: an ``add`` kernel at kernel granularity only."""
        if self.ios:
            data = tuple(t for x in xs for t in x)
            self.shape(data)
            return data
        return self.add(xs, name)

    def relu(self, x: Handle, name: str = "relu") -> Handle:
        """A standalone ReLU: fused into its producer (no node) except at IOS granularity."""
        if not self.ios:
            return x
        n, c, h, w = self.shape(x)
        return self._emit(name, "relu", x, (), (n, c, h, w), float(n * c * h * w),
                          {"op": "relu"})


# --------------------------------------------------------------------------------------------
# Inception V3
# --------------------------------------------------------------------------------------------
def _inception_a(b: _Builder, x: Handle, pool_features: int) -> Handle:
    b1 = b.conv(x, 64, 1, name="b1x1")
    b5 = b.conv(x, 48, 1, name="b5x5_1")
    b5 = b.conv(b5, 64, 5, padding=2, name="b5x5_2")
    b3 = b.conv(x, 64, 1, name="b3x3dbl_1")
    b3 = b.conv(b3, 96, 3, padding=1, name="b3x3dbl_2")
    b3 = b.conv(b3, 96, 3, padding=1, name="b3x3dbl_3")
    bp = b.pool(x, "avg", 3, 1, 1, name="pool")
    bp = b.conv(bp, pool_features, 1, name="bpool")
    return b.concat([b1, b5, b3, bp])


def _inception_b(b: _Builder, x: Handle) -> Handle:
    b3 = b.conv(x, 384, 3, stride=2, name="b3x3")
    bd = b.conv(x, 64, 1, name="b3x3dbl_1")
    bd = b.conv(bd, 96, 3, padding=1, name="b3x3dbl_2")
    bd = b.conv(bd, 96, 3, stride=2, name="b3x3dbl_3")
    bp = b.pool(x, "max", 3, 2, name="pool")
    return b.concat([b3, bd, bp])


def _inception_c(b: _Builder, x: Handle, c7: int) -> Handle:
    b1 = b.conv(x, 192, 1, name="b1x1")
    b7 = b.conv(x, c7, 1, name="b7x7_1")
    b7 = b.conv(b7, c7, (1, 7), padding=(0, 3), name="b7x7_2")
    b7 = b.conv(b7, 192, (7, 1), padding=(3, 0), name="b7x7_3")
    bd = b.conv(x, c7, 1, name="b7x7dbl_1")
    bd = b.conv(bd, c7, (7, 1), padding=(3, 0), name="b7x7dbl_2")
    bd = b.conv(bd, c7, (1, 7), padding=(0, 3), name="b7x7dbl_3")
    bd = b.conv(bd, c7, (7, 1), padding=(3, 0), name="b7x7dbl_4")
    bd = b.conv(bd, 192, (1, 7), padding=(0, 3), name="b7x7dbl_5")
    bp = b.pool(x, "avg", 3, 1, 1, name="pool")
    bp = b.conv(bp, 192, 1, name="bpool")
    return b.concat([b1, b7, bd, bp])


def _inception_d(b: _Builder, x: Handle) -> Handle:
    b3 = b.conv(x, 192, 1, name="b3x3_1")
    b3 = b.conv(b3, 320, 3, stride=2, name="b3x3_2")
    b7 = b.conv(x, 192, 1, name="b7x7x3_1")
    b7 = b.conv(b7, 192, (1, 7), padding=(0, 3), name="b7x7x3_2")
    b7 = b.conv(b7, 192, (7, 1), padding=(3, 0), name="b7x7x3_3")
    b7 = b.conv(b7, 192, 3, stride=2, name="b7x7x3_4")
    bp = b.pool(x, "max", 3, 2, name="pool")
    return b.concat([b3, b7, bp])


def _inception_e(b: _Builder, x: Handle) -> Handle:
    b1 = b.conv(x, 320, 1, name="b1x1")
    b3 = b.conv(x, 384, 1, name="b3x3_1")
    b3a = b.conv(b3, 384, (1, 3), padding=(0, 1), name="b3x3_2a")
    b3b = b.conv(b3, 384, (3, 1), padding=(1, 0), name="b3x3_2b")
    bd = b.conv(x, 448, 1, name="b3x3dbl_1")
    bd = b.conv(bd, 384, 3, padding=1, name="b3x3dbl_2")
    bda = b.conv(bd, 384, (1, 3), padding=(0, 1), name="b3x3dbl_3a")
    bdb = b.conv(bd, 384, (3, 1), padding=(1, 0), name="b3x3dbl_3b")
    bp = b.pool(x, "avg", 3, 1, 1, name="pool")
    bp = b.conv(bp, 192, 1, name="bpool")
    return b.concat([b1, b3a, b3b, bda, bdb, bp])


def inception_v3(batch: int = 1, granularity: str = "kernel") -> OpGraph:
    """Inception V3 as in IOS (torchvision layout without BatchNorm, aux head and FC).

    Front (5 convs, 2 max pools), Inception-A x3 (pool features 32, 64, 64), B, C x4
    (7x7 channels 128, 160, 160, 192), D, E x2, global average pool. Every conv has a fused
    ReLU; every module ends in a concat of its branches (the Inception-E concat takes six).

    Parameters
    ----------
    batch
        Batch size of the ``(batch, 3, 299, 299)`` input.
    granularity
        ``"kernel"`` or ``"ios"`` (the same graph for this network; see the module docstring).

    Returns
    -------
    OpGraph
        119 nodes (108 convs and pools, 11 concats), width 6, output ``2048 x 1 x 1``.
    """
    b = _Builder(batch, granularity)
    x = b.input(3, 299, 299)
    with b.scope("front"):
        x = b.conv(x, 32, 3, stride=2, name="conv1")
        x = b.conv(x, 32, 3, name="conv2")
        x = b.conv(x, 64, 3, padding=1, name="conv3")
        x = b.pool(x, "max", 3, 2, name="pool1")
        x = b.conv(x, 80, 1, name="conv4")
        x = b.conv(x, 192, 3, name="conv5")
        x = b.pool(x, "max", 3, 2, name="pool2")
    for name, pf in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
        with b.scope(name):
            x = _inception_a(b, x, pf)
    with b.scope("Mixed_6a"):
        x = _inception_b(b, x)
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
        with b.scope(name):
            x = _inception_c(b, x, c7)
    with b.scope("Mixed_7a"):
        x = _inception_d(b, x)
    for name in ("Mixed_7b", "Mixed_7c"):
        with b.scope(name):
            x = _inception_e(b, x)
    x = b.global_pool(x)
    return b.finish(x)


def inception_block(batch: int = 1, granularity: str = "kernel", channels: int = 192,
                    size: int = 35, pool_features: int = 32) -> OpGraph:
    """One Inception-A module on its own (the first one of Inception V3 by default).

    Branches ``[1x1 64] | [1x1 48 -> 5x5 64] | [1x1 64 -> 3x3 96 -> 3x3 96] |
    [avgpool 3 -> 1x1 pool_features]`` and a concat: 9 kernels, width 4. Its three 1x1 convs
    read the block input and may be merged into one conv.

    Parameters
    ----------
    batch, channels, size
        Input shape ``(batch, channels, size, size)``.
    granularity
        ``"kernel"`` or ``"ios"`` (the same graph here).
    pool_features
        Output channels of the pool branch.

    Returns
    -------
    OpGraph
        The module, output ``(batch, 224 + pool_features, size, size)``.
    """
    b = _Builder(batch, granularity)
    x = b.input(channels, size, size)
    with b.scope("Mixed_5b"):
        x = _inception_a(b, x, pool_features)
    return b.finish(x)


# --------------------------------------------------------------------------------------------
# RandWire
# --------------------------------------------------------------------------------------------
def load_randwire_graph(path: str | os.PathLike[str]) -> tuple[int, list[tuple[int, int]]]:
    """Read a RandWire graph file: node count and edges ``(u, v)`` with ``u < v``.

    Parameters
    ----------
    path
        A file path, or the name of a packaged graph (e.g. ``"ws-16-4-0.75-2"``, with or
        without ``.txt``; see :data:`RANDWIRE_STAGE_GRAPHS`).

    Returns
    -------
    tuple of int and list of tuple of int
        ``(n, edges)``.
    """
    text: str
    name = os.fspath(path)
    if os.path.sep not in name and not os.path.exists(name):
        fname = name if name.endswith(".txt") else f"{name}.txt"
        res = resources.files("ios_tvm").joinpath("models", "randwire_graphs", fname)
        if not res.is_file():
            raise UnsupportedGraphError(f"no packaged RandWire graph {name!r}; packaged: "
                                        f"{', '.join(RANDWIRE_STAGE_GRAPHS)}")
        text = res.read_text(encoding="utf-8")
    else:
        with open(name, encoding="utf-8") as f:
            text = f.read()
    tokens = text.split()
    try:
        n, m = int(tokens[0]), int(tokens[1])
        nums = [int(t) for t in tokens[2:2 + 2 * m]]
    except (IndexError, ValueError) as e:
        raise UnsupportedGraphError(f"malformed RandWire graph file {name!r}: {e}") from None
    if len(nums) != 2 * m:
        raise UnsupportedGraphError(f"RandWire graph file {name!r} lists fewer than {m} edges")
    edges = list(zip(nums[0::2], nums[1::2], strict=True))
    for u, v in edges:
        if not (0 <= u < v < n):
            raise UnsupportedGraphError(f"RandWire graph file {name!r}: bad edge ({u}, {v})")
    return n, edges


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


def _kahn_lifo_order(n: int, edges: Sequence[tuple[int, int]]) -> list[int]:
    """Topological order as IOS creates RandWire nodes: Kahn's algorithm with a LIFO stack."""
    indeg = [0] * n
    outs: list[list[int]] = [[] for _ in range(n)]
    for u, v in edges:
        indeg[v] += 1
        outs[u].append(v)
    stack = [u for u in range(n) if indeg[u] == 0]
    order = []
    while stack:
        u = stack.pop()
        order.append(u)
        for v in outs[u]:
            indeg[v] -= 1
            if indeg[v] == 0:
                stack.append(v)
    return order


def _randwire_stage(b: _Builder, x: Handle, channels: int, graph_name: str) -> Handle:
    n, edges = load_randwire_graph(graph_name)
    preds: list[list[int]] = [[] for _ in range(n)]
    has_succ = [False] * n
    for u, v in edges:
        preds[v].append(u)
        has_succ[u] = True
    out: dict[int, Handle] = {}
    for u in _kahn_lifo_order(n, edges):
        if not preds[u]:
            out[u] = b.sep_conv(x, channels, 3, stride=2, name=f"node{u}")
        else:
            s = b.lazy_sum([out[p] for p in sorted(preds[u])], name=f"node{u}.sum")
            out[u] = b.sep_conv(s, channels, 3, name=f"node{u}")
    return b.add([out[u] for u in range(n) if not has_succ[u]], name="out")


def randwire(batch: int = 1, granularity: str = "kernel", channels: int = 154) -> OpGraph:
    """RandWire-WS (regular regime, C = 154) as in IOS.

    Front conv (C/2, 3x3, stride 2, no activation); four random stages on the packaged
    graphs :data:`RANDWIRE_STAGE_GRAPHS` with C, 2C, 4C, 8C channels at 56, 28, 14, 7 pixels;
    tail ReLU -> conv 1x1 to 1280 (no activation) -> global average pool. A stage node is a
    separable unit (ReLU, depthwise 3x3 with stride 2 for source nodes, pointwise to the
    stage's channels) whose input is the plain sum of its predecessors' outputs; source nodes
    read the stage input; the stage output is the sum of the sink nodes. Nodes are created in
    IOS's order (Kahn's algorithm with a LIFO stack), each node's kernels together.

    Parameters
    ----------
    batch
        Batch size of the ``(batch, 3, 224, 224)`` input.
    granularity
        ``"kernel"`` (sum kernel + depthwise + pointwise per stage node) or ``"ios"``
        (one node per stage node, 120 units in all).
    channels
        C.

    Returns
    -------
    OpGraph
        The network, output ``(batch, 1280, 1, 1)``.
    """
    b = _Builder(batch, granularity)
    x = b.input(3, 224, 224)
    with b.scope("front"):
        x = b.conv(x, channels // 2, 3, stride=2, padding=1, act="identity", name="conv")
    for i, gname in enumerate(RANDWIRE_STAGE_GRAPHS):
        with b.scope(f"stage{i + 1}"):
            x = _randwire_stage(b, x, channels << i, gname)
    with b.scope("tail"):
        x = b.relu(x)
        x = b.conv(x, 1280, 1, act="identity", name="conv")
        x = b.global_pool(x)
    return b.finish(x)


# --------------------------------------------------------------------------------------------
# NasNet-A large
# --------------------------------------------------------------------------------------------
def _branch_sep(b: _Builder, x: Handle, out: int, kernel: int, stride: int, name: str,
                stem: bool = False) -> Handle:
    """Two separable units; the first keeps the input channels (or goes to ``out`` in a stem)."""
    mid = out if stem else b.shape(x)[1]
    y = b.sep_conv(x, mid, kernel, stride, name=f"{name}.1")
    return b.sep_conv(y, out, kernel, 1, name=f"{name}.2")


def _nas_stem0(b: _Builder, x: Handle, f: int) -> Handle:
    x1 = b.relu_conv(x, f, name="conv1x1")
    c0l = _branch_sep(b, x1, f, 5, 2, "c0l")
    c0r = _branch_sep(b, x, f, 7, 2, "c0r", stem=True)
    c0 = b.add([c0l, c0r], name="c0")
    c1l = b.pool(x1, "max", 3, 2, 1, name="c1l")
    c1r = _branch_sep(b, x, f, 7, 2, "c1r", stem=True)
    c1 = b.add([c1l, c1r], name="c1")
    c2l = b.pool(x1, "avg", 3, 2, 1, name="c2l")
    c2r = _branch_sep(b, x, f, 5, 2, "c2r", stem=True)
    c3r = b.pool(c0, "avg", 3, 1, 1, name="c3r")
    c4l = _branch_sep(b, c0, f, 3, 1, "c4l")
    c4r = b.pool(x1, "max", 3, 2, 1, name="c4r")
    return b.concat([c1, b.lazy_sum([c2l, c2r], "c2"), b.lazy_sum([c3r, c0], "c3"),
                     b.lazy_sum([c4l, c4r], "c4")])


def _nas_stem1(b: _Builder, hp: Handle, h: Handle, f: int) -> Handle:
    xl = b.relu_conv(hp, f, name="left")
    xr1 = b.relu_conv(h, f // 2, stride=2, name="right1")
    xr2 = b.relu_conv(h, f // 2, stride=2, name="right2")
    xr = b.add([xr1, xr2], name="right")
    c0l = _branch_sep(b, xl, f, 5, 2, "c0l")
    c0r = _branch_sep(b, xr, f, 7, 2, "c0r")
    c0 = b.add([c0l, c0r], name="c0")
    c1l = b.pool(xl, "max", 3, 2, 1, name="c1l")
    c1r = _branch_sep(b, xr, f, 7, 2, "c1r")
    c1 = b.add([c1l, c1r], name="c1")
    c2l = b.pool(xl, "avg", 3, 2, 1, name="c2l")
    c2r = _branch_sep(b, xr, f, 5, 2, "c2r")
    c3r = b.pool(c0, "avg", 3, 1, 1, name="c3r")
    c4l = _branch_sep(b, c0, f, 3, 1, "c4l")
    c4r = b.pool(xl, "max", 3, 2, 1, name="c4r")
    return b.concat([c1, b.lazy_sum([c2l, c2r], "c2"), b.lazy_sum([c3r, c1], "c3"),
                     b.lazy_sum([c4l, c4r], "c4")])


def _nas_cell_body(b: _Builder, xl: Handle, xr: Handle, left: int, right: int,
                   first: bool) -> list[Handle]:
    """The five combinations of the first and the normal cell.

    They differ only in c0's second branch, which reads the right input in the first cell and
    the left input in a normal cell.
    """
    c0l = _branch_sep(b, xr, right, 5, 1, "c0l")
    c0r = (_branch_sep(b, xr, right, 3, 1, "c0r") if first
           else _branch_sep(b, xl, left, 3, 1, "c0r"))
    c1l = _branch_sep(b, xl, left, 5, 1, "c1l")
    c1r = _branch_sep(b, xl, left, 3, 1, "c1r")
    c2l = b.pool(xr, "avg", 3, 1, 1, name="c2l")
    c3l = b.pool(xl, "avg", 3, 1, 1, name="c3l")
    c3r = b.pool(xl, "avg", 3, 1, 1, name="c3r")
    c4l = _branch_sep(b, xr, right, 3, 1, "c4l")
    return [b.lazy_sum([c0l, c0r], "c0"), b.lazy_sum([c1l, c1r], "c1"),
            b.lazy_sum([c2l, xl], "c2"), b.lazy_sum([c3l, c3r], "c3"),
            b.lazy_sum([c4l, xr], "c4")]


def _nas_first(b: _Builder, x: Handle, x_prev: Handle, left: int, right: int) -> Handle:
    xl1 = b.relu_conv(x_prev, left, stride=2, name="left1")
    xl2 = b.relu_conv(x_prev, left, stride=2, name="left2")
    xl = b.concat([xl1, xl2], name="left")
    xr = b.relu_conv(x, right, name="right")
    # The left input now has 2 * left == right channels.
    return b.concat([xl, *_nas_cell_body(b, xl, xr, right, right, True)])


def _nas_normal(b: _Builder, x: Handle, x_prev: Handle, left: int, right: int) -> Handle:
    xl = b.relu_conv(x_prev, left, name="left")
    xr = b.relu_conv(x, right, name="right")
    return b.concat(_nas_cell_body(b, xl, xr, left, right, False))


def _nas_reduction(b: _Builder, x: Handle, x_prev: Handle, left: int, right: int) -> Handle:
    xl = b.relu_conv(x_prev, left, name="left")
    xr = b.relu_conv(x, right, name="right")
    c0l = _branch_sep(b, xr, right, 5, 2, "c0l")
    c0r = _branch_sep(b, xl, right, 7, 2, "c0r")
    c0 = b.add([c0l, c0r], name="c0")
    c1l = b.pool(xr, "max", 3, 2, 1, name="c1l")
    c1r = _branch_sep(b, xl, right, 7, 2, "c1r")
    c1 = b.add([c1l, c1r], name="c1")
    c2l = b.pool(xr, "avg", 3, 2, 1, name="c2l")
    c2r = _branch_sep(b, xl, right, 5, 2, "c2r")
    c3r = b.pool(c0, "avg", 3, 1, 1, name="c3r")
    c4l = _branch_sep(b, c0, right, 3, 1, "c4l")
    c4r = b.pool(xr, "max", 3, 2, 1, name="c4r")
    # As in IOS, the output sums c1l + c1r once more instead of reusing c1.
    return b.concat([b.lazy_sum([c1l, c1r], "c1_out"), b.lazy_sum([c2l, c2r], "c2"),
                     b.lazy_sum([c1, c3r], "c3"), b.lazy_sum([c4l, c4r], "c4")])


def nasnet_large(batch: int = 1, granularity: str = "kernel", stem_filters: int = 96,
                 filters: int = 168) -> OpGraph:
    """NasNet-A large (6 @ 4032 style) as in IOS's ``nasnet_large``.

    Stem conv 3x3 stride 2 (no activation) -> stem0 (F/4) -> stem1 (F/2) -> [first cell,
    normal x5] at F, 42x42 -> reduction (2F) -> [first, normal x5] at 2F, 21x21 -> reduction
    (4F) -> [first, normal x5] at 4F, 11x11 -> ReLU -> global average pool (3360 channels).
    Each cell reads the two previous cell outputs ``x`` and ``x_prev``; the first cell after a
    reduction reads the cell two before it as ``x_prev`` (through strided 1x1 convs), as in
    IOS and the reference NASNet.

    Follows IOS where it differs from the reference NASNet: the normal cell's concat has five
    terms (no ``x_left``); stem0's c3 adds c0 and stem1's c3 adds c1; stem1's right path sums
    its two strided 1x1 convs; the reduction cell's output sums ``c1l + c1r`` again instead of
    reusing ``c1`` (an extra add kernel per reduction cell at kernel granularity). No
    BatchNorm, no factorised reduction/padding shift, no classifier.

    Parameters
    ----------
    batch
        Batch size of the ``(batch, 3, 331, 331)`` input.
    granularity
        ``"kernel"`` (697 kernels at the default sizes) or ``"ios"`` (374 units).
    stem_filters, filters
        Channels of the stem conv and F.

    Returns
    -------
    OpGraph
        The network, output ``(batch, 20 * filters, 1, 1)``.
    """
    b = _Builder(batch, granularity)
    f = filters
    x0 = b.input(3, 331, 331)
    with b.scope("stem"):
        v1 = b.conv(x0, stem_filters, 3, stride=2, act="identity", name="conv")
    with b.scope("stem0"):
        v2 = _nas_stem0(b, v1, f // 4)
    with b.scope("stem1"):
        v3 = _nas_stem1(b, v2, v1, f // 2)
    outs = [v2, v3]  # cell outputs so far (x_prev, x)
    cell = 0
    for stage, mult in enumerate((1, 2, 4)):
        if stage > 0:
            with b.scope(f"reduction{stage - 1}"):
                red = _nas_reduction(b, outs[-1], outs[-2], mult * f, mult * f)
            # The first cell after a reduction takes the cell two back as x_prev.
            prev, outs = outs[-2], [*outs, red]
        else:
            prev = outs[-2]
        with b.scope(f"cell{cell}"):
            outs.append(_nas_first(b, outs[-1], prev, mult * f // 2, mult * f))
        cell += 1
        for _ in range(5):
            with b.scope(f"cell{cell}"):
                outs.append(_nas_normal(b, outs[-1], outs[-2], mult * f, mult * f))
            cell += 1
    x = b.relu(outs[-1])
    x = b.global_pool(x)
    return b.finish(x)


# --------------------------------------------------------------------------------------------
# SqueezeNet
# --------------------------------------------------------------------------------------------
def _fire(b: _Builder, x: Handle, squeeze: int, expand: int) -> Handle:
    s = b.conv(x, squeeze, 1, name="squeeze")
    e3 = b.conv(s, expand, 3, padding=1, name="expand3x3")
    e1 = b.conv(s, expand, 1, name="expand1x1")
    cat = b.concat([e3, e1])
    bypass = x if b.shape(x)[1] == 2 * expand else b.conv(x, 2 * expand, 1, name="bypass")
    return b.add([cat, bypass])


def squeezenet(batch: int = 1, granularity: str = "kernel") -> OpGraph:
    """SqueezeNet v1.0 with "complex bypass", as in IOS.

    conv 7x7/2 (96) -> max pool -> fire2..4 -> max pool -> fire5..8 -> max pool -> fire9 ->
    conv 1x1 (1000) -> global average pool. A fire module is squeeze 1x1 -> {expand 3x3,
    expand 1x1} -> concat, plus a bypass (the input, or a 1x1 conv when the channels differ)
    summed by an add kernel.

    Parameters
    ----------
    batch
        Batch size of the ``(batch, 3, 224, 224)`` input.
    granularity
        ``"kernel"`` or ``"ios"`` (the same graph for this network).

    Returns
    -------
    OpGraph
        50 nodes, width 3, output ``(batch, 1000, 1, 1)``.
    """
    b = _Builder(batch, granularity)
    x = b.input(3, 224, 224)
    with b.scope("front"):
        x = b.conv(x, 96, 7, stride=2, padding=3, name="conv")
        x = b.pool(x, "max", 3, 2, name="pool")
    fires = (("fire2", 16, 64), ("fire3", 16, 64), ("fire4", 32, 128), None,
             ("fire5", 32, 128), ("fire6", 48, 192), ("fire7", 48, 192), ("fire8", 64, 256),
             None, ("fire9", 64, 256))
    npool = 0
    for spec in fires:
        if spec is None:
            npool += 1
            x = b.pool(x, "max", 3, 2, name=f"pool{npool}")
            continue
        name, sq, ex = spec
        with b.scope(name):
            x = _fire(b, x, sq, ex)
    with b.scope("tail"):
        x = b.conv(x, 1000, 1, name="conv")
        x = b.global_pool(x)
    return b.finish(x)


# --------------------------------------------------------------------------------------------
# Merge predicate and registry
# --------------------------------------------------------------------------------------------
def conv_merge_predicate(graph: OpGraph, ops: Sequence[int]) -> bool:
    """Stand-in merge rule for benchmarks: whether ``ops`` may become one conv kernel.

    True when there are at least two ops, all are plain ``conv2d`` nodes (``groups == 1``)
    reading the same data tensor(s) with the same stride and producing the same output
    height and width (IOS §5's rule, minus the activation check). This is a placeholder for
    the real merge support of the compiler side, which must also check that the kernels are
    centred the same way and that the lowering can build the merged conv.

    Parameters
    ----------
    graph
        The graph the op ids refer to.
    ops
        Op ids, ascending.

    Returns
    -------
    bool
        Whether the ops may be merged.
    """
    if len(ops) < 2:
        return False
    key: tuple[Any, ...] | None = None
    for i in ops:
        node = graph.nodes[i]
        a = node.attrs
        if a.get("op") != "conv2d" or a.get("groups") != 1:
            return False
        data = tuple(t for t in node.inputs if graph.tensors[t].kind != "param")
        out_hw = graph.tensors[node.outputs[0]].shape[2:]
        k = (data, tuple(a["stride"]), out_hw)
        if key is None:
            key = k
        elif k != key:
            return False
    return True


#: Benchmark graphs by name: ``builder(batch=1, granularity="kernel") -> OpGraph``.
BENCH_GRAPHS: dict[str, Callable[..., OpGraph]] = {
    "inception_v3": inception_v3,
    "randwire": randwire,
    "nasnet_large": nasnet_large,
    "squeezenet": squeezenet,
    "inception_block": inception_block,
}
