"""Graph extraction: from a Relax module to the scheduler's :class:`~ios_tvm.graph.OpGraph`.

Where this sits in the data flow (``shared/design/architecture.md``)::

    frontend.load_model -> Relax IRModule
      -> lower_to_kernels: TVM's own lowering to fused kernels (LegalizeOps, AnnotateTIROpPattern,
         FoldConstant, FuseOps, FuseTIR, [dlight on GPU], RewriteDataflowReshape)
      -> extract_graph: one OpNode per kernel call, TensorInfo per tensor   <- this module
      -> search (IOS DP) -> Schedule -> lowering to a plan + executor

:func:`lower_to_kernels` runs exactly the passes of TVM's default per-target pipeline up to the
point where the entry function is a dataflow of ``call_tir`` (the CPU list equals
``relax.get_pipeline("zero")``), then ``RewriteDataflowReshape``, the first pass of TVM's
``dataflow_lower_passes``, which turns pure reshape kernels into ``R.reshape`` (a memory view at
run time, no kernel). While the passes run it records, per fused kernel, which Relax operators
were fused into it (with their attributes, e.g. conv2d strides) and the kernel's logical FLOPs
(counted *before* GPU schedules pad loops); that record is stored as a JSON string in the module
attribute :data:`KERNEL_INFO_ATTR` for :func:`extract_graph`.

:class:`Extraction` keeps the link back to the Relax function (binding var, kernel, call and
tensor sources per node/tensor) so that the later lowering of a schedule to an executable plan
can find every kernel's arguments. Constant values are not copied into the OpGraph;
:attr:`TensorSource.expr` holds the ``GenericConst`` whose ``.value`` is the tensor.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import tvm
from tvm import relax

from .errors import IosTvmError, UnsupportedGraphError
from .frontend import (
    INPUT_NAMES_ATTR,
    OUTPUT_NAMES_ATTR,
    ShapeDict,
    _entry_function,
    _num_inputs,
    describe_model,
    load_model,
    tvm_errors,
)
from .graph import OpGraph, OpNode, TensorInfo

logger = logging.getLogger(__name__)

__all__ = [
    "INDEX_BOUNDS_ATTR", "KERNEL_INFO_ATTR", "LAYOUT_SAFE_OPS", "OP_PATTERN_KINDS", "Extraction",
    "TensorSource", "convert_conv_layout", "extract_graph", "graph_from_model", "guard_indices",
    "kernel_flops", "lower_to_kernels", "resolve_target",
]

#: IRModule attribute (a JSON string) where :func:`lower_to_kernels` records per-kernel info.
KERNEL_INFO_ATTR = "ios_tvm.kernel_info"

#: TVM's ``OpPatternKind`` (include/tvm/relax/op_attr_types.h); no Python enum exists in 0.27.
OP_PATTERN_KINDS = {0: "elemwise", 1: "broadcast", 2: "injective", 3: "comm_reduce",
                    4: "out_elemwise_fusable", 7: "tuple", 8: "opaque"}

_CALL_TIR = "relax.call_tir"
_CALL_TIR_INPLACE = "relax.call_tir_inplace"
_CALL_DPS_PACKED = "relax.call_dps_packed"
#: Ops that survive lowering as views of their first argument (no kernel, no copy).
_VIEW_OPS = ("relax.reshape", "relax.memory.view")

#: What :func:`resolve_target` accepts.
TargetLike = Union[str, Mapping[str, Any], "tvm.target.Target"]  # noqa: UP007 (forward ref)


# --------------------------------------------------------------------------------------------
# targets and lowering
# --------------------------------------------------------------------------------------------
def resolve_target(target: TargetLike) -> tvm.target.Target:
    """Turn a name (``llvm``, ``host``, ``cuda``, a tag), a dict or a Target into a ``Target``.

    ``"host"`` is llvm for this machine's CPU (``mcpu`` as LLVM detects it); a bare ``"llvm"``
    is generic x86-64 (SSE2 only), much slower on any recent CPU.
    ``"cuda"`` means ``{"kind": "cuda", "arch": "sm_90"}``; a CUDA target without a host gets an
    llvm host. TVM 0.27 rejects the old CLI strings (``"cuda -arch=sm_90"``), so a string with
    spaces is parsed here into a dict (``-key=value`` options).
    """
    if isinstance(target, tvm.target.Target):
        tgt = target
    elif isinstance(target, Mapping):
        tgt = tvm.target.Target(dict(target))
    elif isinstance(target, str):
        text = target.strip()
        if text.startswith("{"):
            tgt = tvm.target.Target(json.loads(text))
        elif " " in text:
            kind, *opts = text.split()
            d: dict[str, Any] = {"kind": kind}
            if kind == "cuda":
                d["arch"] = "sm_90"
            for opt in opts:
                key, _, value = opt.lstrip("-").partition("=")
                d[key] = int(value) if value.isdigit() else value
            tgt = tvm.target.Target(d)
        elif text == "cuda":
            tgt = tvm.target.Target({"kind": "cuda", "arch": "sm_90"})
        elif text == "host":
            from tvm.target import codegen

            tgt = tvm.target.Target({"kind": "llvm",
                                     "mcpu": str(codegen.llvm_get_system_cpu())})
        else:
            tgt = tvm.target.Target(text)
    else:
        raise TypeError(f"target must be a str, dict or tvm.target.Target, not {type(target)}")
    if "gpu" in tgt.keys and tgt.host is None:
        tgt = tvm.target.Target(tgt, tvm.target.Target({"kind": "llvm"}))
    return tgt


def _attr_to_py(value: Any) -> Any:
    """Convert an op attribute value to plain JSON-able Python (best effort)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, tvm.tirx.IntImm):
        return int(value.value)
    if isinstance(value, tvm.tirx.FloatImm):
        return float(value.value)
    if isinstance(value, Sequence) or type(value).__name__ in ("Array", "List"):
        return [_attr_to_py(v) for v in value]
    return str(value)


def _op_attrs(attrs: Any) -> dict[str, Any]:
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
        out[key] = _attr_to_py(value)
    return out


def _shape_of(expr: Any) -> Any:
    """Static shape of a tensor expression (a list per field for a tuple), else None."""
    if isinstance(expr, relax.Tuple):
        return [_shape_of(f) for f in expr.fields]
    ty = getattr(expr, "ty", None)
    if isinstance(ty, relax.TensorType) and ty.shape is not None:
        try:
            return [int(d.value) for d in ty.shape.values]
        except AttributeError:
            return None
    return None


def _relax_functions(mod: tvm.IRModule) -> list[relax.Function]:
    return [f for f in mod.functions.values() if isinstance(f, relax.Function)
            and not (f.attrs is not None and "Primitive" in f.attrs)]


def _bindings(func: relax.Function) -> list[Any]:
    body = func.body
    if not isinstance(body, relax.SeqExpr):
        return []
    return [b for blk in body.blocks for b in blk.bindings]


def _is_op(call: Any, name: str) -> bool:
    return isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.Op) and call.op.name == name


class _Provenance:
    """Which Relax ops end up in which fused kernel; recorded between lowering passes.

    Relies on binding vars keeping their identity through LegalizeOps and FuseTIR, and on
    FuseOps moving the original bindings into the fused Relax function (all checked on 0.27).
    If a var is not found, the kernel just gets no op info (extraction falls back to names).
    """

    def __init__(self) -> None:
        self.pre: dict[Any, dict[str, Any]] = {}       # var -> original Relax op call info
        self.legal: dict[str, dict[str, Any]] = {}     # legalized PrimFunc name -> op info
        self.group: dict[Any, list[str]] = {}          # var after FuseOps -> member PrimFuncs
        self.kernels: dict[str, dict[str, Any]] = {}   # fused kernel name -> summary
        self._patterns: dict[str, int] = {}            # legalized PrimFunc -> op_pattern

    def before_legalize(self, mod: tvm.IRModule) -> None:
        for func in _relax_functions(mod):
            for b in _bindings(func):
                call = b.value
                if not (isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.Op)):
                    continue
                name = call.op.name
                if name in (_CALL_TIR, _CALL_TIR_INPLACE, _CALL_DPS_PACKED):
                    continue
                info: dict[str, Any] = {"op": name.rsplit(".", 1)[-1], "relax_op": name}
                info["arg_shapes"] = [_shape_of(a) for a in call.args]
                info["out_shape"] = _shape_of(b.var)
                info.update(_op_attrs(call.attrs))
                if info["op"].startswith("conv") and len(call.args) >= 2:
                    info["data_shape"] = info["arg_shapes"][0]
                    info["weight_shape"] = info["arg_shapes"][1]
                self.pre[b.var] = info

    def after_legalize(self, mod: tvm.IRModule) -> None:
        for func in _relax_functions(mod):
            for b in _bindings(func):
                if _is_op(b.value, _CALL_TIR) and b.var in self.pre:
                    self.legal.setdefault(b.value.args[0].name_hint, self.pre[b.var])

    def after_fuse_ops(self, mod: tvm.IRModule) -> None:
        for func in _relax_functions(mod):
            for b in _bindings(func):
                call = b.value
                if not isinstance(call, relax.Call):
                    continue
                if isinstance(call.op, tvm.ir.GlobalVar):
                    callee = mod[call.op]
                    if isinstance(callee, relax.Function):
                        self.group[b.var] = [c.value.args[0].name_hint for c in _bindings(callee)
                                             if _is_op(c.value, _CALL_TIR)]
                elif _is_op(call, _CALL_TIR):
                    self.group[b.var] = [call.args[0].name_hint]
        self._patterns = {gv.name_hint: int(f.attrs["op_pattern"])
                          for gv, f in mod.functions.items()
                          if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None
                          and "op_pattern" in f.attrs}

    def after_fuse_tir(self, mod: tvm.IRModule) -> None:
        for func in _relax_functions(mod):
            for b in _bindings(func):
                if not _is_op(b.value, _CALL_TIR) or b.var not in self.group:
                    continue
                kernel = b.value.args[0].name_hint
                if kernel in self.kernels:
                    continue
                members = self.group[b.var]
                infos = [self.legal.get(m) for m in members]
                patterns = [self._patterns.get(m, -1) for m in members]
                best = max(range(len(members)), key=lambda i: patterns[i]) if members else None
                summary: dict[str, Any] = {
                    "ops": [(i["op"] if i else m) for m, i in zip(members, infos, strict=True)]}
                if best is not None and patterns[best] >= 0:
                    summary["pattern"] = patterns[best]
                if best is not None and infos[best] is not None:
                    summary["anchor"] = infos[best]
                self.kernels[kernel] = summary


def kernel_flops(func: tvm.tirx.PrimFunc) -> float:
    """Estimate the floating-point operations of one call of a TIR kernel.

    Uses TVM's own counter (``tvm.s_tir.analysis.estimate_tir_flops``, the one MetaSchedule
    reports GFLOPS with): arithmetic ops in each statement times the extents of the loops around
    it, so a conv2d counts 2 (multiply + add) per MAC plus its fused epilogue. On a GPU-scheduled
    kernel it counts the padded iteration space (dlight pads matmuls to tile multiples), which is
    why :func:`lower_to_kernels` records FLOPs before scheduling. If the counter fails, falls
    back to the number of output elements (one op per element written).
    """
    try:
        from tvm.s_tir.analysis import estimate_tir_flops
        flops = float(estimate_tir_flops(tvm.IRModule({"main": func})))
        if math.isfinite(flops) and flops >= 0:
            return flops
    except Exception:  # the counter rejects some hand-written TIR; use the fallback
        pass
    total = 0.0
    params = list(func.params)
    if params:
        try:
            total = float(math.prod(int(s) for s in params[-1].shape))
        except Exception:
            total = 0.0
    return total


def _run_pass(p: tvm.transform.Pass, mod: tvm.IRModule) -> tvm.IRModule:
    # Sequential honours the PassContext (disabled passes, opt_level) like TVM's pipelines do.
    return tvm.transform.Sequential([p])(mod)


def _scheduled_kernels(mod: tvm.IRModule) -> set[str]:
    from .cpu_schedule import is_scheduled

    return {gv.name_hint for gv, f in mod.functions.items()
            if isinstance(f, tvm.tirx.PrimFunc) and is_scheduled(f)}


#: Data layouts :func:`lower_to_kernels` can give convolutions on llvm targets.
CPU_LAYOUTS = ("NHWC", "NCHW")


#: Relax ops that ConvertLayout is trusted to carry a converted layout through: elementwise
#: and broadcasting ops, pools, concat/split and reductions, the ops around convolutions in CNNs
#: (tests/test_onnx_robustness.py checks each against NCHW). Every other op that has a layout
#: rule is hidden from the pass (see :func:`convert_conv_layout`): TVM 0.27's rules for some
#: of them fail (``stack`` of converted tensors: "Invalid SLayout"), and a layout choice must
#: never make a valid model fail.
LAYOUT_SAFE_OPS = frozenset({
    "relax.nn.conv2d",
    # elementwise
    "relax.abs", "relax.astype", "relax.ceil", "relax.cos", "relax.erf", "relax.exp",
    "relax.floor", "relax.log", "relax.negative", "relax.round", "relax.rsqrt",
    "relax.sigmoid", "relax.sign", "relax.sin", "relax.sqrt", "relax.square", "relax.tanh",
    "relax.nn.gelu", "relax.nn.gelu_tanh", "relax.nn.relu", "relax.nn.silu",
    "relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.maximum",
    "relax.minimum", "relax.power",
    # pools, channel concat/split, reductions
    "relax.nn.max_pool2d", "relax.nn.avg_pool2d", "relax.nn.adaptive_avg_pool2d",
    "relax.concat", "relax.split", "relax.mean", "relax.sum", "relax.max", "relax.min",
})

_KEEP_PREFIX = "ios_tvm_keep_layout"


def _needs_hiding(op: Any) -> bool:
    """Whether ConvertLayout would apply an untrusted layout rule to a call of ``op``."""
    return (isinstance(op, tvm.ir.Op) and op.name not in LAYOUT_SAFE_OPS
            and op.get_attr("FRelaxInferLayout") is not None)


def _layout_work(mod: tvm.IRModule) -> bool:
    """Whether any binding needs :func:`_hide_from_layout_pass` (none in a plain CNN)."""
    for func in _relax_functions(mod):
        for b in _bindings(func):
            if isinstance(b, relax.MatchCast) and not isinstance(b.value, relax.Var):
                return True
            if isinstance(b.value, relax.Call) and _needs_hiding(b.value.op):
                return True
    return False


def _sub_vars(e: Any, fn: Any) -> Any:
    """``e`` with each Var replaced by ``fn(var)``, through (nested) tuples."""
    if isinstance(e, relax.Var):
        return fn(e)
    if isinstance(e, relax.Tuple):
        return relax.Tuple([_sub_vars(f, fn) for f in e.fields])
    return e


@relax.expr_functor.mutator
class _HideFromLayout(relax.PyExprMutator):
    """Moves each call of an untrusted op into a private function of its own.

    ConvertLayout gives calls of functions (not ops) the default policy: their arguments are
    converted back to the original layout, and their result is in it. A ``match_cast`` of a
    call gets the call bound to a var first (TVM 0.27's pass fails on a ``match_cast`` whose
    value is a call whose layout it does not know, e.g. ``NonZero``, ``Range``).
    """

    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.hidden: dict[str, tuple[list[Any], Any]] = {}  # function -> (params, call)

    def visit_call_(self, call: Any) -> Any:
        call = super().visit_call_(call)
        if not _needs_hiding(call.op):
            return call
        outer: list[Any] = []
        params: list[Any] = []

        def param(v: Any) -> Any:
            outer.append(v)
            params.append(relax.Var(v.name, v.ty))
            return params[-1]

        inner = relax.Call(call.op, [_sub_vars(a, param) for a in call.args], call.attrs,
                           call.ty_args)
        name = f"{_KEEP_PREFIX}{len(self.hidden)}"
        bb = relax.BlockBuilder()
        with bb.function(name, params, private=True):
            bb.emit_func_output(bb.emit(inner))
        gv = self.builder_.add_func(bb.get()[name], name)
        self.hidden[gv.name_hint] = (params, inner)
        return relax.Call(gv, outer)

    def visit_match_cast_(self, binding: Any) -> None:
        value = self.visit_expr(binding.value)
        if not isinstance(value, relax.Var):
            value = self.builder_.emit(value)
        self.builder_.emit_normalized(relax.MatchCast(binding.var, value, binding.ty))


@relax.expr_functor.mutator
class _RestoreHidden(relax.PyExprMutator):
    """Puts the calls :class:`_HideFromLayout` moved out back in place of their functions."""

    def __init__(self, mod: tvm.IRModule, hidden: Mapping[str, tuple[list[Any], Any]]) -> None:
        super().__init__(mod)
        self.hidden = hidden

    def visit_call_(self, call: Any) -> Any:
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.GlobalVar) and call.op.name_hint in self.hidden):
            return call
        # By position: ConvertLayout also rebuilds the private functions, with new params.
        params, inner = self.hidden[call.op.name_hint]
        args = dict(zip(params, call.args, strict=True))
        return relax.Call(inner.op, [_sub_vars(a, lambda v: args[v]) for a in inner.args],
                          inner.attrs, inner.ty_args)


def _map_relax_functions(mod: tvm.IRModule, mutator: Any) -> tvm.IRModule:
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function) and not gv.name_hint.startswith(_KEEP_PREFIX):
            mutator.builder_.update_func(gv, mutator.visit_expr(func))
    return mutator.builder_.get()


def _convert_layout_robust(mod: tvm.IRModule, desired: Mapping[str, list[str]]
                           ) -> tvm.IRModule:
    """ConvertLayout that converts only :data:`LAYOUT_SAFE_OPS` and keeps the rest as is."""
    convert = relax.transform.ConvertLayout(dict(desired))
    if not _layout_work(mod):
        return convert(mod)
    hide = _HideFromLayout(mod)
    hidden = _map_relax_functions(mod, hide)
    converted = convert(hidden)
    restored = _map_relax_functions(converted, _RestoreHidden(converted, hide.hidden))
    keep = [gv for gv in restored.get_global_vars() if gv.name_hint in hide.hidden]
    for gv in keep:
        del restored[gv]
    return restored


def convert_conv_layout(mod: tvm.IRModule, layout: str) -> tvm.IRModule:
    """Give every 2-D convolution ``layout`` (``"NHWC"``: weights ``HWIO``; ``"NCHW"``: as is).

    Relax's ConvertLayout rewrites the convs and carries the layout through the elementwise
    ops, pools and concats around them (:data:`LAYOUT_SAFE_OPS`), so transposes remain only
    where the model's inputs enter and its outputs leave, and around other ops, which keep
    the model's layout; FoldConstant then transposes constant weights once, at build time.
    If the conversion still fails, the model keeps its layout (a logged warning): a layout is
    a speed choice and must not make a valid model fail. Why NHWC on CPU: the output
    channels become the innermost axis, which every conv has in multiples of the vector
    width and which the weights (HWIO) are contiguous along, so :mod:`ios_tvm.cpu_schedule`
    vectorises over channels; in NCHW it must vectorise along the image width, and widths
    such as 17, 35 or 71 leave the vector units mostly idle (Inception V3's convs ran at
    scalar speed).
    """
    if layout == "NCHW":
        return mod
    if layout != "NHWC":
        raise IosTvmError(f"unknown CPU conv layout {layout!r}; choose from {CPU_LAYOUTS}")
    try:
        converted = _convert_layout_robust(mod, {"relax.nn.conv2d": ["NHWC", "HWIO"]})
    except Exception as e:  # TVM raises InternalError, ValueError, TypeError, ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[-1]
        logger.warning("converting the convolutions to NHWC failed in TVM (%s); keeping the "
                       "model's layout", first)
        return mod
    converted = relax.transform.FoldConstant()(converted)
    # ConvertLayout transposes a tensor once per consumer; keep one transpose per tensor.
    return relax.transform.EliminateCommonSubexpr()(converted)


#: IRModule attribute (a JSON object ``{input name: n}``) that :func:`guard_indices` sets: the
#: integer model inputs that index a gather or scatter, each with the smallest axis size it
#: indexes; profiling inputs draw such an input from ``[0, n)``
#: (:func:`ios_tvm.cost.measured.profiling_inputs`).
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
    data = _shape_of(call.args[0])
    index = _shape_of(call.args[_INDEXING_OPS[call.op.name][0]])
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
    value = {b.var: b.value for b in _bindings(func)}
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
        self.inputs = set(func.params[:_num_inputs(func)])
        self.bounds: dict[str, int] = {}

    def visit_call_(self, call: Any) -> Any:
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name in _INDEXING_OPS):
            return call
        pos = _INDEXING_OPS[call.op.name][0]
        indices = call.args[pos]
        bounds = _index_bounds(call)
        ty = getattr(indices, "ty", None)
        if bounds is None or not isinstance(ty, relax.TensorType) or _shape_of(indices) is None:
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
        shape = _shape_of(indices)
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
    fname = _entry_function(mod)
    if not any(isinstance(b.value, relax.Call) and isinstance(b.value.op, tvm.ir.Op)
               and b.value.op.name in _INDEXING_OPS for b in _bindings(mod[fname])):
        return mod
    # Constant indices become constants (TVM's importer normalises them with Relax ops).
    with tvm_errors("TVM's FoldConstant pass failed", IosTvmError):
        mod = relax.transform.FoldConstant()(mod)
    func = mod[fname]
    guard = _GuardIndices(mod, func, check=resolve_target(target).kind.name == "llvm")
    guard.builder_.update_func(mod.get_global_var(fname), guard.visit_expr(func))
    out = guard.builder_.get()
    return out.with_attr(INDEX_BOUNDS_ATTR, json.dumps(guard.bounds)) if guard.bounds else out


def lower_to_kernels(mod: tvm.IRModule, target: TargetLike = "llvm", *,
                     cpu_schedule: bool = True, database: Any = None,
                     cpu_layout: str | None = None) -> tvm.IRModule:
    """Lower a Relax module to fused kernels the way TVM's default pipeline does.

    Runs ``relax.pipeline.library_dispatch_passes(target)`` and
    ``relax.pipeline.legalize_passes(target)`` (CPU: LegalizeOps, AnnotateTIROpPattern,
    FoldConstant, FuseOps, FuseTIR, the same as ``relax.get_pipeline("zero")``; GPU: the same
    plus dlight default schedules), applies the current MetaSchedule database if one is
    active (as the "zero" pipeline does, before dlight so tuned kernels are kept), then
    ``RewriteDataflowReshape``. All under ``with target:`` (dlight requires it).

    For llvm targets, kernels still unscheduled after that (TVM gives CPU kernels no
    schedule: single-threaded scalar loops) then get ios-tvm's default CPU schedules
    (:func:`ios_tvm.cpu_schedule.apply_default_schedules`: parallel, vectorised).

    Parameters
    ----------
    mod
        A Relax module, e.g. from :func:`ios_tvm.frontend.load_model`.
    target
        ``"llvm"``, ``"cuda"`` (= ``{"kind": "cuda", "arch": "sm_90"}`` with an llvm host), a
        target dict, a tag, or a ``tvm.target.Target``.
    cpu_schedule
        Apply the default CPU schedules (llvm targets); False keeps TVM's own unscheduled
        kernels (what ``tvm.compile`` would run, and what MetaSchedule tunes).
    database
        A MetaSchedule database to apply: a directory written by :func:`ios_tvm.tune.tune`
        (validated; must be tuned for this target) or a ``ms.Database``. Default: the
        database of an enclosing ``with database:``, if any.
    cpu_layout
        On llvm targets, the data layout of 2-D convolutions (:func:`convert_conv_layout`):
        ``"NHWC"`` (vectorises over channels; what :func:`ios_tvm.build` uses by default)
        or ``"NCHW"``; None (default) keeps the module as it is. Other targets always keep
        the module's layout. IOS-Merge (:mod:`ios_tvm.merge`) merges NCHW convs only.

    Returns
    -------
    tvm.IRModule
        The entry function is a dataflow of ``call_tir`` on fused PrimFuncs; the module
        attribute :data:`KERNEL_INFO_ATTR` holds per-kernel op provenance, FLOPs and schedule
        (``"tuned"``, a default-schedule rule, ``"unscheduled"``, ...) as JSON, and
        :data:`ios_tvm.cpu_schedule.CPU_SCHEDULE_ATTR` the schedule report
        (:func:`ios_tvm.cpu_schedule.schedule_report`).

    Raises
    ------
    IosTvmError
        ``database`` is a corrupt directory or was tuned for another target.
    """
    tgt = resolve_target(target)
    from tvm.s_tir import meta_schedule as ms

    from .cpu_schedule import apply_default_schedules, schedule_report

    if database is None:
        db = ms.Database.current()
    elif isinstance(database, ms.database.Database):
        db = database
    else:
        from .tune import open_database

        db = open_database(database, tgt)
    mod = guard_indices(mod, tgt)
    if cpu_layout is not None and tgt.kind.name == "llvm":
        mod = convert_conv_layout(mod, cpu_layout)
    prov = _Provenance()
    flops: dict[str, float] = {}
    tuned: set[str] = set()
    with tgt:
        passes = [*relax.pipeline.library_dispatch_passes(tgt),
                  *relax.pipeline.legalize_passes(tgt)]
        for p in passes:
            name = p.info.name
            if name == "LegalizeOps":
                prov.before_legalize(mod)
            with tvm_errors(f"TVM's {name} pass failed", IosTvmError):
                mod = _run_pass(p, mod)
            if name == "LegalizeOps":
                prov.after_legalize(mod)
            elif name == "FuseOps":
                prov.after_fuse_ops(mod)
            elif name == "FuseTIR":
                prov.after_fuse_tir(mod)
                if db is not None:
                    was = _scheduled_kernels(mod)
                    with db:
                        mod = relax.transform.MetaScheduleApplyDatabase()(mod)
                    tuned = _scheduled_kernels(mod) - was
                # Logical FLOPs, before GPU schedules pad the loops.
                flops = {gv.name_hint: kernel_flops(f) for gv, f in mod.functions.items()
                         if isinstance(f, tvm.tirx.PrimFunc)}
        with tvm_errors("TVM's RewriteDataflowReshape pass failed", IosTvmError):
            mod = _run_pass(relax.transform.RewriteDataflowReshape(), mod)
        with tvm_errors("scheduling the kernels failed", IosTvmError):
            mod = apply_default_schedules(mod, tgt, tuned=tuned, enabled=cpu_schedule)
    how = schedule_report(mod)
    kernels: dict[str, dict[str, Any]] = {}
    for gv, f in mod.functions.items():
        if isinstance(f, tvm.tirx.PrimFunc):
            info = dict(prov.kernels.get(gv.name_hint, {}))
            if "pattern" not in info and f.attrs is not None and "op_pattern" in f.attrs:
                info["pattern"] = int(f.attrs["op_pattern"])
            if gv.name_hint in flops:
                info["flops"] = flops[gv.name_hint]
            if how is not None and gv.name_hint in how.kernels:
                info["schedule"] = how.kernels[gv.name_hint]
            kernels[gv.name_hint] = info
    record = {"target": str(tgt), "kernels": kernels,
              "cpu_layout": cpu_layout if tgt.kind.name == "llvm" else None}
    return mod.with_attr(KERNEL_INFO_ATTR, json.dumps(record))


# --------------------------------------------------------------------------------------------
# extraction
# --------------------------------------------------------------------------------------------
@dataclass
class TensorSource:
    """Where a graph tensor comes from in the Relax function.

    Attributes
    ----------
    name
        The tensor's name in the OpGraph.
    kind
        ``"input"``, ``"param"``, ``"const"``, ``"activation"`` or ``"view"``.
    expr
        The Relax expression holding it: the parameter Var (input/param), the ``GenericConst``
        (const; ``expr.value`` is the runtime tensor), or the binding Var (activation, view;
        for a multi-output call the Var of the whole tuple).
    param_index
        Position among the function parameters (input/param).
    node
        Producing node id (activation).
    output_index
        Position among the producing node's outputs (activation).
    byte_offset
        Byte offset into the base tensor (view; 0 for reshapes).
    """

    name: str
    kind: str
    expr: Any = None
    param_index: int | None = None
    node: int | None = None
    output_index: int | None = None
    byte_offset: int = 0


@dataclass
class Extraction:
    """An OpGraph together with the links back to the lowered Relax module.

    Attributes
    ----------
    graph
        The operator graph (node ``i`` is the ``i``-th kernel call in binding order).
    mod
        The lowered module the graph was extracted from.
    func_name
        The entry function's name.
    var_of_node
        The Relax binding Var of each node's call.
    kernel_of_node
        The kernel of each node: the ``GlobalVar`` of its PrimFunc (call_tir,
        call_tir_inplace), or the ``ExternFunc`` of a call_dps_packed.
    call_of_node
        The ``relax.Call`` of each node.
    sources
        For each tensor name, where its value comes from (see :class:`TensorSource`).
    inplace
        For call_tir_inplace: output tensor name -> the input tensor whose storage it reuses.
    target
        The target the module was lowered for, when known.
    """

    graph: OpGraph
    mod: tvm.IRModule
    func_name: str
    var_of_node: list[Any]
    kernel_of_node: list[Any]
    call_of_node: list[Any]
    sources: dict[str, TensorSource]
    inplace: dict[str, str] = field(default_factory=dict)
    target: Any = None

    @property
    def constants(self) -> dict[str, Any]:
        """Constant tensor name -> its ``GenericConst`` (``.value`` is the runtime tensor)."""
        return {n: s.expr for n, s in self.sources.items() if s.kind == "const"}

    @property
    def params(self) -> list[str]:
        """Tensor names of the function parameters, in call order (inputs, then params)."""
        ps = [s for s in self.sources.values() if s.param_index is not None]
        return [s.name for s in sorted(ps, key=lambda s: s.param_index)]

    def kernel_name(self, node: int) -> str:
        """Name of node ``node``'s kernel (PrimFunc or packed function)."""
        return self.graph.nodes[node].kernel


_Value = str | tuple["_Value", ...]  # a tensor name or a (nested) tuple of them


def _flatten(value: _Value) -> list[str]:
    if isinstance(value, str):
        return [value]
    return [t for v in value for t in _flatten(v)]


def _static_shape(ty: Any, what: str) -> tuple[tuple[int, ...], str]:
    """(shape, dtype) of a tensor type, or an UnsupportedGraphError naming ``what``."""
    if not isinstance(ty, relax.TensorType):
        raise UnsupportedGraphError(f"{what} is not a tensor (type {ty})")
    if ty.shape is None:
        raise UnsupportedGraphError(
            f"{what} has unknown shape (rank {ty.ndim if ty.ndim >= 0 else 'unknown'}); "
            "dynamic shapes are not supported: load the model with static input_shapes")
    dims = []
    for axis, d in enumerate(ty.shape.values):
        if not isinstance(d, tvm.tirx.IntImm):
            raise UnsupportedGraphError(
                f"{what} has symbolic dim {str(d)!r} (axis {axis}); dynamic shapes are not "
                "supported: load the model with input_shapes giving every dynamic input a "
                "size (data-dependent shapes, e.g. after NonZero, cannot be scheduled)")
        dims.append(int(d.value))
    dtype = str(ty.dtype)
    if not dtype or dtype == "void":
        raise UnsupportedGraphError(f"{what} has unknown dtype")
    return tuple(dims), dtype


class _Extractor:
    def __init__(self, mod: tvm.IRModule, fname: str, kinfo: Mapping[str, Any],
                 lowered: bool = False, input_names: Sequence[str] | None = None,
                 output_names: Sequence[str] | None = None) -> None:
        self.mod = mod
        self.fname = fname
        self.kinfo = kinfo
        self.lowered = lowered  # by lower_to_kernels (it records KERNEL_INFO_ATTR)
        self.input_names = input_names
        self.output_names = output_names
        # Internal tensors never take a model output's name (inputs keep theirs).
        self.reserved = set(output_names or ())
        self.val: dict[Any, _Value] = {}
        self.tensors: dict[str, TensorInfo] = {}
        self.sources: dict[str, TensorSource] = {}
        self.const_names: dict[Any, str] = {}
        self.nodes: list[OpNode] = []
        self.var_of_node: list[Any] = []
        self.kernel_of_node: list[Any] = []
        self.call_of_node: list[Any] = []
        self.inplace: dict[str, str] = {}
        self.flops_cache: dict[str, float] = {}

    # -- naming ----------------------------------------------------------------------------
    def fresh(self, base: str, reserved_ok: bool = False) -> str:
        base = base or "t"
        name, k = base, 0
        while name in self.tensors or name in self.sources or (
                name in self.reserved and not reserved_ok):
            k += 1
            name = f"{base}_{k}"
        return name

    def add_tensor(self, info: TensorInfo, src: TensorSource) -> str:
        self.tensors[info.name] = info
        self.sources[info.name] = src
        return info.name

    # -- values ----------------------------------------------------------------------------
    def const(self, c: Any, where: str) -> str:
        if c in self.const_names:
            return self.const_names[c]
        shape, dtype = _static_shape(c.ty, f"constant used by {where}")
        name = self.fresh(f"const{len(self.const_names)}")
        self.const_names[c] = name
        return self.add_tensor(TensorInfo(name, shape, dtype, "const"),
                               TensorSource(name, "const", c))

    def arg(self, e: Any, where: str) -> _Value:
        if isinstance(e, relax.Var):
            try:
                return self.val[e]
            except KeyError:
                raise UnsupportedGraphError(
                    f"{where} uses {e.name!r}, which is not bound before it") from None
        if isinstance(e, tvm.ir.GenericConst):
            return self.const(e, where)
        if isinstance(e, relax.Tuple):
            return tuple(self.arg(f, where) for f in e.fields)
        if isinstance(e, relax.TupleGetItem):
            return self.item(self.arg(e.tuple_value, where), int(e.index), where)
        if isinstance(e, relax.If):
            raise UnsupportedGraphError(
                f"{where} is control flow (relax If on {_short(e.cond)}); only dataflow "
                "graphs can be scheduled")
        raise UnsupportedGraphError(
            f"{where} has argument {type(e).__name__} {_short(e)}; only tensors, tuples and "
            "constants are supported as kernel arguments")

    @staticmethod
    def item(value: _Value, index: int, where: str) -> _Value:
        if isinstance(value, str):
            raise UnsupportedGraphError(f"{where} takes item {index} of a tensor, not a tuple")
        return value[index]

    def tensor_arg(self, e: Any, where: str) -> str:
        v = self.arg(e, where)
        if not isinstance(v, str):
            raise UnsupportedGraphError(f"{where} expects a tensor but gets a tuple")
        return v

    # -- bindings --------------------------------------------------------------------------
    def run(self) -> OpGraph:
        func = self.mod[self.fname]
        if not isinstance(func.body, relax.SeqExpr):
            raise UnsupportedGraphError(f"function {self.fname!r} is not a sequence of bindings")
        ninp = _num_inputs(func)
        # The model's own input names (TVM's importer sanitises "input.1" to "input_1").
        names = list(self.input_names or ())
        if len(names) != ninp or len(set(names)) != ninp:
            names = [p.name for p in func.params[:ninp]]
        graph_inputs = []
        for i, p in enumerate(func.params):
            kind = "input" if i < ninp else "param"
            shape, dtype = _static_shape(p.ty, f"{kind} {p.name!r}")
            name = self.fresh(names[i] if i < ninp else p.name, reserved_ok=True)
            self.add_tensor(TensorInfo(name, shape, dtype, kind),
                            TensorSource(name, kind, p, param_index=i))
            self.val[p] = name
            graph_inputs.append(name)
        for block in func.body.blocks:
            for b in block.bindings:
                self.binding(b)
        where = f"the return value of {self.fname!r}"
        outputs = self.name_outputs(_flatten(self.arg(func.body.body, where)))
        graph = OpGraph(self.nodes, self.tensors, graph_inputs, outputs)
        self.check_inplace(graph)
        return graph

    def name_outputs(self, outputs: list[str]) -> list[str]:
        """Give the graph outputs the model's output names (``output0``, ... if unknown).

        An activation or view returned once is renamed; an input, a constant or a tensor
        returned a second time gets a view of its own under the output's name.
        """
        names = list(self.output_names or ())
        if len(names) != len(outputs) or not all(isinstance(n, str) and n for n in names):
            names = [f"output{i}" for i in range(len(outputs))]
        rename: dict[str, str] = {}
        for t, n in zip(outputs, names, strict=True):
            info = self.tensors[t]
            renamable = info.alias_of is not None or info.kind == "activation"
            if t != n and renamable and t not in rename and n not in self.tensors \
                    and n not in rename.values():
                rename[t] = n
        self.apply_renames(rename)
        named = []
        for t, n in zip(outputs, names, strict=True):
            t = rename.get(t, t)
            if t != n and n not in self.tensors:
                info = self.tensors[t]
                self.add_tensor(dataclasses.replace(info, name=n, alias_of=t, offset=0),
                                TensorSource(n, "view", self.sources[t].expr))
                t = n
            named.append(t)
        return named

    def apply_renames(self, rename: Mapping[str, str]) -> None:
        """Rename tensors everywhere they are named (tensors, sources, nodes, in-place map)."""
        if not rename:
            return

        def r(name: str | None) -> Any:
            return rename.get(name, name) if name is not None else None

        self.tensors = {r(k): dataclasses.replace(v, name=r(k), alias_of=r(v.alias_of))
                        for k, v in self.tensors.items()}
        self.sources = {r(k): dataclasses.replace(v, name=r(k)) for k, v in self.sources.items()}
        self.nodes = [dataclasses.replace(n, inputs=tuple(map(r, n.inputs)),
                                          outputs=tuple(map(r, n.outputs))) for n in self.nodes]
        self.inplace = {r(k): r(v) for k, v in self.inplace.items()}

    def binding(self, b: Any) -> None:
        var = b.var
        where = f"binding {var.name!r}"
        if isinstance(b, relax.MatchCast):
            # A match_cast of a static tensor to its own static shape is a no-op alias.
            v = self.arg(b.value, where)
            if isinstance(v, str):
                shape, _ = _static_shape(b.ty if hasattr(b, "ty") else var.ty, where)
                if shape == self.tensors[v].shape:
                    self.val[var] = v
                    return
            raise UnsupportedGraphError(f"{where} is a match_cast that changes the shape "
                                        f"({_short(b.value)}); dynamic shapes are not supported")
        e = b.value
        if isinstance(e, relax.Var | tvm.ir.GenericConst | relax.Tuple | relax.TupleGetItem):
            self.val[var] = self.arg(e, where)  # alias, constant, tuple packing/unpacking
            return
        if isinstance(e, relax.If):
            raise UnsupportedGraphError(
                f"{where} is control flow (relax If on {_short(e.cond)}); only dataflow "
                "graphs can be scheduled")
        if isinstance(e, relax.Call):
            if isinstance(e.op, tvm.ir.Op):
                name = e.op.name
                if name in (_CALL_TIR, _CALL_TIR_INPLACE, _CALL_DPS_PACKED):
                    self.kernel_call(var, e, where)
                    return
                if name in _VIEW_OPS:
                    self.view(var, e, where)
                    return
                raise UnsupportedGraphError(self.not_a_kernel(where, e))
            if isinstance(e.op, tvm.ir.GlobalVar):
                callee = self.mod[e.op]
                what = "Relax function" if isinstance(callee, relax.Function) else "function"
                raise UnsupportedGraphError(
                    f"{where} calls {what} {e.op.name_hint!r} directly; only kernel calls are "
                    "supported (lower the module with lower_to_kernels so fused functions "
                    "become call_tir)")
            raise UnsupportedGraphError(f"{where} calls {_short(e.op)}, which is not a kernel")
        raise UnsupportedGraphError(
            f"{where} binds a {type(e).__name__} ({_short(e)}), which is not supported; "
            "expected a dataflow of kernel calls")

    def not_a_kernel(self, where: str, call: Any) -> str:
        """Why a call that is not a kernel cannot be scheduled (for the error message)."""
        name = call.op.name
        if name == "relax.call_pure_packed" and call.args:
            name = f"{name}({_short(call.args[0])})"
        if self.lowered:
            # lower_to_kernels turned every op it could into a kernel; what is left runs in
            # TVM's VM, which here means shapes computed from values at run time.
            return (f"{where} calls {name}, which TVM's lowering leaves to run time: the model "
                    "computes a shape from tensor values (a data-dependent or dynamic shape, "
                    "e.g. NonZero, or Range/Reshape/Expand of a computed size); ios-tvm "
                    "schedules static shapes only")
        if name.startswith(("relax.builtin", "relax.vm", "relax.memory")):
            return (f"{where} calls {name}, which is not supported in a schedulable dataflow "
                    "(expected call_tir / call_dps_packed / reshape)")
        return (f"{where} calls {name}, which is neither a kernel call (call_tir, "
                "call_dps_packed) nor a view; lower the module with lower_to_kernels first")

    def view(self, var: Any, call: Any, where: str) -> None:
        base = self.tensor_arg(call.args[0], where)
        shape, dtype = _static_shape(var.ty, f"tensor {var.name!r}")
        offset = 0
        if call.op.name == "relax.memory.view" and len(call.args) > 3:
            off = call.args[3]
            if isinstance(off, tvm.tirx.IntImm):
                offset = int(off.value)
            elif not isinstance(off, relax.Call):  # a null_value() call means "no offset"
                raise UnsupportedGraphError(f"{where}: memory.view with a non-constant offset")
        root = base
        while self.tensors[root].alias_of is not None:
            root = self.tensors[root].alias_of
        name = self.fresh(var.name)
        self.add_tensor(TensorInfo(name, shape, dtype, self.tensors[root].kind, alias_of=base),
                        TensorSource(name, "view", var, byte_offset=offset))
        self.val[var] = name

    def kernel_call(self, var: Any, call: Any, where: str) -> None:
        op = call.op.name
        node_id = len(self.nodes)
        kernel_obj = call.args[0]
        if op == _CALL_DPS_PACKED:
            if not isinstance(kernel_obj, relax.ExternFunc):
                raise UnsupportedGraphError(f"{where}: call_dps_packed of {_short(kernel_obj)}")
            kernel = str(kernel_obj.global_symbol)
        else:
            kernel = kernel_obj.name_hint
            if len(call.args) > 2:
                raise UnsupportedGraphError(
                    f"{where} passes symbolic shape values to kernel {kernel!r} "
                    f"({_short(call.args[2])}); dynamic shapes are not supported")
        args = call.args[1]
        inputs = _flatten(self.arg(args, where))
        out_ty = call.ty_args[0] if len(call.ty_args) else var.ty
        fields = list(out_ty.fields) if isinstance(out_ty, tvm.ir.TupleType) else [out_ty]
        outputs: list[str] = []
        for i, ty in enumerate(fields):
            base = var.name if len(fields) == 1 else f"{var.name}.{i}"
            shape, dtype = _static_shape(ty, f"tensor {base!r} (output of {where})")
            name = self.fresh(base)
            self.add_tensor(TensorInfo(name, shape, dtype, "activation"),
                            TensorSource(name, "activation", var, node=node_id, output_index=i))
            outputs.append(name)
        self.val[var] = outputs[0] if isinstance(out_ty, relax.TensorType) else tuple(outputs)
        attrs = self.node_attrs(kernel, op)
        if op == _CALL_TIR_INPLACE:
            idx = [int(i) for i in call.attrs.inplace_indices]
            attrs["inplace_indices"] = idx
            for out, i in zip(outputs, idx, strict=False):
                if i >= 0:
                    self.inplace[out] = inputs[i]
        nbytes = sum(self.tensors[t].nbytes for t in dict.fromkeys([*inputs, *outputs]))
        flops = self.flops(kernel, op, outputs)
        # The first output's unique name (without ".0") keeps node names unique too.
        label = outputs[0] if len(outputs) == 1 else outputs[0].rsplit(".", 1)[0]
        self.nodes.append(OpNode(f"{kernel}@{label}", kernel, tuple(inputs), tuple(outputs),
                                 flops, nbytes, attrs))
        self.var_of_node.append(var)
        self.kernel_of_node.append(kernel_obj)
        self.call_of_node.append(call)

    def node_attrs(self, kernel: str, op: str) -> dict[str, Any]:
        if op == _CALL_DPS_PACKED:
            return {"op": "packed", "kernel": kernel, "packed_func": kernel}
        info = self.kinfo.get(kernel, {})
        anchor = info.get("anchor") or {}
        attrs: dict[str, Any] = {"op": anchor.get("op") or _op_from_kernel_name(kernel),
                                 "kernel": kernel}
        if "ops" in info:
            attrs["ops"] = list(info["ops"])
        pattern = info.get("pattern")
        if pattern is None:
            f = self.mod[kernel]
            if f.attrs is not None and "op_pattern" in f.attrs:
                pattern = int(f.attrs["op_pattern"])
        if pattern is not None:
            attrs["pattern"] = pattern
            attrs["pattern_kind"] = OP_PATTERN_KINDS.get(pattern, str(pattern))
        for k, v in anchor.items():
            if k not in ("op",) and k not in attrs:
                attrs[k] = v
        return attrs

    def flops(self, kernel: str, op: str, outputs: Sequence[str]) -> float:
        if op == _CALL_DPS_PACKED:
            return 0.0  # opaque library call: nothing to count
        if kernel not in self.flops_cache:
            recorded = self.kinfo.get(kernel, {}).get("flops")
            self.flops_cache[kernel] = (float(recorded) if recorded is not None
                                        else kernel_flops(self.mod[kernel]))
        return self.flops_cache[kernel]

    def check_inplace(self, graph: OpGraph) -> None:
        """An in-place kernel overwrites its input: every other reader must come before it."""
        if not self.inplace:
            return
        for out, inp in self.inplace.items():
            node = graph.producer[out]
            where = f"node {graph.nodes[node].name!r} (call_tir_inplace)"
            root = inp
            while graph.tensors[root].alias_of is not None:
                root = graph.tensors[root].alias_of
            if graph.tensors[root].kind != "activation":
                raise UnsupportedGraphError(
                    f"{where} overwrites {graph.tensors[root].kind} tensor {root!r} in place")
            anc = graph.ancestor_masks[node]
            for j, other in enumerate(graph.nodes):
                if j == node or not any(_root(graph, t) == root for t in other.inputs):
                    continue
                if not anc >> j & 1:
                    raise UnsupportedGraphError(
                        f"{where} overwrites {root!r}, which node {other.name!r} also reads "
                        "without a dependency ordering them; this would race when scheduled "
                        "concurrently")


def _root(graph: OpGraph, t: str) -> str:
    while graph.tensors[t].alias_of is not None:
        t = graph.tensors[t].alias_of
    return t


def _short(e: Any, limit: int = 80) -> str:
    """A one-line rendering of a Relax expression for error messages."""
    if isinstance(e, relax.Var):
        return repr(e.name)
    try:
        text = e.script() if hasattr(e, "script") else str(e)
    except Exception:
        text = str(e)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _op_from_kernel_name(kernel: str) -> str:
    """Best-effort op name from a kernel name when no lowering record exists.

    ``fused_conv2d1_add_relu`` -> ``conv2d``; unknown names are kept whole (minus ``fused_`` and
    a trailing de-duplication number) so that merge predicates stay conservative.
    """
    name = kernel[len("fused_"):] if kernel.startswith("fused_") else kernel
    for known in ("conv2d_transpose", "conv1d", "conv2d", "conv3d", "max_pool2d", "avg_pool2d",
                  "adaptive_avg_pool2d", "matmul", "dense", "softmax", "layer_norm",
                  "group_norm", "batch_norm", "concatenate", "transpose"):
        if name.startswith(known):
            return known
    return name.rstrip("0123456789") or name


def _model_names(mod: tvm.IRModule, attr: str) -> list[str] | None:
    """The model's input or output names recorded by :func:`ios_tvm.frontend.load_model`."""
    # (attrs[...], not get_attr: get_attr fails on short strings in TVM 0.27)
    names = mod.attrs[attr] if mod.attrs is not None and attr in mod.attrs else None
    try:
        value = json.loads(str(names)) if names is not None else None
    except ValueError:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        return None
    return value


def extract_graph(mod: tvm.IRModule, func_name: str | None = None) -> Extraction:
    """Build the OpGraph of a lowered Relax function.

    One node per ``call_tir`` / ``call_tir_inplace`` / ``call_dps_packed`` binding, in binding
    order (a topological order). Tensors: function parameters are ``"input"`` (the first
    ``num_input``) or ``"param"``; ``GenericConst`` arguments are ``"const"`` (named
    ``const0``, ``const1``, ... by first use, deduplicated); call outputs are ``"activation"``
    (``var`` or ``var.i`` for a multi-output call). Alias bindings (``y = x``), tuples and
    tuple items are resolved; ``R.reshape`` / ``R.memory.view`` bindings become views
    (``alias_of``, no node). Graph outputs are the flattened return value, named as the
    model's outputs (:data:`ios_tvm.frontend.OUTPUT_NAMES_ATTR`, set for ONNX models) or
    ``output0``, ``output1``, ...; an output that is an input, a constant or another output
    becomes a view of it under its own name.

    Per node: ``flops`` from the lowering record (see :func:`lower_to_kernels`) or
    :func:`kernel_flops`; ``nbytes`` = bytes of the distinct input and output tensors;
    ``attrs`` = ``{"op", "kernel", "ops", "pattern", "pattern_kind"}`` plus the anchor op's
    Relax attributes (for conv2d: ``strides``, ``padding``, ``dilation``, ``groups``,
    ``data_shape``, ``weight_shape``, layouts, ...) when the module came from
    :func:`lower_to_kernels`.

    Parameters
    ----------
    mod
        A module lowered with :func:`lower_to_kernels` (or any module whose entry function is a
        dataflow of kernel calls with static shapes).
    func_name
        The entry function; default "main", else the only public Relax function.

    Raises
    ------
    UnsupportedGraphError
        Control flow, symbolic dims (naming the tensor and dim), un-lowered Relax ops or other
        bindings that are not kernel calls, views, aliases or tuples (naming the binding).
    """
    fname = _entry_function(mod, func_name)
    kinfo: dict[str, Any] = {}
    target = None
    record = mod.get_attr(KERNEL_INFO_ATTR) if mod.attrs is not None else None
    if record is not None:
        data = json.loads(str(record))
        kinfo = data.get("kernels", {})
        if data.get("target"):
            try:
                target = tvm.target.Target(json.loads(data["target"]))
            except Exception:
                target = data["target"]
    ex = _Extractor(mod, fname, kinfo, lowered=record is not None,
                    input_names=_model_names(mod, INPUT_NAMES_ATTR),
                    output_names=_model_names(mod, OUTPUT_NAMES_ATTR))
    graph = ex.run()
    return Extraction(graph, mod, fname, ex.var_of_node, ex.kernel_of_node, ex.call_of_node,
                      ex.sources, ex.inplace, target)


def graph_from_model(model: Any, target: TargetLike = "llvm",
                     input_shapes: ShapeDict | None = None, *, cpu_schedule: bool = True,
                     database: Any = None, cpu_layout: str | None = None,
                     **load_kwargs: Any) -> Extraction:
    """Load, lower and extract in one call: ``extract_graph(lower_to_kernels(load_model()))``.

    ``cpu_schedule``, ``database`` and ``cpu_layout`` go to :func:`lower_to_kernels`;
    ``load_kwargs`` to :func:`ios_tvm.frontend.load_model` (``dtype``, ``params``, ``seed``).
    """
    from .models import resolve_model

    model = resolve_model(model)
    mod = load_model(model, input_shapes, **load_kwargs)
    tgt = resolve_target(target)
    try:
        ex = extract_graph(lower_to_kernels(mod, tgt, cpu_schedule=cpu_schedule,
                                            database=database, cpu_layout=cpu_layout))
    except IosTvmError as e:
        # Name the model: lowering and extraction see only the Relax module.
        raise type(e)(f"{describe_model(model)}: {e}") from e
    ex.target = tgt
    return ex
