"""The IOS sample block: three convolutions on one input, a fourth after the first, a concat.

This is the toy block of the IOS paper's utilisation study: small enough
to build in a second, wide enough (three independent branches) to show concurrency. Every
conv is 3x3 (padding 1) with a bias and a ReLU and keeps the channels; the output concatenates
``conv_d(conv_a(x))``, ``conv_b(x)`` and ``conv_c(x)``.
"""

from __future__ import annotations

from typing import Any

import onnx

from ios_tvm.models._builder import NetBuilder, OnnxBuilder

__all__ = ["define_sample_block", "sample_block"]


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
    return define_sample_block(OnnxBuilder("ios_sample_block", seed), batch, channels, size)


def define_sample_block(b: NetBuilder, batch: int = 1, channels: int = 64,
                        size: int = 28) -> Any:
    """Define the sample block on ``b`` (see :func:`sample_block`); returns ``b.finish(y)``."""
    x = b.input(batch, channels, size, size)
    a = b.conv(x, channels, 3, pad=1, name="conv_a")
    bb = b.conv(x, channels, 3, pad=1, name="conv_b")
    c = b.conv(x, channels, 3, pad=1, name="conv_c")
    d = b.conv(a, channels, 3, pad=1, name="conv_d")
    return b.finish(b.concat([d, bb, c], name="concat"))
