"""The ``ios-tvm`` command line (also ``python -m ios_tvm``).

Exit codes: 0 success, 1 the work failed (bad model, unsupported graph, ...), 2 bad usage
(argparse's usage error, also for out-of-range numbers), 130 interrupted (Ctrl-C), 143
terminated (SIGTERM). A failure prints one line ``ios-tvm CMD: error: ...`` on stderr;
``--verbose`` prints the traceback too. Interrupted or failed commands leave no temporary
files behind.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from ios_tvm.errors import ConfigError, IosTvmError, Terminated
from ios_tvm.ir.plan import MAX_STREAMS
from ios_tvm.scheduler.config import BOUNDS, SEARCH_STRATEGIES, SearchConfig

logger = logging.getLogger("ios_tvm")

#: Exit codes of a command interrupted by Ctrl-C and terminated by SIGTERM (128 + signal).
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


# -- argument types: bad values are usage errors (exit 2), found before any work ---------------
def _int_at_least(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``low`` (and at most ``high`` if given)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, not {value}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high}, not {value}")
        return value

    return parse


def _float_at_least(low: float) -> Callable[[str], float]:
    """An argparse type: a finite number of at least ``low``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value < low:
            raise argparse.ArgumentTypeError(f"must be a number of at least {low:g}, not {text}")
        return value

    return parse


_positive = _int_at_least(1)
_non_negative = _int_at_least(0)


def _budget_arg(text: str) -> float:
    """An argparse type: a learned-cost budget, > 0 (a fraction below 1, a count from 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
    return value


def _cost(args: argparse.Namespace) -> Any:
    """``--cost``, with ``--learned-budget`` as :class:`~ios_tvm.cost.learned.LearnedSettings`."""
    if getattr(args, "learned_budget", None) is None:
        return args.cost
    from ios_tvm.cost.learned import LearnedSettings

    return LearnedSettings(budget=args.learned_budget)


def _shapes_arg(text: str) -> str:
    """An argparse type: ``--input-shapes`` is checked at parse time, kept as text."""
    from ios_tvm.compiler.frontend import parse_input_shapes

    try:
        parse_input_shapes(text)
    except IosTvmError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _target_arg(text: str) -> str:
    """An argparse type: a target name, or a target JSON object that must parse."""
    if text.lstrip().startswith("{"):
        try:
            if not isinstance(json.loads(text), dict):
                raise ValueError("not an object")
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"not a valid target JSON object ({e})") from None
    return text


def _chart_arg(text: str) -> str:
    """An argparse type: a picture file name whose suffix names a format we draw."""
    if Path(text).suffix.lower() not in (".png", ".svg", ".pdf"):
        raise argparse.ArgumentTypeError(f"{text!r}: give a .png, .svg or .pdf file")
    return text


# -- output files: written whole or not at all ---------------------------------------------------
def _check_output(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` as a Path, if a file can be written there (checked before any work)."""
    out = Path(path)
    if out.is_dir():
        raise ConfigError(f"{what} {out} is a directory; give a file name")
    return out


@contextmanager
def _atomic_output(path: str | os.PathLike[str], *, what: str = "output") -> Iterator[IO[bytes]]:
    """A binary file that becomes ``path`` only when the block succeeds.

    The data goes to a uniquely named temporary file beside ``path`` (two processes never
    share one) that is renamed over ``path`` at the end, and removed on any failure or
    interruption, so neither a half-written ``path`` nor a temporary file is ever left.
    """
    out = _check_output(path, what)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp",
                                      delete=False)
    try:
        with tmp:
            yield tmp
        os.replace(tmp.name, out)
    finally:
        if os.path.exists(tmp.name):
            os.unlink(tmp.name)


def _write_text(path: str | os.PathLike[str], text: str, *, what: str = "output") -> None:
    """Write ``text`` to ``path`` atomically (see :func:`_atomic_output`)."""
    with _atomic_output(path, what=what) as f:
        f.write(text.encode())


def _load_graph(args: argparse.Namespace) -> Any:
    from ios_tvm.compiler.extract import graph_from_model

    return graph_from_model(_resolve_model(args), target=args.target,
                            input_shapes=_input_shapes(args))


def _cmd_schedule(args: argparse.Namespace) -> int:
    from ios_tvm.cost import AnalyticCost
    from ios_tvm.scheduler.merge import merge_predicate
    from ios_tvm.scheduler.search import search

    if args.output:
        _check_output(args.output, "schedule file")
    extraction = _load_graph(args)
    graph = extraction.graph
    cost = AnalyticCost(graph, args.device)
    print(f"{args.model}: {len(graph.nodes)} kernels, {graph.num_edges} edges, width {graph.width}")
    results = {}
    for strategy in dict.fromkeys(["sequential", "greedy", args.strategy]):
        cfg = _search_config(args, strategy)
        merging = strategy in ("merge", "both")
        results[strategy] = search(graph, cost, cfg, progress=args.progress,
                                   can_merge=merge_predicate if merging else None)
    base = results["sequential"].schedule.cost or 0.0
    print(f"{'strategy':<12} {'stages':>6} {'est. ms':>9} {'speedup':>8} {'search s':>9} "
          f"{'stages costed':>14}")
    for strategy, res in results.items():
        sch = res.schedule
        est = sch.cost or 0.0
        print(f"{strategy:<12} {len(sch):>6} {est * 1e3:>9.3f} {base / est if est else 0:>7.2f}x "
              f"{res.stats.seconds:>9.3f} {res.stats.stages_costed:>14}")
    chosen = results[args.strategy].schedule
    if args.verbose or args.show_stages:
        for i, stage in enumerate(chosen.stages):
            groups = " | ".join(", ".join(graph.nodes[op].name for op in g) for g in stage.groups)
            print(f"  stage {i:>3} [{stage.strategy}]: {groups}")
    if args.output:
        doc = chosen.to_json()
        doc["meta"] = {**doc["meta"], "model": str(args.model), "target": args.target,
                       "cost_model": f"analytic:{args.device}",
                       "kernels": [n.name for n in graph.nodes]}
        _write_text(args.output, json.dumps(doc, indent=1), what="schedule file")
        print(f"schedule written to {args.output}")
    return 0


def _resolve_model(args: argparse.Namespace) -> Any:
    from ios_tvm.models import resolve_model

    return resolve_model(args.model, args.batch_size)


def _search_config(args: argparse.Namespace, strategy: str = "concurrent") -> SearchConfig:
    """The search limits of _add_search_args."""
    return SearchConfig(strategy=strategy, max_groups=args.max_groups,
                        max_group_size=args.max_group_size, max_part_size=args.max_part_size,
                        bound=args.bound)


def _measure_options(args: argparse.Namespace) -> tuple[Any, Any]:
    """The ``cache=`` argument (cost.cache.open_cache) and profiling settings."""
    from ios_tvm.cost.base import ProfileSettings

    cache: Any = False if args.no_cache else (args.cache or True)
    return cache, ProfileSettings(args.warmup, args.number, args.repeat)


def _input_shapes(args: argparse.Namespace) -> Any:
    from ios_tvm.compiler.frontend import parse_input_shapes

    return parse_input_shapes(args.input_shapes) if args.input_shapes else None


def _cmd_compile(args: argparse.Namespace) -> int:
    from ios_tvm.compiler.build import build

    if Path(args.output).exists() and not Path(args.output).is_dir():
        raise ConfigError(f"artifact directory {args.output} is a file")
    cache, settings = _measure_options(args)
    result = build(_resolve_model(args), args.target, input_shapes=_input_shapes(args),
                   config=_search_config(args, args.strategy), cost=_cost(args), cache=cache,
                   settings=settings,
                   progress=not args.quiet, rpc_tracker=args.rpc_tracker,
                   rpc_key=args.rpc_key, rpc_servers=args.rpc_servers,
                   database=args.database, cpu_schedule=not args.no_cpu_schedule,
                   cpu_layout=args.cpu_layout)
    out = result.export(args.output)
    _write_text(out / "build.json", json.dumps(result.summary(), indent=1))
    lat = result.latencies
    print(f"{args.model}: {result.artifact.plan.meta.get('num_kernels')} kernels, "
          f"schedule {result.schedule.summary()}")
    if lat:
        print(f"{'plan':<12} {'median ms':>10} {'vs sequential':>14}")
        for name in ("sequential", "ios", "relax_vm"):
            if name in lat:
                ratio = lat["sequential"] / lat[name]
                print(f"{name:<12} {lat[name] * 1e3:>10.3f} {ratio:>13.2f}x")
    if result.kernel_schedules:
        print("kernel schedules: " + ", ".join(
            f"{n} {how}" for how, n in sorted(result.kernel_schedules.items())))
    for name, f in result.fidelity.items():
        print(f"{name}: predicted {f['predicted_ms']:.3f} ms (sum of stage costs), measured "
              f"{f['measured_ms']:.3f} ms, error {f['rel_error']:+.0%}")
    print(f"chosen: {result.chosen} ({result.reason})")
    costed, measured, cached = (result.search_stats.stages_costed, result.stages_measured,
                                result.stages_cached)
    # The rest were served by a twin measured in this run (same kernels, other ops).
    twins = costed - measured - cached if measured or cached else 0
    print(f"search: {costed} stages costed, {measured} measured, {cached} from cache"
          + (f", {twins} reused from twins" if twins else "")
          + f", {result.seconds.get('search', 0):.1f} s")
    print(f"artifact written to {out}")
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from ios_tvm.compiler.tune import tune

    result = tune(_resolve_model(args), args.target, args.trials, args.database,
                  input_shapes=_input_shapes(args), trials_per_iter=args.trials_per_iter,
                  progress=not args.quiet, seed=args.seed, model_name=Path(args.model).stem,
                  cpu_layout=args.cpu_layout)
    print(f"{args.model}: {len(result.tasks)} kernels, budget {result.budget} trials, "
          f"{result.trials_run} run now ({result.seconds:.0f} s); target {result.target}")
    print(f"{'kernel':<40} {'calls':>5} {'trials':>7} {'best us':>9}")
    for task in result.tasks:
        best = f"{task.best_seconds * 1e6:9.1f}" if task.best_seconds is not None else "      n/a"
        print(f"{task.name[:40]:<40} {task.weight:>5} {task.trials_after:>7} {best}")
    print(f"database: {result.database} (compile with --database {result.database})")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    import numpy as np

    from ios_tvm.runtime.artifact import load

    if args.outputs:
        _check_output(args.outputs, "outputs file")
    executor = load(args.artifact, cuda_graph=False if args.no_cuda_graph else None)
    try:
        inputs = dict(np.load(args.inputs))
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read inputs {args.inputs}: {e}") from e
    missing = [n for n in executor.input_names if n not in inputs]
    if missing:
        raise ConfigError(f"{args.inputs} lacks input(s) {missing}; the model's inputs are "
                          f"{executor.input_names}")
    outputs = executor(**{n: inputs[n] for n in executor.input_names})
    for name, value in zip(executor.output_names, outputs, strict=True):
        print(f"{name}: shape {value.shape} dtype {value.dtype} "
              f"mean {float(value.mean()):.6g} std {float(value.std()):.6g}")
    if args.outputs:
        with _atomic_output(args.outputs, what="outputs file") as f:
            np.savez(f, **dict(zip(executor.output_names, outputs, strict=True)))
        print(f"outputs written to {args.outputs}")
    if args.benchmark:
        stats = executor.benchmark(min_repeat_ms=100)
        print(f"median {stats['median'] * 1e3:.3f} ms per run "
              f"(min {stats['min'] * 1e3:.3f}, max {stats['max'] * 1e3:.3f})")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from ios_tvm.bench.harness import bench

    if args.output:
        _check_output(args.output, "results file")
    if args.plot:
        _check_output(args.plot, "chart file")
    cache, settings = _measure_options(args)
    report = bench(args.model, args.target, batch_size=args.batch_size,
                   input_shapes=_input_shapes(args), strategies=args.strategies, cost=_cost(args),
                   config=_search_config(args), cache=cache, database=args.database,
                   rounds=args.rounds, min_ms=args.min_ms, settings=settings,
                   onnxruntime=not args.no_onnxruntime, relax_vm=not args.no_relax_vm,
                   greedy=not args.no_greedy, pytorch=args.torch, progress=not args.quiet,
                   cpu_layout=args.cpu_layout)
    print(report.table())
    if args.output:
        _write_text(args.output, json.dumps({"benchmark": "ios-tvm bench", "command": sys.argv,
                                             "models": {report.model: report.to_json()}},
                                            indent=1), what="results file")
        print(f"results written to {args.output}")
    if args.plot:
        from ios_tvm.bench.plot import plot_speedups

        rows = {report.model: {k: v / 1e3 for k, v in report.median_ms.items()}}
        print(f"speed-up chart: {plot_speedups(rows, args.plot, title=report.target)}")
    return 0


def _recorded_schedule(meta: Any) -> Any:
    """The schedule a plan's meta records, or None when it has none (or a broken one)."""
    from ios_tvm.errors import ScheduleError
    from ios_tvm.ir.schedule import Schedule

    try:
        return Schedule.from_json(meta["schedule_json"])
    except (KeyError, TypeError, ScheduleError):
        return None


def _stage_seconds(meta: Any, num_stages: int, key: str = "stage_seconds") -> list[float] | None:
    """The per-stage latencies a plan's meta records under ``key``, if usable.

    ``stage_seconds``: the search's costs (stages timed alone, or estimated);
    ``stage_seconds_in_plan``: the stages timed inside whole runs of the plan.
    """
    values = meta.get(key)
    if (isinstance(values, list) and len(values) == num_stages
            and all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)):
        return [float(v) for v in values]
    return None


def _timeline_panels(meta: Any, run: Any, names: list[str], stage_s: list[float] | None,
                     in_plan_s: list[float] | None) -> list[Any]:
    """The timelines ``show`` draws: the shipped plan and, when recorded, the plan that lost.

    Both on the measured scale (stages timed inside whole runs) when the build timed them;
    else on the search's costs, and the titles say which.
    """
    from ios_tvm.bench.plot import TimelinePanel
    from ios_tvm.ir.schedule import Schedule, Stage

    chosen = meta.get("chosen") or "shipped"
    if in_plan_s is not None:
        panels = [TimelinePanel(run, in_plan_s, names,
                                f"shipped ({chosen}), timed in whole runs: {run.summary()}")]
    else:
        panels = [TimelinePanel(run, stage_s or [0.0] * len(run.stages), names,
                                f"shipped ({chosen}), search's stage costs: {run.summary()}")]
    other = meta.get("other_plan")
    try:
        calls = [str(c) for c in other["calls"]]
        stages = tuple(Stage(tuple(tuple(int(c) for c in g) for g in st), str(strategy))
                       for st, strategy in zip(other["stages"], other["strategies"], strict=True))
        sch = Schedule(stages, None)
        measured = in_plan_s is not None and "stage_seconds_in_plan" in other
        secs = [float(v) for v in other["stage_seconds_in_plan" if measured
                                        else "stage_seconds"]]
        if len(secs) != len(stages) or any(c >= len(calls) for st in stages
                                           for g in st.groups for c in g):
            raise ValueError("inconsistent other_plan")
    except (KeyError, TypeError, ValueError):  # none recorded, or a hand-edited one: skip it
        return panels
    how = "timed in whole runs" if measured else "search's stage costs"
    panels.append(TimelinePanel(sch, secs, calls,
                                f"{other.get('name', 'other')} (not shipped), {how}: "
                                f"{sch.summary()}"))
    return panels


def _merged_calls(meta: Any) -> dict[int, list[str]]:
    """Call index -> names of the ops merged into it, as the plan's meta records them."""
    try:
        return {int(c): [str(m) for m in ms] for c, ms in (meta.get("merged_calls") or {}).items()}
    except (AttributeError, TypeError, ValueError):
        return {}


def _cmd_show(args: argparse.Namespace) -> int:
    from ios_tvm.ir.graph import OpGraph, OpNode, TensorInfo
    from ios_tvm.ir.schedule import Schedule, Stage
    from ios_tvm.runtime.artifact import load_artifact

    artifact = load_artifact(args.artifact)
    plan = artifact.plan
    meta = plan.meta
    schedule = _recorded_schedule(meta)
    names = [c.node or c.kernel for c in plan.calls]
    stage_s = _stage_seconds(meta, len(plan.stages))
    in_plan_s = _stage_seconds(meta, len(plan.stages), "stage_seconds_in_plan")
    # The plan's stages list kernel calls (a merge stage: one call of its merged kernel); the
    # schedule's list the model's ops. Draw and list what runs: the calls.
    run = Schedule(tuple(Stage(s.groups, s.strategy) for s in plan.stages),
                   schedule.cost if schedule is not None else None)
    members = _merged_calls(meta)
    summary = schedule.summary() if schedule is not None else (
        f"{run.summary()} (the plan records no schedule)")
    print(f"{args.artifact}: {len(plan.calls)} kernel calls, {summary}")
    print(f"target {plan.target}; specialised for {meta.get('specialised_for')}")
    print(f"chosen plan: {meta.get('chosen')}; latencies (s): {meta.get('latencies_s')}")
    print("stage latencies: " + ("search's cost / timed inside whole runs"
                                 if in_plan_s is not None else "search's cost"))
    print(f"activation memory: {plan.activation_nbytes / 2**20:.2f} MiB in "
          f"{len(plan.storages)} storages; streams: {plan.num_streams}")
    for i, stage in enumerate(run.stages):
        groups = " | ".join(", ".join(f"{names[c]} = merge({' + '.join(members[c])})"
                                      if c in members else names[c] for c in g)
                            for g in stage.groups)
        ms = f"{stage_s[i] * 1e3:8.3f}" if stage_s is not None else "       -"
        if in_plan_s is not None:
            ms += f" / {in_plan_s[i] * 1e3:8.3f}"
        print(f"  stage {i:>3} {ms} ms [{stage.strategy}]: {groups}")
    if not args.no_pictures:
        from ios_tvm.bench.plot import plot_graph, plot_timelines

        # Rebuild the kernel graph from the plan's calls (who writes and reads which tensor).
        tensors = {t.name: TensorInfo(t.name, t.shape, t.dtype, "activation",
                                      plan.tensors[t.ref].name if t.place == "view" else None)
                   for t in plan.tensors}
        nodes = [OpNode(c.node or c.kernel, c.kernel,
                        tuple(plan.tensors[a].name for a in c.args[:len(c.args) - c.num_outputs]),
                        tuple(plan.tensors[a].name for a in c.args[len(c.args) - c.num_outputs:]))
                 for c in plan.calls]
        graph = OpGraph(nodes, tensors)
        fmt = args.format
        timeline = plot_timelines(_timeline_panels(meta, run, names, stage_s, in_plan_s),
                                  Path(args.artifact) / f"timeline.{fmt}")
        picture = plot_graph(graph, run, Path(args.artifact) / f"graph.{fmt}")
        print(f"pictures: {timeline}, {picture}")
    return 0


def _add_model_args(p: argparse.ArgumentParser, *, target: str = "host") -> None:
    """MODEL, --target, --input-shapes, --batch-size (every command that lowers a model)."""
    p.add_argument("model", help="an .onnx file or a built-in model name (sample, squeezenet, "
                                 "inception_v3, randwire, nasnet, resnet50)")
    p.add_argument("--target", default=target, type=_target_arg,
                   help=f"host (llvm for this CPU), llvm (portable x86-64), cuda, or a TVM "
                        f"target JSON such as '{{\"kind\":\"llvm\",\"mcpu\":\"znver3\"}}' "
                        f"(default {target})")
    p.add_argument("--input-shapes", type=_shapes_arg,
                   help="sizes of dynamic inputs, e.g. 'x:1,3,224,224 y:1,10'")
    p.add_argument("--batch-size", type=_positive, default=1,
                   help="batch of built-in models (default 1)")


def _add_search_args(p: argparse.ArgumentParser) -> None:
    """IOS's search limits (--max-groups s, --max-group-size r, --max-part-size), --bound."""
    p.add_argument("--max-groups", type=_int_at_least(1, MAX_STREAMS), default=8,
                   help="groups per stage, IOS s (default 8)")
    p.add_argument("--max-group-size", type=_positive, default=3,
                   help="ops per group, IOS r (default 3)")
    p.add_argument("--max-part-size", type=_positive, default=20,
                   help="ops (or chains of ops) per searched part (default 20)")
    p.add_argument("--bound", choices=BOUNDS, default="exact",
                   help="stages a measured search may skip: exact (default; the plan "
                        "measuring every stage would find) or calibrated (also skip stages "
                        "that the concurrency measured so far says cannot win; far fewer "
                        "measurements on large models, not guaranteed exact)")


def _add_measure_args(p: argparse.ArgumentParser) -> None:
    """Stage costs: --cost, the measurement cache and the profiling settings, --database."""
    p.add_argument("--cost", choices=("measured", "learned", "analytic"), default="measured",
                   help="stage cost model (default: measured on this machine; learned: an "
                        "XGBoost model trained on the measurement cache measures only the "
                        "stages it is unsure of)")
    p.add_argument("--learned-budget", type=_budget_arg, metavar="B",
                   help="with --cost learned: measure at most B stages (below 1: that fraction "
                        "of the candidate stages); kernels not measured are predicted too")
    p.add_argument("--cache", help="measurement cache file (default ~/.cache/ios_tvm/...)")
    p.add_argument("--no-cache", action="store_true", help="measure everything afresh")
    p.add_argument("--warmup", type=_non_negative, default=2,
                   help="profiling warm-up runs (default 2)")
    p.add_argument("--number", type=_positive, default=6, help="runs per timed repeat (default 6)")
    p.add_argument("--repeat", type=_positive, default=6, help="timed repeats (default 6)")
    p.add_argument("--database", metavar="DIR",
                   help="MetaSchedule tuning database written by `ios-tvm tune` for this target")


def _add_layout_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cpu-layout", choices=("NHWC", "NCHW"), default="NHWC",
                   help="conv layout on CPU targets (default NHWC, vectorised over channels; "
                        "NCHW for the merge/both strategies)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ios-tvm``."""
    from ios_tvm.cost.analytic import DEVICES

    parser = argparse.ArgumentParser(
        prog="ios-tvm", description="Inter-operator scheduling (IOS) for TVM Relax models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details and tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("schedule", help="extract a model's kernel graph and search a schedule",
                       description="Lower MODEL to fused TVM kernels, extract the operator graph "
                                   "and run the IOS search with the analytic cost model.")
    _add_model_args(p, target="llvm")
    p.add_argument("--strategy", choices=SEARCH_STRATEGIES, default="concurrent",
                   help="schedule strategy (default concurrent)")
    _add_search_args(p)
    p.add_argument("--device", default="v100", choices=sorted(DEVICES),
                   help="analytic cost preset (default v100)")
    p.add_argument("--show-stages", action="store_true", help="print every stage")
    p.add_argument("--progress", action="store_true", help="progress bar over parts")
    p.add_argument("-o", "--output", help="write the schedule as JSON to this file")
    p.set_defaults(func=_cmd_schedule)

    p = sub.add_parser("compile", help="build a model into an artifact run by the ios-tvm executor",
                       description="Lower MODEL, search an IOS schedule costed by stage latencies "
                                   "measured on the target, check the plan against the "
                                   "sequential one and TVM's Relax VM, and write the artifact.")
    _add_model_args(p)
    p.add_argument("--strategy", choices=SEARCH_STRATEGIES, default="concurrent",
                   help="schedule strategy (default concurrent)")
    _add_search_args(p)
    _add_measure_args(p)
    p.add_argument("--rpc-tracker", metavar="HOST:PORT",
                   help="measure stages on the TVM RPC servers registered with this tracker")
    p.add_argument("--rpc-key", help="device key of the RPC servers to use")
    p.add_argument("--rpc-servers", type=_positive, help="use at most this many RPC servers")
    p.add_argument("--no-cpu-schedule", action="store_true",
                   help="keep TVM's unscheduled llvm kernels (no default CPU schedules)")
    _add_layout_arg(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("-o", "--output", required=True, help="artifact directory to write")
    p.set_defaults(func=_cmd_compile)

    p = sub.add_parser("tune", help="tune a model's kernels with MetaSchedule into a database",
                       description="Lower MODEL to fused kernels and tune them with MetaSchedule "
                                   "(XGBoost cost model, local builder and runner) into a JSON "
                                   "database; `ios-tvm compile --database DIR` then uses the "
                                   "tuned kernels. Re-running resumes: only the trials the "
                                   "database lacks are run.")
    _add_model_args(p)
    p.add_argument("--trials", type=_positive, default=64,
                   help="trial budget for the whole model (default 64)")
    p.add_argument("--trials-per-iter", type=_positive, default=16,
                   help="schedules measured per search round (default 16)")
    p.add_argument("--database", metavar="DIR", required=True,
                   help="database directory (created, or resumed when it exists)")
    _add_layout_arg(p)
    p.add_argument("--seed", type=_non_negative, help="random seed of the search")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_tune)

    p = sub.add_parser("run", help="run a compiled artifact on inputs from an .npz file")
    p.add_argument("artifact", help="directory written by `ios-tvm compile`")
    p.add_argument("--inputs", required=True, help=".npz file with one array per model input")
    p.add_argument("--outputs", help="write the outputs to this .npz file")
    p.add_argument("--benchmark", action="store_true", help="also time the plan")
    p.add_argument("--no-cuda-graph", action="store_true",
                   help="on CUDA, launch kernels one by one instead of replaying one CUDA graph")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser(
        "bench", help="time a model every way: IOS vs sequential vs greedy vs Relax VM vs ORT "
                      "vs PyTorch",
        description="Lower MODEL once, search IOS schedules (one per --strategies), and time "
                    "the IOS plans, the sequential and greedy plans of the same kernels, "
                    "TVM's Relax VM, ONNX Runtime and PyTorch (eager, torch.compile; when "
                    "installed) side by side (round-robin, medians). "
                    "Prints a table; --output writes JSON, --plot a speed-up chart.")
    _add_model_args(p)
    p.add_argument("--strategies", nargs="+", default=["concurrent"],
                   choices=("concurrent", "merge", "both"),
                   help="IOS strategies to search and time (default: concurrent)")
    _add_search_args(p)
    _add_measure_args(p)
    p.add_argument("--rounds", type=_positive, default=9,
                   help="whole-run timing rounds (default 9: the paired decision then ignores "
                        "one wild round)")
    p.add_argument("--min-ms", type=_float_at_least(0.0), default=100.0,
                   help="least time per variant per round (default 100)")
    _add_layout_arg(p)
    p.add_argument("--no-onnxruntime", action="store_true", help="skip ONNX Runtime")
    p.add_argument("--no-relax-vm", action="store_true", help="skip TVM's Relax VM")
    p.add_argument("--no-greedy", action="store_true", help="skip the greedy plan")
    p.add_argument("--torch", nargs="*", default=["eager", "compile"], choices=("eager", "compile"),
                   help="PyTorch baselines when torch is installed (default: eager compile; "
                        "torch.compile takes 10 s to 5 min a model on 2 cores); "
                        "--torch alone: none")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("-o", "--output", help="write the results as JSON to this file")
    p.add_argument("--plot", type=_chart_arg,
                   help="draw the speed-up chart to this file (.png/.svg/.pdf)")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("show", help="summarise an artifact's schedule and draw it")
    p.add_argument("artifact", help="directory written by `ios-tvm compile`")
    p.add_argument("--format", choices=("png", "svg", "pdf"), default="png")
    p.add_argument("--no-pictures", action="store_true", help="text summary only")
    p.set_defaults(func=_cmd_show)
    return parser


def _one_line(error: BaseException) -> str:
    """The message of ``error`` on one line.

    Ours are joined whole (they name the file or tensor at fault and how to fix it); others,
    such as TVM's, may carry a C++ stack trace or a long report after their first line.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    if isinstance(error, IosTvmError):
        return " ".join(lines)
    if lines[0].startswith("Traceback"):
        return lines[-1]  # the error itself comes last, after the frames
    return lines[0] + (" [...]" if len(lines) > 1 else "")


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(signum)


def _failure(error: BaseException, where: str, verbose: bool) -> tuple[int, str]:
    """The exit code and the one line of a command that raised ``error``."""
    if isinstance(error, KeyboardInterrupt):
        return EXIT_INTERRUPTED, f"{where}: interrupted"
    if isinstance(error, Terminated):
        return EXIT_TERMINATED, f"{where}: terminated"
    if isinstance(error, (IosTvmError, OSError, ValueError)):  # the user's input, files, models
        return 1, f"{where}: error: {_one_line(error)}"
    # TVM's errors (RuntimeError subclasses) and our own bugs: name the type, point to -v.
    return 1, (f"{where}: error: {type(error).__name__}: {_one_line(error)}"
               + ("" if verbose else " (run with -v for the traceback)"))


def _run(args: argparse.Namespace) -> int:
    """Run the command; every failure becomes one line on stderr and an exit code."""
    try:
        return int(args.func(args))
    except (KeyboardInterrupt, Terminated, Exception) as e:
        code, message = _failure(e, f"ios-tvm {args.command}", args.verbose)
        if args.verbose:
            traceback.print_exc()
        print(message, file=sys.stderr)
        return code


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code.

    0 success, 1 failure, 2 bad usage, 130 interrupted, 143 terminated (SIGTERM); a failure
    prints one line on stderr (``-v``: the traceback too).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if getattr(args, "learned_budget", None) is not None and args.cost != "learned":
            parser.error("--learned-budget needs --cost learned")
    except SystemExit as e:  # argparse exits 2 on usage errors, 0 on --help
        return int(e.code or 0)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    # SIGTERM (kill, a batch system's time limit) unwinds like Ctrl-C does, so that every
    # `finally` runs and no temporary file is left; only the main thread may set handlers.
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return _run(args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
