"""The peers a model is timed against: ONNX Runtime and PyTorch (eager, ``torch.compile``).

Each runs the same ONNX model and weights as ios-tvm; PyTorch through
:mod:`ios_tvm.bench.torch_onnx`. A baseline that is not installed is skipped with a log line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ios_tvm.bench import torch_onnx

logger = logging.getLogger(__name__)

def add_torch_runners(proto: Any, inputs: Mapping[str, np.ndarray], device_type: str,
                       modes: Sequence[str], runners: dict[str, Callable[[], Any]],
                       outputs: dict[str, list[np.ndarray]], seconds: dict[str, float]) -> None:
    """PyTorch eager / ``torch.compile`` runners, when PyTorch is installed."""
    if not torch_onnx.available():
        logger.info("PyTorch is not installed; no PyTorch baseline")
        return
    for mode in modes:
        variant = "torch" if mode == "eager" else "torch.compile"
        try:
            run, outs, took = torch_onnx.torch_runner(
                proto, inputs, device="cuda" if device_type == "cuda" else "cpu",
                compile=mode == "compile")
        except Exception as e:  # reported only: a missing op or a compiler failure in torch
            logger.warning("%s failed: %s", variant, e)
            continue
        runners[variant], outputs[variant] = run, outs
        seconds[f"prepare_{variant}"] = took


def onnx_proto(model: Any) -> Any:
    """The ONNX ModelProto of ``model`` if it is one (or an .onnx path), else None."""
    try:
        import onnx
    except ImportError:  # pragma: no cover - onnx is a dependency
        return None
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, str) and model.endswith(".onnx"):
        return onnx.load(model)
    return None


def ort_runner(proto: Any, inputs: Mapping[str, np.ndarray],
                device_type: str) -> tuple[Callable[[], Any], list[np.ndarray]] | None:
    """ONNX Runtime on ``proto`` with ``inputs``: a runner and its outputs (None if absent)."""
    try:
        import onnxruntime as ort
    except ImportError:
        logger.info("onnxruntime is not installed; no ONNX Runtime baseline")
        return None
    providers = ["CPUExecutionProvider"]
    if device_type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    elif device_type == "cuda":
        logger.warning("onnxruntime has no CUDA provider here; its baseline runs on the CPU")
    sess = ort.InferenceSession(proto.SerializeToString(), providers=providers)
    feed = {i.name: inputs[i.name] for i in sess.get_inputs()}
    return (lambda: sess.run(None, feed)), sess.run(None, feed)
