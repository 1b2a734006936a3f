"""The ``ios-tvm`` command line (also ``python -m ios_tvm``).

Exit codes: 0 success, 1 the work failed (bad model, unsupported graph, ...), 2 bad usage.
A failure prints one line; ``--verbose`` prints the traceback too.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from .config import SEARCH_STRATEGIES, SearchConfig
from .errors import IosTvmError

logger = logging.getLogger("ios_tvm")


def _load_graph(args: argparse.Namespace) -> Any:
    from .extract import graph_from_model
    from .frontend import parse_input_shapes
    from .models import BUILTIN_MODELS

    model: Any = args.model
    if model in BUILTIN_MODELS:
        model = BUILTIN_MODELS[model](batch=args.batch_size)
    elif not Path(model).exists():
        raise IosTvmError(f"model {args.model!r} is neither a file nor a built-in model "
                          f"({', '.join(sorted(BUILTIN_MODELS))})")
    shapes = parse_input_shapes(args.input_shapes) if args.input_shapes else None
    return graph_from_model(model, target=args.target, input_shapes=shapes)


def _cmd_schedule(args: argparse.Namespace) -> int:
    from .cost import AnalyticCost
    from .search import search

    extraction = _load_graph(args)
    graph = extraction.graph
    cost = AnalyticCost(graph, args.device)
    print(f"{args.model}: {len(graph.nodes)} kernels, {graph.num_edges} edges, width {graph.width}")
    results = {}
    for strategy in dict.fromkeys(["sequential", "greedy", args.strategy]):
        cfg = SearchConfig(strategy=strategy, max_groups=args.max_groups,
                           max_group_size=args.max_group_size, max_part_size=args.max_part_size)
        results[strategy] = search(graph, cost, cfg, progress=args.progress)
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
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        doc = chosen.to_json()
        doc["meta"] = {**doc["meta"], "model": str(args.model), "target": args.target,
                       "cost_model": f"analytic:{args.device}",
                       "kernels": [n.name for n in graph.nodes]}
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        tmp.replace(out)  # never leave a half-written schedule behind
        print(f"schedule written to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ios-tvm``."""
    parser = argparse.ArgumentParser(
        prog="ios-tvm", description="Inter-operator scheduling (IOS) for TVM Relax models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details and tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("schedule", help="extract a model's kernel graph and search a schedule",
                       description="Lower MODEL to fused TVM kernels, extract the operator graph "
                                   "and run the IOS search with the analytic cost model.")
    p.add_argument("model", help="an .onnx file or a built-in model name (sample)")
    p.add_argument("--target", default="llvm",
                   help="llvm, cuda, or a TVM target JSON (default llvm)")
    p.add_argument("--input-shapes", help="sizes of dynamic inputs, e.g. 'x:1,3,224,224 y:1,10'")
    p.add_argument("--batch-size", type=int, default=1, help="batch of built-in models (default 1)")
    p.add_argument("--strategy", choices=SEARCH_STRATEGIES, default="concurrent",
                   help="schedule strategy (default concurrent)")
    p.add_argument("--max-groups", type=int, default=8, help="groups per stage, IOS s (default 8)")
    p.add_argument("--max-group-size", type=int, default=3, help="ops per group, IOS r (default 3)")
    p.add_argument("--max-part-size", type=int, default=40,
                   help="ops per searched part (default 40)")
    p.add_argument("--device", default="v100", help="analytic cost preset: v100, h100, cpu")
    p.add_argument("--show-stages", action="store_true", help="print every stage")
    p.add_argument("--progress", action="store_true", help="progress bar over parts")
    p.add_argument("-o", "--output", help="write the schedule as JSON to this file")
    p.set_defaults(func=_cmd_schedule)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on usage errors, 0 on --help
        return int(e.code or 0)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except (IosTvmError, OSError, ValueError) as e:
        if args.verbose:
            raise
        print(f"ios-tvm {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
