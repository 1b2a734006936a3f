"""Benchmarking one model: every way ios-tvm (and its peers) can run it, timed side by side.

:func:`bench` lowers the model once and then runs the same fused kernels as

* ``sequential``: the ios-tvm executor, one kernel per stage in order;
* ``greedy``: IOS's wavefront baseline (every ready kernel concurrently);
* ``ios/<strategy>``: the plan IOS's dynamic program finds, for each strategy asked for
  (``concurrent``, ``merge``, ``both``), costed by stage latencies measured on the target (or
  the analytic model);
* ``relax_vm``: TVM's own Relax VM build of the same kernels;
* ``onnxruntime``: ONNX Runtime on the same ONNX model (when the model is ONNX and
  ``onnxruntime`` is installed);
* ``torch`` and ``torch.compile``: PyTorch eager and ``torch.compile`` on the same ONNX graph
  and weights (:mod:`ios_tvm.bench.torch_onnx`; when the model is ONNX and PyTorch is
  installed). On CUDA ``torch.compile`` uses ``mode="reduce-overhead"`` (CUDA graphs).

On CUDA every executor plan and the Relax VM are timed twice: eager and replayed as a CUDA
graph (``.../graph``; the VM with ``relax.backend.use_cuda_graph``).

All runners are timed round-robin (``rounds`` rounds, each runner for at least ``min_ms``
per round; the median of the rounds is reported), so load drift on a shared machine hits
every variant alike. Every output is compared with ONNX Runtime's (or, without it, the
sequential plan's) and the largest absolute error is recorded. The report also holds the
search time, the stages measured, the schedule's shape and each plan's peak activation
memory next to the sequential plan's.

The runtime side is not involved beyond :class:`~ios_tvm.runtime.executor.Executor`; this is the
compiler side's view of a model, used by ``ios-tvm bench`` and ``scripts/bench.py``.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ios_tvm.bench.baselines import add_torch_runners, onnx_proto, ort_runner
from ios_tvm.bench.timing import machine_info, time_rounds
from ios_tvm.compiler.build import load_and_extract
from ios_tvm.compiler.choose import choose_plan
from ios_tvm.compiler.fidelity import fidelity
from ios_tvm.compiler.inputs import profiling_inputs
from ios_tvm.compiler.layout import warn_merge_layout
from ios_tvm.compiler.merge import MergeCompiler
from ios_tvm.compiler.plan_lowering import lower_schedule
from ios_tvm.compiler.profiling import make_stage_cost
from ios_tvm.compiler.relax_vm import RelaxVM
from ios_tvm.compiler.target import device_present, target_device_type
from ios_tvm.cost.base import ProfileSettings
from ios_tvm.cost.learned import split_learned_cost
from ios_tvm.errors import ConfigError, InternalError
from ios_tvm.models import resolve_model as resolve
from ios_tvm.scheduler.config import SearchConfig
from ios_tvm.scheduler.merge import merge_predicate
from ios_tvm.scheduler.search import greedy_schedule, search, sequential_schedule

logger = logging.getLogger(__name__)
#: IOS strategies :func:`bench` accepts (the baselines are always run).
IOS_STRATEGIES = ("concurrent", "merge", "both")


# -- the report ------------------------------------------------------------------------------------
@dataclass
class BenchReport:
    """What :func:`bench` measured for one model (times in milliseconds, memory in bytes).

    ``median_ms[variant]`` is the median over rounds; ``samples_ms`` every round;
    ``speedup_vs_sequential[variant] = median_ms["sequential"] / median_ms[variant]`` (on CUDA
    the baseline is the eager sequential plan); ``max_abs_err[variant]`` against
    ``reference`` (``"onnxruntime"`` or ``"sequential"``). ``search[plan]`` describes each
    plan's schedule (``schedule_json``, the cost model's ``stage_ms``, and for IOS plans the
    search time and stages measured). ``shipped`` is the IOS variant that
    :func:`ios_tvm.build` would ship for each strategy: IOS when it beats sequential by the
    build's margin, sequential otherwise (``shipped_ms`` its time), decided as the build
    decides, on the paired rounds (``decisions[strategy]``: the choice, its reason and
    evidence: rounds, median paired ratio, interval, rule). ``fidelity[plan]`` holds each
    timed plan's predicted latency (the sum of its stage costs, ``predicted_ms``), its
    measured median (``measured_ms``) and ``rel_error`` = (predicted - measured) / measured.
    """

    model: str
    target: str
    input_shapes: dict[str, list[int]]
    kernels: int
    median_ms: dict[str, float] = field(default_factory=dict)
    samples_ms: dict[str, list[float]] = field(default_factory=dict)
    speedup_vs_sequential: dict[str, float] = field(default_factory=dict)
    max_abs_err: dict[str, float] = field(default_factory=dict)
    reference: str = "sequential"
    search: dict[str, dict[str, Any]] = field(default_factory=dict)
    peak_activation_bytes: dict[str, int] = field(default_factory=dict)
    shipped: dict[str, str] = field(default_factory=dict)
    shipped_ms: dict[str, float] = field(default_factory=dict)
    decisions: dict[str, dict[str, Any]] = field(default_factory=dict)
    fidelity: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (plain data only)."""
        from dataclasses import asdict

        return asdict(self)

    def table(self) -> str:
        """A plain-text table, fastest first, with ratios to sequential and ONNX Runtime."""
        ort = self.median_ms.get("onnxruntime")
        seq = self.median_ms.get("sequential")
        head = (f"{'variant':<22} {'median ms':>10} {'vs seq':>7} {'vs ORT':>7} "
                f"{'peak MiB':>9} {'max err':>9}  schedule")
        lines = [f"{self.model} on {self.target}: {self.kernels} kernels, inputs "
                 f"{self.input_shapes}", head, "-" * len(head)]
        for name, ms in sorted(self.median_ms.items(), key=lambda kv: kv[1]):
            vs_seq = f"{seq / ms:.2f}x" if seq else ""
            vs_ort = f"{ms / ort:.2f}" if ort else ""
            plan = _plan_of(name)
            peak = self.peak_activation_bytes.get(plan)
            peak_s = f"{peak / 2**20:.2f}" if peak is not None else ""
            err = self.max_abs_err.get(name)
            err_s = f"{err:.1e}" if err is not None else ""
            info = self.search.get(plan, {})
            sched = info.get("schedule", "")
            lines.append(f"{name:<22} {ms:>10.3f} {vs_seq:>7} {vs_ort:>7} {peak_s:>9} "
                         f"{err_s:>9}  {sched}")
        for strategy, what in self.shipped.items():
            lines.append(f"shipped by build for {strategy}: {what} "
                         f"({self.shipped_ms[strategy]:.3f} ms)")
            why = self.decisions.get(strategy, {}).get("reason")
            if why:
                lines.append(f"  because {why}")
        for plan, f in self.fidelity.items():
            lines.append(f"fidelity {plan}: predicted {f['predicted_ms']:.3f} ms, measured "
                         f"{f['measured_ms']:.3f} ms ({f['rel_error']:+.0%})")
        for plan, info in self.search.items():
            if "search_seconds" in info:
                lines.append(f"search {plan}: {info['search_seconds']:.2f} s, "
                             f"{info['stages_costed']} stages costed, "
                             f"{info['stages_measured']} measured")
        lines.append("(vs seq > 1: faster than the sequential plan; vs ORT < 1: faster than "
                     "ONNX Runtime; max err vs " + self.reference + ")")
        return "\n".join(lines)


def _plan_of(variant: str) -> str:
    """The plan a variant runs (``ios/concurrent/graph`` -> ``ios/concurrent``)."""
    return variant[:-len("/graph")] if variant.endswith("/graph") else variant


# -- the benchmark ---------------------------------------------------------------------------------
def resolve_model(model: Any, batch_size: int = 1) -> tuple[str, Any]:
    """A display name and the model (:func:`ios_tvm.models.resolve_model`)."""
    loaded = resolve(model, batch_size)
    if isinstance(model, str | os.PathLike):
        path = Path(model)
        return (path.stem, str(path)) if loaded is model else (os.fspath(model), loaded)
    return type(model).__name__, model


def bench(model: Any, target: Any = "llvm", *, batch_size: int = 1,
          input_shapes: dict[str, tuple[int, ...]] | None = None,
          params: dict[str, Any] | None = None,
          strategies: Sequence[str] = ("concurrent",), cost: Any = "measured",
          config: SearchConfig | None = None, cache: Any = True, database: Any = None,
          rounds: int = 9, min_ms: float = 100.0, settings: Any = None,
          onnxruntime: bool = True, relax_vm: bool = True, greedy: bool = True,
          pytorch: Sequence[str] = ("eager", "compile"), margin: float = 0.03,
          progress: bool = False, name: str | None = None,
          seed: int = 0, cpu_layout: str | None = "NHWC",
          sample_inputs: Any = None) -> BenchReport:
    """Time ``model`` every way (see the module docstring) and return a :class:`BenchReport`.

    Parameters
    ----------
    model
        A built-in model name (:data:`ios_tvm.models.BUILTIN_MODELS`, built at
        ``batch_size``), an ONNX path or ``ModelProto``, a Relax ``IRModule`` or an
        ``nn.Module``.
    target
        ``"llvm"``, ``"cuda"``, a target dict or ``tvm.target.Target``. The target's device
        must be on this machine.
    input_shapes, params
        Sizes of dynamic inputs and values of weight parameters, as for
        :func:`ios_tvm.build`.
    strategies
        IOS strategies to search and time (``concurrent``, ``merge``, ``both``); the
        sequential and greedy plans are always timed (greedy unless ``greedy=False``).
    cost
        ``"measured"`` (stage latencies timed here, cached in ``cache``), ``"learned"``
        (:mod:`ios_tvm.cost.learned`; a :class:`~ios_tvm.cost.learned.LearnedSettings` for
        other settings, such as a measurement budget) or ``"analytic"``.
    config
        Search limits (``max_groups``, ``max_group_size``, ``max_part_size``); its
        ``strategy`` is replaced by each of ``strategies``.
    cache, database, settings
        As for :func:`ios_tvm.build`: measurement cache, MetaSchedule database,
        :class:`~ios_tvm.cost.base.ProfileSettings` for stage measurement.
    rounds, min_ms
        Whole-run timing: rounds of the round-robin, least time per runner per round (the
        build's decision is made on these paired rounds; 9 give a 96% interval that ignores
        one wild round).
    onnxruntime, relax_vm, greedy
        Include these baselines.
    pytorch
        PyTorch baselines to time when PyTorch is installed and the model is ONNX:
        ``"eager"`` and/or ``"compile"`` (``torch.compile`` takes 10 s to 5 min per model to
        compile on a small CPU); empty for none.
    margin
        The build's never-slower margin, for ``BenchReport.shipped``.
    progress
        Progress bars while measuring, searching and timing.
    name
        The model's name in the report (default: the zoo name or the file's stem).
    seed
        Seed of the random inputs.
    cpu_layout
        Conv layout on llvm targets, as for :func:`ios_tvm.build` (IOS-Merge needs
        ``"NCHW"``).
    sample_inputs
        Model inputs to time and compare on (mapping by name or sequence), as for
        :func:`ios_tvm.build`; default: random inputs valid for the model
        (:func:`~ios_tvm.compiler.inputs.profiling_inputs`, seeded by ``seed``).
    """
    bad = [s for s in strategies if s not in IOS_STRATEGIES]
    if bad:
        raise ConfigError(f"unknown IOS strategy {bad[0]!r}; choose from {IOS_STRATEGIES}")
    cost, learned = split_learned_cost(cost)
    if cost not in ("measured", "learned", "analytic"):
        raise ConfigError(f"unknown cost {cost!r}; use 'measured', 'learned' or 'analytic'")
    if rounds < 1:
        raise ConfigError(f"rounds must be at least 1, not {rounds}")
    pytorch = tuple(pytorch)
    bad = [m for m in pytorch if m not in ("eager", "compile")]
    if bad:
        raise ConfigError(f"unknown PyTorch baseline {bad[0]!r}; use 'eager' and/or 'compile'")
    display, loaded = resolve_model(model, batch_size)
    name = name or display
    base_cfg = config or SearchConfig()
    settings = settings or ProfileSettings()
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    extraction, lib = load_and_extract(loaded, target, input_shapes=input_shapes, params=params,
                                       database=database, cpu_layout=cpu_layout)
    device_type = target_device_type(extraction.target)
    for strategy in strategies:
        warn_merge_layout(strategy, extraction.target, cpu_layout)
    if not device_present(device_type):
        raise ConfigError(f"benchmarking a {device_type} target needs that device on this "
                          "machine")
    seconds["lower_and_compile"] = time.perf_counter() - t0
    graph = extraction.graph

    # -- schedules: sequential, greedy, IOS per strategy (one shared cost) ------------------------
    merging = any(s in ("merge", "both") for s in strategies)
    merges = None
    if merging:
        merges = MergeCompiler(extraction, lib=lib, params=params)
    inputs = profiling_inputs(extraction, sample_inputs, seed)
    stage_cost, measured = make_stage_cost(extraction, learned or cost, cache=cache,
                                           settings=settings,
                                           max_groups=base_cfg.max_groups, lib=lib,
                                           merges=merges, progress=progress, inputs=inputs,
                                           config=base_cfg)
    schedules: dict[str, Any] = {"sequential": sequential_schedule(graph)}
    if greedy:
        schedules["greedy"] = greedy_schedule(graph, base_cfg.greedy_max_streams)
    search_info: dict[str, dict[str, Any]] = {}
    try:
        for strategy in strategies:
            cfg = SearchConfig(**{**base_cfg.to_json(), "strategy": strategy})
            before = measured.measured if measured else 0
            t1 = time.perf_counter()
            can_merge = None
            if strategy in ("merge", "both"):
                can_merge = merge_predicate
            result = search(graph, stage_cost, cfg, can_merge=can_merge, progress=progress)
            key = f"ios/{strategy}"
            schedules[key] = result.schedule
            search_info[key] = {
                "search_seconds": time.perf_counter() - t1,
                "stages_costed": result.stats.stages_costed,
                "stages_measured": (measured.measured - before) if measured else 0,
                "states": result.stats.states, "parts": result.stats.parts,
                "estimated_ms": (result.schedule.cost or 0.0) * 1e3,
                "config": cfg.to_json()}
        for key, sch in schedules.items():
            stage_ms = [stage_cost(s) * 1e3 for s in sch.stages]
            info = search_info.setdefault(key, {})
            info.setdefault("estimated_ms", sum(stage_ms))
            info["stage_ms"] = stage_ms
            info["schedule_json"] = sch.to_json()
            info["schedule"] = sch.summary()
            info["stages"] = len(sch.stages)
            info["max_groups"] = max(len(s.groups) for s in sch.stages)
    finally:
        if measured is not None:
            measured.close()
    seconds["search_total"] = sum(i.get("search_seconds", 0.0) for i in search_info.values())

    # -- runners -----------------------------------------------------------------------------------
    t2 = time.perf_counter()
    artifacts: dict[str, Any] = {}
    peak: dict[str, int] = {}
    for key, sch in schedules.items():
        art = lower_schedule(extraction, sch, params=params, lib=lib, merges=merges)
        peak[key] = art.plan.activation_nbytes
        artifacts[key] = art
    seq_plan = artifacts["sequential"].plan
    names = [seq_plan.tensors[i].name for i in seq_plan.inputs]
    runners: dict[str, Callable[[], Any]] = {}
    outputs: dict[str, list[np.ndarray]] = {}
    modes = [False, True] if device_type == "cuda" else [False]
    for key, art in artifacts.items():
        for graph_mode in modes:
            variant = f"{key}/graph" if graph_mode else key
            ex = art.executor(cuda_graph=graph_mode) if device_type == "cuda" else art.executor()
            try:
                outputs[variant] = ex(*inputs)
                outputs[variant] = ex(*inputs)  # a CUDA graph replays from the second run
            except RuntimeError as e:
                logger.warning("%s cannot run: %s", variant, e)
                continue
            runners[variant] = ex.run  # inputs stay set between runs
    if relax_vm:
        for graph_mode in modes:
            variant = "relax_vm/graph" if graph_mode else "relax_vm"
            try:
                vm = RelaxVM(extraction, inputs, params, cuda_graph=graph_mode)
                runners[variant], outputs[variant] = vm.run, vm.outputs()
            except Exception as e:  # reported only; TVM raises several error types
                logger.warning("%s failed: %s", variant, e)
    reference = "sequential"
    proto = onnx_proto(loaded) if onnxruntime or pytorch else None
    if proto is not None and onnxruntime:
        ort = ort_runner(proto, dict(zip(names, inputs, strict=True)), device_type)
        if ort is not None:
            runners["onnxruntime"], outputs["onnxruntime"] = ort
            reference = "onnxruntime"
    if proto is not None and pytorch:
        add_torch_runners(proto, dict(zip(names, inputs, strict=True)), device_type, pytorch,
                           runners, outputs, seconds)
    seconds["prepare_runners"] = time.perf_counter() - t2

    ref = outputs[reference]
    errors = {}
    for variant, outs in outputs.items():
        if len(outs) != len(ref):
            raise InternalError(f"{variant} returned {len(outs)} outputs, {reference} {len(ref)}")
        errors[variant] = max(float(np.max(np.abs(np.asarray(o, "float64") -
                                                  np.asarray(r, "float64"))))
                              if np.size(r) else 0.0 for o, r in zip(outs, ref, strict=True))
    scale = max(1.0, max(float(np.max(np.abs(r))) for r in ref if np.size(r)))
    wrong = {k: e for k, e in errors.items() if e > 1e-3 * scale}
    if wrong:
        logger.warning("%s: outputs differ from %s: %s", name, reference, wrong)

    t3 = time.perf_counter()
    samples = time_rounds(runners, rounds, min_ms, progress=progress)
    seconds["timing"] = time.perf_counter() - t3
    median = {k: statistics.median(v) * 1e3 for k, v in samples.items()}
    seq_ms = median["sequential"]
    shipped, shipped_ms, decisions = {}, {}, {}
    for strategy in strategies:
        key = f"ios/{strategy}"
        for suffix in ("/graph", "") if device_type == "cuda" else ("",):
            if key + suffix in median:
                base_key = ("sequential" + suffix if "sequential" + suffix in samples
                            else "sequential")
                choice = choose_plan(
                    samples[key + suffix], samples[base_key], margin=margin,
                    same_schedule=schedules[key].stages == schedules["sequential"].stages)
                shipped[strategy + suffix] = choice.chosen
                shipped_ms[strategy + suffix] = (median[key + suffix] if choice.chosen == "ios"
                                                 else median[base_key])
                decisions[strategy + suffix] = choice.to_json()
    fid = fidelity({k: [x / 1e3 for x in search_info[k]["stage_ms"]] for k in schedules},
                   {k: median[k] / 1e3 for k in schedules if k in median})
    return BenchReport(
        model=name, target=str(extraction.target),
        input_shapes={n: list(x.shape) for n, x in zip(names, inputs, strict=True)},
        kernels=len(graph.nodes),
        median_ms=median, samples_ms={k: [s * 1e3 for s in v] for k, v in samples.items()},
        speedup_vs_sequential={k: seq_ms / v for k, v in median.items()},
        max_abs_err=errors, reference=reference, search=search_info,
        peak_activation_bytes=peak, shipped=shipped, shipped_ms=shipped_ms,
        decisions=decisions, fidelity=fid, seconds=seconds,
        settings={"strategies": list(strategies), "cost": cost,
                  **({"learned_budget": learned.budget} if learned is not None else {}),
                  "rounds": rounds,
                  "min_ms": min_ms, "batch_size": batch_size, "margin": margin,
                  "config": base_cfg.to_json(), "database": str(database) if database else None,
                  "cpu_layout": cpu_layout,
                  "profile": [settings.warmup, settings.number, settings.repeat]},
        machine=machine_info())
