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

__all__ = [
    "SEARCH_STRATEGIES", "IosTvmError", "ModelLoadError", "OpGraph", "OpNode", "Schedule",
    "ScheduleError", "SearchConfig", "SearchResult", "SearchStats", "Stage", "TensorInfo",
    "UnsupportedGraphError", "greedy_schedule", "search", "sequential_schedule",
    "validate_schedule",
]
