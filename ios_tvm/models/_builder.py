"""The builder interface the model zoo is written against, and its ONNX backend.

Every network of :mod:`ios_tvm.models` is defined once, as a function ``define_*(b, batch)``
that calls the methods of :class:`NetBuilder` on ``b`` and returns ``b.finish(output)``. The
backend decides what comes out:

* :class:`OnnxBuilder` (here) emits an NCHW float32 ONNX model (opset 17) with deterministic
  weights: what ``ios_tvm.models.<name>(batch, seed)`` returns;
* :class:`ios_tvm.models.opgraph.OpGraphBuilder` emits an :class:`~ios_tvm.ir.graph.OpGraph`
  (no TVM) at kernel or IOS-unit granularity, for search benchmarks and tests.

The operators are those the IOS benchmark networks are made of: convolution with bias and a
fused activation, ``relu_conv`` (ReLU -> conv), the separable unit ReLU -> depthwise kxk ->
pointwise 1x1, max/average pooling, global average pooling, channel concat, element-wise sums
(``add``: an IOS ``Identity`` unit; ``lazy_sum``: a sum IOS folds into its consumer's input)
and a standalone ReLU.

:class:`OnnxBuilder` tracks every tensor's shape, names every node (``scope/name``, unique), and
draws deterministic weights from one seeded generator in the order the layers are created.

Weight scaling
--------------
The zoo is used to compare ios-tvm's output with ONNX Runtime's, through networks hundreds of
layers deep and with many multi-way sums, so the random weights must keep activations O(1).
The builder therefore carries, for every tensor, an estimate of its per-element mean and
second moment (``E[x]``, ``E[x^2]``; the network input is standard normal) and scales each
convolution so that its pre-activation output has ``E[y^2] = 1`` given those estimates of its
input (for a ReLU'd unit-variance input that is He initialisation, ``Var(w) = 2 / fan_in``):

* Weights are standard normal, each output channel's filter normalised to unit L2 norm, then
  multiplied by ``1 / sqrt(E[x^2] * valid)``, where ``valid`` is the fraction of kernel taps
  that land inside the (zero-padded) input. For weights drawn independently of the input and
  with a symmetric distribution this gives ``E[y^2] = 1`` in expectation, however the input
  is correlated. Biases are ``N(0, 0.05^2)``.
* A fused ReLU after a symmetric zero-mean pre-activation halves ``E[y^2]``; a standalone ReLU
  (e.g. on a sum) uses the Gaussian formulas for the given mean and variance.
* Sums add second moments plus twice the products of the means (summands with independent
  weights); a concat averages over channels; pools use a fixed neighbour-correlation model.

The estimates only steer the scale; the graph is fully determined by the builder arguments and
the seed. With seed 0 the RMS of every intermediate tensor of every zoo model, on a standard
normal input, lies between about 0.4 and 4 (checked by ``tests/test_models.py``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ios_tvm.errors import UnsupportedGraphError

#: ONNX opset and IR version of every zoo model (IR 8 loads in older ONNX Runtime releases).
OPSET = 17
IR_VERSION = 8

#: Standard deviation of the random biases.
BIAS_STD = 0.05

#: Pooling moment model: a kxk window is treated as ``1 + (k*k - 1) * (1 - rho)`` independent
#: values (max pool) or keeps ``rho + (1 - rho) / (k*k)`` of the variance (average pool).
#: Fitted on the zoo's own activations (channel means differ, which pooling keeps).
_MAX_POOL_RHO = 0.5
_AVG_POOL_RHO = 0.9

IntPair = int | Sequence[int]


def _pair(v: IntPair) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    a, b = v
    return (int(a), int(b))


def _out_size(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def check_batch(batch: object) -> int:
    """Return ``batch`` if it is a positive integer, else raise :class:`UnsupportedGraphError`."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise UnsupportedGraphError(f"batch must be a positive integer, got {batch!r}")
    return batch


class NetValue(Protocol):
    """A value flowing between a network's operators (a backend's tensor handle)."""

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(N, C, H, W)``."""
        ...

    @property
    def channels(self) -> int:
        """``C``."""
        ...


class NetBuilder(Protocol):
    """The operators a zoo network is defined with; see the module docstring.

    Sizes (``kernel``, ``stride``, ``pad``) are an int or ``(h, w)``; padding is symmetric.
    ``name`` names the node inside the current :meth:`scope`.
    """

    def scope(self, name: str) -> AbstractContextManager[None]:
        """Prefix the names of the nodes created inside the ``with`` block by ``name/``."""
        ...

    def input(self, batch: int, channels: int, height: int, width: int,
              name: str = "x") -> Any:
        """Declare the graph input ``(batch, channels, height, width)``."""
        ...

    def finish(self, output: Any) -> Any:
        """Return the built network (the backend's product) with ``output`` as its output."""
        ...

    def conv(self, x: Any, out: int, kernel: IntPair, stride: IntPair = 1, pad: IntPair = 0,
             groups: int = 1, act: str | None = "relu", name: str = "conv") -> Any:
        """Convolution with bias, then ``act`` (``"relu"`` or ``None``/``"identity"``)."""
        ...

    def relu_conv(self, x: Any, out: int, kernel: IntPair = 1, stride: IntPair = 1,
                  pad: IntPair = 0, name: str = "relu_conv") -> Any:
        """ReLU, then a convolution with bias and no activation (NASNet's ``relu_conv``)."""
        ...

    def sep_conv(self, x: Any, out: int, kernel: int, stride: int = 1, pad: int | None = None,
                 name: str = "sep") -> Any:
        """ReLU -> depthwise ``kernel`` (pad ``kernel // 2`` by default) -> pointwise 1x1."""
        ...

    def max_pool(self, x: Any, kernel: IntPair = 3, stride: IntPair = 2, pad: IntPair = 0,
                 name: str = "maxpool") -> Any:
        """Max pooling."""
        ...

    def avg_pool(self, x: Any, kernel: IntPair = 3, stride: IntPair = 1, pad: IntPair = 1,
                 count_include_pad: bool = True, name: str = "avgpool") -> Any:
        """Average pooling."""
        ...

    def global_avg_pool(self, x: Any, name: str = "gap") -> Any:
        """Global average pooling to ``(N, C, 1, 1)``."""
        ...

    def concat(self, xs: Sequence[Any], name: str = "concat") -> Any:
        """Concatenation on channels."""
        ...

    def add(self, xs: Sequence[Any], name: str = "add") -> Any:
        """An element-wise sum that is a scheduling unit of its own (IOS ``Identity``)."""
        ...

    def lazy_sum(self, xs: Sequence[Any], name: str = "add") -> Any:
        """An element-wise sum that IOS folds into the input of its consumer."""
        ...

    def relu(self, x: Any, name: str = "relu") -> Any:
        """A standalone ReLU."""
        ...


def _valid_fraction(size: int, kernel: int, stride: int, pad: int) -> float:
    """Fraction of (output position, kernel tap) pairs on one axis that read real input."""
    out = _out_size(size, kernel, stride, pad)
    valid = 0
    for o in range(out):
        start = o * stride - pad
        valid += min(start + kernel, size) - max(start, 0)
    return valid / (out * kernel)


def _norm_pdf(z: float) -> float:
    return math.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)


def _norm_cdf(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def _relu_moments(mean: float, m2: float) -> tuple[float, float]:
    """``E[relu(x)]`` and ``E[relu(x)^2]`` for a Gaussian ``x`` with the given moments."""
    var = max(m2 - mean * mean, 1e-12)
    sd = math.sqrt(var)
    z = mean / sd
    cdf, pdf = _norm_cdf(z), _norm_pdf(z)
    return mean * cdf + sd * pdf, (mean * mean + var) * cdf + mean * sd * pdf


@functools.cache
def _max_of_normals(n: int) -> tuple[float, float]:
    """Mean and second moment of the maximum of ``n`` independent standard normals."""
    z = np.linspace(-8.0, 8.0, 4001)
    dz = z[1] - z[0]
    cdf = 0.5 * (1.0 + np.vectorize(math.erf)(z / math.sqrt(2.0)))
    pdf = n * np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi) * cdf ** (n - 1)
    return float(np.sum(z * pdf) * dz), float(np.sum(z * z * pdf) * dz)


@dataclass(frozen=True)
class Tensor:
    """A value of the graph being built.

    Attributes
    ----------
    name
        ONNX value name.
    shape
        ``(N, C, H, W)``.
    mean, m2
        Estimated per-element ``E[x]`` and ``E[x^2]`` (for weight scaling only).
    """

    name: str
    shape: tuple[int, int, int, int]
    mean: float = 0.0
    m2: float = 1.0

    @property
    def channels(self) -> int:
        """Number of channels ``C``."""
        return self.shape[1]

    @property
    def hw(self) -> tuple[int, int]:
        """Spatial size ``(H, W)``."""
        return (self.shape[2], self.shape[3])


class ScopedNames:
    """Unique node names inside nested scopes (``scope/name``, ``_1``, ``_2`` on repeats)."""

    def __init__(self) -> None:
        self._scope: list[str] = []
        self._used: set[str] = set()

    @contextmanager
    def scope(self, name: str) -> Iterator[None]:
        """Prefix the names of the nodes created inside the ``with`` block by ``name/``."""
        self._scope.append(name)
        try:
            yield
        finally:
            self._scope.pop()

    def _name(self, base: str) -> str:
        """Reserve and return a unique node name for ``base`` in the current scope."""
        return self._unique("/".join([*self._scope, base]))

    def _unique(self, full: str) -> str:
        name, i = full, 1
        while name in self._used:
            name = f"{full}_{i}"
            i += 1
        self._used.add(name)
        return name


class OnnxBuilder(ScopedNames):
    """Accumulates ONNX nodes and initializers for one NCHW float32 network (the ONNX backend).

    Parameters
    ----------
    graph_name
        Name of the ONNX graph.
    seed
        Seed of the weight generator; weights are drawn in layer-creation order.
    """

    def __init__(self, graph_name: str, seed: int = 0) -> None:
        super().__init__()
        self.graph_name = graph_name
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[Tensor] = []
        #: Every tensor created, by name (estimated moments included; for diagnostics).
        self.tensors: dict[str, Tensor] = {}

    def _emit(self, op_type: str, inputs: Sequence[str], base: str, shape: Sequence[int],
              mean: float, m2: float, reserved: bool = False, **attrs: object) -> Tensor:
        """Append one node named ``base`` made unique in the scope (or as is, if ``reserved``).

        The node's single output has the node's name.
        """
        name = base if reserved else self._name(base)
        self.nodes.append(helper.make_node(op_type, list(inputs), [name], name=name, **attrs))
        t = Tensor(name, (int(shape[0]), int(shape[1]), int(shape[2]), int(shape[3])),
                   float(mean), float(m2))
        self.tensors[name] = t
        return t

    # ------------------------------------------------------------------ graph ends
    def input(self, batch: int, channels: int, height: int, width: int,
              name: str = "x") -> Tensor:
        """Declare a graph input of shape ``(batch, channels, height, width)``.

        The moment estimates assume it is standard normal.
        """
        t = Tensor(name, (check_batch(batch), channels, height, width), 0.0, 1.0)
        self._used.add(name)
        self.inputs.append(t)
        self.tensors[name] = t
        return t

    def finish(self, output: Tensor, output_name: str = "y") -> onnx.ModelProto:
        """Rename ``output`` to ``output_name`` and return the checked model.

        Parameters
        ----------
        output
            The tensor that becomes the only graph output; it must be a node output.
        output_name
            Its name in the model.

        Returns
        -------
        onnx.ModelProto
            Opset 17, IR version 8, passed by ``onnx.checker.check_model``.
        """
        for node in self.nodes:
            for i, o in enumerate(node.output):
                if o == output.name:
                    node.output[i] = output_name
            for i, v in enumerate(node.input):
                if v == output.name:
                    node.input[i] = output_name
        graph = helper.make_graph(
            self.nodes, self.graph_name,
            [helper.make_tensor_value_info(t.name, TensorProto.FLOAT, list(t.shape))
             for t in self.inputs],
            [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, list(output.shape))],
            self.inits)
        model = helper.make_model(graph, producer_name="ios_tvm",
                                  opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = IR_VERSION
        onnx.checker.check_model(model)
        return model

    # ------------------------------------------------------------------ operators
    def conv(self, x: Tensor, out: int, kernel: IntPair, stride: IntPair = 1,
             pad: IntPair = 0, groups: int = 1, act: str | None = "relu",
             name: str = "conv") -> Tensor:
        """Convolution with bias, optionally followed by a ReLU.

        Parameters
        ----------
        x
            Input tensor.
        out
            Output channels.
        kernel, stride, pad
            Kernel size, stride and symmetric zero padding: an int or ``(h, w)``.
        groups
            Convolution groups (``groups == channels == out`` is a depthwise conv).
        act
            ``"relu"`` or ``None``/``"identity"`` for no activation.
        name
            Node name (inside the current scope); the ReLU node gets ``name + "/relu"``.

        Returns
        -------
        Tensor
            The (activated) output.
        """
        (kh, kw), (sh, sw), (ph, pw) = _pair(kernel), _pair(stride), _pair(pad)
        n, c, h, w = x.shape
        if c % groups or out % groups:
            raise ValueError(f"groups={groups} must divide in ({c}) and out ({out}) channels")
        oh, ow = _out_size(h, kh, sh, ph), _out_size(w, kw, sw, pw)
        if oh < 1 or ow < 1:
            raise ValueError(f"conv {name}: kernel {kh}x{kw} does not fit input {h}x{w}")
        fan_in = (c // groups) * kh * kw
        valid = _valid_fraction(h, kh, sh, ph) * _valid_fraction(w, kw, sw, pw)
        wt = self.rng.standard_normal((out, fan_in), dtype=np.float32)
        gain = 1.0 / math.sqrt(max(x.m2, 1e-6) * valid)
        wt *= (gain / np.sqrt(np.einsum("ij,ij->i", wt, wt))).astype(np.float32)[:, None]
        bias = (BIAS_STD * self.rng.standard_normal(out, dtype=np.float32)).astype(np.float32)
        base = self._name(name)  # the full name, reserved
        wname, bname = f"{base}.weight", f"{base}.bias"
        self.inits.append(numpy_helper.from_array(
            wt.reshape(out, c // groups, kh, kw), wname))
        self.inits.append(numpy_helper.from_array(bias, bname))
        pre_m2 = 1.0 + BIAS_STD ** 2
        y = self._emit("Conv", [x.name, wname, bname], base, (n, out, oh, ow), 0.0, pre_m2,
                       reserved=True, kernel_shape=[kh, kw], strides=[sh, sw],
                       pads=[ph, pw, ph, pw], group=groups)
        if act in (None, "identity"):
            return y
        if act != "relu":
            raise ValueError(f"unknown activation {act!r} (use 'relu' or None)")
        mean = math.sqrt(pre_m2 / (2.0 * math.pi))
        return self._emit("Relu", [y.name], self._unique(f"{base}/relu"), y.shape, mean,
                          pre_m2 / 2.0, reserved=True)

    def relu(self, x: Tensor, name: str = "relu") -> Tensor:
        """Standalone ReLU."""
        mean, m2 = _relu_moments(x.mean, x.m2)
        return self._emit("Relu", [x.name], name, x.shape, mean, m2)

    def relu_conv(self, x: Tensor, out: int, kernel: IntPair = 1, stride: IntPair = 1,
                  pad: IntPair = 0, name: str = "relu_conv") -> Tensor:
        """ReLU then a convolution without activation (NASNet's ``relu_conv`` unit)."""
        r = self.relu(x, name=f"{name}/relu")
        return self.conv(r, out, kernel, stride, pad, act=None, name=name)

    def sep_conv(self, x: Tensor, out: int, kernel: int, stride: int = 1,
                 pad: int | None = None, name: str = "sep") -> Tensor:
        """The separable unit: ReLU -> depthwise ``kernel`` x ``kernel`` -> pointwise 1x1.

        Neither conv has an activation (IOS's ``relu_sep_conv``); ``pad`` defaults to
        ``kernel // 2``.
        """
        c = x.channels
        r = self.relu(x, name=f"{name}/relu")
        d = self.conv(r, c, kernel, stride, kernel // 2 if pad is None else pad, groups=c,
                      act=None, name=f"{name}/dw")
        return self.conv(d, out, 1, act=None, name=f"{name}/pw")

    def _pool_out(self, x: Tensor, kernel: IntPair, stride: IntPair,
                  pad: IntPair) -> tuple[tuple[int, int, int, int], dict[str, list[int]]]:
        (kh, kw), (sh, sw), (ph, pw) = _pair(kernel), _pair(stride), _pair(pad)
        n, c, h, w = x.shape
        oh, ow = _out_size(h, kh, sh, ph), _out_size(w, kw, sw, pw)
        attrs = {"kernel_shape": [kh, kw], "strides": [sh, sw], "pads": [ph, pw, ph, pw]}
        return (n, c, oh, ow), attrs

    def max_pool(self, x: Tensor, kernel: IntPair = 3, stride: IntPair = 2, pad: IntPair = 0,
                 name: str = "maxpool") -> Tensor:
        """Max pooling (padding never wins: ONNX pads with -inf)."""
        shape, attrs = self._pool_out(x, kernel, stride, pad)
        kh, kw = _pair(kernel)
        n_eff = max(1, round(1 + (kh * kw - 1) * (1.0 - _MAX_POOL_RHO)))
        e1, e2 = _max_of_normals(n_eff)
        sd = math.sqrt(max(x.m2 - x.mean ** 2, 1e-12))
        mean = x.mean + sd * e1
        m2 = x.mean ** 2 + 2 * x.mean * sd * e1 + sd * sd * e2
        return self._emit("MaxPool", [x.name], name, shape, mean, m2, **attrs)

    def avg_pool(self, x: Tensor, kernel: IntPair = 3, stride: IntPair = 1, pad: IntPair = 1,
                 count_include_pad: bool = True, name: str = "avgpool") -> Tensor:
        """Average pooling; ``count_include_pad`` as in PyTorch/ONNX."""
        shape, attrs = self._pool_out(x, kernel, stride, pad)
        kh, kw = _pair(kernel)
        rho = _AVG_POOL_RHO
        var = max(x.m2 - x.mean ** 2, 0.0) * (rho + (1.0 - rho) / (kh * kw))
        return self._emit("AveragePool", [x.name], name, shape, x.mean, x.mean ** 2 + var,
                          count_include_pad=int(count_include_pad), **attrs)

    def global_avg_pool(self, x: Tensor, name: str = "gap") -> Tensor:
        """Global average pooling to ``(N, C, 1, 1)``."""
        n, c, _, _ = x.shape
        return self._emit("GlobalAveragePool", [x.name], name, (n, c, 1, 1), x.mean,
                          x.mean ** 2 + 0.05 * max(x.m2 - x.mean ** 2, 0.0))

    def concat(self, xs: Sequence[Tensor], name: str = "concat") -> Tensor:
        """Concatenate on channels."""
        if len(xs) < 2:
            raise ValueError("concat needs at least two tensors")
        n, _, h, w = xs[0].shape
        for t in xs:
            if (t.shape[0], t.shape[2], t.shape[3]) != (n, h, w):
                raise ValueError(f"concat {name}: {t.name} has shape {t.shape}, "
                                 f"expected (N, H, W) = {(n, h, w)}")
        c = sum(t.channels for t in xs)
        mean = sum(t.mean * t.channels for t in xs) / c
        m2 = sum(t.m2 * t.channels for t in xs) / c
        return self._emit("Concat", [t.name for t in xs], name, (n, c, h, w), mean, m2, axis=1)

    def add(self, xs: Sequence[Tensor], name: str = "add") -> Tensor:
        """Element-wise sum of two or more tensors (a chain of ``Add`` nodes).

        A single tensor is returned unchanged.
        """
        if not xs:
            raise ValueError("add needs at least one tensor")
        for t in xs[1:]:
            if t.shape != xs[0].shape:
                raise ValueError(f"add {name}: {t.name} has shape {t.shape}, "
                                 f"expected {xs[0].shape}")
        acc = xs[0]
        for i, t in enumerate(xs[1:]):
            mean = acc.mean + t.mean
            m2 = acc.m2 + t.m2 + 2.0 * acc.mean * t.mean
            base = name if len(xs) == 2 else f"{name}{i}"
            acc = self._emit("Add", [acc.name, t.name], base, acc.shape, mean, m2)
        return acc

    def lazy_sum(self, xs: Sequence[Tensor], name: str = "add") -> Tensor:
        """A sum IOS folds into its consumer's input; in ONNX the same as :meth:`add`."""
        return self.add(xs, name)
