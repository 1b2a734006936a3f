"""Small helpers over Relax IR shared by the lowering, layout, index-guard and extraction code."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tvm
from tvm import relax

CALL_TIR = "relax.call_tir"
CALL_TIR_INPLACE = "relax.call_tir_inplace"
CALL_DPS_PACKED = "relax.call_dps_packed"


def attr_to_py(value: Any) -> Any:
    """Convert an op attribute value to plain JSON-able Python (best effort)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, tvm.tirx.IntImm):
        return int(value.value)
    if isinstance(value, tvm.tirx.FloatImm):
        return float(value.value)
    if isinstance(value, Sequence) or type(value).__name__ in ("Array", "List"):
        return [attr_to_py(v) for v in value]
    return str(value)


def op_attrs(attrs: Any) -> dict[str, Any]:
    """The fields of a Relax op's Attrs object (e.g. Conv2DAttrs) as a plain dict."""
    out: dict[str, Any] = {}
    if attrs is None:
        return out
    for key in dir(attrs):
        if key.startswith("_") or key in ("same_as", "id_", "is_"):
            continue
        try:
            value = getattr(attrs, key)
        except Exception:
            continue
        if callable(value):
            continue
        out[key] = attr_to_py(value)
    return out


def shape_of(expr: Any) -> Any:
    """Static shape of a tensor expression (a list per field for a tuple), else None."""
    if isinstance(expr, relax.Tuple):
        return [shape_of(f) for f in expr.fields]
    ty = getattr(expr, "ty", None)
    if isinstance(ty, relax.TensorType) and ty.shape is not None:
        try:
            return [int(d.value) for d in ty.shape.values]
        except AttributeError:
            return None
    return None


def relax_functions(mod: tvm.IRModule) -> list[relax.Function]:
    """The Relax functions of ``mod`` that are not fused (``Primitive``) functions."""
    return [f for f in mod.functions.values() if isinstance(f, relax.Function)
            and not (f.attrs is not None and "Primitive" in f.attrs)]


def bindings(func: relax.Function) -> list[Any]:
    """Every binding of ``func``'s body, in order."""
    body = func.body
    if not isinstance(body, relax.SeqExpr):
        return []
    return [b for blk in body.blocks for b in blk.bindings]


def is_op(call: Any, name: str) -> bool:
    """Whether ``call`` calls the Relax operator ``name``."""
    return isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.Op) and call.op.name == name


def short_text(e: Any, limit: int = 80) -> str:
    """A one-line rendering of a Relax expression for error messages."""
    if isinstance(e, relax.Var):
        return repr(e.name)
    try:
        text = e.script() if hasattr(e, "script") else str(e)
    except Exception:
        text = str(e)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
