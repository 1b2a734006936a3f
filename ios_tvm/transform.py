"""``InterOperatorSchedule``: the IOS search as a Relax module pass, and a pipeline around it.

Where it goes: after FuseOps/FuseTIR (the entry function must be a dataflow of ``call_tir``
on fused kernels, as :func:`ios_tvm.extract.lower_to_kernels` or TVM's own legalize passes
leave it). It does not change the computation: it extracts the operator graph, searches a
schedule and records it as the function attribute ``"ios_tvm.schedule"`` (JSON), so it
composes in a ``tvm.transform.Sequential`` with other passes. :func:`ios_tvm.build` reads the
recorded schedule and runs it with the ios-tvm executor; :func:`schedule_of` reads it back.

TVM's Relax VM has no notion of concurrent stages, so ``tvm.compile`` with the ``"ios_tvm"``
pipeline produces an ordinary (sequential) VM executable whose module was scheduled: use it to
inspect or cache schedules inside a TVM flow, and ``ios_tvm.build`` to run them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tvm
from tvm import relax

from .config import SearchConfig
from .cost import AnalyticCost
from .errors import IosTvmError
from .schedule import Schedule
from .search import search

SCHEDULE_ATTR = "ios_tvm.schedule"
STATS_ATTR = "ios_tvm.search_stats"

#: ``cost`` may be a name, a cost callable, or a factory ``extraction -> cost callable``.
CostSpec = str | Callable[..., Any]


def _make_cost(cost: CostSpec, extraction: Any, config: SearchConfig, device: str) -> Any:
    if cost == "analytic":
        return AnalyticCost(extraction.graph, device)
    if cost == "measured":
        from .cost.measured import MeasuredCost

        return MeasuredCost(extraction, max_groups=config.max_groups)
    if callable(cost):
        try:
            made = cost(extraction)
        except Exception:  # a stage -> seconds callable fails on an Extraction in any way
            return cost
        return made if callable(made) else cost
    raise IosTvmError(f"unknown cost model {cost!r}; use 'analytic', 'measured' or a callable")


@tvm.transform.module_pass(opt_level=0, name="InterOperatorSchedule")
class InterOperatorSchedule:
    """Search an IOS schedule for a fused Relax function and record it on the function.

    Parameters
    ----------
    config
        Strategy and pruning (:class:`~ios_tvm.config.SearchConfig`).
    cost
        ``"analytic"`` (default; roofline model, no device), ``"measured"`` (times stages on
        the module's target, device 0), a ``stage -> seconds`` callable, or a factory
        ``extraction -> (stage -> seconds)``.
    func_name
        The function to schedule (default: ``main``, else the only Relax function).
    device
        Preset of the analytic model (``v100``, ``h100``, ``cpu``).
    """

    def __init__(self, config: SearchConfig | None = None, cost: CostSpec = "analytic",
                 func_name: str | None = None, device: str = "v100") -> None:
        self.config = config or SearchConfig()
        self.cost = cost
        self.func_name = func_name
        self.device = device

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        """Run the pass (see the class docstring)."""
        from .extract import extract_graph

        extraction = extract_graph(mod, self.func_name)
        if extraction.target is None:
            current = tvm.target.Target.current(allow_none=True)
            extraction.target = current
        cost = _make_cost(self.cost, extraction, self.config, self.device)
        from .merge import merge_predicate

        merging = self.config.strategy in ("merge", "both")
        result = search(extraction.graph, cost, self.config,
                        can_merge=merge_predicate if merging else None)
        gv = mod.get_global_var(extraction.func_name)
        func = mod[gv].with_attr(SCHEDULE_ATTR, result.schedule.dumps())
        func = func.with_attr(STATS_ATTR, str(result.stats.to_json()))
        out = tvm.IRModule(dict(mod.functions.items()), attrs=mod.attrs)
        out[gv] = func
        return out


def schedule_of(mod: tvm.IRModule, func_name: str | None = None) -> Schedule | None:
    """The schedule :class:`InterOperatorSchedule` recorded on ``mod``, or None."""
    names = [func_name] if func_name else ["main", "forward"]
    for name in names:
        if name in [gv.name_hint for gv in mod.get_global_vars()]:
            func = mod[name]
            attrs = func.attrs
            if attrs is not None and SCHEDULE_ATTR in attrs:
                return Schedule.loads(str(attrs[SCHEDULE_ATTR]))
    return None


def pipeline(target: Any = None, config: SearchConfig | None = None,
             cost: CostSpec = "analytic") -> tvm.transform.Pass:
    """A Relax pipeline for ``tvm.compile`` with :class:`InterOperatorSchedule` after fusion.

    ``tvm.compile(mod, target, relax_pipeline=ios_tvm.transform.pipeline(target))``; also
    registered as ``relax_pipeline="ios_tvm"``.
    """

    @tvm.transform.module_pass(opt_level=0, name="IosTvmPipeline")
    def _pipeline(mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        tgt = target if target is not None else tvm.target.Target.current(allow_none=False)
        if isinstance(tgt, str):
            from .extract import resolve_target

            tgt = resolve_target(tgt)
        backend = (relax.backend.cuda.pipeline if tgt.kind.name == "cuda"
                   else relax.backend.cpu_generic.pipeline)
        with tgt:
            passes = [*backend.library_dispatch_passes(tgt), *backend.legalize_passes(tgt)]
            if tgt.kind.name != "cuda":
                # The CPU default pipeline does not fuse; IOS schedules fused kernels.
                passes = [*backend.library_dispatch_passes(tgt), relax.transform.LegalizeOps(),
                          relax.transform.AnnotateTIROpPattern(), relax.transform.FoldConstant(),
                          relax.transform.FuseOps(), relax.transform.FuseTIR()]
                # Tuned kernels from a current MetaSchedule database first, then ios-tvm's
                # default CPU schedules for the rest (as lower_to_kernels does).
                from tvm.s_tir import meta_schedule as ms

                from .cpu_schedule import CpuDefaultSchedule

                if ms.Database.current() is not None:
                    passes.append(relax.transform.MetaScheduleApplyDatabase())
                passes.append(CpuDefaultSchedule(tgt))
            passes += [InterOperatorSchedule(config, cost),
                       *backend.dataflow_lower_passes(tgt), *backend.finalize_passes(tgt)]
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline


def _register() -> None:
    # Errors raised inside a pass cross TVM's FFI; registered classes keep their type there
    # (otherwise an IosTvmError would surface as a RuntimeError).
    import tvm_ffi

    from .cost.cache import CacheError
    from .errors import ModelLoadError, ScheduleError, UnsupportedGraphError

    for cls in (IosTvmError, UnsupportedGraphError, ScheduleError, ModelLoadError, CacheError):
        tvm_ffi.register_error(cls)
    if "ios_tvm" not in relax.pipeline.PIPELINE_MAP:
        relax.register_pipeline("ios_tvm")(
            lambda target=None, config=None, cost="analytic": pipeline(target, config, cost))


_register()
