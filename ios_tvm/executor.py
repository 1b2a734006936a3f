"""Running compiled artifacts: load a plan, its kernel library and weights, and execute.

Runtime side: imports only numpy, ``tvm_ffi`` and ``tvm.runtime``, so a GPU host that has
TVM in runtime-only mode (``TVM_USE_RUNTIME_LIB=1``, no compiler library) runs artifacts.

An artifact is a directory::

    plan.json       the execution plan (ios_tvm/plan.py)
    kernels.so      the kernel library (TVM runtime module)
    params.bin      the weights (tvm.runtime.save_param_dict format)
    manifest.json   format, version, target, device type, file sizes
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import _ffi
from .plan import Plan, PlanFormatError

ARTIFACT_FORMAT = "ios_tvm.Artifact"
ARTIFACT_VERSION = 1
_FILES = ("plan.json", "kernels.so", "params.bin")
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


def _runtime() -> Any:
    import tvm.runtime

    return tvm.runtime


def device_of(device_type: str, index: int = 0) -> Any:
    """The TVM device for a plan's device type ("cpu" or "cuda")."""
    import tvm_ffi

    if device_type == "cuda":
        _load_cuda_runtime()
    return tvm_ffi.device(device_type, index)


def _load_cuda_runtime() -> None:
    """In runtime-only mode TVM does not load its CUDA runtime library; load it by hand."""
    import ctypes

    import tvm

    if getattr(tvm.base, "_RUNTIME_ONLY", False):
        lib = os.environ.get("TVM_DEVKIT_CUDA_LIB") or str(
            Path(tvm.__file__).parent / "lib" / "libtvm_runtime_cuda.so")
        ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)


class Executor:
    """Runs a :class:`~ios_tvm.plan.Plan` with the native stage executor.

    Parameters
    ----------
    plan
        The execution plan.
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
    """

    def __init__(self, plan: Plan, lib: Any, params: Mapping[str, Any],
                 device: Any | None = None, *, cuda_graph: bool | None = None) -> None:
        import tvm_ffi

        _ffi.load()
        rt = _runtime()
        self.plan = plan
        self.lib = lib
        self.device = device if device is not None else device_of(plan.device_type)
        # (RPC session devices carry the session in the bits above 128.)
        kind = _DEVICE_TYPES.get(self.device.dlpack_device_type() % 128)
        if kind != plan.device_type:
            raise ValueError(f"the plan runs on {plan.device_type!r} devices (target "
                             f"{plan.target}), not on {self.device}")
        values = {k: v if isinstance(v, rt.Tensor) else rt.tensor(np.asarray(v))
                  for k, v in params.items()}
        create = tvm_ffi.get_global_func("ios_tvm.runtime.create_executor")
        self._module = create(plan.dumps(), lib, values, self.device)
        self._set_input = self._module["set_input"]
        self._get_output = self._module["get_output"]
        self._run = self._module["run"]
        self._profile = self._module["profile_stage"]
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
        """Copy ``value`` (numpy array or TVM tensor) into input ``key`` (index or name).

        Raises ``ValueError`` naming the input when shape or dtype differ from the plan.
        """
        index = self._input_index(key)
        rt = _runtime()
        if not isinstance(value, rt.Tensor):
            value = rt.tensor(np.ascontiguousarray(value))
        spec = self.plan.tensors[self.plan.inputs[index]]
        shape, dtype = tuple(int(d) for d in value.shape), str(value.dtype)
        if dtype != spec.dtype:
            raise ValueError(f"input {spec.name!r} has dtype {dtype}, expected {spec.dtype}")
        if shape != spec.shape:
            raise ValueError(f"input {spec.name!r} has shape {shape}, expected {spec.shape}")
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
        """Run the plan once (after setting any inputs given); returns when it has finished."""
        for i, value in enumerate(inputs):
            self.set_input(i, value)
        for name, value in named.items():
            self.set_input(name, value)
        self._run()

    def get_output(self, index: int = 0) -> Any:
        """Output ``index`` as a TVM tensor aliasing the executor's buffer.

        It stays valid until the next run; copy it (``.numpy()``) to keep it.
        """
        return self._get_output(index)

    def __call__(self, *inputs: Any, **named: Any) -> list[np.ndarray]:
        """Run with the given inputs and return every output as a numpy array (copied)."""
        self.run(*inputs, **named)
        return [self.get_output(i).numpy() for i in range(len(self.output_names))]

    # -- timing ------------------------------------------------------------------------------
    def benchmark(self, *, warmup: int = 3, number: int = 10, repeat: int = 5,
                  min_repeat_ms: float = 0.0) -> dict[str, Any]:
        """Time whole runs; returns seconds per run (median, mean, min, max, all repeats)."""
        for _ in range(warmup):
            self._run()
        results = []
        for _ in range(repeat):
            n = number
            while True:
                t0 = time.perf_counter()
                for _ in range(n):
                    self._run()
                elapsed = time.perf_counter() - t0
                if elapsed * 1e3 >= min_repeat_ms or n >= 1 << 20:
                    break
                n *= 2
            results.append(elapsed / n)
        return {"median": statistics.median(results), "mean": statistics.fmean(results),
                "min": min(results), "max": max(results), "results": results}

    def profile_stage(self, groups: Sequence[Sequence[int]], *, warmup: int = 2, number: int = 6,
                      repeat: int = 6) -> list[float]:
        """Latency (seconds per run, one value per repeat) of one candidate stage.

        ``groups`` are lists of call ids (indices into ``plan.calls``); the calls run on the
        executor's own buffers, exactly as in production (device timers on CUDA).
        """
        return list(self._profile([list(map(int, g)) for g in groups], warmup, number, repeat))


def _target_dict(target: Any) -> dict[str, Any] | None:
    """A target as a dict: a mapping, JSON text (``str(tvm.target.Target)``) or a bare kind."""
    if isinstance(target, Mapping):
        return dict(target)
    text = str(target).strip()
    if text.startswith("{"):
        try:
            d = json.loads(text)
        except json.JSONDecodeError:
            return None
        return d if isinstance(d, dict) else None
    return {"kind": text} if text and " " not in text else None


def _subset(want: Any, have: Any) -> bool:
    if isinstance(want, Mapping):
        return isinstance(have, Mapping) and all(
            k in have and _subset(v, have[k]) for k, v in want.items())
    return bool(want == have)


def target_matches(built: str, expected: str | Mapping[str, Any] | Any) -> bool:
    """Whether an artifact built for ``built`` (the plan's target, JSON text) is for ``expected``.

    ``expected`` is a kind name (``"llvm"``, ``"cuda"``), a target dict or its JSON text, or a
    ``tvm.target.Target``; every key it gives must match (e.g. ``{"kind": "cuda", "arch":
    "sm_90"}``). Works without the TVM compiler.
    """
    have, want = _target_dict(built), _target_dict(expected)
    if have is None or want is None:
        return str(built).strip() == str(expected).strip()
    return _subset(want, have)


# -- artifacts ---------------------------------------------------------------------------------
@dataclass
class Artifact:
    """A compiled model: plan, kernel library and weights."""

    plan: Plan
    lib: Any
    params: dict[str, Any]

    def export(self, directory: str | os.PathLike[str]) -> Path:
        """Write the artifact to ``directory`` (created; files replaced atomically)."""
        rt = _runtime()
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        tmp = {name: out / f".{name}.tmp" for name in (*_FILES, "manifest.json")}
        # export_library picks the toolchain from the suffix; write then rename.
        lib_tmp = out / ".kernels.tmp.so"
        try:
            tmp["plan.json"].write_text(json.dumps(self.plan.to_json(), indent=1))
            self.lib.export_library(str(lib_tmp))
            lib_tmp.replace(tmp["kernels.so"])
            rt.save_param_dict_to_file(
                {k: v if isinstance(v, rt.Tensor) else rt.tensor(np.asarray(v))
                 for k, v in self.params.items()}, str(tmp["params.bin"]))
            manifest = {"format": ARTIFACT_FORMAT, "version": ARTIFACT_VERSION,
                        "target": self.plan.target, "device_type": self.plan.device_type,
                        "files": {n: tmp[n].stat().st_size for n in _FILES}}
            tmp["manifest.json"].write_text(json.dumps(manifest, indent=1))
            for name, path in tmp.items():
                path.replace(out / name)
        finally:
            for path in (*tmp.values(), lib_tmp):
                path.unlink(missing_ok=True)
        return out

    def executor(self, device: Any | None = None, *,
                 cuda_graph: bool | None = None) -> Executor:
        """An :class:`Executor` for this artifact (``cuda_graph``: see :class:`Executor`)."""
        return Executor(self.plan, self.lib, self.params, device, cuda_graph=cuda_graph)


def load(directory: str | os.PathLike[str], device: Any | None = None, *,
         expect_target: str | Mapping[str, Any] | None = None,
         cuda_graph: bool | None = None) -> Executor:
    """Load an artifact directory written by :meth:`Artifact.export` and return its executor.

    Raises :class:`~ios_tvm.plan.PlanFormatError` naming the file at fault when the artifact
    is incomplete, truncated, of another version, or for another target/device.
    ``expect_target`` is checked with :func:`target_matches`; ``cuda_graph`` as in
    :class:`Executor` (default: on for CUDA artifacts).
    """
    return load_artifact(directory, expect_target=expect_target).executor(
        device, cuda_graph=cuda_graph)


def load_artifact(directory: str | os.PathLike[str], *,
                  expect_target: str | Mapping[str, Any] | None = None) -> Artifact:
    """Read an artifact directory (see :func:`load`) without creating an executor."""
    rt = _runtime()
    root = Path(directory)
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        raise PlanFormatError(f"{root}: not an ios-tvm artifact (no manifest.json)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as e:
        raise PlanFormatError(f"{manifest_path}: corrupt manifest: {e}") from e
    if manifest.get("format") != ARTIFACT_FORMAT:
        raise PlanFormatError(f"{manifest_path}: not an {ARTIFACT_FORMAT} manifest")
    if manifest.get("version") != ARTIFACT_VERSION:
        raise PlanFormatError(f"{manifest_path}: artifact version {manifest.get('version')!r}, "
                              f"this ios-tvm reads version {ARTIFACT_VERSION}; rebuild it")
    sizes = manifest.get("files")
    if not isinstance(sizes, Mapping) or any(name not in sizes for name in _FILES):
        raise PlanFormatError(f"{manifest_path}: corrupt manifest (it must list the sizes of "
                              f"{', '.join(_FILES)})")
    for name, size in sizes.items():
        path = root / name
        if not path.is_file():
            raise PlanFormatError(f"{path}: missing from the artifact")
        if path.stat().st_size != size:
            raise PlanFormatError(f"{path}: {path.stat().st_size} bytes, the manifest says {size} "
                                  "(truncated or replaced)")
    try:
        plan = Plan.loads((root / "plan.json").read_text())
    except PlanFormatError as e:
        raise PlanFormatError(f"{root / 'plan.json'}: {e}") from e
    if expect_target is not None and not target_matches(plan.target, expect_target):
        raise PlanFormatError(f"{root / 'plan.json'}: built for target {plan.target}, not "
                              f"{expect_target}")
    if plan.device_type == "cuda":
        _load_cuda_runtime()
    try:
        lib = rt.load_module(str(root / "kernels.so"))
    except Exception as e:  # TVM raises RuntimeError/TVMError variants
        raise PlanFormatError(f"{root / 'kernels.so'}: cannot load the kernel library: {e}") from e
    import tvm_ffi

    # call_dps_packed targets (library dispatch) are global functions, as in the executor.
    missing = [c.kernel for c in plan.calls if not lib.implements_function(c.kernel, True)
               and tvm_ffi.get_global_func(c.kernel, allow_missing=True) is None]
    if missing:
        raise PlanFormatError(f"{root / 'kernels.so'}: kernel(s) {sorted(set(missing))[:3]} "
                              "named by the plan are missing")
    try:
        params = dict(rt.load_param_dict_from_file(str(root / "params.bin")))
    except Exception as e:
        raise PlanFormatError(f"{root / 'params.bin'}: cannot read the weights: {e}") from e
    return Artifact(plan, lib, params)
