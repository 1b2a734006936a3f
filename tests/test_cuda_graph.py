"""CUDA graph mode of the stage executor (runtime/cuda_graph.{h,cc}, issue 8).

Always run (no GPU needed): the native library carries the capture code; every CUDA runtime
symbol the executor resolves at run time exists in libcudart (when one is installed); the
function pointer types match the CUDA headers (when installed); asking for CUDA graphs on
the CPU fails clearly; CUDA plans and the Relax VM with ``relax.backend.use_cuda_graph``
compile here for sm_90.

``gpu``-marked (skipped without a GPU): a replayed graph equals the eager execution of the
same plan and TVM's Relax VM (with and without its own CUDA graph) on the sample block and an
inception block under sequential and concurrent plans; 100 replays are bit-identical; a plan
with a kernel that cannot be captured fails loudly, naming the kernel, and leaves the
executor usable eagerly; an input of another shape is rejected.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
pytest.importorskip("onnx")

sys.path.insert(0, str(Path(__file__).parent))
import onnx_models as om  # noqa: E402
from hardware import has_compiler  # noqa: E402

from ios_tvm import _native  # noqa: E402
from ios_tvm.cost import AnalyticCost, DeviceSpec  # noqa: E402
from ios_tvm.errors import IosTvmError  # noqa: E402
from ios_tvm.ir.plan import Plan, PlanCall, PlanStage  # noqa: E402
from ios_tvm.ir.schedule import Schedule, Stage  # noqa: E402
from ios_tvm.models import sample_block  # noqa: E402
from ios_tvm.runtime.artifact import Artifact, load  # noqa: E402
from ios_tvm.runtime.executor import Executor  # noqa: E402
from ios_tvm.scheduler.config import SearchConfig  # noqa: E402
from ios_tvm.scheduler.search import greedy_schedule, search, sequential_schedule  # noqa: E402

# The compiler half: absent under runtime-only TVM (TVM_USE_RUNTIME_LIB=1, the GPU machine's
# kit), where the tests that compile skip (needs_compiler) and the rest still run;
# tests/test_gpu_runtime.py runs the GPU checks there on artifacts compiled beforehand.
if has_compiler():
    from tvm import relax

    from ios_tvm.compiler.build import build
    from ios_tvm.compiler.extract import graph_from_model
    from ios_tvm.compiler.frontend import load_model
    from ios_tvm.compiler.plan_lowering import lower_schedule as lower
    from ios_tvm.compiler.plan_lowering import make_plan

needs_compiler = pytest.mark.skipif(not has_compiler(),
                                    reason="needs TVM's compiler (runtime-only TVM here)")

pytestmark = pytest.mark.skipif(not _native.native_available(),
                                reason="native library not built (bash scripts/setup.sh)")

REPO = Path(__file__).resolve().parent.parent
GPU_TOL = 1e-4
#: Concurrent branches pay on this device, so the IOS search returns concurrent stages.
TWO_LANES = DeviceSpec("two-lanes", peak_flops=50e9, bandwidth=10e9, launch_s=1e-6,
                       sync_s=2e-6, saturation_s=1.0, min_utilisation=0.5)
MODELS: dict[str, Callable[[], Any]] = {
    "sample": sample_block,
    "inception": om.inception_block,
}
SCHEDULES = ("sequential", "greedy", "ios")


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def cuda_header_dirs() -> list[Path]:
    """Directories holding cuda_runtime_api.h: $CUDA_PATH, /usr/local/cuda*, pip wheels."""
    roots = [os.environ.get("CUDA_PATH", ""), os.environ.get("CUDA_HOME", ""),
             "/usr/local/cuda", *sorted(map(str, Path("/usr/local").glob("cuda-*")))]
    dirs = [Path(r) / "include" for r in roots if r]
    try:
        import nvidia

        for base in map(Path, nvidia.__path__):
            dirs += [base / "cu13" / "include", base / "cuda_runtime" / "include"]
    except ImportError:
        pass
    return [d for d in dirs if (d / "cuda_runtime_api.h").is_file()]


def open_cudart() -> ctypes.CDLL | None:
    """The CUDA runtime library: the process's own (by soname) or an installed one."""
    names = ["libcudart.so.13", "libcudart.so.12"]
    for d in cuda_header_dirs():
        for lib in ("lib64", "lib"):
            names += [str(p) for p in sorted((d.parent / lib).glob("libcudart.so.1[0-9]*"))]
    for name in names:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def executor_cuda_symbols() -> list[str]:
    """Every libcudart symbol the runtime resolves with dlsym: executor.cc's CudaApi and
    cuda_graph.cc's table (as the library reports them)."""
    import tvm_ffi

    names = list(tvm_ffi.get_global_func("ios_tvm.runtime.cuda_executor_symbols")())
    names += list(tvm_ffi.get_global_func("ios_tvm.runtime.cuda_graph_symbols")())
    return names


@functools.cache
def cuda_target() -> dict[str, str]:
    """The CUDA target of GPU 0 (``sm_90`` when there is none, e.g. for compile-only tests)."""
    try:
        major, minor = str(tvm.cuda(0).compute_version).split(".")
        return {"kind": "cuda", "arch": f"sm_{major}{minor}"}
    except Exception:
        return {"kind": "cuda", "arch": "sm_90"}


def make_schedule(graph: Any, kind: str) -> Schedule:
    if kind == "sequential":
        return sequential_schedule(graph)
    if kind == "greedy":
        return greedy_schedule(graph)
    return search(graph, AnalyticCost(graph, TWO_LANES),
                  SearchConfig(strategy="concurrent")).schedule


def random_inputs(ex: Any, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    g = ex.graph
    return [rng.standard_normal(g.tensors[t].shape).astype(g.tensors[t].dtype)
            for t in g.inputs if g.tensors[t].kind == "input"]


@functools.cache
def compiled_cuda(name: str) -> tuple[Any, Artifact]:
    """The model's kernels compiled for this GPU, with its sequential plan."""
    ex = graph_from_model(MODELS[name](), target=cuda_target())
    return ex, lower(ex, sequential_schedule(ex.graph))


def plan_of(name: str, kind: str) -> Plan:
    ex, art = compiled_cuda(name)
    return make_plan(ex.graph, make_schedule(ex.graph, kind), target=art.plan.target,
                     device_type="cuda")


def executor(name: str, plan: Plan, cuda_graph: bool) -> Executor:
    _, art = compiled_cuda(name)
    return Executor(plan, art.lib, art.params, cuda_graph=cuda_graph)


@functools.cache
def relax_vm(name: str, use_cuda_graph: bool) -> Callable[..., list[np.ndarray]]:
    """TVM's own build of the model on the GPU (default pipeline), optionally with its
    single-stream CUDA graph (``relax.backend.use_cuda_graph``)."""
    dev = tvm.cuda(0)
    mod = load_model(MODELS[name]())
    with tvm.transform.PassContext(config={"relax.backend.use_cuda_graph": use_cuda_graph}):
        exe = tvm.compile(mod, target=tvm.target.Target(cuda_target()))
    main = relax.VirtualMachine(exe, dev)["main"]

    def run(*inputs: np.ndarray) -> list[np.ndarray]:
        out = main(*[tvm.runtime.tensor(x, dev) for x in inputs])
        return [out.numpy()] if isinstance(out, tvm.runtime.Tensor) else [o.numpy() for o in out]

    return run


def assert_same(got: Sequence[np.ndarray], want: Sequence[np.ndarray], what: str) -> None:
    assert len(got) == len(want), what
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.shape == w.shape and g.dtype == w.dtype, (what, i)
        assert np.array_equal(g, w), f"{what}: output {i} differs (max |diff| " \
                                     f"{np.max(np.abs(g - w))})"


def assert_close(got: Sequence[np.ndarray], want: Sequence[np.ndarray], what: str) -> None:
    assert len(got) == len(want), what
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        np.testing.assert_allclose(g, w, rtol=GPU_TOL, atol=GPU_TOL, err_msg=f"{what}: {i}")


# ---------------------------------------------------------------------------------------------
# always run: the capture code is built, its CUDA bindings are right, CPU use fails clearly
# ---------------------------------------------------------------------------------------------
@needs_compiler
def test_library_has_cuda_graph_code() -> None:
    import tvm_ffi

    names = list(tvm_ffi.get_global_func("ios_tvm.runtime.cuda_graph_symbols")())
    for want in ("cudaStreamBeginCapture", "cudaStreamEndCapture", "cudaGraphInstantiateWithFlags",
                 "cudaGraphLaunch", "cudaGraphExecDestroy", "cudaGraphDestroy"):
        assert want in names
    e = Artifact(*_cpu_artifact()).executor()
    for fn in ("set_cuda_graph", "cuda_graph_stats"):
        assert e._module[fn] is not None


def test_cuda_symbols_exist_in_libcudart() -> None:
    lib = open_cudart()
    if lib is None:
        pytest.skip("no libcudart here (pip install nvidia-cuda-runtime, or a CUDA toolkit)")
    names = executor_cuda_symbols()
    assert len(names) >= 15, names
    missing = [n for n in names if not hasattr(lib, n)]
    assert not missing, f"{lib._name} lacks {missing}"


def test_native_loader_resolves_the_cuda_graph_api() -> None:
    """The runtime's own dlopen/dlsym of the graph entry points (no GPU needed)."""
    import tvm_ffi

    load_api = tvm_ffi.get_global_func("ios_tvm.runtime.cuda_graph_load_api")
    try:
        path = str(load_api())
    except RuntimeError as e:
        if "could not be loaded" in str(e):
            pytest.skip("no libcudart on the library path")
        raise
    assert "libcudart" in path, path


def test_cuda_graph_api_matches_cuda_headers() -> None:
    """runtime/cuda_graph.h's function pointer types and enum values against the real
    cuda_runtime_api.h (tests/cuda_abi_check.cc: static_asserts, compiled -fsyntax-only)."""
    dirs = cuda_header_dirs()
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not dirs or cxx is None:
        pytest.skip("no CUDA headers or no C++ compiler here")
    for d in dirs[:2]:
        r = subprocess.run([cxx, "-std=c++17", "-fsyntax-only", f"-I{d}", f"-I{REPO}",
                            str(REPO / "tests" / "cuda_abi_check.cc")],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"against {d}:\n{r.stderr[-3000:]}"


# -- kernels that allocate workspace never share a stage on CUDA (issue 14, item 7) -------------
def _workspace_library(target: Any) -> Any:
    """Two CUDA kernels: ``two_pass`` keeps an intermediate in global memory between two
    launches (the host takes it from TVM's workspace pool), ``one_pass`` allocates nothing."""
    from tvm.script import tirx as T

    @T.prim_func
    def two_pass(a: T.Buffer((1024,), "float32"), b: T.Buffer((1024,), "float32")) -> None:
        tmp = T.alloc_buffer((1024,), "float32")
        for bx in T.thread_binding(8, thread="blockIdx.x"):
            for tx in T.thread_binding(128, thread="threadIdx.x"):
                tmp[bx * 128 + tx] = a[bx * 128 + tx] * T.float32(2)
        for bx in T.thread_binding(8, thread="blockIdx.x"):
            for tx in T.thread_binding(128, thread="threadIdx.x"):
                b[bx * 128 + tx] = tmp[1023 - (bx * 128 + tx)] + T.float32(1)

    @T.prim_func
    def one_pass(a: T.Buffer((1024,), "float32"), b: T.Buffer((1024,), "float32")) -> None:
        for bx in T.thread_binding(8, thread="blockIdx.x"):
            for tx in T.thread_binding(128, thread="threadIdx.x"):
                b[bx * 128 + tx] = a[bx * 128 + tx] + T.float32(1)

    mod = tvm.IRModule({"two_pass": two_pass.with_attr("global_symbol", "two_pass"),
                        "one_pass": one_pass.with_attr("global_symbol", "one_pass")})
    return tvm.tirx.build(mod, target=tvm.target.Target(target))


@needs_compiler
def test_workspace_kernels_are_found_and_serialized_on_cuda() -> None:
    from ios_tvm.compiler.plan_lowering import workspace_kernels
    from ios_tvm.ir.graph import OpGraph, OpNode, TensorInfo

    lib = _workspace_library({"kind": "cuda", "arch": "sm_90"})
    assert workspace_kernels(lib) == frozenset({"two_pass"})
    tensors = {"x": TensorInfo("x", (1024,), kind="input"),
               **{f"y{i}": TensorInfo(f"y{i}", (1024,)) for i in range(3)}}
    kernels = ["one_pass", "two_pass", "one_pass"]
    g = OpGraph([OpNode(f"n{i}", k, ("x",), (f"y{i}",)) for i, k in enumerate(kernels)],
                tensors, ["x"], ["y0", "y1", "y2"])
    sch = Schedule((Stage(((0,), (1,), (2,))),))
    plan = make_plan(g, sch, target="cuda", device_type="cuda", workspace={"two_pass"})
    # The workspace kernel's group runs alone, after the two others (still concurrent).
    assert [s.groups for s in plan.stages] == [((0,), (2,)), ((1,),)]
    assert plan.meta["serialized_kernels"] == ["two_pass"]
    assert plan.num_streams == 2
    # On the CPU each group has its own thread (and pool): nothing to serialise.
    cpu = make_plan(g, sch, device_type="cpu", workspace={"two_pass"})
    assert [s.groups for s in cpu.stages] == [((0,), (1,), (2,))]
    assert "serialized_kernels" not in cpu.meta
    # A single-group stage is left as it is.
    seq = make_plan(g, Schedule((Stage(((0, 1, 2),)),)), target="cuda", device_type="cuda",
                    workspace={"two_pass"})
    assert [s.groups for s in seq.stages] == [((0, 1, 2),)]


@needs_compiler
def test_zoo_cuda_kernels_allocate_no_workspace() -> None:
    """None of the inception block's CUDA kernels takes workspace today (the guess of issue
    14 item 7 is checked, not assumed), so its plans keep their concurrent stages."""
    from ios_tvm.compiler.library import build_kernel_library
    from ios_tvm.compiler.plan_lowering import workspace_kernels

    ex = graph_from_model(om.inception_block(), target={"kind": "cuda", "arch": "sm_90"})
    assert workspace_kernels(build_kernel_library(ex.mod, ex.target)) == frozenset()
    art = lower(ex, greedy_schedule(ex.graph))
    assert art.plan.num_streams > 1 and "serialized_kernels" not in art.plan.meta
    assert "workspace_check" not in art.plan.meta


# -- the CUDA runtime loader and the executor's CUDA teardown, on a fake libcudart -------------
def _build_fake(out: Path, soname: str, *, driver: bool = False, versioned: bool = False) -> Path:
    """tests/fake_cudart.c built as ``out/soname`` (see its header)."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler here")
    out.mkdir(parents=True, exist_ok=True)
    cmd = [cc, "-shared", "-fPIC", "-O1", "-w", f"-Wl,-soname,{soname}", "-o", str(out / soname)]
    if driver:
        cmd.append("-DFAKE_DRIVER")
    if versioned:  # TVM's libtvm_runtime_cuda.so binds cuda*@libcudart.so.13
        (out / "cudart.map").write_text(soname + " { global: *; };\n")
        cmd.append(f"-Wl,--version-script={out / 'cudart.map'}")
    subprocess.run([*cmd, str(REPO / "tests" / "fake_cudart.c")], check=True, timeout=120)
    return out / soname


@pytest.fixture(scope="module")
def fakes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Fake CUDA libraries: a driver, a libcudart.so.13 TVM links against, a libcudart.so.12,
    and another libcudart.so.13 in its own directory (the one a wrong lookup would open)."""
    root = tmp_path_factory.mktemp("fake_cuda")
    return {"driver": _build_fake(root / "tvm", "libcuda.so.1", driver=True),
            "cudart13": _build_fake(root / "tvm", "libcudart.so.13", versioned=True),
            "cudart12": _build_fake(root / "old", "libcudart.so.12"),
            "other13": _build_fake(root / "other", "libcudart.so.13", versioned=True)}


def _run_fake(code: str, preload: Sequence[Path], env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess[str]:
    """Runs ``code`` in runtime-only mode after loading ``preload`` (RTLD_GLOBAL); the
    preloaded fake libcudart is ``fake``, and ``counts()`` returns its counters."""
    head = textwrap.dedent(f"""
        import ctypes, gc, json, sys
        libs = [ctypes.CDLL(p, mode=ctypes.RTLD_GLOBAL) for p in {[str(p) for p in preload]!r}]
        fake = libs[-1] if libs else None
        def counts():
            c = (ctypes.c_long * 4)()
            fake.fake_cudart_counts(c)
            return dict(zip(("streams", "streams_freed", "events", "events_freed"), c))
        import tvm_ffi
        from ios_tvm import _native
        _native.load()
        """)
    full_env = {**os.environ, "TVM_USE_RUNTIME_LIB": "1", "PYTHONUNBUFFERED": "1",
                "IOS_TVM_NATIVE_LIB": str(_native.library_path()), **(env or {})}
    return subprocess.run([sys.executable, "-c", head + textwrap.dedent(code)], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env=full_env)


def test_cuda_runtime_already_loaded_under_another_soname_is_used(fakes: dict[str, Path]
                                                                   ) -> None:
    """A libcudart.so.12 is in the process and a libcudart.so.13 is on the library path: the
    executor and the graph runner use the loaded one and open no second CUDA runtime (the
    earlier per-soname "loaded, else open" lookup opened the .so.13)."""
    r = _run_fake("""
        info = list(tvm_ffi.get_global_func("ios_tvm.runtime.cuda_runtime_info")())
        graph = str(tvm_ffi.get_global_func("ios_tvm.runtime.cuda_graph_load_api")())
        maps = open("/proc/self/maps").read()
        print(json.dumps({"info": info, "graph": graph, "maps": maps}))
        """, [fakes["cudart12"]], env={"LD_LIBRARY_PATH": str(fakes["other13"].parent)})
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    assert doc["info"] == [str(fakes["cudart12"]), "loaded"], doc["info"]
    assert doc["graph"] == str(fakes["cudart12"])
    assert str(fakes["other13"]) not in doc["maps"], "a second libcudart was opened"


def test_cuda_runtime_opened_when_none_is_loaded(fakes: dict[str, Path]) -> None:
    r = _run_fake("""
        print(json.dumps(list(tvm_ffi.get_global_func("ios_tvm.runtime.cuda_runtime_info")())))
        """, [], env={"LD_LIBRARY_PATH": str(fakes["other13"].parent)})
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == [str(fakes["other13"]), "opened"]


_FAKE_EXECUTOR = """
    import numpy as np
    from ios_tvm.ir.plan import Plan, PlanCall, PlanStage, PlanTensor
    from ios_tvm.runtime.executor import Executor, allow_packed_function, device_of

    dev = device_of("cuda", 0)            # TVM's CUDA runtime, bound to the fake libcudart
    tvm_ffi.register_global_func("fake.kernel", lambda *a: None, override=True)
    allow_packed_function("fake.")
    n = 3                                 # one stage of three groups: three streams
    tensors = (PlanTensor("x", (4,), "float32", "input"),
               PlanTensor("w", (4,), "float32", "param"),
               *(PlanTensor(f"out{i}", (4,), "float32", "storage", i) for i in range(n)))
    calls = tuple(PlanCall("fake.kernel", (0, 1, i + 2)) for i in range(n))
    plan = Plan("cuda", "cuda", tensors, (16,) * n, calls,
                (PlanStage(tuple((i,) for i in range(n))),), (0,), tuple(range(2, n + 2)))
    try:
        e = Executor(plan, tvm_ffi.system_lib(), {"w": np.ones(4, np.float32)}, dev,
                     cuda_graph=False)
        print("built", e._module["num_streams"](), flush=True)
        del e
    except Exception as err:
        print("failed:", type(err).__name__, str(err).splitlines()[0], flush=True)
    gc.collect()
    print(json.dumps(counts()))
    """


@pytest.mark.parametrize("destroy_error", [0, 700])
def test_executor_teardown_releases_everything_and_never_throws(fakes: dict[str, Path],
                                                                destroy_error: int) -> None:
    """A CUDA executor built and dropped on a fake CUDA runtime: every stream and event it
    created (fork/join and timing) is released. With every release failing as after a sticky
    CUDA error (700), the destructor logs one warning per failure and the process goes on
    (a throwing FreeStream in the destructor used to terminate it)."""
    r = _run_fake(_FAKE_EXECUTOR, [fakes["driver"], fakes["cudart13"]],
                  env={"FAKE_CUDART_DESTROY_ERROR": str(destroy_error)})
    assert r.returncode == 0, f"rc {r.returncode}: {r.stderr[-3000:]}"
    lines = r.stdout.strip().splitlines()
    assert lines[0] == "built 3", r.stdout
    counts = json.loads(lines[-1])
    assert counts == {"streams": 3, "streams_freed": 3, "events": 5, "events_freed": 5}, counts
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("ios-tvm: warning:")]
    if destroy_error:
        assert len(warnings) == 8, r.stderr[-3000:]
        assert sum("releasing the executor's stream" in w for w in warnings) == 3, warnings
        assert all("700" in w for w in warnings), warnings
    else:
        assert warnings == [], warnings


def test_executor_half_built_releases_its_streams(fakes: dict[str, Path]) -> None:
    """Event creation fails after the streams exist: the constructor throws a clear error and
    releases what it created (no destructor runs for a half-built object)."""
    r = _run_fake(_FAKE_EXECUTOR, [fakes["driver"], fakes["cudart13"]],
                  env={"FAKE_CUDART_EVENT_LIMIT": "2"})
    assert r.returncode == 0, f"rc {r.returncode}: {r.stderr[-3000:]}"
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("failed:") and "cudaEventCreateWithFlags" in lines[0], r.stdout
    counts = json.loads(lines[-1])
    assert counts == {"streams": 3, "streams_freed": 3, "events": 2, "events_freed": 2}, counts


@functools.cache
def _cpu_artifact() -> tuple[Plan, Any, dict[str, Any]]:
    ex = graph_from_model(om.inception_block(), target="llvm")
    art = lower(ex, greedy_schedule(ex.graph))
    return art.plan, art.lib, art.params


@needs_compiler
def test_cuda_graph_on_cpu_is_a_clear_error(tmp_path: Path) -> None:
    plan, lib, params = _cpu_artifact()
    e = Executor(plan, lib, params)          # default: off on the CPU
    assert e.cuda_graph is False
    assert e.cuda_graph_stats() == {"enabled": False, "captured": False, "captures": 0,
                                    "launches": 0, "nodes": 0, "error": ""}
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA"):
        Executor(plan, lib, params, cuda_graph=True)
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device; this executor runs "
                                         "on the CPU"):
        e._module["set_cuda_graph"](True)    # the native check, past the Python one
    e.set_cuda_graph(False)                  # turning it off is always fine
    x = np.random.default_rng(0).standard_normal(plan.tensors[plan.inputs[0]].shape)
    e(x.astype("float32"))                   # and the executor still runs
    Artifact(plan, lib, params).export(tmp_path / "art")
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA"):
        load(tmp_path / "art", cuda_graph=True)
    assert load(tmp_path / "art").cuda_graph is False


@needs_compiler
def test_build_rejects_cuda_graph_on_cpu() -> None:
    with pytest.raises(IosTvmError, match="cuda_graph=True needs a CUDA target"):
        build(om.inception_block(), "llvm", cost="analytic", measure=False, cuda_graph=True)


@needs_compiler
def test_cuda_plans_and_vm_cuda_graph_compile_here(tmp_path: Path) -> None:
    """No GPU needed: the CUDA kernels of a plan export (as cubins), and the Relax VM
    with ``relax.backend.use_cuda_graph`` compiles for sm_90 and calls the VM's graph
    builtins (the Relax VM baseline of the benchmark)."""
    ex = graph_from_model(om.inception_block(), target={"kind": "cuda", "arch": "sm_90"})
    art = lower(ex, greedy_schedule(ex.graph))
    assert art.plan.device_type == "cuda" and art.plan.num_streams > 1
    art.export(tmp_path / "art")
    backend = relax.backend.cuda.pipeline
    rest = tvm.transform.Sequential([*backend.dataflow_lower_passes(ex.target),
                                     *backend.finalize_passes(ex.target)])
    texts = {}
    for graph in (False, True):
        with tvm.transform.PassContext(config={"relax.backend.use_cuda_graph": graph}):
            exe = tvm.compile(ex.mod, target=ex.target, relax_pipeline=rest)
        texts[graph] = exe.as_text()
        exe.export_library(str(tmp_path / f"vm_{graph}.so"))
    assert "vm.builtin.cuda_graph.run_or_capture" in texts[True]
    assert "vm.builtin.cuda_graph" not in texts[False]


@needs_compiler
def test_bench_gpu_script_compiles_here_and_runs_on_cpu(tmp_path: Path) -> None:
    """scripts/bench_gpu.py: the compile-here half for CUDA (kernels as cubins, both
    Relax VM executables, weight recipe), and the whole pipeline on the CPU (llvm cases,
    runtime side in runtime-only mode) so that the GPU half has run at least once."""
    script = [sys.executable, str(REPO / "scripts" / "bench_gpu.py")]

    def call(*args: str, env: dict[str, str] | None = None) -> str:
        r = subprocess.run([*script, *args], cwd=REPO, capture_output=True, text=True,
                           timeout=900, env={**os.environ, **(env or {})})
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        return r.stdout

    call("compile", "--out", str(tmp_path / "cuda"), "--models", "sample", "--batches", "1",
         "--archive", str(tmp_path / "cuda.tar.xz"), "--profile-candidates")
    case = tmp_path / "cuda" / "sample-b1"
    for f in ("kernels.so", "vm.so", "vm_graph.so", "plan_sequential.json", "plan_ios.json",
              "plan_profiling.json", "stages.json", "meta.json"):
        assert (case / f).is_file(), f
    meta = json.loads((case / "meta.json").read_text())
    assert meta["device_type"] == "cuda" and not meta["weights_extra"]
    assert sorted(meta["weights"]) == sorted(meta["vm_weights"])
    assert (tmp_path / "cuda.tar.xz").stat().st_size < (case / "kernels.so").stat().st_size
    assert b"vm.builtin.cuda_graph.run_or_capture" in (case / "vm_graph.so").read_bytes()

    call("compile", "--target", "llvm", "--out", str(tmp_path / "cpu"), "--models", "sample",
         "--batches", "1", "--archive", str(tmp_path / "cpu.tar.xz"))
    # The reference the GPU tests compare with (tests/test_gpu_runtime.py): two inputs and
    # ONNX Runtime's outputs, which the CPU plan reproduces.
    call("reference", "--dir", str(tmp_path / "cpu"), "--inputs", "2")
    with np.load(tmp_path / "cpu" / "sample-b1" / "reference.npz") as z:
        ref = {k: z[k] for k in z.files}
    assert sorted(ref) == ["ort0_0", "ort1_0", "x0", "x1"]
    assert not np.array_equal(ref["x0"], ref["x1"])
    cpu_plan = Plan.loads((tmp_path / "cpu" / "sample-b1" / "plan_sequential.json").read_text())
    assert ref["x0"].shape == cpu_plan.tensors[cpu_plan.inputs[0]].shape
    out = tmp_path / "result.json"
    # PyTorch eager runs too where torch is installed (torch.compile is left out: 30 s here).
    call("run", "--dir", str(tmp_path / "cpu.tar.xz"), "--repeat", "2",
         "--variants", "relax_vm,seq_eager,ios_eager,torch_eager",
         "--warmup", "1", "--min-ms", "1", "--out", str(out), env={"TVM_USE_RUNTIME_LIB": "1"})
    doc = json.loads(out.read_text())
    assert doc["format"] == "ios_tvm.bench_gpu" and doc["machine"]["tvm_runtime_only"]
    (row,) = doc["cases"]
    torch_ok = importlib.util.find_spec("torch") is not None
    assert row["errors"] == ({} if torch_ok else {"torch_eager": "torch is not importable",
                                                  "torch_compile": "torch is not importable"})
    assert set(row["latency"]) == {"relax_vm", "seq_eager", "ios_eager"} | (
        {"torch_eager"} if torch_ok else set())
    assert all(c["ok"] for c in row["check"].values()), row["check"]


# ---------------------------------------------------------------------------------------------
# GPU: replay == eager == Relax VM, determinism, loud capture failures, fixed shapes
# ---------------------------------------------------------------------------------------------
@needs_compiler
@pytest.mark.gpu
@pytest.mark.parametrize("kind", SCHEDULES)
@pytest.mark.parametrize("name", MODELS)
def test_replay_equals_eager_and_relax_vm(name: str, kind: str) -> None:
    ex, _ = compiled_cuda(name)
    plan = plan_of(name, kind)
    if name == "inception" and kind != "sequential":
        assert plan.num_streams > 1, "a concurrent plan is needed to test multi-stream capture"
    eager = executor(name, plan, cuda_graph=False)
    graph = executor(name, plan, cuda_graph=True)
    assert graph.cuda_graph and not eager.cuda_graph
    for seed in (0, 1, 2):   # new inputs after the capture: the replay reads the input buffers
        x = random_inputs(ex, seed)
        want = eager(*x)
        got = graph(*x)
        # The same kernels on the same buffers in the same per-stream order: bit-identical.
        assert_same(got, want, f"{name}/{kind} seed {seed}: graph replay vs eager")
        assert_close(got, relax_vm(name, False)(*x), f"{name}/{kind}: vs Relax VM")
        assert_close(got, relax_vm(name, True)(*x), f"{name}/{kind}: vs Relax VM + CUDA graph")
    stats = graph.cuda_graph_stats()
    assert stats["captured"] and stats["captures"] == 1 and stats["launches"] == 3, stats
    assert stats["nodes"] >= len(plan.calls), stats     # every kernel is a node of the graph
    assert stats["error"] == ""
    assert eager.cuda_graph_stats()["launches"] == 0


@needs_compiler
@pytest.mark.gpu
@pytest.mark.parametrize("name", MODELS)
def test_repeated_replays_are_bit_identical(name: str) -> None:
    ex, _ = compiled_cuda(name)
    e = executor(name, plan_of(name, "greedy"), cuda_graph=True)
    x = random_inputs(ex, 3)
    first = e(*x)
    for i in range(100):
        e.run()
        assert_same([e.get_output(j).numpy() for j in range(len(first))], first, f"replay {i}")
    stats = e.cuda_graph_stats()
    assert stats["captures"] == 1 and stats["launches"] == 101, stats


@needs_compiler
@pytest.mark.gpu
def test_benchmark_replays_and_profile_stage_still_eager() -> None:
    e = executor("inception", plan_of("inception", "greedy"), cuda_graph=True)
    ex, _ = compiled_cuda("inception")
    e.run(*random_inputs(ex))
    timing = e.benchmark(warmup=1, number=5, repeat=2)
    assert timing["median"] > 0 and e.cuda_graph_stats()["launches"] == 1 + 1 + 10
    assert all(t > 0 for t in e.profile_stage([[0]], warmup=1, number=2, repeat=2))


@needs_compiler
@pytest.mark.gpu
def test_turning_graphs_off_and_on() -> None:
    ex, _ = compiled_cuda("inception")
    e = executor("inception", plan_of("inception", "ios"), cuda_graph=True)
    x = random_inputs(ex)
    want = e(*x)
    e.set_cuda_graph(False)
    assert e.cuda_graph_stats()["enabled"] is False
    assert_same(e(*x), want, "eager after turning graphs off")
    e.set_cuda_graph(True)
    assert_same(e(*x), want, "recaptured")
    assert e.cuda_graph_stats()["captures"] == 1


# -- a kernel that cannot be captured -----------------------------------------------------------
_BREAKER = "ios_tvm_test.capture_breaker"
_NOOP = "ios_tvm_test.noop_kernel"
_breaker_mode: dict[str, str] = {"call": "stream_sync", "on_error": "ignore"}
_breaker_codes: list[int] = []


def _cudart_in_process() -> ctypes.CDLL:
    lib = open_cudart()
    assert lib is not None, "no libcudart although a GPU is present"
    return lib


def _capture_breaker(*args: Any) -> None:
    """A "kernel" that synchronises: fine eagerly, illegal while its stream is captured."""
    import tvm_ffi

    lib = _cudart_in_process()
    if _breaker_mode["call"] == "stream_sync":
        stream = tvm_ffi.get_raw_stream(tvm_ffi.device("cuda", 0))
        lib.cudaStreamSynchronize.argtypes = [ctypes.c_void_p]
        rc = lib.cudaStreamSynchronize(ctypes.c_void_p(stream))
    else:
        rc = lib.cudaDeviceSynchronize()
    _breaker_codes.append(int(rc))
    if rc != 0 and _breaker_mode["on_error"] == "raise":
        raise RuntimeError(f"the breaker's CUDA call returned error {rc}")


def _noop_kernel(*args: Any) -> None:
    """A "kernel" that enqueues nothing: capturable."""


def _register_test_kernels() -> None:
    import tvm_ffi

    from ios_tvm.runtime.executor import allow_packed_function

    tvm_ffi.register_global_func(_BREAKER, _capture_breaker, override=True)
    tvm_ffi.register_global_func(_NOOP, _noop_kernel, override=True)
    allow_packed_function("ios_tvm_test.")  # plans call only allowed global functions


def plan_with_injected_stage(plan: Plan, groups: Sequence[Sequence[str]]) -> Plan:
    """``plan`` with one more stage after its first: groups of the given global "kernels",
    each called on the first stage's output (read only)."""
    first = plan.calls[plan.stages[0].groups[0][0]]
    arg = first.args[-1]
    calls = list(plan.calls)
    stage_groups = []
    for g in groups:
        ids = []
        for kernel in g:
            ids.append(len(calls))
            calls.append(PlanCall(kernel, (arg,), num_outputs=0, node=f"injected:{kernel}"))
        stage_groups.append(tuple(ids))
    stages = (plan.stages[0], PlanStage(tuple(stage_groups)), *plan.stages[1:])
    out = dataclasses.replace(plan, calls=tuple(calls), stages=stages,
                              min_streams=max(plan.min_streams, len(groups)))
    out.validate()
    return out


@needs_compiler
@pytest.mark.gpu
@pytest.mark.parametrize("call", ["stream_sync", "device_sync"])
@pytest.mark.parametrize("on_error", ["ignore", "raise"])
@pytest.mark.parametrize("side_stream", [False, True])
def test_uncapturable_kernel_fails_loudly(call: str, on_error: str, side_stream: bool) -> None:
    """The breaker synchronises. Whether it ignores the error CUDA returns during capture or
    raises, the first graph run raises naming it; the executor then runs eagerly."""
    _register_test_kernels()
    _breaker_mode.update(call=call, on_error=on_error)
    _breaker_codes.clear()
    ex, _ = compiled_cuda("inception")
    base = plan_of("inception", "greedy")
    groups = [[_NOOP], [_BREAKER]] if side_stream else [[_NOOP, _BREAKER]]
    plan = plan_with_injected_stage(base, groups)
    breaker_call = next(i for i, c in enumerate(plan.calls) if c.kernel == _BREAKER)
    x = random_inputs(ex)
    want = executor("inception", base, cuda_graph=False)(*x)
    e = executor("inception", plan, cuda_graph=True)
    with pytest.raises(RuntimeError) as info:
        e(*x)
    msg = str(info.value)
    assert "CUDA graph capture failed" in msg, msg
    assert f"kernel '{_BREAKER}' (call {breaker_call})" in msg, msg
    # The eager warm-up call succeeds; the call during the capture is what fails (CUDA
    # returns cudaErrorStreamCaptureUnsupported there, which "ignore" swallows).
    assert _breaker_codes[0] == 0 and len(_breaker_codes) >= 2, _breaker_codes
    # Usable afterwards, in eager mode, with correct results.
    stats = e.cuda_graph_stats()
    assert not stats["enabled"] and not stats["captured"] and _BREAKER in stats["error"]
    assert e.cuda_graph is False
    for _ in range(2):
        assert_same(e(*x), want, "eager run after a failed capture")
    # The thread's CUDA state is clean: an ordinary graph captures and replays.
    ok = executor("inception", base, cuda_graph=True)
    assert_same(ok(*x), want, "graph after a failed capture elsewhere")
    assert ok.cuda_graph_stats()["captured"]


@needs_compiler
@pytest.mark.gpu
def test_input_shape_change_is_rejected() -> None:
    ex, _ = compiled_cuda("inception")
    e = executor("inception", plan_of("inception", "greedy"), cuda_graph=True)
    (x,) = random_inputs(ex)
    want = e(x)
    bigger = np.zeros((2, *x.shape[1:]), x.dtype)
    with pytest.raises(ValueError, match=r"input 'x' has shape \(2, "):
        e.set_input(0, bigger)
    with pytest.raises(ValueError, match="has shape"):      # the native check as well
        e._module["set_input"](0, tvm.runtime.tensor(bigger))
    with pytest.raises(ValueError, match="dtype"):
        e.set_input(0, x.astype("float64"))
    e.run()                                                # the graph still replays x
    assert_same([e.get_output(0).numpy()], want, "after rejected inputs")
    stats = e.cuda_graph_stats()
    assert stats["captures"] == 1 and stats["launches"] == 2, stats


@needs_compiler
@pytest.mark.gpu
def test_artifact_load_defaults_to_graphs(tmp_path: Path) -> None:
    ex, art = compiled_cuda("inception")
    Artifact(plan_of("inception", "ios"), art.lib, art.params).export(tmp_path / "a")
    x = random_inputs(ex)
    e = load(tmp_path / "a")
    assert e.cuda_graph
    assert_same(e(*x), load(tmp_path / "a", cuda_graph=False)(*x), "load: graph vs eager")


@needs_compiler
@pytest.mark.gpu
def test_build_measures_both_modes() -> None:
    r = build(om.inception_block(), cuda_target(), cost="analytic", cache=False)
    for key in ("ios_eager", "ios_graph", "sequential_eager", "sequential_graph", "relax_vm",
                "relax_vm_graph"):
        assert r.latencies.get(key, 0) > 0, (key, r.latencies)
    assert r.latencies["ios"] == r.latencies["ios_graph"]
    assert r.artifact.plan.meta["cuda_graph"] is True
    assert r.executor.cuda_graph
    eager = build(om.inception_block(), cuda_target(), cost="analytic", cache=False,
                  cuda_graph=False)
    assert eager.latencies["ios"] == eager.latencies["ios_eager"]
    assert eager.executor.cuda_graph is False
