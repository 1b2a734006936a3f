"""A GPU run rehearsed on a machine without a GPU, up to the first CUDA call (runs in CI).

The GPU machine gets artifacts compiled here and a runtime-only TVM (the device kit:
``shared/tools/device-kit.sh``, the tvm package without ``libtvm_compiler.so``, with
``TVM_USE_RUNTIME_LIB=1``). This test assembles the same kit from the installed wheels,
compiles the sample block for CUDA (sm_90), and loads it in a subprocess with that kit, pip's
``libcudart.so.13`` and a stub driver (``tests/cuda_stub_driver.c``, built here with cc, whose
every call says "no device"). It checks each step a GPU run takes before its first real CUDA
call, so that one lent GPU call is not spent on them:

1. the native library loads, and TVM is runtime-only (no compiler library mapped);
2. TVM's CUDA runtime loads and registers its CUDA module loader and device API;
3. the kernels load as compiled code: the artifact (and a Relax VM executable, the
   baseline bench_gpu.py ships) holds cubins, not CUDA source, and nothing calls NVRTC
   (``tvm_callback_cuda_compile``, ``cuda.bindings``) on the way;
4. the plan validates;
5. the executor's CUDA entry points come from the same libcudart file as TVM's (the
   ``ios_tvm.runtime.cuda_graph_load_api`` test hook) and there is one libcudart in the process;
6. the first CUDA call fails with one line, :class:`~ios_tvm.errors.CudaUnavailableError`
   "no CUDA device", and the process exits normally (no traceback from C++, no abort).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

tvm = pytest.importorskip("tvm")
pytest.importorskip("onnx")
if getattr(tvm.base, "_RUNTIME_ONLY", False):
    pytest.skip("the rehearsal compiles with the full TVM (this TVM is runtime-only)",
                allow_module_level=True)

from ios_tvm.compiler import cuda_binary  # noqa: E402
from ios_tvm.errors import CudaCompileError  # noqa: E402
from ios_tvm.runtime import cuda as cuda_rt  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
STUB_SOURCE = Path(__file__).parent / "cuda_stub_driver.c"
#: The tvm package's parts that a runtime-only kit leaves out (device-kit.sh).
KIT_SKIP = {"3rdparty", "src", "include", "web"}


def _cuda_compiler_or_skip() -> str:
    try:
        return cuda_binary.cuda_compiler()
    except CudaCompileError as e:
        pytest.skip(f"no CUDA compiler to build the CUDA artifact: {e}")


@pytest.fixture(scope="module")
def cuda_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample block built for CUDA (sm_90) here, exported."""
    _cuda_compiler_or_skip()
    from ios_tvm.compiler.build import build
    from ios_tvm.models.sample import sample_block

    result = build(sample_block(), "cuda", cost="analytic", compare_vm=False, measure=False)
    return Path(result.export(tmp_path_factory.mktemp("cuda") / "sample"))


@pytest.fixture(scope="module")
def cuda_vm_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample block's Relax VM executable for CUDA (the baseline bench_gpu.py ships)."""
    _cuda_compiler_or_skip()
    from tvm import relax

    from ios_tvm.compiler.extract import graph_from_model
    from ios_tvm.models.sample import sample_block

    ex = graph_from_model(sample_block(), "cuda")
    backend = relax.backend.cuda.pipeline
    rest = tvm.transform.Sequential([*backend.dataflow_lower_passes(ex.target),
                                     *backend.finalize_passes(ex.target)])
    exe = tvm.compile(ex.mod, target=ex.target, relax_pipeline=rest)
    assert [cuda_binary.module_format(m) for m in cuda_binary.cuda_modules(exe)] == ["cuda"]
    assert cuda_binary.compile_cuda_kernels(exe, ex.target) is exe
    assert [cuda_binary.module_format(m) for m in cuda_binary.cuda_modules(exe)] == ["cubin"]
    path = tmp_path_factory.mktemp("cuda_vm") / "vm.so"
    exe.export_library(str(path))
    return path


@pytest.fixture(scope="module")
def runtime_kit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A runtime-only TVM: the installed tvm package without its compiler library.

    Python sources are linked, the runtime libraries copied (so that ``$ORIGIN`` of
    ``libtvm_runtime_cuda.so`` is the kit's lib directory).
    """
    src = Path(tvm.__file__).parent
    kit = tmp_path_factory.mktemp("kit")
    dst = kit / "tvm"
    dst.mkdir()
    for entry in src.iterdir():
        if entry.name in KIT_SKIP or entry.name == "lib":
            continue
        (dst / entry.name).symlink_to(entry)
    (dst / "lib").mkdir()
    for lib in (src / "lib").glob("libtvm_runtime*.so"):
        shutil.copy2(lib, dst / "lib" / lib.name)
    assert not (dst / "lib" / "libtvm_compiler.so").exists()
    assert (dst / "lib" / "libtvm_runtime_cuda.so").is_file()
    return kit


@pytest.fixture(scope="module")
def stub_driver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the stub ``libcuda.so.1``, built with cc."""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler (cc) to build the stub CUDA driver")
    out = tmp_path_factory.mktemp("stub_driver")
    proc = subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", str(out / "libcuda.so.1"),
                           str(STUB_SOURCE)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def pip_cudart() -> Path:
    path = cuda_rt.pip_cudart()
    if path is None:
        pytest.skip("pip's CUDA runtime is missing: pip install 'ios-tvm[cuda]' "
                    "(nvidia-cuda-runtime)")
    return path


# -- the build side (full TVM, here) -------------------------------------------------------------
def test_cuda_artifact_holds_compiled_kernels(cuda_artifact: Path) -> None:
    """kernels.so carries cubins for sm_90 and no CUDA source (nothing to compile on load)."""
    data = (cuda_artifact / "kernels.so").read_bytes()
    assert b"__global__" not in data and b"#include <cuda" not in data
    # TVM's serialised CUDA module: kind "cuda", then its bytes: format "cubin", ..., a cubin
    kind = cuda_binary._string(b"cuda")
    fmt = cuda_binary._string(b"cubin")
    at = data.find(kind)
    assert at >= 0, "no CUDA module in kernels.so"
    assert data[at + len(kind) + 8:].startswith(fmt), "the CUDA module is not a cubin"
    assert data.count(b"\x7fELF") >= 2  # the library itself and an embedded cubin
    plan = json.loads((cuda_artifact / "plan.json").read_text())
    assert plan["device_type"] == "cuda" and json.loads(plan["target"])["arch"] == "sm_90"


def test_merged_kernels_are_compiled_too(tmp_path: Path) -> None:
    """An IOS-Merge plan's library (merged kernels importing the model's library) holds
    cubins only, in both CUDA modules."""
    _cuda_compiler_or_skip()
    from ios_tvm.compiler.build import build
    from ios_tvm.models.sample import sample_block
    from ios_tvm.scheduler.config import SearchConfig

    result = build(sample_block(), "cuda", cost="analytic", compare_vm=False, measure=False,
                   config=SearchConfig(strategy="merge"))
    assert "1 merged" in result.schedule.summary(), result.schedule.summary()
    modules = cuda_binary.cuda_modules(result.artifact.lib)
    assert [cuda_binary.module_format(m) for m in modules] == ["cubin", "cubin"]
    data = (Path(result.export(tmp_path / "merged")) / "kernels.so").read_bytes()
    assert b"__global__" not in data


def test_load_without_a_driver_is_one_line(cuda_artifact: Path) -> None:
    """No libcuda.so.1 at all (this process, on a machine without the NVIDIA driver): load
    says so in one line; load_artifact, which only reads artifacts, refuses the library."""
    import ctypes

    from ios_tvm.errors import CudaUnavailableError, PlanFormatError
    from ios_tvm.runtime.artifact import load, load_artifact

    try:
        ctypes.CDLL("libcuda.so.1")
        pytest.skip("this machine has a CUDA driver")
    except OSError:
        pass
    with pytest.raises(CudaUnavailableError, match=r"cannot run this CUDA artifact: .*no CUDA "
                                                   r"driver \(libcuda.so.1 not found\)") as e:
        load(cuda_artifact)
    assert "\n" not in str(e.value)
    with pytest.raises(PlanFormatError, match=r"kernels.so: cannot load the kernel library "
                                              r"here: its CUDA kernels need TVM's CUDA runtime"):
        load_artifact(cuda_artifact)


def test_compile_cuda_kernels_rewrites_the_import_tree() -> None:
    """Every CUDA source module of a build becomes a cubin module; a second pass is a no-op."""
    _cuda_compiler_or_skip()
    from tvm import te

    a = te.placeholder((256,), name="a")
    b = te.compute((256,), lambda i: a[i] * 2.0, name="b")
    sch = tvm.s_tir.Schedule(te.create_prim_func([a, b]))
    (loop,) = sch.get_loops(sch.get_sblock("b"))
    outer, inner = sch.split(loop, [None, 64])
    sch.bind(outer, "blockIdx.x")
    sch.bind(inner, "threadIdx.x")
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_90"})
    lib = tvm.tirx.build(tvm.IRModule({"double": sch.mod["main"].with_attr(
        "global_symbol", "double")}), target=target)
    (source,) = cuda_binary.cuda_modules(lib)
    assert cuda_binary.module_format(source) == "cuda"
    assert cuda_binary.compile_cuda_kernels(lib, target) is lib
    (compiled,) = cuda_binary.cuda_modules(lib)
    assert not compiled.same_as(source)
    assert cuda_binary.module_format(compiled) == "cubin"
    cuda_binary.compile_cuda_kernels(lib, target)
    assert cuda_binary.cuda_modules(lib)[0].same_as(compiled)


def test_no_cuda_compiler_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cuda_binary.COMPILER_ENV, "clang")
    with pytest.raises(CudaCompileError, match=r"IOS_TVM_CUDA_COMPILER='clang': use nvrtc or "
                                                r"nvcc"):
        cuda_binary.cuda_compiler()
    monkeypatch.setenv(cuda_binary.COMPILER_ENV, "nvcc")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(CudaCompileError, match=r"needs NVRTC \(pip install 'ios-tvm\[cuda\]'"):
        cuda_binary.cuda_compiler()


BUILD_WITH_CUDA_RUNTIME = textwrap.dedent(r"""
    import tvm, tvm_ffi
    from tvm import te
    from ios_tvm.compiler import cuda_binary

    assert tvm_ffi.get_global_func("ffi.Module.load_from_bytes.cuda", allow_missing=True)
    # TVM's codegen compiles through this global here; a build must restore the caller's.
    tvm_ffi.register_global_func("tvm_callback_cuda_compile", lambda *a: "mine", override=True)
    a = te.placeholder((256,), name="a")
    b = te.compute((256,), lambda i: a[i] * 2.0, name="b")
    sch = tvm.s_tir.Schedule(te.create_prim_func([a, b]))
    (loop,) = sch.get_loops(sch.get_sblock("b"))
    outer, inner = sch.split(loop, [None, 64])
    sch.bind(outer, "blockIdx.x")
    sch.bind(inner, "threadIdx.x")
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_80"})
    lib = cuda_binary.build_cuda_library(tvm.IRModule({"double": sch.mod["main"].with_attr(
        "global_symbol", "double")}), target)
    (m,) = cuda_binary.cuda_modules(lib)
    print("format", cuda_binary.module_format(m), "runnable", m.is_runnable(),
          "restored", tvm_ffi.get_global_func("tvm_callback_cuda_compile")("x"))
""")


def test_build_where_tvm_has_its_cuda_runtime(stub_driver: Path, pip_cudart: Path) -> None:
    """On a machine whose TVM loads its CUDA runtime (a GPU machine), TVM's codegen compiles at
    build time through ``tvm_callback_cuda_compile``, by default for this machine's GPU (here:
    none, an error); the build compiles for the target's arch instead and keeps TVM's own,
    runnable CUDA module."""
    _cuda_compiler_or_skip()
    env = {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join([str(stub_driver),
                                                             str(pip_cudart.parent)])}
    env.pop("TVM_USE_RUNTIME_LIB", None)
    proc = subprocess.run([sys.executable, "-c", BUILD_WITH_CUDA_RUNTIME], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "format cubin runnable True restored mine" in proc.stdout, proc.stdout


@pytest.mark.parametrize(("arch", "version", "runs"), [
    ("sm_90", "9.0", True), ("sm_80", "8.6", True), ("sm_86", "8.0", False),
    ("sm_80", "9.0", False), ("sm_90a", "9.0", True), ("sm_90a", "9.1", False),
    ("sm_100", "10.0", True), ("sm_120", "10.0", False)])
def test_cubin_runs_on(arch: str, version: str, runs: bool) -> None:
    """load refuses, before any launch, an artifact compiled for another GPU architecture."""
    assert cuda_rt.cubin_runs_on(arch, version) is runs


# -- the GPU side, rehearsed: runtime-only TVM, pip's libcudart, a driver without devices --------
REHEARSAL = textwrap.dedent(r"""
    import json, os, sys

    def step(name, **detail):
        print("STEP " + json.dumps({"step": name, **detail}), flush=True)

    # Nothing on the loading side may compile CUDA: no cuda-bindings (NVRTC's Python API) ...
    sys.modules["cuda"] = None
    sys.modules["cuda.bindings"] = None
    art_dir = sys.argv[1]

    import tvm, tvm_ffi
    import ios_tvm
    from ios_tvm import _native
    from ios_tvm.runtime import cuda
    _native.load()
    step("native", runtime_only=bool(tvm.base._RUNTIME_ONLY), tvm=tvm.__file__,
         compiler=cuda.loaded_libraries("libtvm_compiler"), native=str(_native.library_path()))

    cuda.load_cuda_runtime()
    cuda.load_cuda_runtime()  # once: a second call is a no-op
    get = lambda n: tvm_ffi.get_global_func(n, allow_missing=True) is not None
    step("loaders", module_loader=get("ffi.Module.load_from_bytes.cuda"),
         device_api=get("device_api.cuda"),
         runtime_cuda=cuda.loaded_libraries("libtvm_runtime_cuda"))

    # ... and no NVRTC callback: TVM calls this one for CUDA source; it must not be called.
    calls = []
    tvm_ffi.register_global_func("tvm_callback_cuda_compile",
                                 lambda *a: calls.append(1) or b"", override=True)
    from ios_tvm.runtime.artifact import load_artifact
    art = load_artifact(art_dir)
    kinds = [m.kind for m in art.lib.imports]
    sources = [m.inspect_source("cuda") for m in art.lib.imports if m.kind == "cuda"]
    step("kernels", kinds=kinds, source_chars=sum(len(s) for s in sources), nvrtc_calls=len(calls),
         nvrtc_libs=cuda.loaded_libraries("libnvrtc"))

    vm = tvm.runtime.load_module(sys.argv[2])  # a Relax VM executable: the same
    stack, vm_sources = [vm], []
    while stack:
        m = stack.pop()
        stack.extend(m.imports)
        if m.kind == "cuda":
            vm_sources.append(len(m.inspect_source("cuda")))
    step("vm_kernels", kind=vm.kind, cuda_modules=len(vm_sources),
         source_chars=sum(vm_sources), nvrtc_calls=len(calls))

    art.plan.validate()
    step("plan", calls=len(art.plan.calls), stages=len(art.plan.stages))

    executor_cudart = str(tvm_ffi.get_global_func("ios_tvm.runtime.cuda_graph_load_api")())
    hooks = {"cuda_graph": os.path.realpath(executor_cudart)}
    # The executor's shared lookup (runtime/cuda_runtime.cc), where the native library has it:
    # [path, "loaded" (found in the process) or "opened" (it loaded a second one)].
    info = tvm_ffi.get_global_func("ios_tvm.runtime.cuda_runtime_info", allow_missing=True)
    if info is not None:
        path, how = (str(x) for x in info())
        hooks["cuda_runtime_info"] = os.path.realpath(path)
        hooks["cuda_runtime_info_found"] = how
    step("cudart", hooks=hooks, loaded=cuda.loaded_libraries("libcudart"))

    try:
        ios_tvm.load(art_dir)
    except ios_tvm.errors.CudaUnavailableError as e:
        step("first_call", error=type(e).__name__, message=str(e))
    else:
        step("first_call", error=None, message="ios_tvm.load ran without a GPU")
    calls_after = len(calls)
    step("done", nvrtc_calls=calls_after)
""")


def test_runtime_only_rehearsal(cuda_artifact: Path, cuda_vm_library: Path, runtime_kit: Path,
                                stub_driver: Path, pip_cudart: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("TVM_DEVKIT_CUDA_LIB", "CUDA_PATH")}
    env.update({
        "TVM_USE_RUNTIME_LIB": "1",
        "PYTHONPATH": os.pathsep.join([str(runtime_kit), str(REPO)]),
        "LD_LIBRARY_PATH": os.pathsep.join([str(stub_driver), str(pip_cudart.parent)]),
    })
    proc = subprocess.run([sys.executable, "-c", REHEARSAL, str(cuda_artifact),
                           str(cuda_vm_library)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    log = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    steps = {d["step"]: d for d in (json.loads(line[5:]) for line in proc.stdout.splitlines()
                                    if line.startswith("STEP "))}
    assert proc.returncode == 0, log

    native = steps["native"]
    assert native["runtime_only"] and native["tvm"].startswith(str(runtime_kit)), log
    assert native["compiler"] == [], log

    loaders = steps["loaders"]
    assert loaders["module_loader"] and loaders["device_api"], log
    assert loaders["runtime_cuda"] == [str((runtime_kit / "tvm" / "lib" /
                                            "libtvm_runtime_cuda.so").resolve())], log

    kernels = steps["kernels"]
    assert "cuda" in kernels["kinds"], log
    assert kernels["source_chars"] == 0, "the loaded CUDA module holds CUDA source"
    assert kernels["nvrtc_calls"] == 0 and kernels["nvrtc_libs"] == [], log

    vm = steps["vm_kernels"]
    assert vm["cuda_modules"] == 1 and vm["source_chars"] == 0 and vm["nvrtc_calls"] == 0, log

    assert steps["plan"]["calls"] > 0 and steps["plan"]["stages"] > 0, log

    cudart = steps["cudart"]
    assert cudart["loaded"] == [str(pip_cudart.resolve())], log  # one libcudart: pip's
    hooks = cudart["hooks"]
    assert hooks.pop("cuda_runtime_info_found", "loaded") == "loaded", log
    for name, path in hooks.items():
        assert path == str(pip_cudart.resolve()), f"{name} resolves CUDA in {path}\n{log}"

    first = steps["first_call"]
    assert first["error"] == "CudaUnavailableError", log
    assert "no CUDA device" in first["message"] and "\n" not in first["message"], log
    assert str(cuda_artifact) in first["message"], log
    assert steps["done"]["nvrtc_calls"] == 0, log
    assert "Traceback" not in proc.stderr and "terminate called" not in proc.stderr, log
