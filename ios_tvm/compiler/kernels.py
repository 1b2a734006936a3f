"""Lowering a Relax module to TVM's fused kernels, recording what each kernel is made of.

:func:`lower_to_kernels` runs exactly the passes of TVM's default per-target pipeline up to
the point where the entry function is a dataflow of ``call_tir`` (the CPU list equals
``relax.get_pipeline("zero")``), then ``RewriteDataflowReshape``, the first pass of TVM's
``dataflow_lower_passes``, which turns pure reshape kernels into ``R.reshape`` (a memory view
at run time, no kernel). While the passes run it records, per fused kernel, which Relax
operators were fused into it (with their attributes, e.g. conv2d strides) and the kernel's
logical FLOPs (counted *before* GPU schedules pad loops); that record is stored as a JSON
string in the module attribute :data:`KERNEL_INFO_ATTR` for
:func:`~ios_tvm.compiler.extract.extract_graph`.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import tvm
from tvm import relax

from ios_tvm.compiler.frontend import tvm_errors
from ios_tvm.compiler.index_guard import guard_indices
from ios_tvm.compiler.kernel_schedules import (
    CPU_SCHEDULE_ATTR,
    apply_default_schedules,
    fold_prepacked_weights,
    is_scheduled,
    schedule_report,
)
from ios_tvm.compiler.layout import convert_conv_layout
from ios_tvm.compiler.relax_util import (
    CALL_DPS_PACKED,
    CALL_TIR,
    CALL_TIR_INPLACE,
    bindings,
    is_op,
    op_attrs,
    relax_functions,
    shape_of,
)
from ios_tvm.compiler.target import TargetLike, resolve_target
from ios_tvm.compiler.tuning_db import open_database
from ios_tvm.errors import IosTvmError

logger = logging.getLogger(__name__)

#: IRModule attribute (a JSON string) where :func:`lower_to_kernels` records per-kernel info.
KERNEL_INFO_ATTR = "ios_tvm.kernel_info"


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
        for func in relax_functions(mod):
            for b in bindings(func):
                call = b.value
                if not (isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.Op)):
                    continue
                name = call.op.name
                if name in (CALL_TIR, CALL_TIR_INPLACE, CALL_DPS_PACKED):
                    continue
                info: dict[str, Any] = {"op": name.rsplit(".", 1)[-1], "relax_op": name}
                info["arg_shapes"] = [shape_of(a) for a in call.args]
                info["out_shape"] = shape_of(b.var)
                info.update(op_attrs(call.attrs))
                if info["op"].startswith("conv") and len(call.args) >= 2:
                    info["data_shape"] = info["arg_shapes"][0]
                    info["weight_shape"] = info["arg_shapes"][1]
                self.pre[b.var] = info

    def after_legalize(self, mod: tvm.IRModule) -> None:
        for func in relax_functions(mod):
            for b in bindings(func):
                if is_op(b.value, CALL_TIR) and b.var in self.pre:
                    self.legal.setdefault(b.value.args[0].name_hint, self.pre[b.var])

    def after_fuse_ops(self, mod: tvm.IRModule) -> None:
        for func in relax_functions(mod):
            for b in bindings(func):
                call = b.value
                if not isinstance(call, relax.Call):
                    continue
                if isinstance(call.op, tvm.ir.GlobalVar):
                    callee = mod[call.op]
                    if isinstance(callee, relax.Function):
                        self.group[b.var] = [c.value.args[0].name_hint for c in bindings(callee)
                                             if is_op(c.value, CALL_TIR)]
                elif is_op(call, CALL_TIR):
                    self.group[b.var] = [call.args[0].name_hint]
        self._patterns = {gv.name_hint: int(f.attrs["op_pattern"])
                          for gv, f in mod.functions.items()
                          if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None
                          and "op_pattern" in f.attrs}

    def after_fuse_tir(self, mod: tvm.IRModule) -> None:
        for func in relax_functions(mod):
            for b in bindings(func):
                if not is_op(b.value, CALL_TIR) or b.var not in self.group:
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
    return {gv.name_hint for gv, f in mod.functions.items()
            if isinstance(f, tvm.tirx.PrimFunc) and is_scheduled(f)}


def count_transposes(mod: tvm.IRModule) -> int:
    """``permute_dims`` calls in the module's Relax functions (layout transforms)."""
    return sum(1 for func in relax_functions(mod) for b in bindings(func)
               if is_op(b.value, "relax.permute_dims"))


def mark_constant_params(mod: tvm.IRModule) -> tvm.IRModule:
    """Mark each kernel's params that every call passes a constant (the weights).

    The indices go to the PrimFunc attribute ``layout_free_buffers`` (what TVM's
    ``AttachAttrLayoutFreeBuffers`` sets; that pass also renames every kernel, which would
    break the provenance record kept by name): the default schedules may choose those
    buffers' layout, because the packing then runs once at build time.
    """
    from ios_tvm.compiler.kernel_schedules import LAYOUT_FREE_ATTR

    const: dict[Any, set[int]] = {}
    for func in relax_functions(mod):
        for b in bindings(func):
            if not is_op(b.value, CALL_TIR):
                continue
            gv, args = b.value.args[0], b.value.args[1]
            fields = args.fields if isinstance(args, relax.Tuple) else [args]
            idx = {i for i, a in enumerate(fields) if isinstance(a, tvm.ir.GenericConst)}
            const[gv] = const[gv] & idx if gv in const else idx
    updates = {}
    for gv, idx in const.items():
        func = mod[gv]
        if idx and isinstance(func, tvm.tirx.PrimFunc):
            updates[gv] = func.with_attr(LAYOUT_FREE_ATTR, sorted(idx))
    if not updates:
        return mod
    mod = mod.clone()
    for gv, func in updates.items():
        mod[gv] = func
    return mod


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
    (:func:`ios_tvm.compiler.kernel_schedules.apply_default_schedules`: parallel, vectorised).

    Parameters
    ----------
    mod
        A Relax module, e.g. from :func:`ios_tvm.compiler.frontend.load_model`.
    target
        ``"llvm"``, ``"cuda"`` (= ``{"kind": "cuda", "arch": "sm_90"}`` with an llvm host), a
        target dict, a tag, or a ``tvm.target.Target``.
    cpu_schedule
        Apply the default CPU schedules (llvm targets); False keeps TVM's own unscheduled
        kernels (what ``tvm.compile`` would run, and what MetaSchedule tunes).
    database
        A MetaSchedule database to apply: a directory written by :func:`ios_tvm.compiler.tune.tune`
        (validated; must be tuned for this target) or a ``ms.Database``. Default: the
        database of an enclosing ``with database:``, if any.
    cpu_layout
        On llvm targets, the data layout of 2-D convolutions (:func:`convert_conv_layout`):
        ``"NHWC"`` (vectorises over channels; what :func:`ios_tvm.build` uses by default)
        or ``"NCHW"``; None (default) keeps the module as it is. Other targets always keep
        the module's layout. IOS-Merge (:mod:`ios_tvm.scheduler.merge`) merges NCHW convs only.

    Returns
    -------
    tvm.IRModule
        The entry function is a dataflow of ``call_tir`` on fused PrimFuncs; the module
        attribute :data:`KERNEL_INFO_ATTR` holds per-kernel op provenance, FLOPs and schedule
        (``"tuned"``, a default-schedule rule, ``"unscheduled"``, ...) as JSON, and
        :data:`ios_tvm.compiler.kernel_schedules.CPU_SCHEDULE_ATTR` the schedule report
        (:func:`ios_tvm.compiler.kernel_schedules.schedule_report`).

    Raises
    ------
    IosTvmError
        ``database`` is a corrupt directory or was tuned for another target.
    """
    tgt = resolve_target(target)
    from tvm.s_tir import meta_schedule as ms


    if database is None:
        db = ms.Database.current()
    elif isinstance(database, ms.database.Database):
        db = database
    else:
        db = open_database(database, tgt)
    mod = guard_indices(mod, tgt)
    transforms = None
    if cpu_layout is not None and tgt.kind.name == "llvm":
        before = count_transposes(mod)
        mod = convert_conv_layout(mod, cpu_layout)
        # The layout transforms the conversion left (graph edges, ops it cannot convert):
        # those on constant weights were folded at build time and are not counted.
        transforms = max(count_transposes(mod) - before, 0)
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
        renamed: dict[str, str] = {}
        with tvm_errors("scheduling the kernels failed", IosTvmError):
            if cpu_schedule and tgt.kind.name == "llvm":
                mod = mark_constant_params(mod)
            mod = apply_default_schedules(mod, tgt, tuned=tuned, enabled=cpu_schedule)
        with tvm_errors("packing the weights at build time failed", IosTvmError):
            mod, renamed = fold_prepacked_weights(mod)
    how = schedule_report(mod)
    for old, new in renamed.items():  # the record follows the kernels' new names
        for table in (prov.kernels, flops, how.kernels if how is not None else {}):
            if old in table:
                table[new] = table.pop(old)
    if renamed and how is not None and any(old in how.reasons for old in renamed):
        how.reasons = {renamed.get(k, k): v for k, v in how.reasons.items()}
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
    if how is not None:
        how.layout_transforms = transforms
        how.prepacked = sorted(renamed.values())
        mod = mod.with_attr(CPU_SCHEDULE_ATTR, json.dumps(how.to_json()))
    if transforms or renamed:
        logger.info("%d layout transforms left in the graph, %d kernels with weights packed "
                    "at build time", transforms or 0, len(renamed))
    record = {"target": str(tgt), "kernels": kernels,
              "cpu_layout": cpu_layout if tgt.kind.name == "llvm" else None,
              "layout_transforms": transforms, "prepacked": sorted(renamed.values())}
    return mod.with_attr(KERNEL_INFO_ATTR, json.dumps(record))
