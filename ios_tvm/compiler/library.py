"""The kernel library of a lowered model (one runtime module) and the weights a plan loads."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ios_tvm.compiler.cuda_binary import build_cuda_library
from ios_tvm.errors import ModelLoadError, UnsupportedGraphError


def build_kernel_library(mod: Any, target: Any) -> Any:
    """Compile every PrimFunc of the lowered ``mod`` for ``target`` into one runtime module.

    Fused PrimFuncs are private; each gets its GlobalVar's name as global symbol, which is
    the kernel name the plan calls. CUDA kernels are compiled to device code here
    (:func:`~ios_tvm.compiler.cuda_binary.build_cuda_library`), so the exported library
    loads without a compiler.
    """
    import tvm

    funcs = {}
    for gv, func in mod.functions.items():
        if isinstance(func, tvm.tirx.PrimFunc):
            funcs[gv] = func.with_attr("global_symbol", gv.name_hint)
    if not funcs:
        raise UnsupportedGraphError("the lowered module has no kernels to build")
    return build_cuda_library(tvm.IRModule(funcs), target)


def weights_of(extraction: Any, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Values of every weight the plan loads: the module's constants plus the given params."""
    weights: dict[str, Any] = {name: c.value for name, c in extraction.constants.items()}
    for info in extraction.graph.tensors.values():
        if info.kind == "param" and info.alias_of is None:
            if params is None or info.name not in params:
                raise ModelLoadError(f"no value for weight parameter {info.name!r}; pass "
                                     "params={name: array}")
            weights[info.name] = params[info.name]
    return weights
