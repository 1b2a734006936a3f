"""The IOS sample block: three convolutions on one input, a fourth after the first, a concat.

This is the toy block of the IOS paper's utilisation study (§4.8 of our brief): small enough
to build in a second, wide enough (three independent branches) to show concurrency.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def sample_block(batch: int = 1, channels: int = 64, size: int = 28,
                 seed: int = 0) -> onnx.ModelProto:
    """Build the sample block as an ONNX model.

    Parameters
    ----------
    batch, channels, size
        Input shape ``(batch, channels, size, size)``; every conv keeps ``channels``.
    seed
        Seed of the deterministic random weights.

    Returns
    -------
    onnx.ModelProto
        Input ``x``, output ``y`` of shape ``(batch, 3 * channels, size, size)``.
    """
    rng = np.random.default_rng(seed)
    inits = []
    nodes = []

    def conv(name: str, src: str) -> str:
        w = rng.standard_normal((channels, channels, 3, 3)) / np.sqrt(9 * channels)
        b = (0.1 * rng.standard_normal(channels)).astype("float32")
        inits.extend([numpy_helper.from_array(w.astype("float32"), f"{name}.weight"),
                      numpy_helper.from_array(b, f"{name}.bias")])
        nodes.append(helper.make_node("Conv", [src, f"{name}.weight", f"{name}.bias"],
                                      [f"{name}.c"], name=name, kernel_shape=[3, 3],
                                      pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"{name}.c"], [name], name=f"{name}.relu"))
        return name

    a = conv("conv_a", "x")
    b = conv("conv_b", "x")
    c = conv("conv_c", "x")
    d = conv("conv_d", a)
    nodes.append(helper.make_node("Concat", [d, b, c], ["y"], name="concat", axis=1))
    graph = helper.make_graph(
        nodes, "ios_sample_block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, channels, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3 * channels, size, size])],
        inits)
    model = helper.make_model(graph, producer_name="ios_tvm",
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
