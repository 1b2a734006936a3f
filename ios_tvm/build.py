"""``ios_tvm.build``: model in, runnable concurrent plan out, never slower than sequential.

The steps, each a plain function elsewhere: load and lower the model to fused kernels
(:mod:`ios_tvm.extract`), compile the kernel library once (:mod:`ios_tvm.lower`), search a
schedule with the chosen cost model (:mod:`ios_tvm.search`; measured stage latencies are
cached on disk), then measure the whole IOS plan against the sequential plan of the same
kernels and TVM's Relax VM build. If the IOS plan does not beat the sequential plan by
``margin``, the sequential plan ships and the result says so. The result carries every
latency measured; the plan records the schedule and what it is specialised for (device,
target, input shapes).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config import SearchConfig
from .cost.base import StageCostCache
from .cost.cache import MeasurementCache
from .cost.measured import MeasuredCost, ProfileSettings, device_name
from .errors import IosTvmError
from .executor import Artifact, Executor
from .lower import build_kernel_library, lower, target_device_type
from .schedule import Schedule
from .search import SearchStats, search, sequential_schedule

logger = logging.getLogger(__name__)


@dataclass
class BuildResult:
    """What :func:`build` produced and measured.

    ``chosen`` is ``"ios"`` or ``"sequential"``; ``latencies`` holds median seconds per run of
    ``ios``, ``sequential`` and ``relax_vm`` (when measured); ``reason`` explains the choice.
    """

    artifact: Artifact
    schedule: Schedule
    chosen: str
    reason: str
    latencies: dict[str, float] = field(default_factory=dict)
    search_stats: SearchStats = field(default_factory=SearchStats)
    stages_measured: int = 0
    stages_cached: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    peak_bytes: dict[str, int] = field(default_factory=dict)
    _executor: Executor | None = None

    @property
    def executor(self) -> Executor:
        """An executor of the chosen plan (created once)."""
        if self._executor is None:
            self._executor = self.artifact.executor()
        return self._executor

    def __call__(self, *inputs: Any, **named: Any) -> list[np.ndarray]:
        """Run the chosen plan; returns the outputs as numpy arrays."""
        return self.executor(*inputs, **named)

    def export(self, directory: str) -> Any:
        """Write the chosen artifact to ``directory`` (see :meth:`Artifact.export`)."""
        return self.artifact.export(directory)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {"chosen": self.chosen, "reason": self.reason,
                "latency_ms": {k: v * 1e3 for k, v in self.latencies.items()},
                "schedule": self.schedule.summary(), "search": self.search_stats.to_json(),
                "stages_measured": self.stages_measured, "stages_cached": self.stages_cached,
                "seconds": self.seconds, "peak_activation_bytes": self.peak_bytes}


def _random_inputs(plan: Any, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for i in plan.inputs:
        t = plan.tensors[i]
        if t.dtype.startswith("float"):
            out.append(rng.standard_normal(t.shape).astype(t.dtype))
        else:
            out.append(np.zeros(t.shape, t.dtype))
    return out


def relax_vm_latency(extraction: Any, inputs: list[np.ndarray], settings: ProfileSettings,
                     params: dict[str, Any] | None = None) -> float:
    """Median seconds per run of TVM's Relax VM on the same fused kernels."""
    import tvm
    from tvm import relax

    target = extraction.target
    backend = (relax.backend.cuda.pipeline if target.kind.name == "cuda"
               else relax.backend.cpu_generic.pipeline)
    rest = tvm.transform.Sequential([*backend.dataflow_lower_passes(target),
                                     *backend.finalize_passes(target)])
    exe = tvm.compile(extraction.mod, target=target, relax_pipeline=rest)
    dev = tvm.cuda(0) if target.kind.name == "cuda" else tvm.cpu(0)
    vm = relax.VirtualMachine(exe, dev)
    args = [tvm.runtime.tensor(x, dev) for x in inputs]
    for name in extraction.params[len(inputs):]:
        if params is None or name not in params:
            raise IosTvmError(f"no value for weight parameter {name!r}")
        args.append(tvm.runtime.tensor(np.asarray(params[name]), dev))
    timer = vm.time_evaluator(extraction.func_name, dev, number=settings.number,
                              repeat=settings.repeat, min_repeat_ms=50)
    return float(np.median(timer(*args).results))


def build(model: Any, target: Any = "llvm", *,
          input_shapes: dict[str, tuple[int, ...]] | None = None,
          params: dict[str, Any] | None = None, config: SearchConfig | None = None,
          cost: Any = "measured", cache: MeasurementCache | str | bool | None = True,
          settings: ProfileSettings | None = None, margin: float = 0.03,
          compare_vm: bool = True, measure: bool | None = None,
          progress: bool = False) -> BuildResult:
    """Compile ``model`` for ``target`` with an IOS schedule run by the ios-tvm executor.

    Parameters
    ----------
    model
        An ONNX path or ``ModelProto``, a Relax ``IRModule`` (already lowered and scheduled by
        :class:`~ios_tvm.transform.InterOperatorSchedule`, or not), or an ``nn.Module``.
    target
        ``"llvm"``, ``"cuda"``, a target dict or ``tvm.target.Target``.
    input_shapes
        Sizes of dynamic inputs, ``{"x": (1, 3, 224, 224)}``.
    params
        Values of weight parameters (nn.Module / IRModule with weight params).
    config
        Search strategy and pruning.
    cost
        ``"measured"`` (default; stage latencies timed on the target), ``"analytic"``, or a
        ``stage -> seconds`` callable.
    cache
        Measurement cache: True for the default file, a path, a
        :class:`~ios_tvm.cost.cache.MeasurementCache`, or False/None for none.
    settings
        Warm-up / number / repeat for stage and whole-plan timing.
    margin
        The IOS plan ships only if it is at least this fraction faster than sequential.
    compare_vm
        Also time TVM's Relax VM on the same kernels (reported, not used for the choice).
    measure
        Time whole plans (default: when the target's device is present).
    progress
        Progress bars while measuring and searching.
    """
    from .extract import graph_from_model, resolve_target

    cfg = config or SearchConfig()
    settings = settings or ProfileSettings()
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    load_kwargs = {"params": params} if params is not None else {}
    extraction = graph_from_model(model, target, input_shapes=input_shapes, **load_kwargs)
    tgt = resolve_target(target)
    extraction.target = extraction.target or tgt
    device_type = target_device_type(extraction.target)
    lib = build_kernel_library(extraction.mod, extraction.target)
    times["lower_and_compile"] = time.perf_counter() - t0
    if measure is None:
        measure = _device_present(device_type)
    if cost == "measured" and not measure:
        raise IosTvmError(f"cost='measured' needs a {device_type} device on this machine; use "
                          "cost='analytic' (or profile remotely over RPC)")

    memo_cost: Any
    measured = None
    if cost == "measured":
        store = _open_cache(cache)
        measured = MeasuredCost(extraction, max_groups=cfg.max_groups, cache=store,
                                settings=settings, lib=lib, progress=progress)
        memo_cost = measured
    elif cost == "analytic":
        from .cost import AnalyticCost

        memo_cost = AnalyticCost(extraction.graph, "cpu" if device_type == "cpu" else "h100")
    elif callable(cost):
        memo_cost = cost
    else:
        raise IosTvmError(f"unknown cost {cost!r}; use 'measured', 'analytic' or a callable")

    t1 = time.perf_counter()
    memo_cost = StageCostCache(memo_cost)
    result = search(extraction.graph, memo_cost, cfg, progress=progress)
    if measured is not None:
        measured.close()
    times["search"] = time.perf_counter() - t1
    schedule = result.schedule
    seq = sequential_schedule(extraction.graph)
    spec = {"device": device_name(device_type) if measure else "unmeasured",
            "target": str(extraction.target),
            "input_shapes": {n: list(extraction.graph.tensors[n].shape)
                             for n in extraction.graph.inputs
                             if extraction.graph.tensors[n].kind == "input"}}
    cost_name = cost if isinstance(cost, str) else "custom"

    def plan_meta(sch: Schedule) -> dict[str, Any]:
        # What `ios-tvm show` draws: the schedule and its stage latencies (cached, not re-timed).
        return {"specialised_for": spec, "schedule_json": sch.to_json(), "cost_model": cost_name,
                "stage_seconds": [memo_cost(s) for s in sch.stages]}

    ios_art = lower(extraction, schedule, params=params, lib=lib, meta=plan_meta(schedule))
    seq_art = lower(extraction, seq, params=params, lib=lib, meta=plan_meta(seq))
    peak = {"ios": ios_art.plan.activation_nbytes, "sequential": seq_art.plan.activation_nbytes}
    latencies: dict[str, float] = {}
    if not measure:
        chosen, art = "ios", ios_art
        reason = "not measured (no device here); shipping the searched plan"
    else:
        t2 = time.perf_counter()
        inputs = _random_inputs(ios_art.plan)
        for name, art in (("ios", ios_art), ("sequential", seq_art)):
            ex = art.executor()
            ex.run(*inputs)
            bench = ex.benchmark(warmup=settings.warmup, number=settings.number,
                                 repeat=settings.repeat, min_repeat_ms=50)
            latencies[name] = bench["median"]
        if compare_vm:
            latencies["relax_vm"] = relax_vm_latency(extraction, inputs, settings, params)
        times["measure_plans"] = time.perf_counter() - t2
        ios_t, seq_t = latencies["ios"], latencies["sequential"]
        if schedule.stages == seq.stages:
            chosen, reason, art = "sequential", "the search chose the sequential schedule", seq_art
        elif ios_t <= seq_t * (1.0 - margin):
            chosen, art = "ios", ios_art
            reason = (f"IOS {ios_t * 1e3:.3f} ms vs sequential {seq_t * 1e3:.3f} ms "
                      f"({seq_t / ios_t:.2f}x)")
        else:
            chosen, art = "sequential", seq_art
            reason = (f"IOS {ios_t * 1e3:.3f} ms vs sequential {seq_t * 1e3:.3f} ms on "
                      f"{spec['device']}: not {margin:.0%} faster; keeping sequential")
            logger.warning("%s", reason)
    art.plan.meta["latencies_s"] = dict(latencies)  # type: ignore[index]
    art.plan.meta["chosen"] = chosen  # type: ignore[index]
    times["total"] = time.perf_counter() - t0
    return BuildResult(art, schedule if chosen == "ios" else seq, chosen, reason, latencies,
                       result.stats, measured.measured if measured else 0,
                       measured.cache_hits if measured else 0, times, peak)


def _open_cache(cache: MeasurementCache | str | bool | None) -> MeasurementCache | None:
    if cache is True:
        return MeasurementCache()
    if cache is None or cache is False:
        return None
    if isinstance(cache, MeasurementCache):
        return cache
    return MeasurementCache(cache)


def _device_present(device_type: str) -> bool:
    if device_type == "cpu":
        return True
    try:
        import tvm

        return bool(tvm.cuda(0).exist)
    except Exception:  # no CUDA runtime at all
        return False
