"""Models that ship with ios-tvm, built as ONNX graphs with deterministic random weights."""

from __future__ import annotations

from .sample import sample_block

#: Built-in models by name: ``name -> builder(batch) -> onnx.ModelProto``.
BUILTIN_MODELS = {"sample": sample_block}

__all__ = ["BUILTIN_MODELS", "sample_block"]
