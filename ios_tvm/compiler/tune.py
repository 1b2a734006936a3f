"""MetaSchedule tuning of a model's fused kernels, as an opt-in step before compiling.

Where this sits: ``ios-tvm tune MODEL --target T --trials N --database DIR`` (or :func:`tune`)
lowers the model with :func:`~ios_tvm.compiler.kernels.lower_to_kernels` *without* default
schedules, extracts one MetaSchedule task per distinct fused kernel and tunes them one after
another (XGBoost cost model, local builder and runner, evolutionary search) into a JSON
database in ``DIR`` (:mod:`ios_tvm.compiler.tuning_db`). Later compiles for the same target
pass ``database=DIR`` (``ios-tvm compile --database DIR``, :func:`ios_tvm.build`):
``lower_to_kernels`` applies the database right after FuseTIR (``MetaScheduleApplyDatabase``),
so the sequential plan, the IOS plan and the Relax VM comparison all run the tuned kernels;
kernels the database lacks get the default CPU schedules
(:mod:`ios_tvm.compiler.kernel_schedules`).

Each kernel's first measured candidate is ios-tvm's default CPU schedule, stored as an
ordinary tuning record: the search starts from it and a tuned kernel is never slower than the
default one.

Resuming: the budget ``trials`` is for the whole model. Re-running counts the records the
database already holds for each task and only spends what is left, skipping tasks that have
their share.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ios_tvm.compiler.frontend import load_model
from ios_tvm.compiler.kernel_schedules import RULES_VERSION, default_schedule_trace
from ios_tvm.compiler.kernels import kernel_flops, lower_to_kernels
from ios_tvm.compiler.tuning_db import (
    _num_cores,
    _write_meta,
    _write_root_meta,
    open_database,
    tuning_target,
    validate_database,
)
from ios_tvm.errors import ConfigError, UnsupportedGraphError
from ios_tvm.runtime.executor import default_cpu_threads

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# tuning
# --------------------------------------------------------------------------------------------
@dataclass
class TaskResult:
    """One tuned kernel.

    Attributes
    ----------
    name
        The task (kernel) name.
    weight
        Calls of this kernel per model run.
    flops
        Floating-point operations of one call.
    trials_before, trials_after
        Successful records in the database before and after this run.
    best_seconds
        Best measured latency (None if nothing succeeded).
    """

    name: str
    weight: int
    flops: float
    trials_before: int
    trials_after: int
    best_seconds: float | None = None


@dataclass
class TuneResult:
    """What :func:`tune` did.

    Attributes
    ----------
    database
        The database directory.
    target
        The target tuned for (JSON text).
    budget
        The model's trial budget.
    trials_run
        Trials measured in this run (0 when the database already had the budget).
    tasks
        Per-kernel results.
    seconds
        Wall time of this run.
    """

    database: Path
    target: str
    budget: int
    trials_run: int
    tasks: list[TaskResult]
    seconds: float

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {"database": str(self.database), "target": self.target, "budget": self.budget,
                "trials_run": self.trials_run, "seconds": self.seconds,
                "tasks": [t.__dict__ for t in self.tasks]}


def _allocate(budget: int, sizes: Sequence[float], floor: int) -> list[int]:
    """Split ``budget`` trials over tasks in proportion to ``sizes``.

    Every task gets at least ``floor`` while the budget allows (fewer trials than tasks: the
    biggest tasks get one each).
    """
    n = len(sizes)
    if n == 0 or budget <= 0:
        return [0] * n
    order = sorted(range(n), key=lambda i: -sizes[i])
    if budget < n:
        out = [0] * n
        for i in order[:budget]:
            out[i] = 1
        return out
    floor = max(1, min(floor, budget // n))
    rest = budget - floor * n
    total = sum(sizes) or 1.0
    extra = [int(rest * size / total) for size in sizes]
    for i in order[:rest - sum(extra)]:
        extra[i] += 1
    return [floor + e for e in extra]


def _register_tensor_intrinsics(target_kind: str) -> None:
    """Register only the tensor intrinsics ``target_kind`` can use, not all of TVM's.

    MetaSchedule imports ``tvm.s_tir.tensor_intrin`` when it creates a tuning context (and in
    every builder worker), which parses hundreds of TVMScript intrinsics for CUDA, ROCm,
    Hexagon, RISC-V and Arm: over a minute on a 2-core machine, against 0.3 s for the x86 ones
    an llvm x86 target can use. When that package is not loaded yet, a package object that
    loads just the needed submodules stands in for it (other submodules still import on
    demand through it).
    """
    import importlib
    import sys
    import types

    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules:
        return
    import tvm.s_tir

    pkg = types.ModuleType(name, "TVM tensor intrinsics (only those ios-tvm's target needs)")
    pkg.__path__ = [str(Path(tvm.s_tir.__file__).parent / "tensor_intrin")]
    pkg.__package__ = name
    sys.modules[name] = pkg
    tvm.s_tir.tensor_intrin = pkg  # type: ignore[attr-defined]
    wanted = {"llvm": ("x86", "arm_cpu"), "cuda": ("cuda",), "rocm": ("rocm",)}
    for sub in wanted.get(target_kind, ()):
        try:
            module = importlib.import_module(f"{name}.{sub}")
        except Exception as e:  # an intrinsic set that fails to load only loses tensorization
            logger.debug("tensor intrinsics %s not loaded: %s", sub, e)
            continue
        setattr(pkg, sub, module)


def _build_candidate(mod: Any, target: Any, _params: Any) -> Any:
    """MetaSchedule's default builder without its import of every tensor intrinsic."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    _register_tensor_intrinsics(target.kind.name)
    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


def _search_strategy(trials_per_iter: int) -> Any:
    """An evolutionary search sized for short budgets.

    MetaSchedule's defaults evolve 512 candidates per round, which costs more than the trials
    themselves on a small machine.
    """
    from tvm.s_tir import meta_schedule as ms

    return ms.search_strategy.EvolutionarySearch(
        population_size=max(64, 8 * trials_per_iter), init_measured_ratio=0.2,
        init_min_unmeasured=max(16, 2 * trials_per_iter), genetic_num_iters=3,
        genetic_max_fail_count=5)


def tune(model: Any, target: Any = "llvm", trials: int = 64,
         database_dir: str | os.PathLike[str] = "ios_tvm_tuning", *,
         input_shapes: Mapping[str, Sequence[int]] | None = None,
         params: Mapping[str, Any] | None = None, trials_per_iter: int = 16,
         min_task_trials: int | None = None, progress: bool = True, seed: int | None = None,
         timeout_s: float = 30.0, runner: Any = "local", builder: Any = "local",
         model_name: str | None = None, cpu_layout: str | None = "NHWC") -> TuneResult:
    """Tune ``model``'s fused kernels with MetaSchedule into ``database_dir``.

    Parameters
    ----------
    model
        Anything :func:`ios_tvm.compiler.frontend.load_model` accepts.
    target
        ``"llvm"`` (generic x86-64), a target dict such as ``{"kind": "llvm", "mcpu":
        "znver3"}``, or ``"cuda"``. Compile with the same target to use the database.
    trials
        Trial budget for the whole model (measured schedules), shared by the kernels in
        proportion to their FLOPs x calls, with at least ``min_task_trials`` each.
    database_dir
        The JSON database directory (created; resumed when it exists).
    input_shapes, params
        As for :func:`ios_tvm.compiler.build.build`.
    trials_per_iter
        Schedules measured per search iteration (MetaSchedule's ``num_trials_per_iter``).
    min_task_trials
        Trials each kernel gets at least (default ``trials_per_iter``, less if the budget is
        too small).
    progress
        A tqdm bar over the kernels (tasks) being tuned.
    seed
        Random seed of the search.
    timeout_s
        Build and run timeout of one trial.
    runner, builder
        MetaSchedule runner and builder (``"local"`` or instances, e.g. an RPC runner).
    model_name
        Name recorded in the database's side file (default: derived from ``model``).
    cpu_layout
        Conv layout on llvm targets (:func:`ios_tvm.compiler.layout.convert_conv_layout`); compile
        with the same layout, or the tuned kernels do not match.

    Returns
    -------
    TuneResult

    Raises
    ------
    IosTvmError
        Bad arguments, a corrupt database directory, or a database tuned for another target.
    """
    from tvm.s_tir import meta_schedule as ms


    if trials < 0:
        raise ConfigError(f"trials must be >= 0, not {trials}")
    default_cpu_threads()  # measure with the thread count the kernels will run with
    t0 = time.perf_counter()
    tgt = tuning_target(target)
    root = Path(database_dir)
    database = open_database(root, tgt, create=True)
    name = model_name or _model_name(model)
    load_kwargs = {"params": params} if params is not None else {}
    mod = load_model(model, input_shapes, **load_kwargs)
    lowered = lower_to_kernels(mod, tgt, cpu_schedule=False, cpu_layout=cpu_layout)
    extracted = ms.relax_integration.extract_tasks(lowered, tgt)
    extracted = [t for t in extracted
                 if not t.dispatched[0]["main"].attrs.get("tirx.is_scheduled", False)]
    if not extracted:
        raise UnsupportedGraphError("the model has no kernels to tune")
    # What the database already holds, per task.
    before = [_record_count(database, t.dispatched[0]) for t in extracted]
    sizes = [max(kernel_flops(t.dispatched[0]["main"]), 1.0) * int(t.weight) for t in extracted]
    floor = trials_per_iter if min_task_trials is None else min_task_trials
    shares = _allocate(trials, sizes, floor)
    todo = [(i, shares[i] - before[i]) for i in range(len(extracted)) if shares[i] > before[i]]
    # Seeds from older default rules: measure the current default schedule as well (once).

    reseed = any(before) and validate_database(root).meta.get("default_rules") != RULES_VERSION
    if reseed:
        listed = {i for i, _ in todo}
        todo += [(i, 0) for i in range(len(extracted)) if i not in listed]
    _write_meta(root, tgt, name, {"budget": trials})
    trials_run = 0
    if todo:
        _run_tasks(ms, extracted, todo, root, tgt, database, name, trials_per_iter,
                   timeout_s, runner, builder, progress, seed, reseed)
        trials_run = sum(n for _, n in todo)
    _write_root_meta(root, {"default_rules": RULES_VERSION})
    results = []
    for i, task in enumerate(extracted):
        after = _record_count(database, task.dispatched[0])
        results.append(TaskResult(task.task_name, int(task.weight), sizes[i] / int(task.weight),
                                  before[i], after, _best(database, task.dispatched[0])))
    _write_meta(root, tgt, name, {"budget": trials,
                                  "trials": sum(r.trials_after for r in results),
                                  "kernels": len(results)})
    return TuneResult(root, str(tgt), trials, trials_run, results, time.perf_counter() - t0)


def _run_tasks(ms: Any, extracted: list[Any], todo: list[tuple[int, int]], root: Path,
               tgt: Any, database: Any, name: str, trials_per_iter: int, timeout_s: float,
               runner: Any, builder: Any, progress: bool, seed: int | None,
               reseed: bool) -> None:
    """Tune ``extracted[i]`` for ``n`` trials, for each ``(i, n)`` in ``todo``, in order.

    Each task's first candidate is the default schedule when it has no records yet (or
    ``reseed``: the default rules changed since the database was seeded).
    """
    with _quiet_metaschedule():
        _register_tensor_intrinsics(tgt.kind.name)
        builder_obj = ms.builder.LocalBuilder(timeout_sec=timeout_s, f_build=_build_candidate) \
            if builder == "local" else builder
        runner_obj = ms.runner.LocalRunner(
            timeout_sec=timeout_s,
            evaluator_config=ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=20,
                                                       enable_cpu_cache_flush=False)) \
            if runner == "local" else runner
        cores = int(tgt.attrs.get("num-cores", _num_cores())) if tgt.kind.name == "llvm" \
            else _num_cores()
        cost_model = ms.cost_model.XGBModel(num_tuning_cores=cores, tree_method="auto")
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(todo), desc=f"tuning {name}", unit="kernel")
        done = 0
        try:
            for index, need in todo:
                task = extracted[index]
                if bar is not None:
                    bar.set_postfix_str(f"{task.task_name[:32]} ({need} trials; {done} done)")
                if (reseed or _record_count(database, task.dispatched[0]) == 0) and \
                        _seed_default_schedule(ms, task.dispatched[0], tgt, database,
                                               builder_obj, runner_obj) and need > 0:
                    need -= 1
                    done += 1
                if need > 0:
                    # MetaSchedule's console handler takes its logger's level when a task's
                    # loggers are made (and leaves the logger at DEBUG): keep iteration logs in
                    # logs/.
                    ms_logger = logging.getLogger("tvm.s_tir.meta_schedule")
                    ms_logger.setLevel(logging.WARNING)
                    # MetaSchedule rebuilds its loggers with dictConfig, listing every handler
                    # of its logger by name, and crashes on one without a name (pytest's
                    # capture handlers end up there): set those aside meanwhile.
                    foreign = [h for h in ms_logger.handlers if h.get_name() is None]
                    for h in foreign:
                        ms_logger.removeHandler(h)
                    try:
                        contexts, weights = \
                            ms.relax_integration.extracted_tasks_to_tune_contexts(
                                [task], work_dir=str(root), num_threads=cores,
                                strategy=_search_strategy(trials_per_iter),
                                seed=None if seed is None else seed + index)
                    finally:
                        for h in foreign:
                            ms_logger.addHandler(h)
                    if contexts:
                        ms.tune.tune_tasks(
                            tasks=contexts, task_weights=weights, work_dir=str(root),
                            max_trials_global=need, max_trials_per_task=need,
                            num_trials_per_iter=min(trials_per_iter, need),
                            builder=builder_obj, runner=runner_obj, database=database,
                            cost_model=cost_model, task_scheduler="round-robin")
                    done += need
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()


def _seed_default_schedule(ms: Any, mod: Any, tgt: Any, database: Any, builder: Any,
                           runner: Any) -> bool:
    """Measure ios-tvm's default schedule of workload ``mod`` and store it as a tuning record.

    The record's trace replays the rule's schedule, so the database's best is never worse than
    the default schedule (a tiny budget cannot make a tuned build slower than an untuned one),
    and the evolutionary search starts from it. Returns False (and stores nothing) when no
    rule applies or the candidate fails to build or run.
    """
    import shutil

    from tvm.s_tir.meta_schedule.arg_info import ArgInfo


    sch, how = default_schedule_trace(mod["main"], tgt)
    if sch is None:
        logger.debug("no default schedule to seed: %s", how)
        return False
    (built,) = builder.build([ms.builder.BuilderInput(sch.mod, tgt)])
    if built.error_msg:
        logger.debug("default schedule does not build: %s", built.error_msg)
        return False
    args_info = ArgInfo.from_prim_func(mod["main"])
    try:
        device = "cpu" if tgt.kind.name == "llvm" else tgt.kind.name
        (future,) = runner.run([ms.runner.RunnerInput(built.artifact_path, device, args_info)])
        result = future.result()
    finally:
        shutil.rmtree(os.path.dirname(built.artifact_path), ignore_errors=True)
    if result.error_msg or not result.run_secs:
        logger.debug("default schedule does not run: %s", result.error_msg)
        return False
    workload = database.commit_workload(mod)
    database.commit_tuning_record(ms.database.TuningRecord(
        sch.trace, workload, [float(x) for x in result.run_secs], tgt, args_info))
    return True


def _model_name(model: Any) -> str:
    if isinstance(model, str | os.PathLike):
        return Path(model).stem
    graph = getattr(model, "graph", None)
    if graph is not None and getattr(graph, "name", ""):
        return str(graph.name)
    return type(model).__name__


def _record_count(database: Any, mod: Any) -> int:
    """Successful records of workload ``mod`` in ``database`` (0 if it is not there)."""
    if not database.has_workload(mod):
        return 0
    workload = database.commit_workload(mod)
    return len(database.get_top_k(workload, 1 << 30))


def _best(database: Any, mod: Any) -> float | None:
    if not database.has_workload(mod):
        return None
    top = database.get_top_k(database.commit_workload(mod), 1)
    if not top or top[0].run_secs is None or not len(top[0].run_secs):
        return None
    secs = [float(s) for s in top[0].run_secs]
    value = sum(secs) / len(secs)
    return value if math.isfinite(value) else None


class _quiet_metaschedule:  # noqa: N801 (used as a context manager)
    """Keep MetaSchedule's per-iteration INFO logging off the console (it goes to its logs/)."""

    def __enter__(self) -> None:
        self._level = logging.getLogger("tvm.s_tir.meta_schedule").level
        logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("tvm.s_tir.meta_schedule").setLevel(self._level)
