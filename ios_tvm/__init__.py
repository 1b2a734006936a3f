"""ios-tvm: inter-operator scheduling (IOS, MLSys 2021) for TVM Relax.

The scheduler side (graph, schedule, search, cost) imports no TVM; compiler-side modules
import TVM lazily.
"""

from __future__ import annotations

from .config import SEARCH_STRATEGIES, SearchConfig
from .errors import IosTvmError, ModelLoadError, ScheduleError, UnsupportedGraphError
from .graph import OpGraph, OpNode, TensorInfo
from .schedule import Schedule, Stage, validate_schedule
from .search import SearchResult, SearchStats, greedy_schedule, search, sequential_schedule

__version__ = "0.1.0"

# Compiler-side entry points import TVM's compiler; load them only when asked for, so that
# the runtime side (ios_tvm.executor) works with TVM in runtime-only mode.
_LAZY = {
    "build": ("ios_tvm.build", "build"),
    "BuildResult": ("ios_tvm.build", "BuildResult"),
    "InterOperatorSchedule": ("ios_tvm.transform", "InterOperatorSchedule"),
    "graph_from_model": ("ios_tvm.extract", "graph_from_model"),
    "load": ("ios_tvm.executor", "load"),
    "merge_predicate": ("ios_tvm.merge", "merge_predicate"),
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'ios_tvm' has no attribute {name!r}")

__all__ = [
    "SEARCH_STRATEGIES", "BuildResult", "InterOperatorSchedule", "IosTvmError", "ModelLoadError",
    "OpGraph", "OpNode", "Schedule",
    "ScheduleError", "SearchConfig", "SearchResult", "SearchStats", "Stage", "TensorInfo",
    "UnsupportedGraphError", "build", "graph_from_model", "greedy_schedule", "load",
    "merge_predicate", "search", "sequential_schedule", "validate_schedule",
]
