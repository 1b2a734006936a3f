"""Models that ship with ios-tvm, built as ONNX graphs with deterministic random weights.

The IOS benchmark networks (Inception V3, RandWire, NASNet-A Large, SqueezeNet; topology as
in IOS's own model files), ResNet-50 as a control with little
inter-operator parallelism, and the small sample block. Every builder has the signature
``builder(batch: int = 1, seed: int = 0) -> onnx.ModelProto`` and returns an NCHW float32
model (opset 17) with one input ``x`` and one output ``y``; convs have a bias and a fused
activation, there is no BatchNorm and no classifier (the output is the global average pool,
except for the sample block). Weights are scaled so that activations stay O(1) through the
deep networks (see :mod:`ios_tvm.models._builder`).

Each network is defined once, against the builder interface of :mod:`ios_tvm.models._builder`
(``define_<name>(b, batch)`` in its module); the builders here use its ONNX backend, and
:mod:`ios_tvm.models.opgraph` its TVM-free :class:`~ios_tvm.ir.graph.OpGraph` backend (the same
networks as kernel or IOS-unit graphs for search benchmarks and tests).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx

from ios_tvm.errors import ModelLoadError
from ios_tvm.models.inception_v3 import inception_v3
from ios_tvm.models.nasnet import nasnet_large
from ios_tvm.models.randwire import randwire
from ios_tvm.models.resnet import resnet50
from ios_tvm.models.sample import sample_block
from ios_tvm.models.squeezenet import squeezenet

#: Built-in models by name: ``name -> builder(batch=1, seed=0) -> onnx.ModelProto``.
BUILTIN_MODELS: dict[str, Callable[..., onnx.ModelProto]] = {
    "sample": sample_block,
    "inception_v3": inception_v3,
    "randwire": randwire,
    "nasnet": nasnet_large,
    "squeezenet": squeezenet,
    "resnet50": resnet50,
}


@dataclass(frozen=True)
class ModelInfo:
    """Static facts about a built-in model.

    Attributes
    ----------
    input_shape
        Input ``x`` without the batch dimension, ``(C, H, W)``.
    output_shape
        Output ``y`` without the batch dimension.
    units
        Scheduling units in IOS's formulation (the paper's "#operators";
        for the sample block and ResNet-50 counted the same way).
    convs
        Convolutions in the ONNX graph (a separable unit counts two).
    description
        One line.
    """

    input_shape: tuple[int, int, int]
    output_shape: tuple[int, int, int]
    units: int
    convs: int
    description: str


#: Facts about every entry of :data:`BUILTIN_MODELS`, by the same names.
MODEL_INFO: dict[str, ModelInfo] = {
    "sample": ModelInfo((64, 28, 28), (192, 28, 28), 5, 4,
                        "IOS sample block: three 3x3 convs on the input, one more after the "
                        "first, concat"),
    "inception_v3": ModelInfo((3, 299, 299), (2048, 1, 1), 119, 94,
                              "Inception V3 (torchvision layout, no BN/aux/FC), 11 "
                              "Inception modules, up to 6 parallel branches"),
    "randwire": ModelInfo((3, 224, 224), (1280, 1, 1), 120, 226,
                          "RandWire-WS C=154: 4 random Watts-Strogatz stages of "
                          "ReLU-SepConv units, sums of predecessors"),
    "nasnet": ModelInfo((3, 331, 331), (3360, 1, 1), 374, 488,
                        "NASNet-A Large (IOS variant): 2 stem cells, 18 normal/first and 2 "
                        "reduction cells of ReLU-SepConv branches"),
    "squeezenet": ModelInfo((3, 224, 224), (1000, 1, 1), 50, 30,
                            "SqueezeNet 1.0 with complex bypass: 8 fire modules with 1x1 and "
                            "3x3 expand branches"),
    "resnet50": ModelInfo((3, 224, 224), (2048, 1, 1), 86, 53,
                          "ResNet-50 (bottleneck v1.5, no BN/FC): a chain with residual adds, "
                          "little parallelism (control)"),
}


def resolve_model(model: object, batch_size: int = 1) -> object:
    """The model a user named, for every entry point that takes one (Python API and CLI).

    A path that exists is returned as is (it wins over a built-in of the same name); a
    built-in name becomes its ONNX ``ModelProto`` at ``batch_size``; anything that is not a
    ``str`` or path (a ``ModelProto``, an ``IRModule``, an ``nn.Module``) is returned as is.

    Raises
    ------
    ModelLoadError
        ``model`` is a string or path that is neither an existing file nor a built-in name
        (the message lists the built-ins).
    """
    if not isinstance(model, str | os.PathLike):
        return model
    if Path(model).exists():
        return model
    name = os.fspath(model)
    if isinstance(name, str) and name in BUILTIN_MODELS:
        return BUILTIN_MODELS[name](batch=batch_size)
    raise ModelLoadError(f"model {name!r} is neither a file nor a built-in model "
                         f"({', '.join(sorted(BUILTIN_MODELS))}): the file does not exist")


def export_model(name: str, path: str | os.PathLike[str], batch: int = 1,
                 seed: int = 0) -> Path:
    """Build a built-in model and write it as an ONNX file, atomically.

    The model is written to a temporary file in the destination directory and renamed over
    ``path``, so a reader never sees a partial file.

    Parameters
    ----------
    name
        A key of :data:`BUILTIN_MODELS`.
    path
        Destination file.
    batch
        Batch size of the model's input.
    seed
        Seed of the random weights.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    if name not in BUILTIN_MODELS:
        raise KeyError(f"unknown model {name!r}; built-in models: {', '.join(BUILTIN_MODELS)}")
    model = BUILTIN_MODELS[name](batch=batch, seed=seed)
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # A unique sibling name (not mkstemp, whose 0600 mode would stick to the result).
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(model.SerializeToString())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


__all__ = [
    "BUILTIN_MODELS", "MODEL_INFO", "ModelInfo", "export_model", "inception_v3", "nasnet_large",
    "randwire", "resnet50", "resolve_model", "sample_block", "squeezenet",
]
