"""Stage profiling on this machine: what the measured cost model is handed.

:class:`~ios_tvm.cost.measured.MeasuredCost` knows stages, keys and a cache, not TVM. This
module builds what it needs from a model's :class:`~ios_tvm.compiler.extract.Extraction`:

* the profiling artifact: the sequential plan of the model's kernels with every tensor in its
  own buffer (so any stage can run without clobbering another's inputs) and ``max_groups``
  worker threads / streams, run once on valid inputs before any stage is timed, so every
  buffer a stage reads holds a value the model can produce (an id read by a gather is in
  range), not uninitialised memory;
* :class:`LocalProfiler`, which times a stage with the executor's ``profile_stage`` entry (the
  same code that runs production plans: worker threads on CPU, streams and device timers on
  CUDA; ``warmup`` runs, then ``repeat`` times ``number`` runs);
* one key per kernel (a hash of its TIR and argument shapes), so a rebuild measures nothing
  twice, and the measurement context (device, target, TVM version, settings);
* the merged-kernel profiler for IOS-Merge stages (:class:`~ios_tvm.compiler.merge.MergeCompiler`
  generates, checks and compiles the merged kernel; one that cannot be built or does not
  reproduce the originals is not merged).

:func:`make_stage_cost` is the one place :func:`ios_tvm.build` and the benchmark harness choose
a stage cost: measured, learned (measures few stages, predicts the rest), analytic or the
caller's own.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import tvm

from ios_tvm.compiler.inputs import profiling_inputs
from ios_tvm.compiler.merge import MergeCompiler
from ios_tvm.compiler.plan_lowering import lower_schedule
from ios_tvm.compiler.target import device_name, target_device_type
from ios_tvm.cost.analytic import AnalyticCost
from ios_tvm.cost.base import ProfileSettings, StageProfiler
from ios_tvm.cost.cache import MeasurementCache, open_cache
from ios_tvm.cost.learned import LearnedCost, record_kernel_features, split_learned_cost
from ios_tvm.cost.measured import MeasuredCost
from ios_tvm.errors import ConfigError, MergeError
from ios_tvm.scheduler.config import SearchConfig
from ios_tvm.scheduler.search import sequential_schedule
from ios_tvm.scheduler.stage_cost import StageCostCache, group_bound

logger = logging.getLogger(__name__)


class LocalProfiler:
    """Profiles stages on a local device through an :class:`~ios_tvm.runtime.executor.Executor`.

    With ``adaptive`` (the default) a stage is timed in steps and measuring stops as soon as
    the median is known well enough: ``settings.warmup`` runs, then ``min_repeats`` repeats
    of one run each; a stage that runs for at least ``long_run_s`` keeps one run per repeat (a
    steady clock times it well), a shorter one is timed with ``settings.number`` runs per
    repeat instead. Repeats are added ``min_repeats`` at a time until the distribution-free
    confidence interval of the median (order statistics, at least ``confidence`` coverage;
    the whole range below 5 repeats) is within ``tolerance`` of the median, or until the
    budget is spent: ``max_repeats`` single runs for a long stage, ``settings.repeat``
    repeats for a short one (never more runs than the fixed ``number * repeat``). A single
    outlier (another process took the core) then costs a few more runs, not the whole
    budget. On a quiet machine a millisecond stage costs 5 runs instead of 38. The value is
    the same quantity either way (median seconds per run), so cached measurements stay
    valid.

    The executor may be given as a function that makes it (``make_executor``): it is then
    made on the first stage profiled, so a search served by the cache builds nothing.
    """

    def __init__(self, executor: Any, settings: ProfileSettings | None = None, *,
                 adaptive: bool = True, tolerance: float = 0.1, min_repeats: int = 3,
                 long_run_s: float = 1e-3, max_repeats: int = 12, confidence: float = 0.9,
                 make_executor: Callable[[], Any] | None = None,
                 cold_weights: bool = False) -> None:
        if executor is None and make_executor is None:
            raise ConfigError("LocalProfiler needs an executor or make_executor")
        self._executor = executor
        self._make_executor = make_executor
        #: Seconds spent making the executor (lazily, on the first stage profiled).
        self.setup_seconds = 0.0
        self.max_repeats = max(1, max_repeats)
        self.confidence = confidence
        self.settings = settings or ProfileSettings()
        self.adaptive = adaptive
        self.tolerance = tolerance
        self.min_repeats = max(1, min_repeats)
        self.long_run_s = long_run_s
        #: Time each run with the stage's weights evicted from the caches first (CPU:
        #: :meth:`~ios_tvm.runtime.executor.Executor.profile_stage_cold`), as in a plan of a
        #: model whose weights do not fit in the caches; one run per repeat, adaptive.
        self.cold_weights = cold_weights
        #: Runs of stages timed and stages profiled so far (for benchmarks of the search).
        self.runs = 0
        self.stages = 0

    @property
    def executor(self) -> Any:
        """The executor stages run on (made now if it was given as ``make_executor``)."""
        if self._executor is None:
            assert self._make_executor is not None
            t = time.perf_counter()
            self._executor = self._make_executor()
            self.setup_seconds += time.perf_counter() - t
        return self._executor

    def profile(self, groups: Sequence[Sequence[int]]) -> list[float]:
        """Seconds per run, one value per repeat."""
        s = self.settings
        self.stages += 1
        if self.cold_weights:
            return self._profile_cold(groups)
        if not self.adaptive:
            self.runs += s.warmup + s.number * s.repeat
            return self.executor.profile_stage(groups, warmup=s.warmup, number=s.number,
                                               repeat=s.repeat)
        k = self.min_repeats
        samples = list(self.executor.profile_stage(groups, warmup=s.warmup, number=1,
                                                   repeat=k))
        self.runs += s.warmup + k
        number, budget = 1, min(s.number * s.repeat, max(self.max_repeats, k))
        if sorted(samples)[len(samples) // 2] < self.long_run_s and s.number > 1:
            # Short stage: repeats of several runs each (the single runs were its warm-up).
            number, budget = s.number, s.repeat
            samples = list(self.executor.profile_stage(groups, warmup=0, number=number,
                                                       repeat=min(k, budget)))
            self.runs += number * len(samples)
        while len(samples) < budget and not self._tight(samples):
            more = min(k, budget - len(samples))
            samples += self.executor.profile_stage(groups, warmup=0, number=number,
                                                   repeat=more)
            self.runs += number * more
        return samples

    def _profile_cold(self, groups: Sequence[Sequence[int]]) -> list[float]:
        s = self.settings
        first = self.min_repeats if self.adaptive else s.repeat
        samples = list(self.executor.profile_stage_cold(groups, warmup=s.warmup, repeat=first))
        self.runs += s.warmup + first
        budget = max(self.max_repeats, first) if self.adaptive else first
        while len(samples) < budget and not self._tight(samples):
            more = min(self.min_repeats, budget - len(samples))
            samples += self.executor.profile_stage_cold(groups, warmup=0, repeat=more)
            self.runs += more
        return samples

    def _tight(self, samples: Sequence[float]) -> bool:
        xs = sorted(samples)
        med = xs[len(xs) // 2]
        lo, hi = median_interval(xs, self.confidence)
        return med > 0 and (hi - lo) / med <= self.tolerance


def median_interval(xs: Sequence[float], confidence: float = 0.9) -> tuple[float, float]:
    """A distribution-free confidence interval of the median of the sorted ``xs``.

    ``(xs[k], xs[n-1-k])`` with the largest ``k`` whose coverage, ``1 - 2 P(Bin(n, 1/2) <=
    k)``, is at least ``confidence``; the whole range when even ``k = 0`` falls short
    (fewer than 5 values at 90%).
    """
    n = len(xs)
    best, tail = 0, 0.0
    for k in range(n // 2):
        tail += math.comb(n, k) / 2.0 ** n
        if 1.0 - 2.0 * tail < confidence:
            break
        best = k
    return xs[best], xs[n - 1 - best]


def kernel_keys(extraction: Any) -> list[str]:
    """One key per node: a hash of its kernel's TIR and of its argument shapes and dtypes."""
    import tvm_ffi

    graph = extraction.graph
    by_name = {gv.name_hint: f for gv, f in extraction.mod.functions.items()}
    keys = []
    for node in graph.nodes:
        func = by_name.get(node.kernel)
        body = str(tvm_ffi.structural_hash(func)) if func is not None else node.kernel
        args = [(graph.tensors[t].shape, graph.tensors[t].dtype)
                for t in (*node.inputs, *node.outputs)]
        keys.append(hashlib.sha1(f"{body}|{args}".encode()).hexdigest()[:20])
    return keys


def profiling_artifact(extraction: Any, *, max_groups: int = 8, lib: Any = None) -> Any:
    """The artifact stages are profiled with (see the module docstring)."""
    return lower_schedule(extraction, sequential_schedule(extraction.graph), lib=lib,
                          reuse_memory=False, min_streams=max_groups)


def weight_bytes(extraction: Any) -> int:
    """Bytes of the model's weights and constants (what a plan reads every run)."""
    return sum(t.nbytes for t in extraction.graph.tensors.values()
               if t.kind in ("param", "const"))


def cpu_cache_bytes() -> int:
    """Bytes of this CPU's private caches over all cores the kernels use (L2, else L1).

    Read from Linux's sysfs (0 where unknown). The last-level cache is left out on purpose:
    it is shared with other processes (and on a virtual machine with other guests), and on
    the 2-core machines this was measured on, ResNet-50's 100 MB of weights ran as if from
    memory beside a reported 260 MB L3.
    """
    from ios_tvm.runtime.executor import default_cpu_threads

    best: dict[int, int] = {}
    root = Path("/sys/devices/system/cpu/cpu0/cache")
    try:
        for index in root.glob("index*"):
            level = int((index / "level").read_text())
            kind = (index / "type").read_text().strip()
            text = (index / "size").read_text().strip().upper()
            if kind == "Instruction" or level > 2:
                continue
            scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
            best[level] = int(text.rstrip("KMG")) * scale
    except (OSError, ValueError):
        return 0
    per_core = best.get(2) or best.get(1) or 0
    return per_core * default_cpu_threads()


def use_cold_weights(extraction: Any, cold_weights: bool | None = None) -> bool:
    """Whether stages of ``extraction`` are timed with their weights evicted (CPU only).

    ``None`` (auto): when the model's weights are larger than the cores' private caches
    (:func:`cpu_cache_bytes`), so that in a whole run each kernel's weights come from memory
    or a shared cache, not from a cache the stage warmed itself.
    """
    if target_device_type(extraction.target) != "cpu":
        return False
    if cold_weights is not None:
        return bool(cold_weights)
    cache = cpu_cache_bytes()
    return cache > 0 and weight_bytes(extraction) > cache


def local_profiler(extraction: Any, *, settings: ProfileSettings | None = None,
                   max_groups: int = 8, lib: Any = None,
                   inputs: Sequence[Any] | None = None,
                   cold_weights: bool = False) -> tuple[LocalProfiler, Any]:
    """A profiler on this machine's device and the kernel library it runs.

    The profiling artifact's executor runs the whole model once on ``inputs`` (default:
    :func:`~ios_tvm.compiler.inputs.profiling_inputs`) before any stage is timed. With
    ``lib`` given, the artifact and executor are made when the first stage is measured.
    ``cold_weights``: see :attr:`LocalProfiler.cold_weights`.
    """
    def make() -> tuple[Any, Any]:
        artifact = profiling_artifact(extraction, max_groups=max_groups, lib=lib)
        executor = artifact.executor()
        executor.run(*(inputs if inputs is not None else profiling_inputs(extraction)))
        return executor, artifact.lib

    if lib is None:  # the library is compiled here, and the caller needs it now
        executor, lib = make()
        return LocalProfiler(executor, settings, cold_weights=cold_weights), lib
    # Made on the first stage measured: a search served by the cache makes nothing.
    return LocalProfiler(None, settings, make_executor=lambda: make()[0],
                         cold_weights=cold_weights), lib


def merge_profiler(merges: Any, settings: ProfileSettings
                   ) -> Callable[[tuple[int, ...]], list[float] | None]:
    """Times the merged kernel of some ops on this machine (None: they do not merge)."""

    def profile(ops: tuple[int, ...]) -> list[float] | None:
        try:
            merges.check(ops)
            executor = merges.artifact(ops).executor()
        except MergeError as e:
            logger.warning("not merging ops %s: %s", list(ops), e)
            return None
        return executor.profile_stage([[0]], warmup=settings.warmup, number=settings.number,
                                      repeat=settings.repeat)

    return profile


def measurement_context(extraction: Any, settings: ProfileSettings,
                        device: str | None = None, cold_weights: bool = False
                        ) -> dict[str, Any]:
    """What a measurement depends on besides its kernels: device, target, TVM, settings.

    Also whether the weights were evicted before each run (recorded only then, so caches of
    warm measurements stay valid).
    """
    context = {"device": device or device_name(target_device_type(extraction.target)),
               "target": str(extraction.target), "tvm": tvm.__version__,
               "settings": [settings.warmup, settings.number, settings.repeat]}
    if cold_weights:
        context["weights"] = "cold"
    return context


def measured_cost(extraction: Any, *, max_groups: int = 8,
                  cache: MeasurementCache | None = None, profiler: StageProfiler | None = None,
                  settings: ProfileSettings | None = None, lib: Any = None,
                  device: str | None = None, progress: bool = False, merges: Any = None,
                  inputs: Sequence[Any] | None = None, params: Any = None,
                  cold_weights: bool | None = None) -> MeasuredCost:
    """A :class:`~ios_tvm.cost.measured.MeasuredCost` of ``extraction``'s stages.

    Parameters
    ----------
    extraction
        The model's graph and lowered module (:func:`ios_tvm.compiler.extract.graph_from_model`).
    max_groups
        The most groups a stage may have (streams or worker threads to create).
    cache
        Where measurements persist; None measures everything afresh.
    profiler
        Measures a stage; default: :func:`local_profiler` on device 0 of the target.
    settings
        Warm-up, number and repeat of each measurement.
    lib
        The already compiled kernel library (compiled here when None).
    device
        The device name measurements are keyed by (default: this machine's device).
    progress
        Show a progress bar of stages measured.
    merges
        A :class:`~ios_tvm.compiler.merge.MergeCompiler` of ``extraction`` for merge stages
        (created here when None); merge stages are timed on this machine's device only, so
        a remote ``profiler`` cannot time them.
    inputs
        Model inputs the local profiling executor runs on once before any stage is timed.
    params
        Values of weight parameters, for merged kernels' weights.
    cold_weights
        Time each stage with its weights evicted from the caches first, as a whole run of a
        model larger than the caches sees them (:func:`use_cold_weights`; None: auto). Local
        CPU profiling only.
    """
    settings = settings or ProfileSettings()
    remote = profiler is not None
    cold = not remote and use_cold_weights(extraction, cold_weights)
    if profiler is None:
        profiler, lib = local_profiler(extraction, settings=settings, max_groups=max_groups,
                                       lib=lib, inputs=inputs, cold_weights=cold)
    merge_fn = None
    if not remote:
        merges = merges or MergeCompiler(extraction, lib=lib, params=params)
        merge_fn = merge_profiler(merges, settings)
    keys = kernel_keys(extraction)
    # Every measured model teaches the learned cost model (its kernels' features).
    record_kernel_features(cache, keys, extraction.graph)
    context = measurement_context(extraction, settings, device, cold_weights=cold)
    return MeasuredCost(keys, profiler, context=context,
                        cache=cache, merge_profiler=merge_fn, progress=progress)


def device_cores(extraction: Any) -> int:
    """The target device's cores (CPU threads kernels use) or streaming multiprocessors."""
    if target_device_type(extraction.target) == "cuda":
        try:
            return int(tvm.cuda(0).multi_processor_count)
        except Exception:  # noqa: BLE001 (no GPU here: a remote device; the count is a hint)
            return 0
    from ios_tvm.runtime.executor import default_cpu_threads

    return default_cpu_threads()


def make_stage_cost(extraction: Any, cost: Any, *, cache: Any = True,
                    settings: ProfileSettings | None = None, max_groups: int = 8,
                    lib: Any = None, merges: Any = None, profiler: Any = None,
                    progress: bool = False, inputs: Sequence[Any] | None = None,
                    params: Any = None, config: SearchConfig | None = None
                    ) -> tuple[StageCostCache, MeasuredCost | None]:
    """The stage cost that :func:`ios_tvm.build` and :func:`ios_tvm.bench.harness.bench` use.

    ``cost`` is ``"measured"`` (:func:`measured_cost` on this machine's device, or on
    ``profiler``, persisted in ``cache``: see :func:`~ios_tvm.cost.cache.open_cache`),
    ``"learned"`` (:class:`~ios_tvm.cost.learned.LearnedCost` over that measured model:
    measures the stages of ``config``'s search that the model trained on ``cache`` is unsure
    of, predicts the rest; a :class:`~ios_tvm.cost.learned.LearnedSettings` is the learned
    model with those settings), ``"analytic"`` (:class:`~ios_tvm.cost.analytic.AnalyticCost` with
    the CPU preset on CPU targets, H100 otherwise) or a cost function of one's own. Returns the
    memoised cost and the :class:`~ios_tvm.cost.measured.MeasuredCost` (to ``close()`` and
    read counters from), or None.
    """
    cost, learned = split_learned_cost(cost)
    measured = None
    if cost in ("measured", "learned"):
        measured = measured_cost(
            extraction, max_groups=max_groups, cache=open_cache(cache), settings=settings,
            progress=progress, profiler=profiler, lib=lib, merges=merges, inputs=inputs,
            params=params, device=profiler.device_name() if profiler is not None else None)
        fn: Any = measured
        if cost == "learned":
            fn = LearnedCost(extraction.graph, measured,
                             config=config or SearchConfig(max_groups=max_groups),
                             cores=device_cores(extraction), settings=learned)
    elif cost == "analytic":
        device_type = target_device_type(extraction.target)
        fn = AnalyticCost(extraction.graph, "cpu" if device_type == "cpu" else "h100")
    elif isinstance(cost, str):
        raise ConfigError(f"unknown cost {cost!r}; use 'measured', 'learned' or 'analytic'")
    else:
        fn = cost
    memo = StageCostCache(fn)
    if cost == "measured":
        # The search then measures only the stages it can still choose (exact under the
        # bound's assumption; see group_bound). On GPUs a lone small kernel may leave
        # most SMs idle, so only the per-group term bounds a stage there.
        cpu = target_device_type(extraction.target) == "cpu"
        memo.lower_bound = group_bound(memo, device_cores(extraction) if cpu else None)
    return memo, measured
