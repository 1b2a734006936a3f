"""``InterOperatorSchedule``: the IOS search as a Relax module pass, and a pipeline around it.

Where it goes: after FuseOps/FuseTIR (the entry function must be a dataflow of ``call_tir``
on fused kernels, as :func:`ios_tvm.compiler.kernels.lower_to_kernels` or TVM's own legalize passes
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

from ios_tvm.compiler.extract import Extraction, extract_graph
from ios_tvm.compiler.kernel_schedules import CpuDefaultSchedule
from ios_tvm.compiler.profiling import device_cores, measured_cost
from ios_tvm.compiler.target import resolve_target
from ios_tvm.cost.analytic import AnalyticCost
from ios_tvm.cost.cache import open_cache
from ios_tvm.cost.learned import LearnedCost, LearnedSettings, split_learned_cost
from ios_tvm.errors import ConfigError, register_errors
from ios_tvm.ir.schedule import Schedule, Stage
from ios_tvm.scheduler.config import SearchConfig
from ios_tvm.scheduler.merge import merge_predicate
from ios_tvm.scheduler.search import search

SCHEDULE_ATTR = "ios_tvm.schedule"
STATS_ATTR = "ios_tvm.search_stats"
#: ``cost`` is a cost model's name or a ``stage -> seconds`` callable.
CostSpec = str | LearnedSettings | Callable[[Stage], float]
#: Makes a stage cost for a model: ``extraction -> (stage -> seconds)``.
CostFactory = Callable[[Extraction], Callable[[Stage], float]]


def _make_cost(cost: CostSpec, factory: CostFactory | None, extraction: Extraction,
               config: SearchConfig, device: str) -> Callable[[Stage], float]:
    if factory is not None:
        return factory(extraction)
    cost, learned = split_learned_cost(cost)
    if cost == "analytic":
        return AnalyticCost(extraction.graph, device)
    if cost == "measured":
        return measured_cost(extraction, max_groups=config.max_groups)
    if cost == "learned":
        # Learning needs what was measured before: the user's measurement cache.
        measured = measured_cost(extraction, max_groups=config.max_groups,
                                 cache=open_cache(True))
        return LearnedCost(extraction.graph, measured, config=config,
                           cores=device_cores(extraction), settings=learned)
    if callable(cost):
        return cost
    raise ConfigError(f"unknown cost model {cost!r}; use 'analytic', 'measured', 'learned' or "
                      "a callable")


@tvm.transform.module_pass(opt_level=0, name="InterOperatorSchedule")
class InterOperatorSchedule:
    """Search an IOS schedule for a fused Relax function and record it on the function.

    Parameters
    ----------
    config
        Strategy and pruning (:class:`~ios_tvm.scheduler.config.SearchConfig`).
    cost
        ``"analytic"`` (default; roofline model, no device), ``"measured"`` (times stages on
        the module's target, device 0), ``"learned"`` (XGBoost trained on the user's
        measurement cache; times only the stages it is unsure of,
        :mod:`ios_tvm.cost.learned`; a :class:`~ios_tvm.cost.learned.LearnedSettings` for
        other settings, such as a measurement budget) or a ``stage -> seconds`` callable.
    func_name
        The function to schedule (default: ``main``, else the only Relax function).
    device
        Preset of the analytic model (``v100``, ``h100``, ``cpu``).
    cost_factory
        Instead of ``cost``: makes the stage cost from the module's
        :class:`~ios_tvm.compiler.extract.Extraction` (its graph, kernels and target).
    """

    def __init__(self, config: SearchConfig | None = None, cost: CostSpec = "analytic",
                 func_name: str | None = None, device: str = "v100", *,
                 cost_factory: CostFactory | None = None) -> None:
        if cost_factory is not None and cost != "analytic":
            raise ConfigError("give either cost or cost_factory, not both")
        self.config = config or SearchConfig()
        self.cost = cost
        self.cost_factory = cost_factory
        self.func_name = func_name
        self.device = device

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        """Run the pass (see the class docstring)."""
        extraction = extract_graph(mod, self.func_name)
        cost = _make_cost(self.cost, self.cost_factory, extraction, self.config, self.device)
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
             cost: CostSpec = "analytic", *,
             cost_factory: CostFactory | None = None) -> tvm.transform.Pass:
    """A Relax pipeline for ``tvm.compile`` with :class:`InterOperatorSchedule` after fusion.

    ``config``, ``cost`` and ``cost_factory`` go to :class:`InterOperatorSchedule`.

    ``tvm.compile(mod, target, relax_pipeline=ios_tvm.compiler.transform.pipeline(target))``; also
    registered as ``relax_pipeline="ios_tvm"``.
    """

    @tvm.transform.module_pass(opt_level=0, name="IosTvmPipeline")
    def _pipeline(mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        tgt = target if target is not None else tvm.target.Target.current(allow_none=False)
        if isinstance(tgt, str):
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


                if ms.Database.current() is not None:
                    passes.append(relax.transform.MetaScheduleApplyDatabase())
                passes.append(CpuDefaultSchedule(tgt))
            passes += [InterOperatorSchedule(config, cost, cost_factory=cost_factory),
                       *backend.dataflow_lower_passes(tgt), *backend.finalize_passes(tgt)]
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline


def _register() -> None:
    # Errors raised inside a pass cross TVM's FFI; registered classes keep their type there.
    register_errors()
    if "ios_tvm" not in relax.pipeline.PIPELINE_MAP:
        relax.register_pipeline("ios_tvm")(
            lambda target=None, config=None, cost="analytic": pipeline(target, config, cost))


_register()
