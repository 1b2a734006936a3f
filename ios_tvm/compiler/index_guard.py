"""Bounds checks for the indices of gathers and scatters, so bad ids raise instead of crashing.

TVM 0.27 lowers ONNX Gather to ``take(mode="fast")``, which reads out of bounds on a bad id.
:func:`guard_indices` routes the indices of take, GatherElements, GatherND, ScatterElements and
ScatterND through a small check kernel on CPU (an out-of-range id raises naming the model
input), gives take TVM's ``clip`` mode on CUDA (a kernel cannot raise there), checks constant
indices at build time, and records in :data:`INDEX_BOUNDS_ATTR` which integer inputs index
what, so that profiling draws them within range.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import tvm
from tvm import relax

from ios_tvm.compiler.frontend import entry_function, num_inputs, tvm_errors
from ios_tvm.compiler.relax_util import bindings, shape_of
from ios_tvm.compiler.target import TargetLike, resolve_target
from ios_tvm.errors import IosTvmError, UnsupportedGraphError

#: IRModule attribute (a JSON object ``{input name: n}``) that :func:`guard_indices` sets: the
#: integer model inputs that index a gather or scatter, each with the smallest axis size it
#: indexes; profiling inputs draw such an input from ``[0, n)``
#: (:func:`ios_tvm.compiler.inputs.profiling_inputs`).
INDEX_BOUNDS_ATTR = "ios_tvm.index_bounds"
#: Ops whose indices address their data tensor: where the index argument is, how the bound
#: of each index is found (``"axis"``: the size of the op's ``axis``; ``"coords"``: the last
#: index axis holds coordinates of the data axes from ``batch_dims`` on), and whether the op
#: itself takes negative indices (TVM's importer maps them to ``i + n`` before the others).
_INDEXING_OPS = {
    "relax.take": (1, "axis", False), "relax.gather_elements": (1, "axis", False),
    "relax.scatter_elements": (1, "axis", True), "relax.gather_nd": (1, "coords", False),
    "relax.scatter_nd": (1, "coords", False),
}


def _index_bounds(call: Any) -> list[int] | None:
    """Per-index bounds of an indexing call: ``[n]`` for all indices, or one per coordinate."""
    data = shape_of(call.args[0])
    index = shape_of(call.args[_INDEXING_OPS[call.op.name][0]])
    if data is None or index is None:
        return None
    if _INDEXING_OPS[call.op.name][1] == "axis":
        axis = getattr(call.attrs, "axis", None)
        if axis is None:  # take without an axis indexes the flattened tensor
            return [math.prod(data)]
        return [data[int(axis) % len(data)]] if data else None
    if not index:
        return None
    start = int(getattr(call.attrs, "batch_dims", 0) or 0)
    coords = index[-1]
    if start + coords > len(data):
        return None
    return data[start:start + coords]


def _index_check_kernel(shape: Sequence[int], dtype: str, bounds: Sequence[int],
                        message: str, negative: bool = False) -> tvm.tirx.PrimFunc:
    """A kernel that copies indices and raises ``message`` unless each is in range.

    The range is ``[0, bound)``, or ``[-bound, bound)`` if ``negative``. ``bounds`` has one
    bound for every index, or one per position along the last axis. The kernel is opaque to
    fusion and left unscheduled (a serial loop: indices are few), so its assert raises from
    the executor's run instead of letting the op read outside its data.
    """
    from tvm.script import from_source

    def dims(ds: Sequence[int]) -> str:
        return "".join(f"T.int64({d}), " for d in ds)

    per_coord = len(bounds) > 1 or (len(shape) > 0 and len(bounds) == shape[-1] != 1)
    loops = list(shape[:-1]) if per_coord else list(shape)
    names = [f"i{k}" for k in range(len(loops))]
    axes = [f"v{k}" for k in range(len(loops))]
    pad = "    " * (3 if loops else 2)
    lines = []
    if loops:
        lines.append(f"    for {', '.join(names)} in T.grid({dims(loops)}):")
        lines.append("        with T.sblock(\"check\"):")
        lines += [f"{pad}{v} = T.axis.spatial(T.int64({d}), {i})"
                  for v, d, i in zip(axes, loops, names, strict=True)]
    else:
        lines.append("    with T.sblock(\"check\"):")
    whole = ", ".join([*axes, f"0:{shape[-1]}"] if per_coord else axes) or "()"
    lines.append(f"{pad}T.reads(a[{whole}])")
    lines.append(f"{pad}T.writes(out[{whole}])")
    for j, b in enumerate(bounds if per_coord else bounds[:1]):
        at = ", ".join([*axes, str(j)] if per_coord else axes) or "()"
        lines.append(f"{pad}assert a[{at}] >= T.{dtype}({-b if negative else 0}) and "
                     f"a[{at}] < T.{dtype}({b}), {json.dumps(message)}")
        lines.append(f"{pad}out[{at}] = a[{at}]")
    src = "\n".join([
        "@T.prim_func(private=True, s_tir=True)",
        f"def check_indices(a: T.Buffer(({dims(shape)}), \"{dtype}\"), "
        f"out: T.Buffer(({dims(shape)}), \"{dtype}\")):",
        "    T.func_attr({\"op_pattern\": 8, \"tirx.is_scheduled\": True, "
        "\"tirx.noalias\": True})", *lines, ""])
    return from_source(src)


def _feeding_inputs(func: relax.Function, expr: Any) -> list[Any]:
    """The parameters of ``func`` whose values reach ``expr`` (through any bindings)."""
    value = {b.var: b.value for b in bindings(func)}
    params = set(func.params)
    found: list[Any] = []
    seen: set[Any] = set()
    todo = [expr]
    while todo:
        e = todo.pop()
        if isinstance(e, relax.Var):
            if e in seen:
                continue
            seen.add(e)
            if e in params:
                found.append(e)
            elif e in value:
                todo.append(value[e])
        elif isinstance(e, relax.Call):
            if not (isinstance(e.op, tvm.ir.Op) and e.op.name == "relax.shape_of"):
                todo.extend(e.args)  # (a shape does not carry its tensor's values)
        elif isinstance(e, relax.Tuple):
            todo.extend(e.fields)
        elif isinstance(e, relax.TupleGetItem):
            todo.append(e.tuple_value)
    return found


@relax.expr_functor.mutator
class _GuardIndices(relax.PyExprMutator):
    """Routes the indices of every indexing op through :func:`_index_check_kernel` (CPU).

    On other targets, which cannot raise from a kernel, ``take`` gets its memory-safe
    ``clip`` mode instead.
    """

    def __init__(self, mod: tvm.IRModule, func: relax.Function, check: bool) -> None:
        super().__init__(mod)
        self.func = func
        self.check = check
        self.inputs = set(func.params[:num_inputs(func)])
        self.bounds: dict[str, int] = {}

    def visit_call_(self, call: Any) -> Any:
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name in _INDEXING_OPS):
            return call
        pos = _INDEXING_OPS[call.op.name][0]
        indices = call.args[pos]
        bounds = _index_bounds(call)
        ty = getattr(indices, "ty", None)
        if bounds is None or not isinstance(ty, relax.TensorType) or shape_of(indices) is None:
            return call
        op = call.op.name.rsplit(".", 1)[-1]
        feeding = [p for p in _feeding_inputs(self.func, indices) if p in self.inputs
                   and isinstance(p.ty, relax.TensorType)
                   and str(p.ty.dtype).startswith(("int", "uint"))]
        for p in feeding:
            self.bounds[p.name] = min(self.bounds.get(p.name, min(bounds)), min(bounds))
        if isinstance(indices, tvm.ir.GenericConst):
            _check_constant_indices(op, indices.value.numpy(), bounds,
                                    _INDEXING_OPS[call.op.name][2])
            return call
        if not self.check:
            if call.op.name == "relax.take" and str(call.attrs.mode) == "fast":
                return relax.op.take(call.args[0], indices, call.attrs.axis, mode="clip")
            return call
        src = (f" from model input{'s' if len(feeding) > 1 else ''} "
               f"{', '.join(repr(p.name) for p in feeding)}" if feeding else "")
        what = (f"index out of range in {op} (ONNX Gather/Scatter): indices{src} must lie in "
                + (f"[-{bounds[0]}, {bounds[0]})" if len(bounds) == 1 else
                   "[-n, n) for n = " + ", ".join(map(str, bounds)) + " per coordinate"))
        shape = shape_of(indices)
        kernel = _index_check_kernel(shape, str(ty.dtype), bounds, what,
                                     negative=_INDEXING_OPS[call.op.name][2])
        gv = self.builder_.add_func(kernel, "check_indices")
        checked = self.builder_.emit(relax.call_tir(gv, [indices], ty))
        args = list(call.args)
        args[pos] = checked
        return relax.Call(call.op, args, call.attrs, call.ty_args)


def _check_constant_indices(op: str, values: Any, bounds: Sequence[int],
                            negative: bool = False) -> None:
    """Constant indices are checked now: out of range, the model could never run."""
    import numpy as np

    values = np.asarray(values)
    n = np.asarray(bounds) if len(bounds) > 1 else bounds[0]
    ok = (values >= (-n if negative else 0)) & (values < n)
    if not ok.all():
        bad = values[~ok].ravel()[0] if values.ndim else values
        raise UnsupportedGraphError(f"{op} (ONNX Gather/Scatter) has a constant index {bad} "
                                    f"outside [-n, n) for n = {', '.join(map(str, bounds))}")


def guard_indices(mod: tvm.IRModule, target: TargetLike = "llvm") -> tvm.IRModule:
    """Make every gather and scatter with run-time indices unable to touch memory outside its data.

    TVM lowers ``take`` (ONNX Gather) and its kin without bounds checks (``mode="fast"``),
    so an out-of-range index reads or writes outside the tensor: a crash or garbage, where
    ONNX Runtime raises. On llvm targets each such op's indices first pass through a small
    check kernel that raises ``index out of range in take ...: indices from model input
    'ids' must lie in [-n, n)`` from the executor's run (a RuntimeError naming the op and
    the input). Other targets cannot raise from a kernel: there ``take`` gets TVM's
    ``clip`` mode (memory-safe; out-of-range indices are clamped). Constant indices are
    checked here. Records :data:`INDEX_BOUNDS_ATTR` for the inputs that feed indices.
    """
    fname = entry_function(mod)
    if not any(isinstance(b.value, relax.Call) and isinstance(b.value.op, tvm.ir.Op)
               and b.value.op.name in _INDEXING_OPS for b in bindings(mod[fname])):
        return mod
    # Constant indices become constants (TVM's importer normalises them with Relax ops).
    with tvm_errors("TVM's FoldConstant pass failed", IosTvmError):
        mod = relax.transform.FoldConstant()(mod)
    func = mod[fname]
    guard = _GuardIndices(mod, func, check=resolve_target(target).kind.name == "llvm")
    guard.builder_.update_func(mod.get_global_var(fname), guard.visit_expr(func))
    out = guard.builder_.get()
    return out.with_attr(INDEX_BOUNDS_ATTR, json.dumps(guard.bounds)) if guard.bounds else out
