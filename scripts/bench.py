#!/usr/bin/env python
"""The ios-tvm benchmark: the model zoo, every way, in one run (issue 5).

For each model and batch size, :func:`ios_tvm.bench.harness.bench` lowers the model once and times,
round-robin on the same kernels: the IOS plan of each strategy, the sequential and greedy
plans, TVM's Relax VM, ONNX Runtime and PyTorch eager and ``torch.compile`` (when PyTorch is
installed; on CUDA also each executor plan and the VM as a CUDA
graph). It records search time, stages measured, peak activation memory and the largest
error against ONNX Runtime. The JSON (machine, date, command, every sample) goes to
``benchmarks/results/bench-<set>-<date>.json`` and is rewritten after every model, so a long
run that is stopped keeps what it finished; a speed-up chart goes next to it.

Sets
----
``quick`` (the default; a few minutes on a 2-core CPU)
    sample block, SqueezeNet and ResNet-50 at batch 1, measured stage costs.
``full``
    all six zoo models. On a GPU: batch sizes 1, 8 and 32, measured costs. On a CPU:
    batch 1; models with more than ``--measure-limit`` kernels (RandWire, NASNet) are
    searched with the analytic cost, because measuring their candidate stages takes hours
    on a small CPU even pruned (RandWire: 362 stages in 190 s, ~0.5 s a stage, and stopped
    far from done; benchmarks/results/search-cpu-2026-12-03-randwire-partial.json). The
    JSON records which cost each model used.

Examples
--------
::

    python scripts/bench.py                         # quick CPU set
    python scripts/bench.py --set full              # all six models
    python scripts/bench.py --models inception_v3 --strategies concurrent merge
    python scripts/bench.py --set full --target cuda --batch-sizes 1 8 32   # needs TVM + a GPU

On the project's lent GPU machine (no TVM wheel there) use ``scripts/bench_gpu.py``, which
compiles here and runs there.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ios_tvm.runtime.executor import default_cpu_threads  # noqa: E402

default_cpu_threads()

from ios_tvm.bench.harness import bench  # noqa: E402
from ios_tvm.bench.timing import machine_info  # noqa: E402
from ios_tvm.compiler.target import resolve_target  # noqa: E402
from ios_tvm.cost.base import ProfileSettings  # noqa: E402
from ios_tvm.models import BUILTIN_MODELS, MODEL_INFO  # noqa: E402
from ios_tvm.scheduler.config import SearchConfig  # noqa: E402

SETS = {
    "quick": ["sample", "squeezenet", "resnet50"],
    "full": ["sample", "squeezenet", "resnet50", "inception_v3", "randwire", "nasnet"],
}
#: Kernel counts at batch 1 (TVM 0.27 fusion), to pick the cost model before lowering.
KERNELS = {"sample": 5, "squeezenet": 42, "resnet50": 55, "inception_v3": 119, "randwire": 315,
           "nasnet": 738}


def default_out(set_name: str, device: str) -> Path:
    day = _dt.date.today().isoformat()
    return ROOT / "benchmarks" / "results" / f"bench-{set_name}-{device}-{day}.json"


def _write(doc: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str))
    tmp.replace(out)


#: Settings that must agree for a resumed run's results to sit in one table.
_RESUME_KEYS = ("set_name", "target", "batch_sizes", "strategies", "cpu_layout", "cost",
                "measure_limit", "max_part_size", "profile", "rounds", "min_ms", "torch")


def _resumed(doc: dict[str, Any], out: Path) -> dict[str, Any]:
    """``doc`` with the results of the earlier run in ``out`` (same target and settings)."""
    try:
        old = json.loads(out.read_text())
        old_settings, results = old["settings"], old["results"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"bench.py: cannot resume {out}: not a benchmark run ({e})") from None
    differ = [k for k in _RESUME_KEYS if old_settings.get(k) != doc["settings"].get(k)]
    if old.get("target") != doc["target"]:
        differ.insert(0, "target")
    if differ:
        raise SystemExit(f"bench.py: cannot resume {out}: it was run with other settings "
                         f"({', '.join(differ)}); use another --out")
    commands = old.get("commands") or [old.get("command")]
    return doc | {"results": dict(results), "skipped": {},
                  "commands": [*commands, doc["command"]],
                  "machines": [*(old.get("machines") or [old.get("machine")]), doc["machine"]],
                  "seconds": float(old.get("seconds", 0.0))}


def _paired_vs_ort(rep: dict[str, Any]) -> float | None:
    """Median over rounds of (shipped plan / ONNX Runtime) in the same round.

    The runners are timed round-robin, so a round's two samples saw the same machine; on a
    shared machine this ratio is far steadier than the ratio of the two medians.
    """
    samples = rep.get("samples_ms", {})
    ort = samples.get("onnxruntime")
    # The runner each strategy shipped: the one whose median the report gives as shipped_ms.
    shipped = [samples.get(next((k for k, v in rep["median_ms"].items()
                                 if v == ms and k != "onnxruntime"), ""))
               for ms in rep.get("shipped_ms", {}).values()]
    ratios = [statistics.median(a / b for a, b in zip(x, ort, strict=True))
              for x in shipped if x and ort and len(x) == len(ort)]
    return min(ratios) if ratios else None


def summary_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per model and batch: medians (ms) and ratios, for the table and the chart."""
    rows = []
    for key, rep in doc["results"].items():
        med = rep["median_ms"]
        seq = med["sequential"]
        best_ios = min((v for k, v in med.items() if k.startswith("ios/")), default=None)
        ort = med.get("onnxruntime")
        rows.append({"model": key, "kernels": rep["kernels"], "sequential": seq,
                     "greedy": med.get("greedy"), "best_ios": best_ios,
                     "relax_vm": med.get("relax_vm"), "onnxruntime": ort,
                     "torch": med.get("torch"), "torch_compile": med.get("torch.compile"),
                     "ios_vs_seq": seq / best_ios if best_ios else None,
                     "shipped_vs_ort": (min(rep["shipped_ms"].values()) / ort
                                        if ort and rep["shipped_ms"] else None),
                     "shipped_vs_ort_paired": _paired_vs_ort(rep),
                     "cost": rep["settings"]["cost"],
                     "search_s": sum(s.get("search_seconds", 0.0)
                                     for s in rep["search"].values()),
                     "stages_measured": sum(s.get("stages_measured", 0)
                                            for s in rep["search"].values()),
                     "peak_ios_vs_seq": max(rep["peak_activation_bytes"][k]
                                            for k in rep["peak_activation_bytes"]
                                            if k.startswith("ios/"))
                     / rep["peak_activation_bytes"]["sequential"],
                     "max_err": max(rep["max_abs_err"].values())})
    return rows


def print_summary(doc: dict[str, Any]) -> None:
    def f(v: Any, spec: str = ".3f") -> str:
        return "" if v is None else format(v, spec)

    head = (f"{'model':<18} {'kern':>4} {'seq ms':>8} {'greedy':>8} {'best IOS':>8} "
            f"{'VM':>8} {'ORT':>8} {'torch':>8} {'t.comp':>8} {'IOS/seq':>7} {'ship/ORT':>8} "
            f"{'paired':>6} "
            f"{'search s':>8} "
            f"{'meas':>5} {'mem':>5} {'max err':>8} cost")
    print(head)
    print("-" * len(head))
    for r in summary_rows(doc):
        print(f"{r['model']:<18} {r['kernels']:>4} {f(r['sequential']):>8} "
              f"{f(r['greedy']):>8} {f(r['best_ios']):>8} {f(r['relax_vm']):>8} "
              f"{f(r['onnxruntime']):>8} {f(r['torch']):>8} {f(r['torch_compile']):>8} "
              f"{f(r['ios_vs_seq'], '.2f'):>7} "
              f"{f(r['shipped_vs_ort'], '.2f'):>8} {f(r['shipped_vs_ort_paired'], '.2f'):>6} "
              f"{r['search_s']:>8.1f} "
              f"{r['stages_measured']:>5} {r['peak_ios_vs_seq']:>5.2f} {r['max_err']:>8.1e} "
              f"{r['cost']}")
    print("(median ms per run; torch / t.comp: PyTorch eager / torch.compile; IOS/seq > 1: IOS "
          "faster; ship/ORT: what build ships vs ONNX Runtime (paired: median of the per-round "
          "ratios); mem: IOS peak activation memory "
          "/ sequential's)")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--set", choices=sorted(SETS), default="quick", dest="set_name")
    ap.add_argument("--models", nargs="+", choices=sorted(BUILTIN_MODELS),
                    help="models to run instead of the set's")
    ap.add_argument("--target", default="host", help="host (default), llvm, cuda or TVM JSON")
    ap.add_argument("--batch-sizes", nargs="+", type=int,
                    help="default: 1 (1 8 32 for the full set on CUDA)")
    ap.add_argument("--strategies", nargs="+", choices=("concurrent", "merge", "both"),
                    help="default: concurrent on a CPU (convs are NHWC there, and IOS-Merge "
                         "merges NCHW convs), concurrent and merge on CUDA")
    ap.add_argument("--cpu-layout", choices=("NHWC", "NCHW"), default="NHWC")
    ap.add_argument("--cost", choices=("auto", "measured", "analytic"), default="auto",
                    help="auto: measured, except analytic on a CPU for models with more than "
                         "--measure-limit kernels")
    ap.add_argument("--measure-limit", type=int, default=150)
    ap.add_argument("--max-part-size", type=int, default=20)
    ap.add_argument("--profile", nargs=3, type=int, default=[2, 6, 6],
                    metavar=("WARMUP", "NUMBER", "REPEAT"),
                    help="stage measurement settings (default 2 6 6, as ios-tvm compile)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--min-ms", type=float, default=100.0)
    ap.add_argument("--cache", help="measurement cache (default: ios-tvm's user cache)")
    ap.add_argument("--torch", nargs="*", default=["eager", "compile"],
                    choices=("eager", "compile"),
                    help="PyTorch baselines when torch is installed (default: eager compile; "
                         "--torch alone: none)")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("-q", "--quiet", action="store_true")
    ap.add_argument("-o", "--out", type=Path)
    ap.add_argument("--resume", action="store_true",
                    help="continue the run in OUT: keep its results (they must have the same "
                         "target and settings) and run only the models it lacks")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    target = resolve_target(args.target)
    cuda = target.kind.name == "cuda"
    models = args.models or SETS[args.set_name]
    batches = args.batch_sizes or ([1, 8, 32] if cuda and args.set_name == "full" else [1])
    strategies = args.strategies or (["concurrent", "merge"] if cuda or args.cpu_layout == "NCHW"
                                     else ["concurrent"])
    machine = machine_info()
    device = "cuda" if cuda else "cpu"
    out = args.out or default_out(args.set_name, device)
    doc: dict[str, Any] = {
        "benchmark": "ios-tvm zoo", "set": args.set_name, "command": [sys.executable, *sys.argv],
        "target": str(target), "machine": machine, "settings": vars(args) | {"out": str(out)},
        "results": {}, "skipped": {}}
    if args.resume and out.exists():
        doc = _resumed(doc, out)
        print(f"resuming {out}: {len(doc['results'])} results kept", flush=True)
    print(f"{args.set_name} set on {machine.get('gpu') or machine.get('cpu')}: "
          f"{', '.join(models)}; batch {batches}; target {target}", flush=True)
    t0 = time.perf_counter() - doc.get("seconds", 0.0)
    for name in models:
        for batch in batches:
            key = name if batch == 1 else f"{name}@b{batch}"
            if key in doc["results"]:
                continue  # kept from the run being resumed
            cost = args.cost
            if cost == "auto":
                cost = ("analytic" if not cuda and KERNELS.get(name, 0) > args.measure_limit
                        else "measured")
            print(f"== {key} ({MODEL_INFO[name].description}; {cost} cost)", flush=True)
            try:
                report = bench(name, target, batch_size=batch, strategies=strategies,
                               cpu_layout=args.cpu_layout,
                               cost=cost, config=SearchConfig(max_part_size=args.max_part_size),
                               cache=args.cache or True, rounds=args.rounds,
                               min_ms=args.min_ms,
                               settings=ProfileSettings(*args.profile), pytorch=args.torch,
                               progress=not args.quiet, name=key)
            except Exception as e:  # keep going: one model's failure is a row, not the run
                logging.exception("%s failed", key)
                doc["skipped"][key] = f"{type(e).__name__}: {e}"
                continue
            print(report.table(), flush=True)
            doc["results"][key] = report.to_json()
            doc["seconds"] = time.perf_counter() - t0
            _write(doc, out)
    if not doc["results"]:
        print("nothing was measured")
        return 1
    print()
    print_summary(doc)
    doc["summary"] = summary_rows(doc)
    _write(doc, out)
    print(f"written to {out}")
    if not args.no_plot:
        from ios_tvm.bench.plot import plot_speedups

        rows = {k: {v: ms / 1e3 for v, ms in rep["median_ms"].items()}
                for k, rep in doc["results"].items()}
        chart = plot_speedups(rows, out.with_suffix(".png"),
                              title=f"{machine.get('gpu') or machine.get('cpu')}, "
                                    f"{args.set_name} set")
        print(f"chart: {chart}")
    return 0 if not doc["skipped"] else 1


if __name__ == "__main__":
    sys.exit(main())
