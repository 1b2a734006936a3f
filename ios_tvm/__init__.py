"""ios-tvm: inter-operator scheduling (IOS, MLSys 2021) for TVM Relax.

The scheduler side (graph, schedule, search, cost) imports no TVM; compiler-side modules
import TVM lazily.

Some public functions share their name with the submodule defining them (``ios_tvm.build``
the function lives in the module ``ios_tvm.build``, ``ios_tvm.search`` in ``ios_tvm.search``).
The package attribute is always the function; the module is reached with
``from ios_tvm.build import ...`` or ``sys.modules["ios_tvm.build"]``.
"""

from __future__ import annotations

import sys
import types

__version__ = "0.1.0"

__all__ = [
    "SEARCH_STRATEGIES", "BuildResult", "InterOperatorSchedule", "IosTvmError", "ModelLoadError",
    "OpGraph", "OpNode", "Schedule",
    "ScheduleError", "SearchConfig", "SearchResult", "SearchStats", "Stage", "TensorInfo",
    "UnsupportedGraphError", "build", "graph_from_model", "greedy_schedule", "load",
    "merge_predicate", "search", "sequential_schedule", "validate_schedule",
]

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


class _Package(types.ModuleType):
    """The package module, guarding its public names against same-named submodules."""

    def __setattr__(self, name: str, value: object) -> None:
        # The import system binds a submodule on its package the first time it is imported,
        # in whatever order a process imports things; for ``ios_tvm.build`` that would replace
        # the public function by the module (TypeError: 'module' object is not callable).
        if (name in __all__ and isinstance(value, types.ModuleType)
                and value.__name__ == f"{__name__}.{name}"):
            return
        super().__setattr__(name, value)


# Before any submodule import below, so that the guard covers every import order.
sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value  # resolved once; later lookups do not come here
        return value
    raise AttributeError(f"module 'ios_tvm' has no attribute {name!r}")


from .config import SEARCH_STRATEGIES, SearchConfig  # noqa: E402
from .errors import IosTvmError, ModelLoadError, ScheduleError, UnsupportedGraphError  # noqa: E402
from .graph import OpGraph, OpNode, TensorInfo  # noqa: E402
from .schedule import Schedule, Stage, validate_schedule  # noqa: E402
from .search import (  # noqa: E402
    SearchResult,
    SearchStats,
    greedy_schedule,
    search,
    sequential_schedule,
)
