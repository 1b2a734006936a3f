"""The measured cost model: stage latencies timed on the target by the ios-tvm executor.

A stage is measured by the executor's ``profile_stage`` entry, the same code that runs the
production plan: the stage's groups run on the executor's worker threads (CPU) or streams
(CUDA), timed by device timers, after ``warmup`` runs, ``repeat`` times ``number`` runs; the
median of the repeats is the cost. The profiling plan gives every tensor its own buffer, so
any stage can run without clobbering another's inputs.

Measurements go through a :class:`~ios_tvm.cost.cache.MeasurementCache` keyed by device,
target, TVM version and the stage's kernels (a hash of each kernel's TIR and shapes), so a
rebuild measures nothing twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import IosTvmError
from ..schedule import Stage
from .cache import CACHE_VERSION, MeasurementCache


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
    """

    def __init__(self, extraction: Any, *, max_groups: int = 8,
                 cache: MeasurementCache | None = None, profiler: StageProfiler | None = None,
                 settings: ProfileSettings | None = None, lib: Any = None,
                 device: str | None = None, progress: bool = False) -> None:
        from ..lower import lower, target_device_type
        from ..search import sequential_schedule

        self.graph = extraction.graph
        self.settings = settings or ProfileSettings()
        self.cache = cache
        device_type = target_device_type(extraction.target)
        if profiler is None:
            schedule = sequential_schedule(self.graph)
            artifact = lower(extraction, schedule, lib=lib, reuse_memory=False,
                             min_streams=max_groups)
            profiler = LocalProfiler(artifact.executor(), self.settings)
        self.profiler = profiler
        self.keys = kernel_keys(extraction)
        import tvm

        self.context = json.dumps({
            "device": device or device_name(device_type), "target": str(extraction.target),
            "tvm": tvm.__version__, "cache_version": CACHE_VERSION,
            "settings": [self.settings.warmup, self.settings.number, self.settings.repeat]},
            sort_keys=True)
        self.measured = 0
        self.cache_hits = 0
        self._bar: Any = None
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(desc="measuring stages", unit="stage")

    def stage_key(self, stage: Stage) -> str:
        """The cache key of ``stage``: strategy and groups of kernel keys, order-free."""
        groups = sorted(",".join(self.keys[op] for op in g) for g in stage.groups)
        return f"{stage.strategy}:" + "|".join(groups)

    def __call__(self, stage: Stage) -> float:
        """Latency of ``stage`` in seconds."""
        if stage.strategy != "concurrent":
            raise IosTvmError(f"the measured cost model cannot time {stage.strategy!r} stages "
                              "yet (merged kernels come with IOS-Merge)")
        key = self.stage_key(stage)
        if self.cache is not None:
            hit = self.cache.get(self.context, key)
            if hit is not None:
                self.cache_hits += 1
                return hit
        samples = [float(x) for x in self.profiler.profile([list(g) for g in stage.groups])]
        value = statistics.median(samples)
        if self.cache is not None:
            self.cache.put(self.context, key, value, samples)
        self.measured += 1
        if self._bar is not None:
            self._bar.update(1)
        return value

    def close(self) -> None:
        """Finish the progress bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
