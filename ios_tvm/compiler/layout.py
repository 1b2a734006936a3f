"""The data layout of convolutions on CPU targets (NHWC by default), never failing a valid model.

:func:`convert_conv_layout` gives every 2-D convolution the layout asked for through Relax's
``ConvertLayout``; operators that pass cannot be trusted with (anything outside
:data:`LAYOUT_SAFE_OPS`) keep the model's layout, with transposes around them, and a failure
of the pass keeps the whole model's layout with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import tvm
from tvm import relax

from ios_tvm.compiler.relax_util import bindings, relax_functions
from ios_tvm.errors import ConfigError

logger = logging.getLogger(__name__)

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
    for func in relax_functions(mod):
        for b in bindings(func):
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
    width and which the weights (HWIO) are contiguous along, so
    :mod:`ios_tvm.compiler.kernel_schedules`
    vectorises over channels; in NCHW it must vectorise along the image width, and widths
    such as 17, 35 or 71 leave the vector units mostly idle (Inception V3's convs ran at
    scalar speed).
    """
    if layout == "NCHW":
        return mod
    if layout != "NHWC":
        raise ConfigError(f"unknown CPU conv layout {layout!r}; choose from {CPU_LAYOUTS}")
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


def warn_merge_layout(strategy: str, target: Any, cpu_layout: str | None) -> None:
    """Warn when IOS-Merge is asked for on a CPU target whose convs were made NHWC."""
    if strategy in ("merge", "both") and cpu_layout == "NHWC" and \
            getattr(getattr(target, "kind", None), "name", None) == "llvm":
        logger.warning("IOS-Merge merges NCHW convs only, and the convs were lowered NHWC "
                       "(cpu_layout='NHWC'), so no stage will be merged; pass "
                       "cpu_layout='NCHW' (--cpu-layout NCHW) to merge on CPU")
