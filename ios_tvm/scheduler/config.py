"""Every knob of the schedule search in one documented place."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ios_tvm.errors import ConfigError
from ios_tvm.ir.plan import MAX_STREAMS

#: Scheduling strategies: the two baselines and IOS's three variants.
#: ``concurrent`` is IOS-Parallel, ``merge`` is IOS-Merge, ``both`` is IOS-Both.
SEARCH_STRATEGIES = ("sequential", "greedy", "concurrent", "merge", "both")
#: Lower bounds of the pruned search (see ``SearchConfig.bound``).
BOUNDS = ("exact", "calibrated")


@dataclass(frozen=True)
class SearchConfig:
    """Settings of :func:`ios_tvm.scheduler.search.search`.

    Attributes
    ----------
    strategy
        One of :data:`SEARCH_STRATEGIES`.
    max_groups
        Most groups (streams) in one concurrent stage; IOS's ``s`` (default 8).
    max_group_size
        Most ops in one group; IOS's ``r`` (default 3).
    max_part_size
        Graphs with more ops are cut into parts of at most this many ops, preferably where
        the graph narrows to one tensor; each part is searched on its own.
    greedy_max_streams
        Stream cap of the greedy (wavefront) baseline; IOS used 10.
    collapse_chains
        Search over scheduling units, each a chain of kernels that can only run one after
        another (:mod:`ios_tvm.scheduler.units`), instead of single kernels. ``None`` (default):
        only when the graph has more than ``max_part_size`` kernels, i.e. when it must be cut
        into parts anyway; collapsing then lets each part cover more of the graph. Small
        graphs are searched exactly, kernel by kernel.
    prune
        When the cost model has a lower bound (the measured one does), measure only the
        stages the DP can still choose (``prune`` of
        :func:`~ios_tvm.scheduler.search.search`; the same schedule as measuring every stage,
        when the bound holds). False measures every stage the DP visits.
    bound
        The lower bound pruning prices unmeasured concurrent stages at: ``"exact"`` (default:
        :func:`~ios_tvm.scheduler.stage_cost.group_bound`, the schedule is the one measuring
        every stage would find) or ``"calibrated"``
        (:class:`~ios_tvm.scheduler.stage_cost.CalibratedBound`: also at least the lowest
        stage-to-groups ratio measured so far times the groups' sum; far fewer measurements
        on large graphs, not guaranteed exact).
    """

    strategy: str = "concurrent"
    max_groups: int = 8
    max_group_size: int = 3
    max_part_size: int = 20
    greedy_max_streams: int = 10
    collapse_chains: bool | None = None
    prune: bool = True
    bound: str = "exact"

    def __post_init__(self) -> None:
        if self.strategy not in SEARCH_STRATEGIES:
            raise ConfigError(f"unknown strategy {self.strategy!r}; choose one of "
                              f"{', '.join(SEARCH_STRATEGIES)}")
        for name in ("max_groups", "max_group_size", "max_part_size", "greedy_max_streams"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        # Groups of a stage run on as many streams (worker threads on CPU); the executor
        # refuses plans above MAX_STREAMS, so say so here, before any lowering or measuring.
        for name in ("max_groups", "greedy_max_streams"):
            if getattr(self, name) > MAX_STREAMS:
                raise ConfigError(f"{name} must be at most {MAX_STREAMS} (the executor's stream "
                                  f"limit), got {getattr(self, name)}")
        if not isinstance(self.prune, bool):
            raise ConfigError(f"prune must be True or False, got {self.prune!r}")
        if self.bound not in BOUNDS:
            raise ConfigError(f"unknown bound {self.bound!r}; choose one of {', '.join(BOUNDS)}")
        if self.collapse_chains not in (None, True, False):
            raise ConfigError(f"collapse_chains must be None, True or False, got "
                              f"{self.collapse_chains!r}")

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return asdict(self)
