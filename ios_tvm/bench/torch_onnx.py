"""PyTorch as a baseline: an ONNX graph run op by op with ``torch.nn.functional``.

The benchmark compares ios-tvm with PyTorch eager and ``torch.compile`` on the very same
graph and weights. The zoo is ONNX-only, so instead of keeping a second, hand-written PyTorch
copy of every model, :func:`torch_module` interprets the ONNX graph: ``forward`` walks the
nodes in order and calls the matching torch function, which is what an eager PyTorch model
does too (one dispatch per op), and ``torch.compile`` traces through the walk into one graph.

Imports only numpy, onnx and (lazily) torch, never TVM: ``scripts/bench_gpu.py`` uses it on
the GPU machine, which has no TVM compiler.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ios_tvm.errors import UnsupportedGraphError

#: ONNX operators :func:`torch_module` runs (2-D convolutions and pools, NCHW).
SUPPORTED_OPS = ("Add", "AveragePool", "BatchNormalization", "Concat", "Conv", "Flatten",
                 "Gemm", "GlobalAveragePool", "MatMul", "MaxPool", "Mul", "Relu", "Sigmoid",
                 "Sum")


def available() -> bool:
    """Whether PyTorch can be imported here."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _pads(attrs: Mapping[str, Any]) -> list[int]:
    return list(attrs.get("pads", [0, 0, 0, 0]))


def _check(op: str, node: str, attrs: Mapping[str, Any]) -> None:
    """Refuses, naming the node, what :func:`_apply` would not compute as ONNX defines it."""
    if op not in SUPPORTED_OPS:
        raise UnsupportedGraphError(f"node {node!r}: ONNX op {op} is not supported by the "
                                    f"PyTorch baseline (supported: {', '.join(SUPPORTED_OPS)})")
    if op not in ("Conv", "MaxPool", "AveragePool"):
        return
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise UnsupportedGraphError(f"node {node!r}: auto_pad={attrs['auto_pad']!r} is not "
                                    "supported by the PyTorch baseline (give explicit pads)")
    pads = _pads(attrs)
    if len(pads) != 4:
        raise UnsupportedGraphError(f"node {node!r}: only 2-D {op} is supported, pads {pads}")
    if op == "AveragePool" and pads[:2] != pads[2:]:
        raise UnsupportedGraphError(f"node {node!r}: asymmetric AveragePool padding {pads} is "
                                    "not supported by the PyTorch baseline")
    if op == "MaxPool" and (attrs.get("storage_order", 0)
                            or any(d != 1 for d in attrs.get("dilations", (1, 1)))):
        raise UnsupportedGraphError(f"node {node!r}: MaxPool with dilations or storage_order "
                                    "is not supported by the PyTorch baseline")


def _apply(torch: Any, op: str, node: str, xs: list[Any], a: Mapping[str, Any]) -> Any:
    """One ONNX node's result (its first output); :func:`_check` has passed."""
    F = torch.nn.functional

    def padded(x: Any, value: float) -> tuple[Any, tuple[int, int]]:
        # torch pads symmetrically; ONNX may not (top, left, bottom, right)
        t, left, b, r = _pads(a)
        if t == b and left == r:
            return x, (t, left)
        return F.pad(x, (left, r, t, b), value=value), (0, 0)

    if op == "Conv":
        x, p = padded(xs[0], 0.0)
        return F.conv2d(x, xs[1], xs[2] if len(xs) > 2 else None,
                        stride=tuple(a.get("strides", (1, 1))), padding=p,
                        dilation=tuple(a.get("dilations", (1, 1))), groups=a.get("group", 1))
    if op == "Relu":
        return F.relu(xs[0])
    if op == "Sigmoid":
        return torch.sigmoid(xs[0])
    if op in ("Add", "Sum"):
        out = xs[0]
        for y in xs[1:]:
            out = out + y
        return out
    if op == "Mul":
        return xs[0] * xs[1]
    if op == "Concat":
        return torch.cat(xs, dim=a["axis"])
    if op == "MaxPool":
        x, p = padded(xs[0], float("-inf"))
        return F.max_pool2d(x, tuple(a["kernel_shape"]), tuple(a.get("strides", (1, 1))), p,
                            ceil_mode=bool(a.get("ceil_mode", 0)))
    if op == "AveragePool":
        t, left = _pads(a)[:2]
        return F.avg_pool2d(xs[0], tuple(a["kernel_shape"]), tuple(a.get("strides", (1, 1))),
                            (t, left), ceil_mode=bool(a.get("ceil_mode", 0)),
                            count_include_pad=bool(a.get("count_include_pad", 0)))
    if op == "GlobalAveragePool":
        return xs[0].mean(dim=(2, 3), keepdim=True)
    if op == "BatchNormalization":
        x, scale, bias, mean, var = xs[:5]
        return F.batch_norm(x, mean, var, scale, bias, training=False,
                            eps=float(a.get("epsilon", 1e-5)))
    if op == "Flatten":
        axis = a.get("axis", 1)
        return xs[0].reshape(int(np.prod(xs[0].shape[:axis], dtype=np.int64)), -1)
    if op == "MatMul":
        return torch.matmul(xs[0], xs[1])
    if op == "Gemm":
        x, w = xs[0], xs[1]
        if a.get("transA", 0):
            x = x.t()
        if a.get("transB", 0):
            w = w.t()
        out = torch.matmul(x, w) * float(a.get("alpha", 1.0))
        if len(xs) > 2:
            out = out + xs[2] * float(a.get("beta", 1.0))
        return out
    raise AssertionError(f"node {node!r}: {op} passed _check but has no rule")


def torch_module(model: Any, device: str = "cpu") -> Any:
    """An ``nn.Module`` that computes the ONNX ``model`` (a ``ModelProto`` or a path).

    The module's ``forward`` takes the graph's non-initializer inputs in order and returns
    the list of its outputs. Weights become buffers on ``device``. An operator outside
    :data:`SUPPORTED_OPS`, or an attribute the interpreter cannot honour, raises
    :class:`~ios_tvm.errors.UnsupportedGraphError` naming the node, before anything runs.
    """
    import onnx
    import torch  # noqa: F401
    from onnx import helper, numpy_helper

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    inits = {i.name for i in model.graph.initializer}
    nodes = []
    for k, n in enumerate(model.graph.node):
        name = n.name or f"{n.op_type}_{k}"
        attrs = {at.name: helper.get_attribute_value(at) for at in n.attribute}
        _check(n.op_type, name, attrs)  # fail now, not in the middle of a run
        nodes.append((n.op_type, name, list(n.input), list(n.output), attrs))

    class OnnxModule(torch.nn.Module):
        """The ONNX graph, interpreted node by node."""

        def __init__(self) -> None:
            super().__init__()
            self.buffer_of: dict[str, str] = {}
            for i, init in enumerate(model.graph.initializer):
                self.register_buffer(f"w{i}", torch.from_numpy(
                    np.array(numpy_helper.to_array(init))))
                self.buffer_of[init.name] = f"w{i}"
            self.nodes = nodes
            self.input_names = [i.name for i in model.graph.input if i.name not in inits]
            self.output_names = [o.name for o in model.graph.output]

        def forward(self, *inputs: Any) -> list[Any]:
            env = dict(zip(self.input_names, inputs, strict=True))
            for name, buf in self.buffer_of.items():
                env[name] = getattr(self, buf)
            for op, node, ins, outs, attrs in self.nodes:
                env[outs[0]] = _apply(torch, op, node, [env[i] for i in ins if i], attrs)
            return [env[o] for o in self.output_names]

    return OnnxModule().to(device).eval()


def torch_runner(model: Any, inputs: Sequence[np.ndarray] | Mapping[str, np.ndarray], *,
                 device: str = "cpu", compile: bool = False, warmup: int = 3
                 ) -> tuple[Callable[[], Any], list[np.ndarray], float]:
    """A timed-run closure for the benchmark: ``(run, outputs, setup_seconds)``.

    ``inputs`` are the graph's inputs in order, or by name. ``run()`` does one inference on
    them (copied to ``device`` once, before timing) and waits for it.
    With ``compile``, the module goes through ``torch.compile`` (``mode="reduce-overhead"``
    on CUDA, which replays CUDA graphs; the default mode on the CPU); the first ``warmup``
    runs, which compile and record, are not timed, and ``setup_seconds`` includes them.
    """
    import torch  # noqa: F401

    t0 = time.perf_counter()
    m = torch_module(model, device)
    if isinstance(inputs, Mapping):
        missing = [n for n in m.input_names if n not in inputs]
        if missing:
            raise UnsupportedGraphError(f"no value for input(s) {missing} of the ONNX graph "
                                        f"(given: {sorted(inputs)})")
        inputs = [inputs[n] for n in m.input_names]
    cuda = device.startswith("cuda")
    if compile:
        m = torch.compile(m, mode="reduce-overhead" if cuda else None)
    xs = [torch.from_numpy(np.ascontiguousarray(x)).to(device) for x in inputs]
    holder: dict[str, Any] = {}

    @torch.inference_mode()
    def run() -> None:
        holder["out"] = m(*xs)
        if cuda:
            torch.cuda.synchronize()

    for _ in range(max(1, warmup)):
        run()
    outs = [o.float().cpu().numpy() for o in holder["out"]]
    return run, outs, time.perf_counter() - t0
