#!/usr/bin/env python
"""GPU benchmark (issue 8): the model zoo with and without CUDA graphs, against TVM and PyTorch.

For each model of :data:`ios_tvm.models.BUILTIN_MODELS` and batch size, the median latency of
one synchronous inference (host wall clock, the call until the outputs are ready) of:

==================  ===============================================================================
``relax_vm``        TVM's Relax VM on the same fused kernels as ios-tvm (dataflow-lowering and
                    finalize passes of the CUDA pipeline added to the lowered module)
``relax_vm_graph``  the same with ``relax.backend.use_cuda_graph`` (RewriteCUDAGraph: the static
                    kernels captured into a graph on one stream, replayed by the VM)
``seq_eager``       ios-tvm's sequential plan, kernels launched one by one on one stream
``seq_graph``       the sequential plan replayed as one CUDA graph (``Executor(cuda_graph=True)``)
``ios_eager``       the IOS plan: stages of concurrent groups on several streams, eager launches
``ios_graph``       the IOS plan, all streams and fork/join events in one CUDA graph
``torch_eager``     PyTorch eager on the same ONNX graph and weights (when torch is importable)
``torch_compile``   ``torch.compile(mode="reduce-overhead")`` of that module (CUDA graphs)
==================  ===============================================================================

The work is split so that the GPU machine needs no TVM compiler (runtime-only TVM, see
``shared/tools/device-kit.sh``):

``compile`` (here, any machine with the TVM compiler; no GPU): per model and batch, lower the
    model for CUDA, compile the kernel library once (kernels compiled to cubin here, so the
    GPU side needs no NVRTC), search the IOS schedule (analytic H100 cost model, or stage latencies
    measured on the GPU by ``profile``: ``--stage-costs``), write both plans, the Relax VM
    executables with and without ``use_cuda_graph`` (weights lifted to parameters), and a
    recipe of the weights: every weight is an initializer of the zoo's ONNX model, which the
    GPU side rebuilds from its deterministic builder, so no weight file travels.
``profile`` (GPU, optional): time every candidate stage of the IOS search (written by
    ``compile --profile-candidates``) with the executor's ``profile_stage``; JSON out.
``run`` (GPU): time the variants above round-robin, check that every variant's outputs agree
    with the sequential plan's, and write JSON with the GPU's name, the date and the command
    (default ``benchmarks/results/gpu-<date>-<gpu>.json``); prints the table.

Examples
--------
Here (the output lands in ``build/``, which git ignores; the archive is what travels)::

    python scripts/bench_gpu.py compile --out build/bench_gpu --archive build/bench_gpu.tar.xz \\
        --models sample,squeezenet,inception_v3,resnet50,randwire,nasnet --batches 1,8,32
    bash ../shared/tools/device-kit.sh .devkit 3.12    # once: the runtime-only TVM kit

On the GPU machine, from the repository root (carry ``build/bench_gpu.tar.xz``, ``.devkit``
and ``build/lead/libios_tvm_native.so``; its python3 has PyTorch)::

    source .devkit/activate.sh
    export IOS_TVM_NATIVE_LIB=$PWD/build/lead/libios_tvm_native.so PYTHONUNBUFFERED=1
    python3 scripts/bench_gpu.py run --dir build/bench_gpu.tar.xz --out $OUT/gpu.json

``--models``/``--batches`` select a subset (one call of the device tool runs at most 10
minutes). Measured IOS schedules take one more round trip: ``compile --profile-candidates``,
``profile --dir build/bench_gpu.tar.xz --out $OUT/stage_costs.json`` on the GPU, then
``compile --stage-costs stage_costs.json`` here and ``run`` there.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CASE_FORMAT = "ios_tvm.bench_gpu.case"
RESULT_FORMAT = "ios_tvm.bench_gpu"
VERSION = 1
VARIANTS = ("relax_vm", "relax_vm_graph", "seq_eager", "seq_graph", "ios_eager", "ios_graph",
            "torch_eager", "torch_compile")
DEFAULT_MODELS = ("sample", "squeezenet", "inception_v3", "resnet50", "randwire", "nasnet")


def case_name(model: str, batch: int) -> str:
    """The directory name of one (model, batch) case."""
    return f"{model}-b{batch}"


def _csv(text: str) -> list[str]:
    return [t for t in (s.strip() for s in text.split(",")) if t]


def _sha1(a: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()


def _git() -> dict[str, Any]:
    info: dict[str, Any] = {}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        info["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, check=True,
                                            capture_output=True, text=True).stdout.strip()
        info["git_dirty"] = bool(subprocess.run(["git", "status", "--porcelain"], cwd=ROOT,
                                                check=True, capture_output=True,
                                                text=True).stdout.strip())
    return info


# =============================================================================================
# compile (here)
# =============================================================================================
def weight_recipe(model: Any, weights: Mapping[str, Any]) -> tuple[dict[str, Any],
                                                                   dict[str, np.ndarray]]:
    """How to rebuild each weight from the ONNX model's initializers.

    Returns ``(recipe, extra)``: ``recipe[name]`` names the initializer with the same bytes
    (reshaped: TVM folds a conv bias ``(C,)`` into ``(1, C, 1, 1)``) with its shape, dtype and
    SHA-1; weights not found among the initializers (folded by TVM) go to ``extra``.
    """
    from onnx import numpy_helper

    by_hash: dict[tuple[str, str], str] = {}
    for init in model.graph.initializer:
        a = numpy_helper.to_array(init)
        by_hash.setdefault((str(a.dtype), _sha1(a)), init.name)
    recipe: dict[str, Any] = {}
    extra: dict[str, np.ndarray] = {}
    for name, value in weights.items():
        a = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
        digest = _sha1(a)
        init = by_hash.get((str(a.dtype), digest))
        if init is None:
            extra[name] = a
        else:
            recipe[name] = {"initializer": init, "shape": list(a.shape), "dtype": str(a.dtype),
                            "sha1": digest}
    return recipe, extra


def lift_constants(ex: Any) -> tuple[Any, list[str]]:
    """The lowered module with every weight constant of the entry function turned into a
    parameter (after the inputs; ``num_input`` marks them as weights for RewriteCUDAGraph).

    Returns the module and the weight names in parameter order (the plans' weight names).
    """
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    names = {const: name for name, const in ex.constants.items()}

    @mutator
    class _Lift(PyExprMutator):
        def __init__(self, mod: Any) -> None:
            super().__init__(mod)
            self.vars: dict[str, Any] = {}

        def visit_generic_const_(self, op: Any) -> Any:
            name = names.get(op)
            if name is None:
                return op
            if name not in self.vars:
                self.vars[name] = relax.Var(name, op.ty)
            return self.vars[name]

    func = ex.mod[ex.func_name]
    lifter = _Lift(ex.mod)
    body = lifter.visit_expr(func.body)
    order = list(lifter.vars)
    num_input = len(func.params)
    attrs = func.attrs
    new = relax.Function([*func.params, *(lifter.vars[n] for n in order)], body, func.ret_ty,
                         func.is_pure, attrs)
    new = new.with_attr("num_input", num_input)
    mod = tvm.IRModule(dict(ex.mod.functions.items()))
    mod[ex.func_name] = new
    return mod, order


def compile_vm(mod: Any, target: Any, use_cuda_graph: bool) -> Any:
    """The Relax VM executable of an already lowered module (as ``ios_tvm.build`` compares)."""
    import tvm
    from tvm import relax

    backend = (relax.backend.cuda.pipeline if target.kind.name == "cuda"
               else relax.backend.cpu_generic.pipeline)
    rest = tvm.transform.Sequential([*backend.dataflow_lower_passes(target),
                                     *backend.finalize_passes(target)])
    from ios_tvm.compiler.cuda_binary import compile_cuda_kernels, cuda_build_scope

    with tvm.transform.PassContext(config={"relax.backend.use_cuda_graph": use_cuda_graph}), \
            cuda_build_scope(target):
        exe = tvm.compile(mod, target=target, relax_pipeline=rest)
    return compile_cuda_kernels(exe, target)  # cubins, as in kernels.so: no NVRTC on the GPU


def _offline_cost(ex: Any, max_groups: int, costs: Mapping[str, Sequence[float]] | None) -> Any:
    """A MeasuredCost whose stage latencies come from ``costs`` (``profile``'s output)."""
    from ios_tvm.compiler.profiling import measured_cost
    from ios_tvm.errors import IosTvmError

    class _NotProfiled:
        def profile(self, groups: Sequence[Sequence[int]]) -> list[float]:
            raise IosTvmError(f"stage {list(map(list, groups))} was not profiled; rerun "
                              "`compile --profile-candidates` and `profile` with the same "
                              "search settings")

    cost = measured_cost(ex, max_groups=max_groups, cache=None, profiler=_NotProfiled(),
                        device="offline")
    for key, samples in (costs or {}).items():
        cost.values[key] = float(statistics.median(samples))
    return cost


def compile_case(model_name: str, batch: int, out: Path, args: argparse.Namespace,
                 stage_costs: Mapping[str, Any] | None) -> dict[str, Any]:
    """Compile one (model, batch) case into ``out`` (see the module docstring)."""
    from ios_tvm.compiler.extract import graph_from_model
    from ios_tvm.compiler.library import build_kernel_library, weights_of
    from ios_tvm.compiler.plan_lowering import lower_schedule as lower
    from ios_tvm.compiler.profiling import profiling_artifact
    from ios_tvm.cost import AnalyticCost
    from ios_tvm.models import BUILTIN_MODELS
    from ios_tvm.scheduler.config import SearchConfig
    from ios_tvm.scheduler.search import candidate_stages, search, sequential_schedule

    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    model = BUILTIN_MODELS[model_name](batch=batch, seed=args.seed)
    cuda = args.target == "cuda"
    target: Any = {"kind": "cuda", "arch": args.arch} if cuda else "llvm"
    ex = graph_from_model(model, target)
    seconds["lower"] = time.perf_counter() - t0
    t = time.perf_counter()
    lib = build_kernel_library(ex.mod, ex.target)
    seconds["kernels"] = time.perf_counter() - t
    cfg = SearchConfig(strategy="concurrent", max_groups=args.max_groups,
                       max_group_size=args.max_group_size, max_part_size=args.max_part_size)
    case = case_name(model_name, batch)
    t = time.perf_counter()
    if stage_costs is not None:
        if case not in stage_costs:
            raise SystemExit(f"{case}: no stage latencies in the --stage-costs file")
        cost: Any = _offline_cost(ex, cfg.max_groups, stage_costs[case]["stages"])
        cost_name = f"measured on {stage_costs[case].get('device', '?')} (offline)"
    else:
        cost = AnalyticCost(ex.graph, "h100" if cuda else "cpu")
        cost_name = f"analytic ({'h100' if cuda else 'cpu'})"
    result = search(ex.graph, cost, cfg)
    seconds["search"] = time.perf_counter() - t
    schedules = {"sequential": sequential_schedule(ex.graph), "ios": result.schedule}
    out.mkdir(parents=True, exist_ok=True)
    plans = {}
    for kind, sch in schedules.items():
        art = lower(ex, sch, lib=lib, meta={"schedule_json": sch.to_json(),
                                            "cost_model": cost_name if kind == "ios" else None})
        (out / f"plan_{kind}.json").write_text(art.plan.dumps())
        plans[kind] = {"stages": len(art.plan.stages), "calls": len(art.plan.calls),
                       "streams": art.plan.num_streams,
                       "activation_bytes": art.plan.activation_nbytes}
    t = time.perf_counter()
    lib.export_library(str(out / "kernels.so"))
    weights = weights_of(ex)
    recipe, extra = weight_recipe(model, weights)
    if extra:
        np.savez(out / "weights_extra.npz", **extra)
    vm_mod, vm_weights = lift_constants(ex)
    missing = sorted(set(vm_weights) - set(weights))
    if missing:
        raise SystemExit(f"{case}: VM weights {missing[:3]} are not weights of the plans")
    for graph in (False, True) if cuda else (False,):
        exe = compile_vm(vm_mod, ex.target, graph)
        exe.export_library(str(out / ("vm_graph.so" if graph else "vm.so")))
    seconds["export"] = time.perf_counter() - t
    if args.profile_candidates:
        prof = profiling_artifact(ex, max_groups=cfg.max_groups, lib=lib)
        (out / "plan_profiling.json").write_text(prof.plan.dumps())
        keyer = _offline_cost(ex, cfg.max_groups, None)
        stages: dict[str, list[list[int]]] = {}
        for stage in candidate_stages(ex.graph, cfg):
            if stage.strategy == "concurrent":
                stages.setdefault(keyer.stage_key(stage), [list(g) for g in stage.groups])
        (out / "stages.json").write_text(json.dumps(stages))
    in_t = ex.graph.tensors[ex.graph.inputs[0]]
    meta = {
        "format": CASE_FORMAT, "version": VERSION, "model": model_name, "batch": batch,
        "seed": args.seed, "target": str(ex.target), "device_type": args.target,
        "arch": args.arch if cuda else None,
        "input": {"name": in_t.name, "shape": list(in_t.shape), "dtype": in_t.dtype},
        "vm_function": ex.func_name, "vm_weights": vm_weights, "weights": recipe,
        "weights_extra": sorted(extra), "plans": plans, "cost_model": cost_name,
        "search": {"config": cfg.to_json(), "stats": result.stats.to_json()},
        "seconds": seconds, "kernels": len(ex.graph.nodes),
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta


def write_archive(root: Path, archive: Path) -> None:
    """Pack the compiled cases (``kernels.so`` and the VM executables, with their cubins)
    so that they travel to the GPU machine."""
    import tarfile

    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = archive.with_name(archive.name + ".tmp")
    with tarfile.open(tmp, "w:xz") as tar:
        for d in sorted(p.parent for p in root.glob("*/meta.json")):
            tar.add(d, arcname=d.name)
    tmp.replace(archive)


def cmd_compile(args: argparse.Namespace) -> int:
    from ios_tvm.models import BUILTIN_MODELS

    models = _csv(args.models)
    unknown = [m for m in models if m not in BUILTIN_MODELS]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; choose from {list(BUILTIN_MODELS)}")
    stage_costs = json.loads(Path(args.stage_costs).read_text()) if args.stage_costs else None
    if stage_costs is not None:
        stage_costs = stage_costs.get("cases", stage_costs)
    for model in models:
        for batch in (int(b) for b in _csv(args.batches)):
            case = case_name(model, batch)
            t0 = time.perf_counter()
            print(f"{case}: compiling ...", flush=True)
            meta = compile_case(model, batch, args.out / case, args, stage_costs)
            size = sum(p.stat().st_size for p in (args.out / case).iterdir())
            print(f"{case}: {meta['kernels']} kernels; IOS {meta['plans']['ios']['stages']} "
                  f"stages on {meta['plans']['ios']['streams']} streams "
                  f"({meta['cost_model']}); {size / 2**20:.1f} MiB; "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
    if args.archive:
        write_archive(args.out, args.archive)
        print(f"wrote {args.archive} ({args.archive.stat().st_size / 2**20:.1f} MiB)")
    return 0


# =============================================================================================
# the GPU side (runtime-only TVM is enough)
# =============================================================================================
def setup_cuda() -> tuple[Any, str]:
    """CUDA device 0 and its ``sm_XY``.

    The kernel libraries hold cubins compiled at ``compile`` time (``ios_tvm.compiler.
    cuda_binary``), so nothing is compiled here: TVM's CUDA runtime is loaded (runtime-only
    mode loads none by itself) and the device checked.
    """
    from ios_tvm.runtime.cuda import cuda_device_problem

    problem = cuda_device_problem(0)
    if problem:
        raise SystemExit(problem)
    import tvm

    dev = tvm.cuda(0)  # a tvm.runtime.Device, as the Relax VM wants
    major, minor = str(dev.compute_version).split(".")
    return dev, f"sm_{major}{minor}"


def load_case(case_dir: Path) -> dict[str, Any]:
    """A compiled case: meta, kernel library and weights (rebuilt from the ONNX builder)."""
    import tvm

    from ios_tvm.models import BUILTIN_MODELS

    meta = json.loads((case_dir / "meta.json").read_text())
    if meta.get("format") != CASE_FORMAT or meta.get("version") != VERSION:
        raise SystemExit(f"{case_dir}: not a bench_gpu case of version {VERSION}")
    model = BUILTIN_MODELS[meta["model"]](batch=meta["batch"], seed=meta["seed"])
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    weights: dict[str, np.ndarray] = {}
    for name, r in meta["weights"].items():
        a = np.ascontiguousarray(inits[r["initializer"]]).reshape(r["shape"]).astype(r["dtype"])
        if _sha1(a) != r["sha1"]:
            raise SystemExit(f"{case_dir}: weight {name} rebuilt from the ONNX builder differs "
                             "from the one compiled (other ios_tvm.models version?)")
        weights[name] = a
    if meta["weights_extra"]:
        with np.load(case_dir / "weights_extra.npz") as z:
            weights.update({k: z[k] for k in z.files})
    lib = tvm.runtime.load_module(str(case_dir / "kernels.so"))
    return {"meta": meta, "model": model, "lib": lib, "weights": weights, "dir": case_dir}


def _plan(case: Mapping[str, Any], kind: str) -> Any:
    from ios_tvm.ir.plan import Plan

    return Plan.loads((case["dir"] / f"plan_{kind}.json").read_text())


def case_dirs(root: Path, models: Sequence[str], batches: Sequence[int]) -> list[Path]:
    """The compiled cases under ``root`` (a directory, or an archive from ``compile
    --archive``, unpacked into a temporary directory) of the given models and batches."""
    if root.is_file():
        import tarfile
        import tempfile

        tmp = Path(tempfile.mkdtemp(prefix="bench_gpu_"))
        with tarfile.open(root) as tar:
            tar.extractall(tmp, filter="data")
        root = tmp
    found = sorted(p.parent for p in root.glob("*/meta.json"))
    out = []
    for d in found:
        meta = json.loads((d / "meta.json").read_text())
        if (not models or meta["model"] in models) and (not batches or meta["batch"] in batches):
            out.append(d)
    if not out:
        raise SystemExit(f"no compiled cases under {root} (run `compile` first)")
    return out


def cmd_profile(args: argparse.Namespace) -> int:
    from ios_tvm.ir.plan import Plan
    from ios_tvm.runtime.executor import Executor

    dev, _ = setup_cuda()
    doc: dict[str, Any] = {"format": "ios_tvm.bench_gpu.stage_costs", "version": VERSION,
                           "date": _dt.datetime.now().isoformat(timespec="seconds"),
                           "device": str(dev), "cases": {}}
    import tvm

    name = str(tvm.cuda(0).device_name)
    for d in case_dirs(args.dir, _csv(args.models), [int(b) for b in _csv(args.batches)]):
        if not (d / "stages.json").is_file():
            print(f"{d.name}: no stages.json (compile with --profile-candidates); skipped")
            continue
        case = load_case(d)
        plan = Plan.loads((d / "plan_profiling.json").read_text())
        e = Executor(plan, case["lib"], case["weights"], dev, cuda_graph=False)
        stages = json.loads((d / "stages.json").read_text())
        t0 = time.perf_counter()
        costs = {key: e.profile_stage(groups, warmup=args.warmup, number=args.number,
                                      repeat=args.repeat) for key, groups in stages.items()}
        doc["cases"][d.name] = {"device": name, "stages": costs}
        print(f"{d.name}: {len(costs)} stages in {time.perf_counter() - t0:.1f} s", flush=True)
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc))
    print(f"wrote {out}")
    return 0


# -- timing ----------------------------------------------------------------------------------
def _time_n(fn: Callable[[], Any], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return time.perf_counter() - t0


def measure(variants: Mapping[str, Callable[[], Any]], *, repeat: int, min_ms: float,
            warmup: int) -> dict[str, list[float]]:
    """Seconds per run of each variant, ``repeat`` samples each, taken round-robin (so that
    clock and thermal drift hit every variant alike); each sample runs at least ``min_ms``."""
    numbers = {}
    for name, fn in variants.items():
        _time_n(fn, warmup)
        n = 1
        while _time_n(fn, n) * 1e3 < min_ms and n < 1 << 16:
            n *= 2
        numbers[name] = n
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeat):
        for name, fn in variants.items():
            samples[name].append(_time_n(fn, numbers[name]) / numbers[name])
    return samples


def run_case(case_dir: Path, dev: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Build every variant of one case, check their outputs, time them."""
    import tvm

    from ios_tvm.runtime.executor import Executor

    case = load_case(case_dir)
    meta = case["meta"]
    rng = np.random.default_rng(0)
    x = rng.standard_normal(meta["input"]["shape"]).astype(meta["input"]["dtype"])
    variants: dict[str, Callable[[], Any]] = {}
    outputs: dict[str, np.ndarray] = {}
    errors: dict[str, str] = {}
    extra: dict[str, Any] = {}
    wanted = set(_csv(args.variants)) if args.variants else set(VARIANTS)

    def add(name: str, setup: Callable[[], tuple[Callable[[], Any], Callable[[], np.ndarray]]]
            ) -> None:
        if name not in wanted:
            return
        try:
            fn, output = setup()
            fn()
            outputs[name] = output()
            variants[name] = fn
        except Exception as e:  # a failing baseline is reported, not fatal
            errors[name] = f"{type(e).__name__}: {e}"
            print(f"  {name}: FAILED {errors[name][:300]}", flush=True)

    cuda = meta.get("device_type", "cuda") == "cuda"
    for kind, short in (("sequential", "seq"), ("ios", "ios")):
        for graph in (False, True) if cuda else (False,):
            def setup(kind: str = kind, graph: bool = graph, short: str = short) -> Any:
                e = Executor(_plan(case, kind), case["lib"], case["weights"], dev,
                             cuda_graph=graph)
                e.set_input(0, x)
                run = e._run
                run()
                if graph:
                    extra[f"{short}_graph_nodes"] = e.cuda_graph_stats()["nodes"]
                return run, lambda: e.get_output(0).numpy()
            add(f"{short}_{'graph' if graph else 'eager'}", setup)

    try:
        from tvm.runtime.vm import VirtualMachine
    except ImportError:  # older layouts
        from tvm.relax import VirtualMachine  # type: ignore[no-redef]
    weights_dev = [tvm.runtime.tensor(case["weights"][n], dev) for n in meta["vm_weights"]]
    x_dev = tvm.runtime.tensor(x, dev)
    for graph in (False, True) if cuda else (False,):
        def setup_vm(graph: bool = graph) -> Any:
            exe = tvm.runtime.load_module(str(case_dir / ("vm_graph.so" if graph else "vm.so")))
            main = VirtualMachine(exe, dev)[meta["vm_function"]]
            holder: dict[str, Any] = {}

            def run() -> None:
                holder["out"] = main(x_dev, *weights_dev)
                dev.sync()

            def output() -> np.ndarray:
                out = holder["out"]
                return (out if isinstance(out, tvm.runtime.Tensor) else out[0]).numpy()
            return run, output
        add("relax_vm_graph" if graph else "relax_vm", setup_vm)

    if wanted & {"torch_eager", "torch_compile"} and not args.no_torch:
        try:
            import torch
        except ImportError:
            torch = None
            errors["torch_eager"] = errors["torch_compile"] = "torch is not importable"
        if torch is not None:
            torch.backends.cudnn.allow_tf32 = args.torch_tf32
            torch.backends.cuda.matmul.allow_tf32 = args.torch_tf32
            extra["torch"] = {"version": torch.__version__, "tf32": args.torch_tf32,
                              "cudnn_benchmark": torch.backends.cudnn.benchmark}
            for name in ("torch_eager", "torch_compile"):
                def setup_torch(name: str = name) -> Any:
                    from ios_tvm.bench.torch_onnx import torch_runner

                    # warm-up runs compile, record and warm the CUDA graph trees
                    run, outs, _ = torch_runner(case["model"], [x],
                                                device="cuda" if cuda else "cpu",
                                                compile=name == "torch_compile")
                    return run, lambda: outs[0]
                add(name, setup_torch)

    ref = outputs.get("seq_eager")
    check = {}
    if ref is not None:
        for name, out in outputs.items():
            diff = float(np.max(np.abs(out.astype(np.float64) - ref))) if out.shape == \
                ref.shape else float("inf")
            check[name] = {"max_abs_diff_vs_seq_eager": diff,
                           "max_abs_ref": float(np.max(np.abs(ref))),
                           "ok": bool(out.shape == ref.shape and np.allclose(
                               out, ref, rtol=args.rtol, atol=args.atol))}
    samples = measure(variants, repeat=args.repeat, min_ms=args.min_ms, warmup=args.warmup)
    latency = {name: {"median_ms": statistics.median(s) * 1e3, "mean_ms": statistics.fmean(s) * 1e3,
                      "min_ms": min(s) * 1e3, "max_ms": max(s) * 1e3,
                      "samples_ms": [v * 1e3 for v in s]} for name, s in samples.items()}
    return {"case": case_dir.name, "model": meta["model"], "batch": meta["batch"],
            "kernels": meta["kernels"], "plans": meta["plans"], "cost_model": meta["cost_model"],
            "latency": latency, "check": check, "errors": errors, "extra": extra}


# -- reference outputs (here), plan checks and per-kernel conv times (GPU) --------------------
#: File of a case holding inputs and ONNX Runtime outputs (``reference`` writes it).
REFERENCE_FILE = "reference.npz"


def reference_inputs(meta: Mapping[str, Any], count: int) -> list[np.ndarray]:
    """``count`` deterministic standard-normal inputs of a case (seeds 1000, 1001, ...)."""
    shape, dtype = meta["input"]["shape"], meta["input"]["dtype"]
    return [np.random.default_rng(1000 + i).standard_normal(shape).astype(dtype)
            for i in range(count)]


def cmd_reference(args: argparse.Namespace) -> int:
    """Write each case's ``reference.npz``: inputs ``x0, x1, ...`` and ONNX Runtime's (CPU)
    outputs ``ort<i>_<j>`` (input i, output j) of the zoo model the case was compiled from."""
    import onnxruntime as ort

    from ios_tvm.models import BUILTIN_MODELS

    for d in case_dirs(args.dir, _csv(args.models), [int(b) for b in _csv(args.batches)]):
        meta = json.loads((d / "meta.json").read_text())
        model = BUILTIN_MODELS[meta["model"]](batch=meta["batch"], seed=meta["seed"])
        sess = ort.InferenceSession(model.SerializeToString(),
                                    providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        arrays: dict[str, np.ndarray] = {}
        for i, x in enumerate(reference_inputs(meta, args.inputs)):
            arrays[f"x{i}"] = x
            for j, y in enumerate(sess.run(None, {name: x})):
                arrays[f"ort{i}_{j}"] = np.asarray(y)
        np.savez_compressed(d / REFERENCE_FILE, **arrays)
        print(f"{d.name}: {args.inputs} inputs, ONNX Runtime {ort.__version__} outputs -> "
              f"{d / REFERENCE_FILE}", flush=True)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Run each case's plans a few times (eager, then as a CUDA graph) and compare with the
    sequential plan: a short, deterministic workload, e.g. for ``compute-sanitizer``."""
    from ios_tvm.runtime.executor import Executor

    dev, _ = setup_cuda()
    bad = 0
    for d in case_dirs(args.dir, _csv(args.models), [int(b) for b in _csv(args.batches)]):
        case = load_case(d)
        (x,) = reference_inputs(case["meta"], 1)
        want = Executor(_plan(case, "sequential"), case["lib"], case["weights"], dev,
                        cuda_graph=False)(x)
        for kind in _csv(args.plans):
            for graph in (False, True):
                e = Executor(_plan(case, kind), case["lib"], case["weights"], dev,
                             cuda_graph=graph)
                for r in range(args.runs):
                    got = e(x)
                    same = all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))
                    bad += not same
                    print(f"{d.name} {kind} {'graph' if graph else 'eager'} run {r}: "
                          f"{'same as sequential' if same else 'DIFFERS from sequential'}",
                          flush=True)
    return 1 if bad else 0


def _conv_params(x: Sequence[int], w: Sequence[int], y: Sequence[int]) -> dict[str, Any] | None:
    """Stride, symmetric padding and groups of an NCHW conv2d from its shapes (None when no
    stride of 1..4 explains them)."""
    groups = x[1] // w[1] if w[1] else 0
    if groups < 1 or x[1] != w[1] * groups or y[1] != w[0]:
        return None
    out: dict[str, Any] = {"groups": groups}
    for n, k, m in ((x[2], w[2], y[2]), (x[3], w[3], y[3])):
        for s in (1, 2, 3, 4):
            twice_pad = (m - 1) * s + k - n
            if twice_pad >= 0 and twice_pad % 2 == 0 and (n + twice_pad - k) // s + 1 == m:
                out.setdefault("stride", []).append(s)
                out.setdefault("padding", []).append(twice_pad // 2)
                break
        else:
            return None
    return out


def cmd_convs(args: argparse.Namespace) -> int:
    """GPU time of every convolution kernel of each case's sequential plan (the executor's
    ``profile_stage``: CUDA events on its stream) next to PyTorch's (cuDNN) ``conv2d`` with
    the same shapes, stride, padding and groups (plus bias and ReLU when TVM fused them);
    JSON out. TVM's CUDA conv2d schedules are generic rules (dlight has no conv2d rule), so
    this says how far from cuDNN the kernels are."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    from ios_tvm.runtime.executor import Executor

    dev, _ = setup_cuda()
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    doc: dict[str, Any] = {"format": "ios_tvm.bench_gpu.convs", "version": VERSION,
                           "date": _dt.datetime.now().isoformat(timespec="seconds"),
                           "torch": torch.__version__, "cudnn": torch.backends.cudnn.version(),
                           "tf32": False, "cudnn_benchmark": torch.backends.cudnn.benchmark,
                           "timing": "median of repeat samples, each the mean of number runs; "
                                     "CUDA events", "cases": {}}

    def torch_ms(fn: Callable[[], Any]) -> float:
        for _ in range(args.warmup):
            fn()
        samples = []
        for _ in range(args.repeat):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(args.number):
                fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / args.number)
        return statistics.median(samples)

    for d in case_dirs(args.dir, _csv(args.models), [int(b) for b in _csv(args.batches)]):
        case = load_case(d)
        plan = _plan(case, "sequential")
        e = Executor(plan, case["lib"], case["weights"], dev, cuda_graph=False)
        rows = []
        for ci, call in enumerate(plan.calls):
            if "conv2d" not in call.kernel:
                continue
            shapes = [tuple(plan.tensors[a].shape) for a in call.args]
            four = [s for s in shapes if len(s) == 4]
            if len(four) < 3:
                continue
            x_s, w_s, y_s = four[0], four[1], four[-1]
            params = _conv_params(x_s, w_s, y_s)
            tvm_s = e.profile_stage([[ci]], warmup=args.warmup, number=args.number,
                                    repeat=args.repeat)
            row: dict[str, Any] = {"call": ci, "kernel": call.kernel, "node": call.node,
                                   "x": x_s, "w": w_s, "y": y_s, "params": params,
                                   "tvm_ms": statistics.median(tvm_s) * 1e3}
            if params is not None:
                xt = torch.randn(x_s, device="cuda")
                wt = torch.randn(w_s, device="cuda")
                bt = torch.randn(w_s[0], device="cuda") if "add" in call.kernel else None
                relu = "relu" in call.kernel

                def conv(xt: Any = xt, wt: Any = wt, bt: Any = bt, relu: bool = relu,
                         p: Mapping[str, Any] = params) -> Any:
                    y = F.conv2d(xt, wt, bt, stride=p["stride"], padding=p["padding"],
                                 groups=p["groups"])
                    return torch.relu_(y) if relu else y
                with torch.inference_mode():
                    row["torch_ms"] = torch_ms(conv)
                row["tvm_over_torch"] = row["tvm_ms"] / row["torch_ms"]
            rows.append(row)
        ratios = [r["tvm_over_torch"] for r in rows if "tvm_over_torch" in r]
        summary = {"convs": len(rows), "tvm_ms_total": sum(r["tvm_ms"] for r in rows),
                   "torch_ms_total": sum(r.get("torch_ms", 0.0) for r in rows),
                   "median_tvm_over_torch": statistics.median(ratios) if ratios else None}
        doc["cases"][d.name] = {"summary": summary, "convs": rows}
        print(f"{d.name}: {summary}", flush=True)
        worst = sorted(rows, key=lambda r: -r.get("tvm_over_torch", 0))[:5]
        for r in worst:
            print(f"  {r['kernel'][:48]:48} x{r['x']} w{r['w']}: TVM {r['tvm_ms']:.4f} ms, "
                  f"torch {r.get('torch_ms', float('nan')):.4f} ms", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


def print_table(rows: Sequence[Mapping[str, Any]]) -> None:
    cols = [v for v in VARIANTS if any(v in r["latency"] for r in rows)]
    short = {"relax_vm": "VM", "relax_vm_graph": "VM+G", "seq_eager": "seq", "seq_graph": "seq+G",
             "ios_eager": "ios", "ios_graph": "ios+G", "torch_eager": "torch",
             "torch_compile": "t.comp"}
    print("\nMedian latency per inference (ms); +G = CUDA graph")
    print(f"{'model':14}{'b':>4}" + "".join(f"{short[c]:>9}" for c in cols)
          + f"{'ios+G/seq+G':>13}{'VM+G/ios+G':>12}")
    for r in rows:
        lat = {k: v["median_ms"] for k, v in r["latency"].items()}
        cells = "".join(f"{lat[c]:9.3f}" if c in lat else f"{'-':>9}" for c in cols)
        a = (f"{lat['seq_graph'] / lat['ios_graph']:13.2f}"
             if {"seq_graph", "ios_graph"} <= lat.keys() else f"{'-':>13}")
        b = (f"{lat['relax_vm_graph'] / lat['ios_graph']:12.2f}"
             if {"relax_vm_graph", "ios_graph"} <= lat.keys() else f"{'-':>12}")
        print(f"{r['model']:14}{r['batch']:4d}{cells}{a}{b}")
        bad = [k for k, c in r["check"].items() if not c["ok"]]
        if bad or r["errors"]:
            print(f"{'':18}outputs differ: {bad}; failed: {sorted(r['errors'])}")


def machine_info(cuda: bool) -> dict[str, Any]:
    """The GPU (or CPU), Python, TVM and git state."""
    import tvm

    info: dict[str, Any] = {"python": platform.python_version(), "hostname": platform.node(),
                            "tvm": tvm.__version__, "cpu_count": os.cpu_count(),
                            "tvm_runtime_only": bool(getattr(tvm.base, "_RUNTIME_ONLY", False)),
                            **_git()}
    if not cuda:
        info["gpu"] = "none (CPU run)"
        return info
    d = tvm.cuda(0)
    info.update(gpu=str(d.device_name), compute_version=str(d.compute_version),
                multi_processor_count=int(d.multi_processor_count))
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        info["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm,memory.total",
             "--format=csv,noheader"], capture_output=True, text=True, timeout=30).stdout.strip()
    return info


def cmd_run(args: argparse.Namespace) -> int:
    dirs = case_dirs(args.dir, _csv(args.models), [int(b) for b in _csv(args.batches)])
    kinds = {json.loads((d / "meta.json").read_text()).get("device_type", "cuda") for d in dirs}
    if len(kinds) != 1:
        raise SystemExit(f"cases for several device types {sorted(kinds)}; select with --models")
    cuda = kinds == {"cuda"}
    if cuda:
        dev, _ = setup_cuda()
    else:
        import tvm

        dev = tvm.cpu(0)
    machine = machine_info(cuda)
    print(f"device: {machine['gpu']} {machine.get('compute_version', '')}", flush=True)
    rows = []
    t0 = time.perf_counter()
    for d in dirs:
        print(f"{d.name} ...", flush=True)
        rows.append(run_case(d, dev, args))
        print_table(rows[-1:])
    print_table(rows)
    doc = {"format": RESULT_FORMAT, "version": VERSION,
           "date": _dt.datetime.now().isoformat(timespec="seconds"),
           "command": [Path(sys.executable).name, *sys.argv], "machine": machine,
           "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                        if k != "func"},
           "timing": "host wall clock of one synchronous inference (launch until the outputs "
                     "are ready), median of round-robin samples",
           "seconds": time.perf_counter() - t0, "cases": rows}
    out = args.out
    if out is None:
        gpu = re.sub(r"[^A-Za-z0-9]+", "-", machine["gpu"]).strip("-").lower()
        out = ROOT / "benchmarks" / "results" / f"gpu-{_dt.date.today().isoformat()}-{gpu}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"\nwrote {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compile", help="lower, schedule and export the cases (no GPU needed)")
    c.add_argument("--out", type=Path, default=ROOT / "build" / "bench_gpu")
    c.add_argument("--models", default=",".join(DEFAULT_MODELS))
    c.add_argument("--batches", default="1,8,32")
    c.add_argument("--arch", default="sm_90", help="CUDA arch of the GPU (H100: sm_90)")
    c.add_argument("--target", choices=("cuda", "llvm"), default="cuda",
                   help="llvm: CPU cases (no CUDA graphs), to try the pipeline without a GPU")
    c.add_argument("--seed", type=int, default=0, help="seed of the zoo's random weights")
    c.add_argument("--max-groups", type=int, default=8)
    c.add_argument("--max-group-size", type=int, default=3)
    c.add_argument("--max-part-size", type=int, default=40)
    c.add_argument("--stage-costs", default=None,
                   help="stage latencies from `profile` (JSON): search with measured costs")
    c.add_argument("--profile-candidates", action="store_true",
                   help="also export the profiling plan and the stages `profile` should time")
    c.add_argument("--archive", type=Path, default=None,
                   help="also pack every case under --out into this .tar.xz (to carry)")
    c.set_defaults(func=cmd_compile)

    for name, func, helptext in (("run", cmd_run, "time every variant (GPU)"),
                                 ("profile", cmd_profile, "time the candidate stages (GPU)")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--dir", type=Path, default=ROOT / "build" / "bench_gpu",
                       help="the compiled cases: a directory or a `compile --archive` file")
        p.add_argument("--models", default="", help="comma-separated subset (default: all)")
        p.add_argument("--batches", default="", help="comma-separated subset (default: all)")
        p.add_argument("--out", type=Path, default=None if name == "run" else
                       ROOT / "build" / "bench_gpu_stage_costs.json")
        p.add_argument("--repeat", type=int, default=15 if name == "run" else 6)
        p.add_argument("--warmup", type=int, default=10 if name == "run" else 2)
        p.set_defaults(func=func)
        if name == "profile":
            p.add_argument("--number", type=int, default=6)
        else:
            p.add_argument("--min-ms", type=float, default=50.0,
                           help="each sample runs at least this long")
            p.add_argument("--variants", default="", help=f"subset of {', '.join(VARIANTS)}")
            p.add_argument("--no-torch", action="store_true", help="skip the PyTorch baselines")
            p.add_argument("--torch-tf32", action="store_true",
                           help="let PyTorch use TF32 (TVM's kernels are plain fp32)")
            p.add_argument("--rtol", type=float, default=1e-3)
            p.add_argument("--atol", type=float, default=1e-3)
    def case_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dir", type=Path, default=ROOT / "build" / "bench_gpu",
                       help="the compiled cases: a directory or a `compile --archive` file")
        p.add_argument("--models", default="", help="comma-separated subset (default: all)")
        p.add_argument("--batches", default="", help="comma-separated subset (default: all)")

    r = sub.add_parser("reference", help="write inputs and ONNX Runtime outputs into each "
                                         "compiled case (here; no GPU)")
    case_args(r)
    r.add_argument("--inputs", type=int, default=2, help="how many inputs")
    r.set_defaults(func=cmd_reference)
    k = sub.add_parser("check", help="run the plans a few times, eager and as CUDA graphs, and "
                                     "compare with the sequential plan (GPU)")
    case_args(k)
    k.add_argument("--plans", default="ios", help="plan kinds (sequential, ios)")
    k.add_argument("--runs", type=int, default=3)
    k.set_defaults(func=cmd_check)
    v = sub.add_parser("convs", help="GPU time of TVM's conv kernels next to PyTorch/cuDNN")
    case_args(v)
    v.add_argument("--out", type=Path, default=ROOT / "build" / "bench_gpu_convs.json")
    v.add_argument("--warmup", type=int, default=3)
    v.add_argument("--number", type=int, default=10)
    v.add_argument("--repeat", type=int, default=5)
    v.set_defaults(func=cmd_convs)
    args = ap.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
