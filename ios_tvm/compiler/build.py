"""``ios_tvm.build``: model in, runnable concurrent plan out, never slower than sequential.

:func:`build` reads as the flow, one named step each:

1. :func:`load_and_extract`: load the model, lower it to TVM's fused kernels and extract the
   kernel graph (:mod:`ios_tvm.compiler.extract`); compile the kernel library once;
2. :func:`search_schedule`: search the IOS schedule with the chosen stage cost (measured
   latencies are cached on disk; :mod:`ios_tvm.compiler.profiling`), or take the schedule
   :class:`~ios_tvm.compiler.transform.InterOperatorSchedule` recorded on the module;
3. :func:`lower_plans`: lower the IOS and the sequential schedules to artifacts;
4. :func:`time_plans`: time both plans (and TVM's Relax VM) on the device, interleaved in
   paired rounds (one plan only when the search returned the sequential schedule);
5. :func:`~ios_tvm.compiler.choose.choose_plan`: ship the IOS plan only if the median of its
   paired ratios to the sequential plan, with a stated confidence, beats it by ``margin``;
6. :func:`~ios_tvm.compiler.fidelity.fidelity`: each timed plan's predicted latency (sum of its
   stage costs) beside its measured median, and the relative error.

The result carries every latency measured; the plan records the schedule and what it is
specialised for (device, target, input shapes).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ios_tvm.compiler.choose import Choice, choose_plan, time_paired
from ios_tvm.compiler.extract import Extraction, graph_from_model
from ios_tvm.compiler.fidelity import fidelity, stages_in_plan
from ios_tvm.compiler.frontend import describe_model, tvm_errors
from ios_tvm.compiler.inputs import index_bounds_of, profiling_inputs
from ios_tvm.compiler.kernel_schedules import schedule_report
from ios_tvm.compiler.layout import warn_merge_layout
from ios_tvm.compiler.library import build_kernel_library
from ios_tvm.compiler.merge import MergeCompiler
from ios_tvm.compiler.plan_lowering import lower_schedule
from ios_tvm.compiler.profiling import make_stage_cost, profiling_artifact
from ios_tvm.compiler.relax_vm import RelaxVM
from ios_tvm.compiler.target import device_name, device_present, target_device_type
from ios_tvm.compiler.transform import schedule_of
from ios_tvm.cost.base import ProfileSettings
from ios_tvm.cost.cache import MeasurementCache
from ios_tvm.cost.learned import split_learned_cost
from ios_tvm.cost.rpc import RPCProfiler
from ios_tvm.errors import (
    ConfigError,
    ExecutionError,
    IosTvmError,
    ScheduleError,
    UnsupportedGraphError,
)
from ios_tvm.ir.schedule import Schedule, validate_schedule
from ios_tvm.models import resolve_model
from ios_tvm.runtime.artifact import Artifact
from ios_tvm.runtime.executor import Executor
from ios_tvm.scheduler.config import SearchConfig
from ios_tvm.scheduler.merge import merge_predicate
from ios_tvm.scheduler.search import (
    SearchStats,
    candidate_stages,
    search,
    sequential_schedule,
)

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class BuildResult:
    """What :func:`build` produced and measured.

    ``chosen`` is ``"ios"`` or ``"sequential"``; ``latencies`` holds median seconds per run of
    ``ios``, ``sequential`` and ``relax_vm`` (when measured); ``reason`` explains the choice.
    When the search returned the sequential schedule there is one plan, timed once, and
    ``latencies["ios"]`` is that same measurement. ``samples`` holds each plan's seconds per
    round (the plans are timed interleaved, in paired rounds), ``decision`` the guard's
    choice with its evidence (rounds, median paired ratio, interval, rule;
    :class:`~ios_tvm.compiler.choose.Choice`), and ``fidelity`` per timed plan its predicted
    latency (the sum of its stage costs), measured median and relative error.
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
    stages_reused: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    peak_bytes: dict[str, int] = field(default_factory=dict)
    kernel_schedules: dict[str, int] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)
    decision: Choice | None = None
    fidelity: dict[str, dict[str, float]] = field(default_factory=dict)
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
                "stages_reused": self.stages_reused,
                "seconds": self.seconds, "peak_activation_bytes": self.peak_bytes,
                "kernel_schedules": self.kernel_schedules,
                "decision": self.decision.to_json() if self.decision is not None else None,
                "fidelity": self.fidelity}


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
          sample_inputs: Any = None, rounds: int = 9, min_ms: float = 20.0) -> BuildResult:
    """Compile ``model`` for ``target`` with an IOS schedule run by the ios-tvm executor.

    Parameters
    ----------
    model
        An ONNX path or ``ModelProto``, a Relax ``IRModule`` (already lowered and scheduled by
        :class:`~ios_tvm.compiler.transform.InterOperatorSchedule`, or not), or an ``nn.Module``.
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
        (matmuls) that share an input into one kernel (IOS-Merge, :mod:`ios_tvm.scheduler.merge`);
        merged kernels are generated, checked and measured on demand.
    cost
        ``"measured"`` (default; stage latencies timed on the target), ``"learned"`` (an
        XGBoost model trained on the measurement cache predicts stages; only those it is
        unsure of and the picked plan's are timed: :mod:`ios_tvm.cost.learned`; a
        :class:`~ios_tvm.cost.learned.LearnedSettings` for other settings, such as a
        measurement budget),
        ``"analytic"``, or a ``stage -> seconds`` callable.
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
        Run the artifact as one CUDA graph per run (see
        :class:`~ios_tvm.runtime.executor.Executor`).
        Default: on for CUDA targets, unless a plan's kernels cannot be captured (then a
        warning, and eager runs). On CUDA both modes are timed and the IOS/sequential choice
        compares the mode that ships. ``True`` on a CPU target raises.
    database
        A MetaSchedule tuning database directory (:func:`ios_tvm.compiler.tune.tune`, ``ios-tvm
        tune``) tuned for ``target``: its kernels replace the untuned ones in both the IOS
        and the sequential plan (and in the Relax VM comparison). A corrupt database or one
        tuned for another target raises :class:`~ios_tvm.errors.IosTvmError`.
    cpu_schedule
        Give llvm kernels the database lacks ios-tvm's default CPU schedules (parallel,
        vectorised; :mod:`ios_tvm.compiler.kernel_schedules`); False keeps TVM's unscheduled
        kernels.
        ``BuildResult.kernel_schedules`` counts what each kernel got.
    cpu_layout
        Data layout of convolutions on llvm targets: ``"NHWC"`` (default; vectorises over
        channels, several times faster than NCHW on CPUs) or ``"NCHW"`` (needed for IOS-Merge,
        which merges NCHW convs only); see :func:`ios_tvm.compiler.layout.convert_conv_layout`.
    sample_inputs
        Model inputs that stage profiling and plan timing run on (a mapping by input name,
        or a sequence in input order). Default: made to be valid for the model
        (:func:`~ios_tvm.compiler.inputs.profiling_inputs`: random floats; ids that index an
        embedding drawn within its rows; other integers zero). Give real inputs when a
        model's speed or validity depends on the values.
    rounds, min_ms
        Whole-plan timing: the plans (and the Relax VM) are timed interleaved in ``rounds``
        paired rounds, each plan for at least ``min_ms`` per round
        (:func:`~ios_tvm.compiler.choose.time_paired`); the guard decides on the paired
        ratios. 9 rounds give a 96% interval that ignores one wild round.
    """
    cfg = config or SearchConfig()
    settings = settings or ProfileSettings()
    if (rpc_tracker is None) != (rpc_key is None):
        raise ConfigError("remote profiling needs both rpc_tracker (HOST:PORT) and rpc_key")
    cost, learned = split_learned_cost(cost)
    if not (cost in ("measured", "learned", "analytic") or callable(cost)):
        raise ConfigError(f"unknown cost {cost!r}; use 'measured', 'learned', 'analytic' or a "
                          "callable")
    if rounds < 1:
        raise ConfigError(f"rounds must be at least 1, not {rounds}")
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    extraction, lib = load_and_extract(model, target, input_shapes=input_shapes, params=params,
                                       database=database, cpu_schedule=cpu_schedule,
                                       cpu_layout=cpu_layout)
    seconds["lower_and_compile"] = time.perf_counter() - t0
    warn_merge_layout(cfg.strategy, extraction.target, cpu_layout)
    device_type = target_device_type(extraction.target)
    if cuda_graph and device_type != "cuda":
        raise ConfigError(f"cuda_graph=True needs a CUDA target, not {extraction.target}")
    remote = rpc_tracker is not None
    if measure is None:
        measure = remote or device_present(device_type)
    if cost in ("measured", "learned") and not measure:
        raise ConfigError(f"cost={cost!r} needs a {device_type} device on this machine; use "
                          "cost='analytic' (or profile remotely over RPC: rpc_tracker, "
                          "rpc_key)")
    inputs = profiling_inputs(extraction, sample_inputs)
    with _remote_profiler(extraction, lib, cfg, settings, rpc_tracker, rpc_key,
                          rpc_servers) as profiler:
        t1 = time.perf_counter()
        searched = search_schedule(extraction, lib, cfg, learned or cost, cache=cache,
                                   settings=settings, params=params, profiler=profiler,
                                   inputs=inputs, progress=progress, seconds=seconds)
        seconds["search"] = time.perf_counter() - t1
        where = (profiler.device_name() if profiler is not None
                 else device_name(device_type) if measure else "unmeasured")
        ios_art, seq_art = lower_plans(extraction, lib, searched, params=params, where=where,
                                       cost_name=cost if isinstance(cost, str) else "custom")
        seq = sequential_schedule(extraction.graph)
        same = searched.schedule.stages == seq.stages
        latencies: dict[str, float] = {}
        samples: dict[str, list[float]] = {}
        use_graph = device_type == "cuda" and cuda_graph is not False
        if measure:
            t2 = time.perf_counter()
            # One schedule is timed once: when the search returned sequential, one plan.
            plans = {"sequential": seq_art} if same else {"ios": ios_art, "sequential": seq_art}
            extra = (relax_vm_runners(extraction, inputs, params, device_type)
                     if compare_vm and profiler is None else {})
            latencies, use_graph, samples = time_plans(
                plans, inputs, settings, device_type=device_type, cuda_graph=cuda_graph,
                profiler=profiler, rounds=rounds, min_ms=min_ms, extra=extra)
            if same:
                for key in [k for k in latencies if k.startswith("sequential")]:
                    latencies["ios" + key[len("sequential"):]] = latencies[key]
            seconds["measure_plans"] = time.perf_counter() - t2
    choice = choose_plan(samples.get("ios", latencies.get("ios")),
                         samples.get("sequential", latencies.get("sequential")),
                         same_schedule=same, margin=margin, where=where)
    if choice.chosen == "sequential" and not same:
        logger.warning("%s", choice.reason)  # the searched plan lost on the device
    art = ios_art if choice.chosen == "ios" else seq_art
    art.plan.meta["latencies_s"] = dict(latencies)  # type: ignore[index]
    art.plan.meta["chosen"] = choice.chosen  # type: ignore[index]
    if device_type == "cuda":
        art.plan.meta["cuda_graph"] = use_graph  # type: ignore[index]
    seconds["total"] = time.perf_counter() - t0
    report = schedule_report(extraction.mod)
    timed = {"sequential": seq_art} if same else {"ios": ios_art, "sequential": seq_art}
    fid = fidelity({k: a.plan.meta["stage_seconds"] for k, a in timed.items()},  # type: ignore[index]
                   {k: latencies[k] for k in timed if k in latencies})
    art.plan.meta["fidelity"] = fid  # type: ignore[index]
    if measure and profiler is None:
        t3 = time.perf_counter()
        record_stages_in_plan(timed, latencies, inputs)
        if not same:
            other = "sequential" if choice.chosen == "ios" else "ios"
            art.plan.meta["other_plan"] = plan_outline(other, timed[other])  # type: ignore[index]
        seconds["stages_in_plan"] = time.perf_counter() - t3
    return BuildResult(
        artifact=art, schedule=searched.schedule if choice.chosen == "ios" else seq,
        chosen=choice.chosen, reason=choice.reason, latencies=latencies,
        search_stats=searched.stats, stages_measured=searched.measured,
        stages_cached=searched.cached, stages_reused=searched.reused, seconds=seconds,
        peak_bytes={"ios": ios_art.plan.activation_nbytes,
                    "sequential": seq_art.plan.activation_nbytes},
        kernel_schedules=_kernel_summary(report),
        samples={k: list(v) for k, v in samples.items()}, decision=choice, fidelity=fid)


def _kernel_summary(report: Any) -> dict[str, int]:
    """Kernels per schedule outcome, plus the layout work (issue 16) for the build summary."""
    if report is None:
        return {}
    out = dict(report.counts)
    if report.prepacked:
        out["with weights packed at build time"] = len(report.prepacked)
    if report.layout_transforms is not None:
        out["layout transforms left"] = report.layout_transforms
    return out


# -- the steps ---------------------------------------------------------------------------------
def load_and_extract(model: Any, target: Any, *, input_shapes: Any = None, params: Any = None,
                     database: Any = None, cpu_schedule: bool = True,
                     cpu_layout: str | None = "NHWC") -> tuple[Extraction, Any]:
    """Load ``model``, lower it to fused kernels, extract its graph and compile its kernels."""
    model = resolve_model(model)
    load_kwargs = {"params": params} if params is not None else {}
    extraction = graph_from_model(model, target, input_shapes=input_shapes,
                                  cpu_schedule=cpu_schedule, database=database,
                                  cpu_layout=cpu_layout, **load_kwargs)
    if not extraction.graph.nodes:
        raise UnsupportedGraphError(f"{describe_model(model)} computes nothing: its outputs are "
                                    "its inputs or constants, so there is no kernel to run")
    with tvm_errors(f"compiling the kernels of {describe_model(model)} failed", IosTvmError):
        lib = build_kernel_library(extraction.mod, extraction.target)
    return extraction, lib


@dataclass
class SearchOutcome:
    """What :func:`search_schedule` found, and how the stage cost was obtained.

    ``stage_cost`` prices any stage of the graph (memoised; the plans' meta records it);
    ``merges`` compiles the merged kernels of merge stages (None without merging);
    ``measured``, ``cached`` and ``reused`` count stages timed now, read from the cache, and
    served by a twin timed now.
    """

    schedule: Schedule
    stats: SearchStats
    stage_cost: Callable[[Any], float]
    merges: Any = None
    measured: int = 0
    cached: int = 0
    reused: int = 0


def search_schedule(extraction: Extraction, lib: Any, cfg: SearchConfig, cost: Any, *,
                    cache: Any = True, settings: ProfileSettings | None = None,
                    params: Any = None, profiler: Any = None, inputs: Any = None,
                    progress: bool = False,
                    seconds: dict[str, float] | None = None) -> SearchOutcome:
    """The IOS schedule of ``extraction`` under ``cost`` (see :func:`build`).

    A schedule recorded on the module by
    :class:`~ios_tvm.compiler.transform.InterOperatorSchedule` is taken as is (costed
    analytically for the report) unless it does not fit the graph. With a remote
    ``profiler``, every stage the search can ask for is measured first, in one batch spread
    over the remote devices.
    """
    cost, learned = split_learned_cost(cost)
    recorded = schedule_of(extraction.mod, extraction.func_name)
    if recorded is not None:
        try:
            validate_schedule(extraction.graph, recorded)
        except ScheduleError as e:
            logger.warning("ignoring the schedule recorded on the module: %s", e)
            recorded = None
    merging = cfg.strategy in ("merge", "both") or (
        recorded is not None and any(s.strategy == "merge" for s in recorded.stages))
    merges = None
    if merging:
        if profiler is not None and cost in ("measured", "learned") and recorded is None:
            raise ConfigError(f"strategy {cfg.strategy!r} measures merged kernels on this "
                              "machine's device; remote (RPC) profiling supports the "
                              "sequential, greedy and concurrent strategies")

        merges = MergeCompiler(extraction, lib=lib, params=params)
    stage_cost, measured = make_stage_cost(
        extraction, "analytic" if recorded is not None else (learned or cost), cache=cache,
        settings=settings, max_groups=cfg.max_groups, lib=lib, merges=merges,
        profiler=profiler, progress=progress, inputs=inputs, params=params, config=cfg)
    try:
        if measured is not None and profiler is not None and cost == "measured":
            t = time.perf_counter()
            measured.prefetch(candidate_stages(extraction.graph, cfg))
            if seconds is not None:
                seconds["prefetch"] = time.perf_counter() - t
        if recorded is not None:
            schedule, stats = recorded, SearchStats()
        else:
            result = search(extraction.graph, stage_cost, cfg, progress=progress,
                            can_merge=merge_predicate if merging else None)
            schedule, stats = result.schedule, result.stats
    finally:
        if measured is not None:
            measured.close()
    counts = ((measured.measured, measured.cache_hits, measured.reused) if measured is not None
              else (0, 0, 0))
    return SearchOutcome(schedule, stats, stage_cost, merges, *counts)


def lower_plans(extraction: Extraction, lib: Any, searched: SearchOutcome, *,
                params: Any = None, where: str = "", cost_name: str = "measured"
                ) -> tuple[Artifact, Artifact]:
    """The artifacts of the searched schedule and of the sequential one, on one library.

    Each plan's meta records what it is specialised for and what ``ios-tvm show`` draws: the
    schedule and its stage latencies (from the search's cost, not re-timed).
    """
    graph = extraction.graph
    spec: dict[str, Any] = {
        "device": where, "target": str(extraction.target),
        "input_shapes": {n: list(graph.tensors[n].shape) for n in graph.inputs
                         if graph.tensors[n].kind == "input"}}
    bounds = index_bounds_of(extraction.mod)
    if bounds:
        # Integer inputs that index a gather/scatter must lie in [-n, n): the CPU kernels
        # check this themselves; on CUDA a runtime can check it on the host before a run.
        spec["index_bounds"] = bounds

    def meta(sch: Schedule) -> dict[str, Any]:
        return {"specialised_for": spec, "schedule_json": sch.to_json(), "cost_model": cost_name,
                "stage_seconds": [searched.stage_cost(s) for s in sch.stages]}

    seq = sequential_schedule(graph)
    ios_art = lower_schedule(extraction, searched.schedule, params=params, lib=lib,
                             meta=meta(searched.schedule), merges=searched.merges)
    seq_art = lower_schedule(extraction, seq, params=params, lib=lib, meta=meta(seq))
    return ios_art, seq_art


def time_plans(artifacts: dict[str, Artifact], inputs: list[np.ndarray],
               settings: ProfileSettings, *, device_type: str, cuda_graph: bool | None = None,
               profiler: Any = None, rounds: int = 9, min_ms: float = 20.0,
               extra: dict[str, Callable[[], Any]] | None = None
               ) -> tuple[dict[str, float], bool, dict[str, list[float]]]:
    """Median seconds per run of each plan, whether the CUDA graph mode held, and the samples.

    Every runner (each plan, in each mode, and the ``extra`` ones, e.g. the Relax VM) is
    timed interleaved in ``rounds`` paired rounds (:func:`~ios_tvm.compiler.choose.time_paired`);
    the samples hold each runner's seconds per round. On CUDA each plan is timed eagerly
    (``<name>_eager``) and as a CUDA graph (``<name>_graph``, unless ``cuda_graph`` is
    False), and ``<name>`` is the mode that ships; a plan that cannot be captured turns graph
    mode off for all (an error when ``cuda_graph`` is True). With a remote ``profiler`` the
    plans run on one of its servers, one whole-plan benchmark per plan per round.
    ``settings`` (warm-up) applies to each runner before the first round.
    """
    use_graph = device_type == "cuda" and cuda_graph is not False
    samples: dict[str, list[float]]
    if profiler is not None:
        samples = {name: [] for name in artifacts}
        for r in range(rounds):
            names = list(artifacts)
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                samples[name].append(profiler.benchmark_plan(artifacts[name].plan, inputs,
                                                             min_repeat_ms=min_ms))
    else:
        runners: dict[str, Callable[[], Any]] = {}
        for name, art in artifacts.items():
            if device_type != "cuda":
                ex = art.executor()
                ex.run(*inputs)
                runners[name] = ex.run
                continue
            ex = art.executor(cuda_graph=False)
            ex.run(*inputs)
            runners[f"{name}_eager"] = ex.run
            if use_graph:
                gx = art.executor(cuda_graph=True)
                try:
                    gx.run(*inputs)  # the first run captures the graph
                except RuntimeError as e:
                    if cuda_graph:
                        raise ExecutionError(f"the {name} plan cannot run as a CUDA graph: "
                                             f"{e}") from e
                    logger.warning("the %s plan cannot run as a CUDA graph, running eagerly: "
                                   "%s", name, e)
                    use_graph = False
                else:
                    runners[f"{name}_graph"] = gx.run
        if not use_graph:
            runners = {k: v for k, v in runners.items() if not k.endswith("_graph")}
        runners.update(extra or {})
        samples = time_paired(runners, rounds, min_ms, warmup=settings.warmup)
    latencies = {name: statistics.median(v) for name, v in samples.items()}
    for name in artifacts:
        if f"{name}_eager" in latencies:
            mode = f"{name}_graph" if use_graph else f"{name}_eager"
            latencies[name] = latencies[mode]
            samples[name] = samples[mode]
    return latencies, use_graph, samples


def record_stages_in_plan(artifacts: dict[str, Artifact], latencies: dict[str, float],
                          inputs: list[np.ndarray], *, budget_s: float = 0.5) -> None:
    """Time each plan's stages inside whole runs; record them as ``stage_seconds_in_plan``.

    The search's stage costs come from stages timed alone; what ``ios-tvm show`` draws should be
    what the plan does when it runs (the measured scale), so the stages are re-timed inside real
    runs (:func:`~ios_tvm.compiler.fidelity.stages_in_plan`), about ``budget_s`` per plan, on
    ``inputs`` (kernels may check them, e.g. gather indices). Diagnostic only: a plan whose
    stages cannot be timed so is left without the record, with a warning.
    """
    for name, art in artifacts.items():
        run_s = latencies.get(name) or 0.0
        repeat = int(min(20, max(3, budget_s / run_s))) if run_s > 0 else 3
        try:
            ex = art.executor(cuda_graph=False)
            ex.run(*inputs)  # sets the inputs the profiled runs then read
            got = stages_in_plan(ex, warmup=1, repeat=repeat)
        except (RuntimeError, IosTvmError) as e:
            logger.warning("could not time the %s plan's stages inside whole runs: %s", name, e)
            continue
        meta = art.plan.meta
        meta["stage_seconds_in_plan"] = got["stage_seconds"]  # type: ignore[index]
        meta["run_seconds_in_plan"] = got["run_seconds"]  # type: ignore[index]


def plan_outline(name: str, art: Artifact) -> dict[str, Any]:
    """What ``ios-tvm show`` needs to draw a plan that did not ship beside the one that did.

    Its kernel calls by name, its stages as groups of call indices, their strategies, their
    predicted seconds (the search's costs) and, when timed, their seconds inside whole runs.
    """
    plan = art.plan
    meta = plan.meta
    out: dict[str, Any] = {
        "name": name,
        "calls": [c.node or c.kernel for c in plan.calls],
        "stages": [[list(g) for g in s.groups] for s in plan.stages],
        "strategies": [s.strategy for s in plan.stages],
        "stage_seconds": list(meta.get("stage_seconds") or []),
    }
    if "stage_seconds_in_plan" in meta:
        out["stage_seconds_in_plan"] = list(meta["stage_seconds_in_plan"])
    return out


def relax_vm_runners(extraction: Extraction, inputs: list[np.ndarray], params: Any,
                     device_type: str) -> dict[str, Callable[[], Any]]:
    """TVM's Relax VM on the same kernels, to time beside the plans.

    ``relax_vm``, and on CUDA ``relax_vm_graph`` (with ``relax.backend.use_cuda_graph``).
    """
    out: dict[str, Callable[[], Any]] = {"relax_vm": RelaxVM(extraction, inputs, params).run}
    if device_type == "cuda":
        try:
            vm = RelaxVM(extraction, inputs, params, cuda_graph=True)
            vm.run()
            out["relax_vm_graph"] = vm.run
        except Exception as e:  # reported only; TVM raises several error types
            logger.warning("Relax VM with use_cuda_graph failed: %s", e)
    return out


@contextmanager
def _remote_profiler(extraction: Extraction, lib: Any, cfg: SearchConfig,
                     settings: ProfileSettings, tracker: Any, key: str | None,
                     servers: int | None) -> Iterator[Any]:
    """An :class:`~ios_tvm.cost.rpc.RPCProfiler` when ``tracker`` is given (closed after)."""
    if tracker is None:
        yield None
        return

    profiler = RPCProfiler(profiling_artifact(extraction, max_groups=cfg.max_groups, lib=lib),
                           tracker, key, num_servers=servers, settings=settings)
    try:
        yield profiler
    finally:
        profiler.close()
