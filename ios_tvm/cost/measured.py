"""The measured cost model: stage latencies timed on the target, cached on disk.

:class:`MeasuredCost` is handed a profiler, one key per kernel and the measurement context by
the compiler side (:func:`ios_tvm.compiler.profiling.measured_cost`), so it knows nothing of
TVM. A stage's key is its strategy and its groups of kernel keys, order-free, so twins (the
same kernels on other ops) share one measurement; measurements go through a
:class:`~ios_tvm.cost.cache.MeasurementCache` keyed by that and the context (device, target,
TVM version, settings), so a rebuild measures nothing twice. The value of a stage is the
median of the profiler's repeats.

A merge stage (IOS-Merge) is timed by the merge profiler it is handed; a merge whose merged
kernel cannot be built or does not reproduce the originals costs infinity (not persisted), so
the search never picks it.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ios_tvm.cost.base import StageProfiler
from ios_tvm.cost.cache import CACHE_VERSION, MeasurementCache
from ios_tvm.errors import ConfigError, InternalError
from ios_tvm.ir.schedule import Stage

logger = logging.getLogger(__name__)


class MeasuredCost:
    """Stage cost measured on the target (see the module docstring).

    The compiler side builds it (:func:`ios_tvm.compiler.profiling.measured_cost`): it hands
    over the profiler, the kernels' keys and the measurement context, so this class knows
    nothing of TVM.

    Parameters
    ----------
    kernel_keys
        One key per op of the graph: what the op computes (kernel code, shapes, dtypes).
        Stages with the same kernels share one measurement.
    profiler
        Measures a concurrent stage (groups of op ids).
    context
        What measurements depend on besides the kernels (device, target, TVM version,
        settings); part of every cache key.
    cache
        Where measurements persist; None measures everything afresh.
    merge_profiler
        Times the merged kernel of a merge stage's ops (seconds per run, one value per
        repeat), or returns None when they cannot be merged; None: merge stages are refused.
    progress
        Show a progress bar of stages measured.
    """

    def __init__(self, kernel_keys: Sequence[str], profiler: StageProfiler, *,
                 context: Mapping[str, Any], cache: MeasurementCache | None = None,
                 merge_profiler: Callable[[tuple[int, ...]], list[float] | None] | None = None,
                 progress: bool = False) -> None:
        self.keys = list(kernel_keys)
        self.profiler = profiler
        self.cache = cache
        self.merge_profiler = merge_profiler
        self.context = json.dumps({**context, "cache_version": CACHE_VERSION}, sort_keys=True)
        #: Latency by stage key, of every stage measured or read from the cache so far.
        self.values: dict[str, float] = {}
        self._fresh: set[str] = set()  # measured by prefetch, not yet asked for
        self._measured_keys: set[str] = set()  # measured by this cost model, not read
        # Keys the cache did not hold when peeked: a pruned search peeks every candidate
        # stage in every pass, and one SQLite query each dominated RandWire's search.
        self._not_cached: set[str] = set()
        #: Stages timed on the device by this cost model (one per distinct stage key).
        self.measured = 0
        #: Stages served by a measurement that was in the cache before this cost model.
        self.cache_hits = 0
        #: Stages served by a twin measured by this cost model (same kernels, other ops).
        self.reused = 0
        self._bar: Any = None
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(desc="measuring stages", unit="stage")

    def stage_key(self, stage: Stage) -> str:
        """The cache key of ``stage``: strategy and groups of kernel keys, order-free."""
        groups = sorted(",".join(self.keys[op] for op in g) for g in stage.groups)
        return f"{stage.strategy}:" + "|".join(groups)

    def __call__(self, stage: Stage) -> float:
        """Latency of ``stage`` in seconds.

        Served from :attr:`values` (stages measured or read before, including twins with the
        same kernels), else from the cache, else measured.
        """
        if stage.strategy not in ("concurrent", "merge"):
            raise ConfigError(f"the measured cost model cannot time {stage.strategy!r} stages")
        key = self.stage_key(stage)
        known = self.values.get(key)
        if known is not None:
            if key in self._fresh:  # measured by prefetch: already counted in `measured`
                self._fresh.discard(key)
            elif key in self._measured_keys:
                self.reused += 1
            else:
                self.cache_hits += 1
            return known
        if self.cache is not None:
            hit = self.cache.get(self.context, key)
            if hit is not None:
                self.cache_hits += 1
                self.values[key] = hit
                return hit
        if stage.strategy == "merge":
            samples = self._profile_merge(stage)
            if samples is None:
                self.values[key] = math.inf  # not persisted: a later ios-tvm may merge them
                self._measured_keys.add(key)
                return math.inf
        else:
            samples = self.profiler.profile([list(g) for g in stage.groups])
        return self._record(key, samples)

    def peek(self, stage: Stage) -> float | None:
        """The latency of ``stage`` if known without measuring (seen, a twin, or cached)."""
        key = self.stage_key(stage)
        known = self.values.get(key)
        if known is None and self.cache is not None and key not in self._not_cached:
            known = self.cache.get(self.context, key)
            if known is None:
                self._not_cached.add(key)
        return known

    def _profile_merge(self, stage: Stage) -> list[float] | None:
        """Time the merged kernel of a merge stage; None if it cannot be merged."""
        if self.merge_profiler is None:
            raise ConfigError("this measured cost model cannot time merge stages (it has no "
                              "merged-kernel profiler; merges are measured on this machine)")
        return self.merge_profiler(tuple(stage.ops))

    def _record(self, key: str, samples: Sequence[float]) -> float:
        samples = [float(x) for x in samples]
        if not samples:
            raise InternalError(f"the profiler returned no samples for stage {key}")
        value = statistics.median(samples)
        if not math.isfinite(value) or value <= 0.0:
            raise InternalError(f"the profiler measured {value!r} s for stage {key}")
        if self.cache is not None:
            self.cache.put(self.context, key, value, samples)
        self.values[key] = value
        self._measured_keys.add(key)
        self.measured += 1
        if self._bar is not None:
            self._bar.update(1)
        return value

    def prefetch(self, stages: Iterable[Stage]) -> int:
        """Measure, in one batch, every stage of ``stages`` not known yet; returns how many.

        Stages already in :attr:`values` or in the cache are not measured; twins (same
        kernels) are measured once. With a profiler that has ``profile_many`` (e.g.
        :class:`~ios_tvm.cost.rpc.RPCProfiler`) the batch is spread over its devices.
        Non-concurrent stages are skipped. Later calls for these stages are table look-ups;
        each prefetched measurement is counted once in :attr:`measured`, and cache reads
        count in :attr:`cache_hits` when the search asks for them.
        """
        todo: dict[str, list[list[int]]] = {}
        for stage in stages:
            if stage.strategy != "concurrent":
                continue
            key = self.stage_key(stage)
            if key in self.values or key in todo:
                continue
            if self.cache is not None:
                hit = self.cache.get(self.context, key)
                if hit is not None:
                    self.values[key] = hit
                    continue
            todo[key] = [list(g) for g in stage.groups]
        if not todo:
            return 0
        keys = list(todo)
        many = getattr(self.profiler, "profile_many", None)
        if many is not None:
            results = many([todo[k] for k in keys])
        else:
            results = [self.profiler.profile(todo[k]) for k in keys]
        for key, samples in zip(keys, results, strict=True):
            self._record(key, samples)
            self._fresh.add(key)
        return len(keys)

    def close(self) -> None:
        """Finish the progress bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
