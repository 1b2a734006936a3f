"""ResNet-50 as a control network with little inter-operator parallelism.

Standard bottleneck ResNet-50 (torchvision "v1.5" layout) without BatchNorm and without the
classifier, as IOS models have no BatchNorm; every conv has a bias:

* stem: conv(64, 7x7, s2, p3) + ReLU -> maxpool3 s2 p1 -> 64x56x56;
* layers of 3, 4, 6, 3 bottlenecks with widths 64, 128, 256, 512 and 4x expansion
  (outputs 256, 512, 1024, 2048 channels at 56, 28, 14, 7);
* bottleneck: 1x1 (width) + ReLU -> 3x3 (width, stride s, p1) + ReLU -> 1x1 (4 x width), no
  activation -> add the shortcut -> ReLU. The first bottleneck of every layer has a projection
  shortcut 1x1 (4 x width, stride s), no activation; the others use the identity;
* global average pool -> ``y`` of shape ``(batch, 2048, 1, 1)``.

53 convolutions; 86 IOS units (stem 2, 16 x (3 convs + add + ReLU), 4 projections; IOS's
ResNet has no global pool, so its graph at IOS granularity, which has one, has 87 nodes).

Choices: the stride of a downsampling bottleneck sits on its 3x3 conv (torchvision v1.5;
IOS's ``resnet.py`` and the original paper put it on the first 1x1), and the projection has
no activation (IOS's has a ReLU). IOS's own ``resnet50`` has a bug (its last 1x1 conv outputs
``width`` instead of ``4 x width`` channels); this one has the correct 4x expansion.
"""

from __future__ import annotations

from typing import Any

import onnx

from ios_tvm.models._builder import NetBuilder, NetValue, OnnxBuilder

__all__ = ["define_resnet50", "resnet50"]


def _bottleneck(b: NetBuilder, x: NetValue, width: int, stride: int) -> NetValue:
    out = 4 * width
    if stride != 1 or x.channels != out:
        shortcut = b.conv(x, out, 1, stride=stride, act=None, name="downsample")
    else:
        shortcut = x
    y = b.conv(x, width, 1, name="conv1")
    y = b.conv(y, width, 3, stride=stride, pad=1, name="conv2")
    y = b.conv(y, out, 1, act=None, name="conv3")
    y = b.add([y, shortcut], name="add")
    return b.relu(y, name="relu")


def resnet50(batch: int = 1, seed: int = 0) -> onnx.ModelProto:
    """Build ResNet-50 (224x224 input, no BatchNorm/FC) as an ONNX model.

    Parameters
    ----------
    batch
        Batch size of the input ``x`` of shape ``(batch, 3, 224, 224)``.
    seed
        Seed of the deterministic random weights.

    Returns
    -------
    onnx.ModelProto
        Input ``x``, output ``y`` of shape ``(batch, 2048, 1, 1)``.
    """
    return define_resnet50(OnnxBuilder("resnet50", seed), batch)


def define_resnet50(b: NetBuilder, batch: int = 1) -> Any:
    """Define ResNet-50 on ``b`` (see the module docstring); returns ``b.finish(y)``."""
    x = b.input(batch, 3, 224, 224)
    with b.scope("stem"):
        x = b.conv(x, 64, 7, stride=2, pad=3, name="conv1")  # 112
        x = b.max_pool(x, 3, 2, 1, name="maxpool")  # 56
    for li, (width, blocks, stride) in enumerate(((64, 3, 1), (128, 4, 2), (256, 6, 2),
                                                  (512, 3, 2))):
        for bi in range(blocks):
            with b.scope(f"layer{li + 1}.{bi}"):
                x = _bottleneck(b, x, width, stride if bi == 0 else 1)
    y = b.global_avg_pool(x, name="avgpool")
    return b.finish(y)
