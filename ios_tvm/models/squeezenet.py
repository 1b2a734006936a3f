"""SqueezeNet 1.0 with "complex bypass", as in the IOS benchmark (IOS ``models/squeezenet.py``).

Every conv has a bias and a fused ReLU. Topology:

conv(96, 7x7, s2, p3) -> maxpool3 s2 (96x55x55) -> fire2(16, 64) -> fire3(16, 64)
-> fire4(32, 128) -> maxpool3 s2 (27x27) -> fire5(32, 128) -> fire6(48, 192) -> fire7(48, 192)
-> fire8(64, 256) -> maxpool3 s2 (13x13) -> fire9(64, 256) -> conv(1000, 1x1)
-> global average pool -> ``y`` of shape ``(batch, 1000, 1, 1)``.

``fire(sq, ex)``: squeeze 1x1 ``sq`` -> {expand 3x3 ``ex`` (p1), expand 1x1 ``ex``},
concatenated in that order (as IOS does; torchvision puts the 1x1 first), plus a bypass summed
with the concat: the fire input itself when it has ``2 * ex`` channels (fire3, 5, 7, 9),
otherwise a 1x1 conv to ``2 * ex`` channels with ReLU (fire2, 4, 6, 8; IOS's ``conv2d``
default activation). 30 convolutions; 50 IOS units (front 2, fires 5 or 6 each, pools 2,
tail 2).

Follows IOS where it differs from the SqueezeNet paper: conv1 is padded by 3 (so 112x112 and
then 55x55 after the first pool), no dropout and no softmax.
"""

from __future__ import annotations

from typing import Any

import onnx

from ios_tvm.models._builder import NetBuilder, NetValue, OnnxBuilder

__all__ = ["define_squeezenet", "squeezenet"]


def _fire(b: NetBuilder, x: NetValue, squeeze: int, expand: int) -> NetValue:
    s = b.conv(x, squeeze, 1, name="squeeze")
    e3 = b.conv(s, expand, 3, pad=1, name="expand3x3")
    e1 = b.conv(s, expand, 1, name="expand1x1")
    cat = b.concat([e3, e1])
    bypass = x if x.channels == 2 * expand else b.conv(x, 2 * expand, 1, name="bypass")
    return b.add([cat, bypass], name="sum")


def squeezenet(batch: int = 1, seed: int = 0) -> onnx.ModelProto:
    """Build IOS's SqueezeNet (224x224 input) as an ONNX model.

    Parameters
    ----------
    batch
        Batch size of the input ``x`` of shape ``(batch, 3, 224, 224)``.
    seed
        Seed of the deterministic random weights.

    Returns
    -------
    onnx.ModelProto
        Input ``x``, output ``y`` of shape ``(batch, 1000, 1, 1)``.
    """
    return define_squeezenet(OnnxBuilder("squeezenet", seed), batch)


def define_squeezenet(b: NetBuilder, batch: int = 1) -> Any:
    """Define SqueezeNet on ``b`` (see the module docstring); returns ``b.finish(y)``."""
    x = b.input(batch, 3, 224, 224)
    with b.scope("front"):
        x = b.conv(x, 96, 7, stride=2, pad=3, name="conv1")  # 112
        x = b.max_pool(x, 3, 2, name="maxpool1")  # 55
    fires = [("fire2", 16, 64), ("fire3", 16, 64), ("fire4", 32, 128), "maxpool2",
             ("fire5", 32, 128), ("fire6", 48, 192), ("fire7", 48, 192), ("fire8", 64, 256),
             "maxpool3", ("fire9", 64, 256)]
    for item in fires:
        if isinstance(item, str):
            x = b.max_pool(x, 3, 2, name=item)
            continue
        name, sq, ex = item
        with b.scope(name):
            x = _fire(b, x, sq, ex)
    with b.scope("tail"):
        x = b.conv(x, 1000, 1, name="conv10")
        y = b.global_avg_pool(x, name="avgpool")
    return b.finish(y)
