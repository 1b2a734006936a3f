"""The stage executor: runs a plan's stages of concurrent groups of TVM kernels.

:class:`Executor` wraps the native executor (``runtime/executor.cc``: worker threads on CPU,
one stream per group and optional CUDA graph replay on CUDA). Runtime side: imports only
numpy, ``tvm_ffi`` and ``tvm.runtime``, so a GPU host that has TVM in runtime-only mode
(``TVM_USE_RUNTIME_LIB=1``, no compiler library) runs artifacts.
"""

from __future__ import annotations

import math
import operator
import os
import statistics
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ios_tvm import _native
from ios_tvm.errors import ExecutionError, ExecutorArgumentError, PlanFormatError, register_errors
from ios_tvm.ir.plan import Plan

#: DLPack device type -> the plan's device type name.
_DEVICE_TYPES = {1: "cpu", 2: "cuda"}


def default_cpu_threads() -> int:
    """Give TVM's CPU kernels every core this process may use, unless the user said otherwise.

    TVM sizes each thread's pool from ``TVM_NUM_THREADS`` (else ``OMP_NUM_THREADS``, else half
    the hardware threads: a single thread on a 2-core machine). This sets ``TVM_NUM_THREADS``
    to the number of CPUs in the process's affinity mask when neither variable is set (and
    ``IOS_TVM_THREAD_SHARE`` is not ``0``), before any pool exists; the executor then lowers
    each thread's share for concurrent stages (runtime/executor.cc, ``KernelThreads``).

    Returns
    -------
    int
        The thread count TVM's pools will use.
    """
    for var in ("TVM_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    if os.environ.get("IOS_TVM_THREAD_SHARE") != "0":
        os.environ["TVM_NUM_THREADS"] = str(cores)
    return cores


default_cpu_threads()
# Kernels may be Python packed functions raising ios-tvm errors through the executor.
register_errors()


def _runtime() -> Any:
    import tvm.runtime

    return tvm.runtime


def device_of(device_type: str, index: int = 0) -> Any:
    """The TVM device for a plan's device type ("cpu" or "cuda")."""
    import tvm_ffi

    if device_type == "cuda":
        load_cuda_runtime()
    return tvm_ffi.device(device_type, index)


def load_cuda_runtime() -> None:
    """Load TVM's CUDA runtime once (:func:`ios_tvm.runtime.cuda.load_cuda_runtime`)."""
    from ios_tvm.runtime import cuda

    cuda.load_cuda_runtime()


def _global(name: str) -> Any:
    """A global function of ios-tvm's native library (loaded on first use)."""
    import tvm_ffi

    _native.load()
    return tvm_ffi.get_global_func(name)


def allow_packed_function(name: str) -> None:
    """Let plans call the global function ``name`` as a kernel (process-wide).

    A plan's calls run the functions of its own kernel library. A ``call_dps_packed`` of the
    model (library dispatch, e.g. ``tvm.contrib.cblas.matmul`` or a function of your own)
    names a registered global function instead; plans may call none of those unless allowed
    here, so that a tampered plan cannot call, say, ``runtime.config_threadpool``. ``name`` is
    an exact name, or a prefix when it ends with ``"."`` (``"mylib."``). The executor enforces
    this (``runtime/executor.cc``). It cannot check a global function's arguments (TVM's
    ``tvm.contrib`` functions read theirs unchecked: the wrong ones corrupt memory), so allow
    only what your models call, for plans you trust.
    """
    if not isinstance(name, str) or not name.strip(". "):
        raise ValueError(f"allow_packed_function needs a function name or a prefix ending "
                         f"in '.', got {name!r}")
    _global("ios_tvm.runtime.allow_packed_function")(name)


def packed_function_allowed(name: str) -> bool:
    """Whether plans may call the global function ``name`` (see :func:`allow_packed_function`)."""
    return bool(_global("ios_tvm.runtime.packed_function_allowed")(name))


class Executor:
    """Runs a :class:`~ios_tvm.ir.plan.Plan` with the native stage executor.

    One executor runs one call at a time: calls from several threads are serialised (a run
    holds the executor, and ``__call__`` sets the inputs, runs and copies the outputs as one
    step, so every caller gets its own results). A sequence of :meth:`set_input`, :meth:`run`
    and :meth:`get_output` from several threads is not one step: hold :attr:`lock` around it,
    or use ``__call__``, or one executor per thread (executors share the kernel library).

    Parameters
    ----------
    plan
        The execution plan; it is validated (:meth:`~ios_tvm.ir.plan.Plan.validate`).
    lib
        The kernel library (a TVM runtime module holding every kernel the plan calls).
    params
        Weights by tensor name (TVM tensors or numpy arrays).
    device
        Where to run; defaults to device 0 of the plan's device type.
    cuda_graph
        Replay the whole plan as one CUDA graph (default: on for CUDA plans, unless the plan's
        ``meta["cuda_graph"]`` is false; ``True`` on a CPU plan raises ``ValueError``). The
        first :meth:`run` runs the plan eagerly, captures every stream and the fork/join
        events between them into one graph (``runtime/cuda_graph.cc``) and replays it; later
        runs are a single graph launch. Inputs, weights, activations and outputs live in
        fixed buffers, so replays stay valid; :meth:`set_input` copies into the input
        buffers, and an input of another shape or dtype is rejected (plans are specialised
        for static shapes; build another plan for another shape). A kernel that cannot be
        captured (it synchronises, allocates memory, uses the legacy stream) makes that first
        run raise ``RuntimeError`` naming it; the executor then stays usable in eager mode
        (:attr:`cuda_graph` is False and :meth:`cuda_graph_stats` holds the error).

    Raises
    ------
    PlanFormatError
        When the plan is invalid, or its kernels, weights or sizes do not fit the library,
        the params or the device.
    """

    def __init__(self, plan: Plan, lib: Any, params: Mapping[str, Any],
                 device: Any | None = None, *, cuda_graph: bool | None = None) -> None:
        _native.load()
        rt = _runtime()
        plan.validate()
        self.plan = plan
        self.lib = lib
        #: Held by every call; hold it around a set_input/run/get_output sequence.
        self.lock = threading.RLock()
        self.device = device if device is not None else device_of(plan.device_type)
        # (RPC session devices carry the session in the bits above 128.)
        kind = _DEVICE_TYPES.get(self.device.dlpack_device_type() % 128)
        if kind != plan.device_type:
            raise PlanFormatError(f"the plan runs on {plan.device_type!r} devices (target "
                                  f"{plan.target}), not on {self.device}")
        values = {k: v if isinstance(v, rt.Tensor) else rt.tensor(np.asarray(v))
                  for k, v in params.items()}
        try:
            self._module = _global("ios_tvm.runtime.create_executor")(plan.dumps(), lib, values,
                                                                      self.device)
        except Exception as e:  # the native checks: kernels, weights, sizes, the device
            raise PlanFormatError(f"cannot run this plan on {self.device}: {e}") from e
        self._set_input = self._module["set_input"]
        self._get_output = self._module["get_output"]
        self._run = self._module["run"]
        self._profile = self._module["profile_stage"]
        self._missing_inputs = self._module["missing_inputs"]
        self.input_names = [plan.tensors[i].name for i in plan.inputs]
        self.output_names = [plan.tensors[i].name for i in plan.outputs]
        if cuda_graph is None:
            cuda_graph = kind == "cuda" and plan.meta.get("cuda_graph", True) is not False
        if cuda_graph:
            self.set_cuda_graph(True)

    # -- CUDA graph mode -----------------------------------------------------------------------
    def set_cuda_graph(self, enabled: bool) -> None:
        """Turn CUDA graph mode on (the next run captures) or off (drops the graph).

        Raises ``ValueError`` when turned on for an executor that does not run on CUDA.
        """
        if enabled and self.plan.device_type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA plan and device; this plan runs on "
                             f"{self.plan.device_type!r} (target {self.plan.target})")
        with self.lock:
            self._module["set_cuda_graph"](bool(enabled))

    @property
    def cuda_graph(self) -> bool:
        """Whether runs replay a CUDA graph (False after a failed capture)."""
        return bool(self.cuda_graph_stats()["enabled"])

    def cuda_graph_stats(self) -> dict[str, Any]:
        """The CUDA graph state.

        Keys: ``enabled``, ``captured``, ``captures``, ``launches``, ``nodes`` (of the captured
        graph) and ``error`` (why the last capture failed, or "").
        """
        stats = self._module["cuda_graph_stats"]()
        return {str(k): (str(v) if isinstance(v, str) else v) for k, v in stats.items()}

    # -- running -----------------------------------------------------------------------------
    def set_input(self, key: int | str, value: Any) -> None:
        """Copy ``value`` (numpy array, scalar or TVM tensor) into input ``key`` (index or name).

        Raises :class:`ExecutorArgumentError` (a ``ValueError``) naming the input when shape
        or dtype differ from the plan.
        """
        index = self._input_index(key)
        rt = _runtime()
        if not isinstance(value, rt.Tensor):
            # asarray, not ascontiguousarray: that one turns a 0-d array into shape (1,).
            value = rt.tensor(np.asarray(value, order="C"))
        spec = self.plan.tensors[self.plan.inputs[index]]
        shape, dtype = tuple(int(d) for d in value.shape), str(value.dtype)
        if dtype != spec.dtype:
            raise ExecutorArgumentError(f"input {spec.name!r} has dtype {dtype}, expected "
                                        f"{spec.dtype}")
        if shape != spec.shape:
            raise ExecutorArgumentError(f"input {spec.name!r} has shape {shape}, expected "
                                        f"{spec.shape}")
        with self.lock:
            self._set_input(index, value)

    def _input_index(self, key: int | str) -> int:
        if isinstance(key, str):
            if key not in self.input_names:
                raise KeyError(f"no input named {key!r}; inputs are {self.input_names}")
            return self.input_names.index(key)
        index = int(key)
        if not 0 <= index < len(self.input_names):
            raise IndexError(f"input index {index} out of range: the model has "
                             f"{len(self.input_names)} input(s) {self.input_names}")
        return index

    def run(self, *inputs: Any, **named: Any) -> None:
        """Run the plan once (after setting any inputs given); returns when it has finished.

        Raises :class:`ExecutorArgumentError` when an input was never set, and
        :class:`ExecutionError` (a ``RuntimeError``) naming the call when a kernel fails.
        """
        with self.lock:
            for i, value in enumerate(inputs):
                self.set_input(i, value)
            for name, value in named.items():
                self.set_input(name, value)
            self._check_inputs_set()
            self._run_times(1)

    def _check_inputs_set(self) -> None:
        missing = [str(n) for n in self._missing_inputs()]
        if missing:
            raise ExecutorArgumentError(f"input(s) {missing} were never set; set every input "
                                        f"(of {self.input_names}) before running")

    def _run_times(self, times: int) -> None:
        try:
            for _ in range(times):
                self._run()
        except Exception as e:
            raise ExecutionError(str(e)) from e

    def get_output(self, index: int = 0) -> Any:
        """Output ``index`` as a TVM tensor aliasing the executor's buffer.

        It stays valid until the next run; copy it (``.numpy()``) to keep it.
        """
        with self.lock:
            return self._get_output(index)

    def __call__(self, *inputs: Any, **named: Any) -> list[np.ndarray]:
        """Run with the given inputs and return every output as a numpy array (copied).

        Atomic: concurrent calls from other threads wait.
        """
        with self.lock:
            self.run(*inputs, **named)
            return [self.get_output(i).numpy() for i in range(len(self.output_names))]

    # -- timing ------------------------------------------------------------------------------
    def benchmark(self, *, warmup: int = 3, number: int = 10, repeat: int = 5,
                  min_repeat_ms: float = 0.0) -> dict[str, Any]:
        """Time whole runs; returns seconds per run (median, mean, min, max, all repeats).

        Each repeat times ``number`` runs, doubling them (up to 2^20) until the repeat takes
        ``min_repeat_ms``. Raises :class:`ExecutorArgumentError` unless ``warmup >= 0``,
        ``number >= 1``, ``repeat >= 1`` and ``min_repeat_ms`` is finite and non-negative.
        """
        warmup, number, repeat = (_count(v, name, low) for v, name, low in (
            (warmup, "warmup", 0), (number, "number", 1), (repeat, "repeat", 1)))
        if not (isinstance(min_repeat_ms, int | float) and math.isfinite(min_repeat_ms)
                and min_repeat_ms >= 0):
            raise ExecutorArgumentError(f"benchmark needs a finite min_repeat_ms >= 0, got "
                                        f"{min_repeat_ms!r}")
        results = []
        with self.lock:
            self._check_inputs_set()
            self._run_times(warmup)
            for _ in range(repeat):
                n = number
                while True:
                    t0 = time.perf_counter()
                    self._run_times(n)
                    elapsed = time.perf_counter() - t0
                    if elapsed * 1e3 >= min_repeat_ms or n >= 1 << 20:
                        break
                    n = min(2 * n, 1 << 20)
                results.append(elapsed / n)
        return {"median": statistics.median(results), "mean": statistics.fmean(results),
                "min": min(results), "max": max(results), "results": results}

    def profile_stage(self, groups: Sequence[Sequence[int]], *, warmup: int = 2, number: int = 6,
                      repeat: int = 6) -> list[float]:
        """Latency (seconds per run, one value per repeat) of one candidate stage.

        ``groups`` are lists of call ids (indices into ``plan.calls``); the calls run on the
        executor's own buffers, exactly as in production (device timers on CUDA). Unlike a
        run, profiling does not refuse unset inputs, but run real inputs once first: buffers
        never written may hold denormals, which slowed the sample block's kernels about 10x
        on a CPU.
        """
        with self.lock:
            return list(self._profile([list(map(int, g)) for g in groups], warmup, number,
                                      repeat))

    def profile_stage_cold(self, groups: Sequence[Sequence[int]], *, warmup: int = 2,
                           repeat: int = 6) -> list[float]:
        """As :meth:`profile_stage` with ``number=1``, the stage's weights evicted first.

        Before each timed run, the weights the stage's calls read are evicted from every
        cache level (CPU only).

        This is how a stage runs inside a plan of a model whose weights do not fit in the
        caches: its input was just written by the stage before (cached), its weights were
        last read a whole run ago (in memory).
        """
        warmup, repeat = _count(warmup, "warmup", 0), _count(repeat, "repeat", 1)
        with self.lock:
            return list(self._module["profile_stage_cold"](
                [list(map(int, g)) for g in groups], warmup, repeat))

    def profile_run(self, *, warmup: int = 2, repeat: int = 10) -> list[list[float]]:
        """Seconds of every stage inside whole runs of the plan.

        One row per repeat: the stages' seconds in order, then the whole run's. The stages
        run as in :meth:`run` (same threads, thread shares and order), timed by a steady
        clock around each stage; on CUDA stream 0 is synchronised after each stage (one more
        synchronisation per stage than a run). Unset inputs are not refused (see
        :meth:`profile_stage` on why real ones should be run first).
        """
        warmup, repeat = _count(warmup, "warmup", 0), _count(repeat, "repeat", 1)
        with self.lock:
            flat = list(self._module["profile_run"](warmup, repeat))
        width = len(self.plan.stages) + 1
        return [flat[i:i + width] for i in range(0, len(flat), width)]

    def profile_stages(self, stages: Sequence[Sequence[Sequence[int]]], *, warmup: int = 2,
                       repeat: int = 10) -> list[list[float]]:
        """As :meth:`profile_run`, for a sequence of stages given as groups of call ids.

        E.g. a candidate stage after the stages a plan runs before it.
        """
        warmup, repeat = _count(warmup, "warmup", 0), _count(repeat, "repeat", 1)
        spec = [[list(map(int, g)) for g in st] for st in stages]
        with self.lock:
            flat = list(self._module["profile_stages"](spec, warmup, repeat))
        width = len(spec) + 1
        return [flat[i:i + width] for i in range(0, len(flat), width)]


def _count(value: Any, name: str, low: int) -> int:
    """``value`` as an integer >= ``low``, else an :class:`ExecutorArgumentError`."""
    try:
        if isinstance(value, bool):
            raise TypeError
        n = operator.index(value)
    except TypeError:
        raise ExecutorArgumentError(f"benchmark needs an integer {name}, got {value!r}") from None
    if n < low:
        raise ExecutorArgumentError(f"benchmark needs {name} >= {low}, got {n}")
    return n


