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
from .cost.cache import MeasurementCache
from .cost.measured import (
    ProfileSettings,
    device_name,
    index_bounds_of,
    make_stage_cost,
    profiling_inputs,
)
from .errors import IosTvmError, UnsupportedGraphError
from .executor import Artifact, Executor
from .lower import build_kernel_library, lower, target_device_type
from .schedule import Schedule
from .search import SearchResult, SearchStats, search, sequential_schedule

logger = logging.getLogger(__name__)


@dataclass
class BuildResult:
    """What :func:`build` produced and measured.

    ``chosen`` is ``"ios"`` or ``"sequential"``; ``latencies`` holds median seconds per run of
    ``ios``, ``sequential`` and ``relax_vm`` (when measured); ``reason`` explains the choice.
    On CUDA both executor modes are timed: ``ios_eager``, ``ios_graph``, ``sequential_eager``
    and ``sequential_graph`` (one CUDA graph launch per run), with ``ios`` and ``sequential``
    the mode the artifact runs in, and ``relax_vm_graph`` (the Relax VM with
    ``relax.backend.use_cuda_graph``).
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
    kernel_schedules: dict[str, int] = field(default_factory=dict)
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
                "seconds": self.seconds, "peak_activation_bytes": self.peak_bytes,
                "kernel_schedules": self.kernel_schedules}


def relax_vm_latency(extraction: Any, inputs: list[np.ndarray], settings: ProfileSettings,
                     params: dict[str, Any] | None = None, *, cuda_graph: bool = False) -> float:
    """Median seconds per run of TVM's Relax VM on the same fused kernels.

    ``cuda_graph`` compiles with the PassContext option ``relax.backend.use_cuda_graph``, so
    that ``RewriteCUDAGraph`` lifts the static part of the function into one graph that the
    VM captures on its first call (on a single stream) and replays afterwards.
    """
    import tvm
    from tvm import relax

    target = extraction.target
    backend = (relax.backend.cuda.pipeline if target.kind.name == "cuda"
               else relax.backend.cpu_generic.pipeline)
    rest = tvm.transform.Sequential([*backend.dataflow_lower_passes(target),
                                     *backend.finalize_passes(target)])
    with tvm.transform.PassContext(config={"relax.backend.use_cuda_graph": bool(cuda_graph)}):
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
          progress: bool = False, rpc_tracker: str | tuple[str, int] | None = None,
          rpc_key: str | None = None, rpc_servers: int | None = None,
          cuda_graph: bool | None = None, database: Any = None,
          cpu_schedule: bool = True, cpu_layout: str | None = "NHWC",
          sample_inputs: Any = None) -> BuildResult:
    """Compile ``model`` for ``target`` with an IOS schedule run by the ios-tvm executor.

    Parameters
    ----------
    model
        An ONNX path or ``ModelProto``, a Relax ``IRModule`` (already lowered and scheduled by
        :class:`~ios_tvm.transform.InterOperatorSchedule`, or not), or an ``nn.Module``.
        A schedule recorded on the module is run as is (not searched again; still guarded
        against the sequential plan when measured).
    target
        ``"llvm"``, ``"cuda"``, a target dict or ``tvm.target.Target``.
    input_shapes
        Sizes of dynamic inputs, ``{"x": (1, 3, 224, 224)}``.
    params
        Values of weight parameters (nn.Module / IRModule with weight params).
    config
        Search strategy and pruning. ``merge`` and ``both`` also consider merging convs
        (matmuls) that share an input into one kernel (IOS-Merge, :mod:`ios_tvm.merge`);
        merged kernels are generated, checked and measured on demand.
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
        Time whole plans (default: when the target's device is present, or over RPC).
    progress
        Progress bars while measuring and searching.
    rpc_tracker, rpc_key
        Measure on remote devices through TVM's RPC tracker (``"HOST:PORT"``) instead of
        locally: stages are enumerated first, measured in one batch spread over every free
        server of ``rpc_key`` (:class:`~ios_tvm.cost.rpc.RPCProfiler`), then searched; the
        whole IOS and sequential plans are timed on one of those servers. TVM's Relax VM is
        not timed remotely (``latencies`` has no ``relax_vm`` then). Measurements are cached
        under the device name ``rpc:<key>:<device type>`` (plus the GPU's name on CUDA).
    rpc_servers
        The most servers to use (default: every free one).
    cuda_graph
        Run the artifact as one CUDA graph per run (see :class:`~ios_tvm.executor.Executor`).
        Default: on for CUDA targets, unless a plan's kernels cannot be captured (then a
        warning, and eager runs). On CUDA both modes are timed and the IOS/sequential choice
        compares the mode that ships. ``True`` on a CPU target raises.
    database
        A MetaSchedule tuning database directory (:func:`ios_tvm.tune.tune`, ``ios-tvm
        tune``) tuned for ``target``: its kernels replace the untuned ones in both the IOS
        and the sequential plan (and in the Relax VM comparison). A corrupt database or one
        tuned for another target raises :class:`~ios_tvm.errors.IosTvmError`.
    cpu_schedule
        Give llvm kernels the database lacks ios-tvm's default CPU schedules (parallel,
        vectorised; :mod:`ios_tvm.cpu_schedule`); False keeps TVM's unscheduled kernels.
        ``BuildResult.kernel_schedules`` counts what each kernel got.
    cpu_layout
        Data layout of convolutions on llvm targets: ``"NHWC"`` (default; vectorises over
        channels, several times faster than NCHW on CPUs) or ``"NCHW"`` (needed for IOS-Merge,
        which merges NCHW convs only); see :func:`ios_tvm.extract.convert_conv_layout`.
    sample_inputs
        Model inputs that stage profiling and plan timing run on (a mapping by input name,
        or a sequence in input order). Default: made to be valid for the model
        (:func:`~ios_tvm.cost.measured.profiling_inputs`: random floats; ids that index an
        embedding drawn within its rows; other integers zero). Give real inputs when a
        model's speed or validity depends on the values.
    """
    from .extract import graph_from_model, resolve_target
    from .frontend import describe_model, tvm_errors
    from .models import resolve_model

    cfg = config or SearchConfig()
    settings = settings or ProfileSettings()
    if (rpc_tracker is None) != (rpc_key is None):
        raise IosTvmError("remote profiling needs both rpc_tracker (HOST:PORT) and rpc_key")
    remote = rpc_tracker is not None
    if not (cost in ("measured", "analytic") or callable(cost)):
        raise IosTvmError(f"unknown cost {cost!r}; use 'measured', 'analytic' or a callable")
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    load_kwargs = {"params": params} if params is not None else {}
    model = resolve_model(model)
    extraction = graph_from_model(model, target, input_shapes=input_shapes,
                                  cpu_schedule=cpu_schedule, database=database,
                                  cpu_layout=cpu_layout, **load_kwargs)
    tgt = resolve_target(target)
    extraction.target = extraction.target or tgt
    inputs = profiling_inputs(extraction, sample_inputs)
    warn_merge_layout(cfg.strategy, extraction.target, cpu_layout)
    device_type = target_device_type(extraction.target)
    if cuda_graph and device_type != "cuda":
        raise IosTvmError(f"cuda_graph=True needs a CUDA target, not {extraction.target}")
    if measure is None:
        measure = remote or _device_present(device_type)
    if cost == "measured" and not measure:
        raise IosTvmError(f"cost='measured' needs a {device_type} device on this machine; use "
                          "cost='analytic' (or profile remotely over RPC: rpc_tracker, "
                          "rpc_key)")
    if not extraction.graph.nodes:
        raise UnsupportedGraphError(f"{describe_model(model)} computes nothing: its outputs are "
                                    "its inputs or constants, so there is no kernel to run")
    with tvm_errors(f"compiling the kernels of {describe_model(model)} failed", IosTvmError):
        lib = build_kernel_library(extraction.mod, extraction.target)
    times["lower_and_compile"] = time.perf_counter() - t0
    profiler = None
    if remote:
        from .cost.measured import profiling_artifact
        from .cost.rpc import RPCProfiler

        assert rpc_key is not None and rpc_tracker is not None
        profiler = RPCProfiler(profiling_artifact(extraction, max_groups=cfg.max_groups,
                                                  lib=lib),
                               rpc_tracker, rpc_key, num_servers=rpc_servers,
                               settings=settings)
    try:
        result = _search_and_choose(extraction, lib, device_type, cfg, cost, cache, settings,
                                    margin, compare_vm, measure, progress, params, profiler,
                                    times, t0, cuda_graph=cuda_graph, inputs=inputs)
        from .cpu_schedule import schedule_report

        report = schedule_report(extraction.mod)
        if report is not None:
            result.kernel_schedules = report.counts
        return result
    finally:
        if profiler is not None:
            profiler.close()


def _search_and_choose(extraction: Any, lib: Any, device_type: str, cfg: SearchConfig,
                       cost: Any, cache: MeasurementCache | str | bool | None,
                       settings: ProfileSettings, margin: float, compare_vm: bool,
                       measure: bool, progress: bool, params: dict[str, Any] | None,
                       profiler: Any, times: dict[str, float], t0: float, *,
                       cuda_graph: bool | None = None,
                       inputs: list[np.ndarray] | None = None) -> BuildResult:
    """The search and the never-slower choice of :func:`build` (``profiler``: RPC or None)."""
    from .schedule import validate_schedule
    from .transform import schedule_of

    recorded = schedule_of(extraction.mod, extraction.func_name)
    if recorded is not None:
        try:
            validate_schedule(extraction.graph, recorded)
        except IosTvmError as e:
            logger.warning("ignoring the schedule recorded on the module: %s", e)
            recorded = None
    # IOS-Merge: merge stages are candidates of the search and built by the lowering.
    merging = cfg.strategy in ("merge", "both") or (
        recorded is not None and any(s.strategy == "merge" for s in recorded.stages))
    merges = None
    if merging:
        from .merge import MergeCompiler

        if profiler is not None and cost == "measured" and recorded is None:
            raise IosTvmError(f"strategy {cfg.strategy!r} measures merged kernels on this "
                              "machine's device; remote (RPC) profiling supports the "
                              "sequential, greedy and concurrent strategies")
        merges = MergeCompiler(extraction, lib=lib, params=params)
    # Scheduled by InterOperatorSchedule already: run that schedule (still guarded), costed
    # analytically for the report.
    memo_cost, measured = make_stage_cost(
        extraction, "analytic" if recorded is not None else cost, cache=cache,
        settings=settings, max_groups=cfg.max_groups, lib=lib, merges=merges,
        profiler=profiler, progress=progress, inputs=inputs)
    if measured is not None and profiler is not None:
        from .cost.measured import candidate_stages

        t1 = time.perf_counter()
        measured.prefetch(candidate_stages(extraction.graph, cfg))
        times["prefetch"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    if recorded is not None:
        result = SearchResult(recorded)
    else:
        from .merge import merge_predicate

        result = search(extraction.graph, memo_cost, cfg, progress=progress,
                        can_merge=merge_predicate if merging else None)
    if measured is not None:
        measured.close()
    times["search"] = time.perf_counter() - t1
    schedule = result.schedule
    seq = sequential_schedule(extraction.graph)
    if profiler is not None:
        where = profiler.device_name()
    else:
        where = device_name(device_type) if measure else "unmeasured"
    spec = {"device": where,
            "target": str(extraction.target),
            "input_shapes": {n: list(extraction.graph.tensors[n].shape)
                             for n in extraction.graph.inputs
                             if extraction.graph.tensors[n].kind == "input"}}
    bounds = index_bounds_of(extraction.mod)
    if bounds:
        # Integer inputs that index a gather/scatter must lie in [-n, n): the CPU kernels
        # check this themselves; on CUDA a runtime can check it on the host before a run.
        spec["index_bounds"] = bounds
    cost_name = cost if isinstance(cost, str) else "custom"

    def plan_meta(sch: Schedule) -> dict[str, Any]:
        # What `ios-tvm show` draws: the schedule and its stage latencies (cached, not re-timed).
        return {"specialised_for": spec, "schedule_json": sch.to_json(), "cost_model": cost_name,
                "stage_seconds": [memo_cost(s) for s in sch.stages]}

    ios_art = lower(extraction, schedule, params=params, lib=lib, meta=plan_meta(schedule),
                    merges=merges)
    seq_art = lower(extraction, seq, params=params, lib=lib, meta=plan_meta(seq))
    peak = {"ios": ios_art.plan.activation_nbytes, "sequential": seq_art.plan.activation_nbytes}
    latencies: dict[str, float] = {}
    # CUDA graph mode of the shipped plan (a plan that cannot be captured turns it off).
    use_graph = device_type == "cuda" and cuda_graph is not False
    if not measure:
        chosen, art = "ios", ios_art
        reason = "not measured (no device here); shipping the searched plan"
    else:
        t2 = time.perf_counter()
        if inputs is None:
            inputs = profiling_inputs(extraction)
        for name, art in (("ios", ios_art), ("sequential", seq_art)):
            if profiler is not None:
                latencies[name] = profiler.benchmark_plan(art.plan, inputs, min_repeat_ms=50)
                continue
            if device_type != "cuda":
                latencies[name] = _plan_latency(art, inputs, settings, False)
                continue
            latencies[f"{name}_eager"] = _plan_latency(art, inputs, settings, False)
            if use_graph:
                try:
                    latencies[f"{name}_graph"] = _plan_latency(art, inputs, settings, True)
                except RuntimeError as e:
                    if cuda_graph:
                        raise IosTvmError(f"the {name} plan cannot run as a CUDA graph: {e}"
                                          ) from e
                    logger.warning("the %s plan cannot run as a CUDA graph, running eagerly: "
                                   "%s", name, e)
                    use_graph = False
        for name in ("ios", "sequential"):
            if f"{name}_eager" in latencies:
                latencies[name] = latencies[f"{name}_graph" if use_graph else f"{name}_eager"]
        if compare_vm and profiler is None:
            latencies["relax_vm"] = relax_vm_latency(extraction, inputs, settings, params)
            if device_type == "cuda":
                try:
                    latencies["relax_vm_graph"] = relax_vm_latency(
                        extraction, inputs, settings, params, cuda_graph=True)
                except Exception as e:  # reported only; TVM raises several error types
                    logger.warning("Relax VM with use_cuda_graph failed: %s", e)
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
                      f"{where}: not {margin:.0%} faster; keeping sequential")
            logger.warning("%s", reason)
    art.plan.meta["latencies_s"] = dict(latencies)  # type: ignore[index]
    art.plan.meta["chosen"] = chosen  # type: ignore[index]
    if device_type == "cuda":
        art.plan.meta["cuda_graph"] = use_graph  # type: ignore[index]
    times["total"] = time.perf_counter() - t0
    return BuildResult(art, schedule if chosen == "ios" else seq, chosen, reason, latencies,
                       result.stats, measured.measured if measured else 0,
                       measured.cache_hits if measured else 0, times, peak)


def warn_merge_layout(strategy: str, target: Any, cpu_layout: str | None) -> None:
    """Warn when IOS-Merge is asked for on a CPU target whose convs were made NHWC."""
    if strategy in ("merge", "both") and cpu_layout == "NHWC" and \
            getattr(getattr(target, "kind", None), "name", None) == "llvm":
        logger.warning("IOS-Merge merges NCHW convs only, and the convs were lowered NHWC "
                       "(cpu_layout='NHWC'), so no stage will be merged; pass "
                       "cpu_layout='NCHW' (--cpu-layout NCHW) to merge on CPU")


def _plan_latency(art: Artifact, inputs: list[np.ndarray], settings: ProfileSettings,
                  cuda_graph: bool) -> float:
    """Median seconds per run of a plan's executor (the first run also captures the graph)."""
    ex = art.executor(cuda_graph=cuda_graph)
    ex.run(*inputs)
    bench = ex.benchmark(warmup=settings.warmup, number=settings.number,
                         repeat=settings.repeat, min_repeat_ms=50)
    return float(bench["median"])


def _device_present(device_type: str) -> bool:
    if device_type == "cpu":
        return True
    try:
        import tvm

        return bool(tvm.cuda(0).exist)
    except Exception:  # no CUDA runtime at all
        return False
