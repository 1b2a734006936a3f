"""The measured cost model: stage latencies timed on the target by the ios-tvm executor.

A stage is measured by the executor's ``profile_stage`` entry, the same code that runs the
production plan: the stage's groups run on the executor's worker threads (CPU) or streams
(CUDA), timed by device timers, after ``warmup`` runs, ``repeat`` times ``number`` runs; the
median of the repeats is the cost. The profiling plan gives every tensor its own buffer, so
any stage can run without clobbering another's inputs.

Measurements go through a :class:`~ios_tvm.cost.cache.MeasurementCache` keyed by device,
target, TVM version and the stage's kernels (a hash of each kernel's TIR and shapes), so a
rebuild measures nothing twice.

A merge stage (IOS-Merge) is timed the same way on a one-call executor of its merged kernel,
which a :class:`~ios_tvm.merge.MergeCompiler` generates, compiles and checks against the
original kernels on demand; its key is ``merge:`` and the member kernels' keys. A merge
whose merged kernel cannot be built or does not reproduce the originals costs infinity, so
the search never picks it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..errors import IosTvmError
from ..schedule import Stage
from .base import StageCostCache
from .cache import CACHE_VERSION, MeasurementCache, open_cache

logger = logging.getLogger(__name__)


class StageProfiler(Protocol):
    """Runs one candidate stage (groups of call ids) and returns seconds per run per repeat."""

    def profile(self, groups: Sequence[Sequence[int]]) -> list[float]:
        """Seconds per run of the stage, one value per repeat."""
        ...


@dataclass
class ProfileSettings:
    """How each stage is timed (IOS used warmup 2, number 6, repeat 6)."""

    warmup: int = 2
    number: int = 6
    repeat: int = 6


class LocalProfiler:
    """Profiles stages on a local device through an :class:`~ios_tvm.executor.Executor`."""

    def __init__(self, executor: Any, settings: ProfileSettings | None = None) -> None:
        self.executor = executor
        self.settings = settings or ProfileSettings()

    def profile(self, groups: Sequence[Sequence[int]]) -> list[float]:
        """Seconds per run, one value per repeat."""
        s = self.settings
        return self.executor.profile_stage(groups, warmup=s.warmup, number=s.number,
                                           repeat=s.repeat)


def device_name(device_type: str, index: int = 0) -> str:
    """A stable name of the device that measurements belong to.

    The CPU model and core count, or the CUDA device name.
    """
    if device_type == "cuda":
        import tvm

        return str(tvm.cuda(index).device_name)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    threads = os.environ.get("TVM_NUM_THREADS", "default")
    return f"{model} x{os.cpu_count()} (TVM_NUM_THREADS={threads})"


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
    """The artifact stages are profiled with.

    The sequential plan of the model's kernels, every tensor in its own buffer (so any stage
    can run without clobbering another's inputs) and ``max_groups`` worker threads / streams.
    """
    from ..lower import lower
    from ..search import sequential_schedule

    return lower(extraction, sequential_schedule(extraction.graph), lib=lib,
                 reuse_memory=False, min_streams=max_groups)


class SampleInputError(IosTvmError, ValueError):
    """Sample inputs given for profiling do not fit the model (named input, shape or dtype)."""


def profiling_inputs(extraction: Any, given: Any = None, seed: int = 0) -> list[np.ndarray]:
    """Values of the model inputs, in input order, for every timing run of a build or bench.

    The one place such inputs are made (stage profiling, whole-plan timing, the Relax VM and
    ONNX Runtime comparisons), so that they are valid for the model: an id fed to a gather
    must index the table.

    Parameters
    ----------
    extraction
        The model's graph and lowered module (:func:`ios_tvm.extract.graph_from_model`).
    given
        The user's sample inputs: a mapping by input name or a sequence in input order.
        Checked against the inputs' shapes and dtypes (numbers of the same kind are cast).
    seed
        Seed of the values made when ``given`` is None: floats standard normal; integer
        inputs that index a gather or scatter uniform in ``[0, n)`` for the smallest axis
        size ``n`` they index (:data:`ios_tvm.extract.INDEX_BOUNDS_ATTR`); other integers and
        booleans zeros.

    Raises
    ------
    SampleInputError
        ``given`` lacks an input, names one the model does not have, or a value has the wrong
        shape or kind of dtype.
    """
    graph = extraction.graph
    names = [n for n in graph.inputs if graph.tensors[n].kind == "input"]
    if given is not None:
        return [_sample_value(graph.tensors[n], v)
                for n, v in zip(names, _by_position(names, given), strict=True)]
    bounds = index_bounds_of(extraction.mod)
    rng = np.random.default_rng(seed)
    out = []
    for n in names:
        t = graph.tensors[n]
        kind = {"float": "f", "bfloat": "f", "int": "i", "uint": "u"}.get(
            t.dtype.rstrip("0123456789").split("_")[0], "b")
        if kind == "f":
            out.append(rng.standard_normal(t.shape).astype(t.dtype))
        elif kind in "iu" and n in bounds:
            out.append(rng.integers(0, bounds[n], size=t.shape).astype(t.dtype))
        else:
            out.append(np.zeros(t.shape, t.dtype))
    return out


def _by_position(names: Sequence[str], given: Any) -> list[Any]:
    if isinstance(given, Mapping):
        unknown = [k for k in given if k not in names]
        missing = [n for n in names if n not in given]
        if unknown or missing:
            raise SampleInputError(
                f"sample inputs {'name ' + repr(unknown) if unknown else ''}"
                f"{' and ' if unknown and missing else ''}"
                f"{'lack ' + repr(missing) if missing else ''}; the model's inputs are {names}")
        return [given[n] for n in names]
    values = list(given)
    if len(values) != len(names):
        raise SampleInputError(f"{len(values)} sample input(s) given; the model has "
                               f"{len(names)}: {names}")
    return values


def _sample_value(spec: Any, value: Any) -> np.ndarray:
    """``value`` as the input ``spec`` wants it, or a SampleInputError naming the input."""
    arr = np.asarray(value)
    want = np.dtype(spec.dtype)
    if arr.shape != tuple(spec.shape):
        raise SampleInputError(f"sample input {spec.name!r} has shape {arr.shape}; the model "
                               f"takes {tuple(spec.shape)}")
    same_kind = (arr.dtype.kind == want.kind or (arr.dtype.kind in "iu" and want.kind in "iu"))
    if not same_kind:
        raise SampleInputError(f"sample input {spec.name!r} has dtype {arr.dtype}; the model "
                               f"takes {spec.dtype}")
    return np.ascontiguousarray(arr.astype(want, copy=False))


def index_bounds_of(mod: Any) -> dict[str, int]:
    """``{input: n}`` recorded by :func:`ios_tvm.extract.guard_indices` (valid: ``[-n, n)``)."""
    from ..extract import INDEX_BOUNDS_ATTR

    attrs = getattr(mod, "attrs", None)
    if attrs is None or INDEX_BOUNDS_ATTR not in attrs:
        return {}
    try:
        bounds = json.loads(str(attrs[INDEX_BOUNDS_ATTR]))
    except ValueError:
        return {}
    return {str(k): int(v) for k, v in bounds.items() if int(v) > 0}


def candidate_stages(graph: Any, config: Any = None) -> list[Stage]:
    """Every distinct stage the IOS search of ``graph`` with ``config`` will ask the cost of.

    The DP visits every state and costs every ending whatever the costs are, so one search
    with a constant cost model records exactly the stages a measured search needs; measure
    them in one batch with :meth:`MeasuredCost.prefetch`.
    """
    from ..search import search

    seen: dict[tuple[int, str], Stage] = {}

    def record(stage: Stage) -> float:
        seen.setdefault((stage.mask, stage.strategy), stage)
        return 1.0

    search(graph, record, config)
    return list(seen.values())


class MeasuredCost:
    """Stage cost measured on the target (see the module docstring).

    Parameters
    ----------
    extraction
        The model's graph and lowered module (:func:`ios_tvm.extract.graph_from_model`).
    max_groups
        The most groups a stage may have (streams or worker threads to create).
    cache
        Where measurements persist; None measures everything afresh.
    profiler
        Measures a stage; default: a local executor on device 0 of the target.
    settings
        Warm-up, number and repeat of each measurement.
    lib
        The already compiled kernel library (compiled here when None).
    progress
        Show a progress bar of stages measured.
    merges
        Generates and compiles merged kernels for merge stages (a
        :class:`~ios_tvm.merge.MergeCompiler` of ``extraction``; created on the first merge
        stage when None). Merge stages are timed on this machine's device.
    inputs
        Model inputs (:func:`profiling_inputs`; made from ``extraction`` when None). The
        local profiling executor runs the whole model on them once before any stage is
        timed, so every buffer a stage reads holds a value the model can produce (an id
        read by a gather is in range), not uninitialised memory.
    """

    def __init__(self, extraction: Any, *, max_groups: int = 8,
                 cache: MeasurementCache | None = None, profiler: StageProfiler | None = None,
                 settings: ProfileSettings | None = None, lib: Any = None,
                 device: str | None = None, progress: bool = False,
                 merges: Any = None, inputs: Sequence[Any] | None = None) -> None:
        from ..lower import target_device_type

        self.graph = extraction.graph
        self.settings = settings or ProfileSettings()
        self.cache = cache
        device_type = target_device_type(extraction.target)
        if profiler is None:
            artifact = profiling_artifact(extraction, max_groups=max_groups, lib=lib)
            executor = artifact.executor()
            executor.run(*(inputs if inputs is not None else profiling_inputs(extraction)))
            profiler = LocalProfiler(executor, self.settings)
            lib = artifact.lib
        self.profiler = profiler
        self._extraction = extraction
        self._lib = lib
        self.merges = merges
        self.keys = kernel_keys(extraction)
        import tvm

        self.context = json.dumps({
            "device": device or device_name(device_type), "target": str(extraction.target),
            "tvm": tvm.__version__, "cache_version": CACHE_VERSION,
            "settings": [self.settings.warmup, self.settings.number, self.settings.repeat]},
            sort_keys=True)
        #: Latency by stage key, of every stage measured or read from the cache so far.
        self.values: dict[str, float] = {}
        self._fresh: set[str] = set()  # measured by prefetch, not yet asked for
        self._measured_keys: set[str] = set()  # measured by this cost model, not read
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
            raise IosTvmError(f"the measured cost model cannot time {stage.strategy!r} stages")
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

    def _profile_merge(self, stage: Stage) -> list[float] | None:
        """Time the merged kernel of a merge stage; None if it cannot be built or is wrong."""
        from ..merge import MergeCompiler, MergeError

        if self.merges is None:
            self.merges = MergeCompiler(self._extraction, lib=self._lib)
        if not isinstance(self.profiler, LocalProfiler):
            raise IosTvmError("merge stages are measured on this machine's device only; "
                              "profile remotely with the concurrent strategy")
        try:
            self.merges.check(stage.ops)
            executor = self.merges.artifact(stage.ops).executor()
        except MergeError as e:
            logger.warning("not merging ops %s: %s", list(stage.ops), e)
            return None
        s = self.settings
        return executor.profile_stage([[0]], warmup=s.warmup, number=s.number, repeat=s.repeat)

    def _record(self, key: str, samples: Sequence[float]) -> float:
        samples = [float(x) for x in samples]
        if not samples:
            raise IosTvmError(f"the profiler returned no samples for stage {key}")
        value = statistics.median(samples)
        if not math.isfinite(value) or value <= 0.0:
            raise IosTvmError(f"the profiler measured {value!r} s for stage {key}")
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


def make_stage_cost(extraction: Any, cost: Any, *, cache: Any = True,
                    settings: ProfileSettings | None = None, max_groups: int = 8,
                    lib: Any = None, merges: Any = None, profiler: StageProfiler | None = None,
                    progress: bool = False, inputs: Sequence[Any] | None = None
                    ) -> tuple[StageCostCache, MeasuredCost | None]:
    """The stage cost that :func:`ios_tvm.build` and :func:`ios_tvm.bench.bench` search with.

    ``cost`` is ``"measured"`` (a :class:`MeasuredCost` on this machine's device, or on
    ``profiler``, persisted in ``cache``: see :func:`~ios_tvm.cost.cache.open_cache`),
    ``"analytic"`` (:class:`~ios_tvm.cost.AnalyticCost` with the CPU preset on CPU targets,
    H100 otherwise) or a cost function of one's own. Returns the memoised cost and the
    :class:`MeasuredCost` (to ``close()`` and read counters from), or None. ``inputs``:
    the model inputs stage profiling runs on (:func:`profiling_inputs`).
    """
    from ..lower import target_device_type
    from .analytic import AnalyticCost

    measured = None
    if cost == "measured":
        where = {"profiler": profiler, "device": profiler.device_name()} if profiler else {
            "lib": lib, "merges": merges, "inputs": inputs}
        measured = MeasuredCost(extraction, max_groups=max_groups, cache=open_cache(cache),
                                settings=settings, progress=progress, **where)
        fn: Any = measured
    elif cost == "analytic":
        device_type = target_device_type(extraction.target)
        fn = AnalyticCost(extraction.graph, "cpu" if device_type == "cpu" else "h100")
    elif isinstance(cost, str):
        raise IosTvmError(f"unknown cost {cost!r}; use 'measured' or 'analytic'")
    else:
        fn = cost
    return StageCostCache(fn), measured
