"""Inception V3 as in the IOS benchmark (torchvision layout without BatchNorm, aux head or FC).

Topology (IOS ``models/inception_v3.py``); ``conv(out, k, s, p)`` is a conv
with bias and a fused ReLU, stride 1 and no padding unless given:

* front: conv(32,3,s2) -> conv(32,3) -> conv(64,3,p1) -> maxpool3 s2 -> conv(80,1)
  -> conv(192,3) -> maxpool3 s2 -> 192x35x35;
* Mixed_5b/5c/5d = A(32), A(64), A(64): [1x1 64] | [1x1 48 -> 5x5 64] |
  [1x1 64 -> 3x3 96 -> 3x3 96] | [avgpool3 s1 p1 -> 1x1 pf] -> 256/288/288 x35x35;
* Mixed_6a = B: [3x3 384 s2] | [1x1 64 -> 3x3 96 p1 -> 3x3 96 s2] | [maxpool3 s2] -> 768x17x17;
* Mixed_6b..6e = C(128), C(160), C(160), C(192): [1x1 192] | [1x1 c7 -> 1x7 c7 -> 7x1 192] |
  [1x1 c7 -> 7x1 c7 -> 1x7 c7 -> 7x1 c7 -> 1x7 192] | [avgpool3 -> 1x1 192] -> 768x17x17;
* Mixed_7a = D: [1x1 192 -> 3x3 320 s2] | [1x1 192 -> 1x7 192 -> 7x1 192 -> 3x3 192 s2] |
  [maxpool3 s2] -> 1280x8x8;
* Mixed_7b/7c = E: [1x1 320] | [1x1 384 -> {1x3 384, 3x1 384}] |
  [1x1 448 -> 3x3 384 -> {1x3 384, 3x1 384}] | [avgpool3 -> 1x1 192] -> concat of 6, 2048x8x8;
* global average pool -> ``y`` of shape ``(batch, 2048, 1, 1)``.

94 convolutions, 14 poolings (13 + the global one) and 11 concats: the paper's 119 units.
:func:`define_inception_block` is one Inception-A module on its own (by default the first,
Mixed_5b, on a 192x35x35 input): 9 ops, width 4, whose three 1x1 convs may merge.

Choice where the IOS sources leave it open: the 3x3 average pools count the zero padding
(``count_include_pad=1``), as torchvision's ``F.avg_pool2d`` does by default.
"""

from __future__ import annotations

from typing import Any

import onnx

from ios_tvm.models._builder import NetBuilder, NetValue, OnnxBuilder

__all__ = ["define_inception_block", "define_inception_v3", "inception_v3"]


def _inception_a(b: NetBuilder, x: NetValue, pool_features: int) -> NetValue:
    br1 = b.conv(x, 64, 1, name="branch1x1")
    br5 = b.conv(x, 48, 1, name="branch5x5_1")
    br5 = b.conv(br5, 64, 5, pad=2, name="branch5x5_2")
    br3 = b.conv(x, 64, 1, name="branch3x3dbl_1")
    br3 = b.conv(br3, 96, 3, pad=1, name="branch3x3dbl_2")
    br3 = b.conv(br3, 96, 3, pad=1, name="branch3x3dbl_3")
    bp = b.avg_pool(x, 3, 1, 1, name="branch_pool/avgpool")
    bp = b.conv(bp, pool_features, 1, name="branch_pool")
    return b.concat([br1, br5, br3, bp])


def _inception_b(b: NetBuilder, x: NetValue) -> NetValue:
    br3 = b.conv(x, 384, 3, stride=2, name="branch3x3")
    brd = b.conv(x, 64, 1, name="branch3x3dbl_1")
    brd = b.conv(brd, 96, 3, pad=1, name="branch3x3dbl_2")
    brd = b.conv(brd, 96, 3, stride=2, name="branch3x3dbl_3")
    bp = b.max_pool(x, 3, 2, name="branch_pool")
    return b.concat([br3, brd, bp])


def _inception_c(b: NetBuilder, x: NetValue, c7: int) -> NetValue:
    br1 = b.conv(x, 192, 1, name="branch1x1")
    br7 = b.conv(x, c7, 1, name="branch7x7_1")
    br7 = b.conv(br7, c7, (1, 7), pad=(0, 3), name="branch7x7_2")
    br7 = b.conv(br7, 192, (7, 1), pad=(3, 0), name="branch7x7_3")
    brd = b.conv(x, c7, 1, name="branch7x7dbl_1")
    brd = b.conv(brd, c7, (7, 1), pad=(3, 0), name="branch7x7dbl_2")
    brd = b.conv(brd, c7, (1, 7), pad=(0, 3), name="branch7x7dbl_3")
    brd = b.conv(brd, c7, (7, 1), pad=(3, 0), name="branch7x7dbl_4")
    brd = b.conv(brd, 192, (1, 7), pad=(0, 3), name="branch7x7dbl_5")
    bp = b.avg_pool(x, 3, 1, 1, name="branch_pool/avgpool")
    bp = b.conv(bp, 192, 1, name="branch_pool")
    return b.concat([br1, br7, brd, bp])


def _inception_d(b: NetBuilder, x: NetValue) -> NetValue:
    br3 = b.conv(x, 192, 1, name="branch3x3_1")
    br3 = b.conv(br3, 320, 3, stride=2, name="branch3x3_2")
    br7 = b.conv(x, 192, 1, name="branch7x7x3_1")
    br7 = b.conv(br7, 192, (1, 7), pad=(0, 3), name="branch7x7x3_2")
    br7 = b.conv(br7, 192, (7, 1), pad=(3, 0), name="branch7x7x3_3")
    br7 = b.conv(br7, 192, 3, stride=2, name="branch7x7x3_4")
    bp = b.max_pool(x, 3, 2, name="branch_pool")
    return b.concat([br3, br7, bp])


def _inception_e(b: NetBuilder, x: NetValue) -> NetValue:
    br1 = b.conv(x, 320, 1, name="branch1x1")
    br3 = b.conv(x, 384, 1, name="branch3x3_1")
    br3a = b.conv(br3, 384, (1, 3), pad=(0, 1), name="branch3x3_2a")
    br3b = b.conv(br3, 384, (3, 1), pad=(1, 0), name="branch3x3_2b")
    brd = b.conv(x, 448, 1, name="branch3x3dbl_1")
    brd = b.conv(brd, 384, 3, pad=1, name="branch3x3dbl_2")
    brda = b.conv(brd, 384, (1, 3), pad=(0, 1), name="branch3x3dbl_3a")
    brdb = b.conv(brd, 384, (3, 1), pad=(1, 0), name="branch3x3dbl_3b")
    bp = b.avg_pool(x, 3, 1, 1, name="branch_pool/avgpool")
    bp = b.conv(bp, 192, 1, name="branch_pool")
    return b.concat([br1, br3a, br3b, brda, brdb, bp])


def inception_v3(batch: int = 1, seed: int = 0) -> onnx.ModelProto:
    """Build IOS's Inception V3 (299x299 input, no BatchNorm/aux/FC) as an ONNX model.

    Parameters
    ----------
    batch
        Batch size of the input ``x`` of shape ``(batch, 3, 299, 299)``.
    seed
        Seed of the deterministic random weights.

    Returns
    -------
    onnx.ModelProto
        Input ``x``, output ``y`` of shape ``(batch, 2048, 1, 1)`` (the global average pool).
    """
    return define_inception_v3(OnnxBuilder("inception_v3", seed), batch)


def define_inception_v3(b: NetBuilder, batch: int = 1) -> Any:
    """Define Inception V3 on ``b`` (see the module docstring); returns ``b.finish(y)``."""
    x = b.input(batch, 3, 299, 299)
    with b.scope("front"):
        x = b.conv(x, 32, 3, stride=2, name="Conv2d_1a_3x3")  # 149
        x = b.conv(x, 32, 3, name="Conv2d_2a_3x3")  # 147
        x = b.conv(x, 64, 3, pad=1, name="Conv2d_2b_3x3")  # 147
        x = b.max_pool(x, 3, 2, name="maxpool1")  # 73
        x = b.conv(x, 80, 1, name="Conv2d_3b_1x1")  # 73
        x = b.conv(x, 192, 3, name="Conv2d_4a_3x3")  # 71
        x = b.max_pool(x, 3, 2, name="maxpool2")  # 35
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
    y = b.global_avg_pool(x, name="avgpool")
    return b.finish(y)


def define_inception_block(b: NetBuilder, batch: int = 1, channels: int = 192, size: int = 35,
                           pool_features: int = 32) -> Any:
    """Define one Inception-A module (scope ``Mixed_5b``) on ``b``; returns ``b.finish(y)``.

    Parameters
    ----------
    b
        The builder (backend).
    batch, channels, size
        Input shape ``(batch, channels, size, size)``.
    pool_features
        Output channels of the pool branch; the output has ``224 + pool_features`` channels.
    """
    x = b.input(batch, channels, size, size)
    with b.scope("Mixed_5b"):
        y = _inception_a(b, x, pool_features)
    return b.finish(y)
