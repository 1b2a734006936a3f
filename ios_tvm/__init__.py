"""ios-tvm: inter-operator scheduling (IOS, MLSys 2021) for TVM Relax.

The package follows the data flow, one folder per stage, imports only running downward
(``tests/test_layers.py`` checks it):

* ``ir``: the data passed between stages: the kernel graph, schedules, execution plans;
* ``scheduler``: the IOS search over the graph (no TVM);
* ``cost``: stage cost models: analytic, measured (handed a profiler), the cache, RPC;
* ``compiler``: TVM's side: model loading, lowering to kernels, extraction, kernel schedules
  and tuning, merged kernels, plan lowering and memory planning, the Relax pass, ``build``;
* ``runtime``: loading and running artifacts (``tvm.runtime`` and ``tvm_ffi`` only);
* ``bench``: the benchmark harness and its baselines; ``models``: the model zoo;
* ``cli``: the ``ios-tvm`` command line.

The names below are the public API. Scheduler-side names import no TVM; the compiler- and
runtime-side ones are imported on first use, so that ``ios_tvm.load`` works with TVM in
runtime-only mode.
"""

from __future__ import annotations

from ios_tvm.errors import IosTvmError, ModelLoadError, ScheduleError, UnsupportedGraphError
from ios_tvm.ir.graph import OpGraph, OpNode, TensorInfo
from ios_tvm.ir.schedule import Schedule, Stage, validate_schedule
from ios_tvm.scheduler.config import SEARCH_STRATEGIES, SearchConfig
from ios_tvm.scheduler.merge import merge_predicate
from ios_tvm.scheduler.search import (
    SearchResult,
    SearchStats,
    greedy_schedule,
    search,
    sequential_schedule,
)

__version__ = "0.1.0"

# Name -> (module, attribute) of the entry points that import TVM's compiler or runtime.
_LAZY = {
    "build": ("ios_tvm.compiler.build", "build"),
    "BuildResult": ("ios_tvm.compiler.build", "BuildResult"),
    "InterOperatorSchedule": ("ios_tvm.compiler.transform", "InterOperatorSchedule"),
    "graph_from_model": ("ios_tvm.compiler.extract", "graph_from_model"),
    "load": ("ios_tvm.runtime.artifact", "load"),
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value  # resolved once; later lookups do not come here
        return value
    raise AttributeError(f"module 'ios_tvm' has no attribute {name!r}")


__all__ = [
    "SEARCH_STRATEGIES", "BuildResult", "InterOperatorSchedule", "IosTvmError", "ModelLoadError",
    "OpGraph", "OpNode", "Schedule", "ScheduleError", "SearchConfig", "SearchResult",
    "SearchStats", "Stage", "TensorInfo", "UnsupportedGraphError", "build", "graph_from_model",
    "greedy_schedule", "load", "merge_predicate", "search", "sequential_schedule",
    "validate_schedule",
]
