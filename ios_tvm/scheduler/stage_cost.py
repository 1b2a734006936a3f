"""The stage cost the search calls: a stage goes in, seconds come out.

Any callable ``stage -> seconds`` is a cost model (:mod:`ios_tvm.cost` has the analytic and
measured ones). :class:`StageCostCache` memoises one by the stage's op set and strategy (the
groups of a concurrent stage follow from its op set) and counts how many distinct stages were
costed, which for a measured model is the number of on-device measurements.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ios_tvm.ir.schedule import Stage

#: A cost model: returns the latency of one stage in seconds.
CostFn = Callable[[Stage], float]


@dataclass
class CostCounters:
    """How much work the cost side did during a search."""

    calls: int = 0
    distinct: int = 0


class StageCostCache:
    """Memoise a cost model by (op set, strategy).

    Parameters
    ----------
    cost
        The model to wrap; called once per distinct (op set, strategy).
    """

    def __init__(self, cost: CostFn) -> None:
        self.cost = cost
        self.table: dict[tuple[int, str], float] = {}
        self.counters = CostCounters()

    def __call__(self, stage: Stage) -> float:
        """Latency of ``stage`` in seconds."""
        return self.lookup(stage.mask, stage.strategy, lambda: stage)

    def lookup(self, mask: int, strategy: str, make_stage: Callable[[], Stage]) -> float:
        """Cost of the stage with op set ``mask``; ``make_stage`` builds it on a miss."""
        self.counters.calls += 1
        key = (mask, strategy)
        value = self.table.get(key)
        if value is None:
            stage = make_stage()
            value = float(self.cost(stage))
            if not value >= 0.0:  # also rejects NaN
                raise ValueError(f"cost model returned {value!r} for stage {stage}")
            if value == float("inf") and stage.strategy != "merge":
                # Only a merge may be impossible (inf); the search needs every other stage.
                raise ValueError(f"cost model returned inf for the {stage.strategy} stage "
                                 f"{stage}; only merge stages may be infinite (not mergeable)")
            self.table[key] = value
            self.counters.distinct += 1
        return value
