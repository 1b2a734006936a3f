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
    lower_bound
        Optional: a function never above the cost of a concurrent stage (e.g.
        :func:`group_bound`); with it the search measures only the stages it can still
        choose (see :func:`ios_tvm.scheduler.search.search`, ``prune``).
    """

    def __init__(self, cost: CostFn, lower_bound: CostFn | None = None) -> None:
        self.cost = cost
        self.lower_bound = lower_bound
        self.table: dict[tuple[int, str], float] = {}
        self.counters = CostCounters()

    def __call__(self, stage: Stage) -> float:
        """Latency of ``stage`` in seconds."""
        return self.lookup(stage.mask, stage.strategy, lambda: stage)

    def peek(self, stage: Stage) -> float | None:
        """The cost of ``stage`` if known without computing it, else None.

        Known: memoised here, or the model's own ``peek`` has it (a measurement cache hit).
        """
        value = self.table.get((stage.mask, stage.strategy))
        if value is None:
            peek = getattr(self.cost, "peek", None)
            value = peek(stage) if peek is not None else None
        return value

    def prefetch(self, stages: list[Stage]) -> None:
        """Let the model cost ``stages`` in one batch if it can (its ``prefetch``)."""
        prefetch = getattr(self.cost, "prefetch", None)
        if prefetch is not None:
            prefetch(stages)

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



def group_bound(cost: CostFn, cores: int | None = None) -> CostFn:
    """A lower bound on a concurrent stage's latency from its groups' latencies alone.

    ``bound(stage) = max(max over groups g of L(g), sum over groups of L(g) / cores)``, where
    ``L(g)`` is ``cost`` of the one-group stage that runs ``g`` alone (pass the memoised cost,
    so each is measured once; the pruned search measures every one-group stage anyway).

    Assumption (what makes it a bound): a kernel never runs faster with fewer threads or
    beside other kernels than alone on the whole device, and sharing the device does not
    shrink the work. Then a group beside others takes at least ``L(g)``; and its work is
    at least ``L(g)`` core-seconds (one thread is not faster than all of them), so
    ``cores`` cores need at least ``sum L(g) / cores`` for the stage. ``cores`` None drops
    that term (GPUs: a lone small kernel may leave most SMs idle). The search adds one more
    consequence: a stage takes at least as long as the stage of any subset of its groups.

    Groups are bounded by their own measured latency, not by the sum of their kernels'
    single-kernel latencies: a chain runs faster than that sum (its intermediate is still in
    cache; 0.67-1.25x on Inception V3 on a 2-core CPU), so that sum is not a bound. The
    search reports how many measured stages came in below their bound
    (``SearchStats.bound_violations``).
    """

    def bound(stage: Stage) -> float:
        alone = [cost(Stage((g,))) for g in stage.groups]
        lb = max(alone)
        if cores:
            lb = max(lb, sum(alone) / cores)
        return lb

    return bound


class CalibratedBound:
    """An empirical, tighter stage bound, learnt from the stages measured so far.

    Two ratios, each the lowest seen once ``min_samples`` were seen (None before):

    * ``ratio``, of a concurrent stage of several groups to the summed latencies of its
      groups alone: how much concurrency has paid on this device (near 1 on a CPU whose
      kernels already use every core, well below 1 on a GPU that small kernels leave idle).
      A stage is priced at least ``ratio`` times its groups' sum, besides ``bound``.
    * ``chain_ratio``, of a one-group stage of several ops to the sum of its ops alone (a
      chain gains only what stays in cache between its kernels). Once known, such a stage
      is priced at ``chain_ratio`` times that sum until the search picks it, and a group
      inside a wider stage is priced so too: neither forces a measurement.

    Not a proof, unlike :func:`group_bound`: a stage may beat the lowest ratio seen, and the
    search then reports it (``SearchStats.bound_violations``) and lowers the ratio. The
    stages the pruned search measures are those whose price made them look best, that is
    the ones most likely to gain, so the lowest ratio among them is a cautious estimate for
    the stages it never measures. ``SearchConfig(bound="calibrated")`` selects it; it trades
    the exactness of the pruned search for far fewer measurements on large graphs.
    """

    def __init__(self, bound: CostFn, cost: CostFn, *, min_samples: int = 8) -> None:
        self.bound = bound
        self.cost = cost
        self.min_samples = min_samples
        self.ratios: list[float] = []
        self.chain_ratios: list[float] = []
        # the lowest of each list, kept as they come (asked for every stage priced)
        self._lowest = self._lowest_chain = float("inf")
        self._seen: set[int] = set()

    @property
    def ratio(self) -> float | None:
        """The lowest stage-to-groups ratio seen (None: fewer than ``min_samples``)."""
        return self._lowest if len(self.ratios) >= self.min_samples else None

    @property
    def chain_ratio(self) -> float | None:
        """The lowest chain-to-ops ratio seen (None: fewer than ``min_samples``)."""
        return self._lowest_chain if len(self.chain_ratios) >= self.min_samples else None

    @property
    def state(self) -> tuple[float | None, float | None]:
        """Both ratios: the search reprices before measuring when they moved."""
        return self.ratio, self.chain_ratio

    def _known(self, stage: Stage) -> float | None:
        peek = getattr(self.cost, "peek", None)
        return peek(stage) if peek is not None else None

    def _ops_sum(self, ops: tuple[int, ...]) -> float:
        return sum(self.cost(Stage(((op,),))) for op in ops)

    def chain_price(self, stage: Stage) -> float | None:
        """What a one-group stage of several ops is priced at unmeasured (None: measure)."""
        chain = self.chain_ratio
        if chain is None:
            return None
        return chain * self._ops_sum(stage.groups[0])

    def _group(self, group: tuple[int, ...]) -> float:
        alone = Stage((group,))
        if len(group) > 1:
            known = self._known(alone)
            if known is not None:
                return known
            price = self.chain_price(alone)
            if price is not None:
                return price
        return self.cost(alone)

    def __call__(self, stage: Stage) -> float:
        """The bound of ``stage`` in seconds."""
        ratio = self.ratio
        if ratio is None:
            return self.bound(stage)
        groups = [self._group(g) for g in stage.groups]
        return max(max(groups), ratio * sum(groups))

    def observe(self, stage: Stage, seconds: float) -> None:
        """Learn from a stage measured at ``seconds``: several groups, or one of several ops.

        Each stage counts once (a warm search sees its cached stages as measurements).
        """
        several = len(stage.groups) > 1
        if (not several and len(stage.ops) < 2) or stage.mask in self._seen:
            return
        self._seen.add(stage.mask)
        if several:
            total = sum(self.cost(Stage((g,))) for g in stage.groups)
        else:
            total = self._ops_sum(stage.groups[0])
        if total <= 0:
            return
        r = seconds / total
        if several:
            self.ratios.append(r)
            self._lowest = min(self._lowest, r)
        else:
            self.chain_ratios.append(r)
            self._lowest_chain = min(self._lowest_chain, r)
