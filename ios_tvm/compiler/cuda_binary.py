"""CUDA kernels compiled at build time: artifacts carry device code, not CUDA source.

On a machine without TVM's CUDA runtime (no ``libcuda.so.1``: a CPU build host) TVM 0.27
builds a CUDA kernel library as CUDA *source*, compiled with NVRTC each time the exported
library is loaded, through the global ``tvm_callback_cuda_compile``, whose default needs the
TVM compiler (``Target.current()``), NVRTC and cuda-bindings on the GPU machine.
:func:`compile_cuda_kernels` compiles every CUDA source module of a built module (a kernel
library, or a Relax VM executable) to a cubin for the target's arch, and replaces it by the
same module holding the cubin, so that loading needs no compiler and pays no compile; TVM's
own CUDA loader reads it (``cuModuleLoadData``). Where TVM has its CUDA runtime, its codegen
calls that global at build time instead, by default for the GPU it finds;
:func:`cuda_build_scope` points it at the target's arch for the build.
:func:`build_cuda_library` does both around ``tvm.tirx.build``.

The compiler is NVRTC from pip (``pip install 'ios-tvm[cuda]'``: cuda-bindings,
nvidia-cuda-nvrtc and the CUDA headers; it runs on a machine without a GPU), or nvcc (CUDA
toolkit) when NVRTC is missing; ``$IOS_TVM_CUDA_COMPILER`` (``nvrtc``, ``nvcc``) picks one.
Both take TVM's own flags (:func:`tvm.support.nvcc.compile_cuda`, ``--use_fast_math``), so
the code is what TVM would have compiled at load time. Results are cached in the process by
the source's hash.

Where TVM has no CUDA runtime (a CPU build host: ``libcuda.so.1`` is missing), its build
returns a source-only stand-in module that cannot be rebuilt from Python; it is replaced by
ios-tvm's ``ios_tvm.cuda.serialized_module`` (``runtime/cuda_binary_module.cc``), which
serialises exactly as TVM's CUDA module does.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import struct
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ios_tvm.errors import CudaCompileError, InternalError

#: Environment variable that picks the compiler: ``nvrtc``, ``nvcc`` (default: NVRTC if
#: installed, else nvcc).
COMPILER_ENV = "IOS_TVM_CUDA_COMPILER"
#: Format TVM's CUDA module gives CUDA source; anything else is device code.
SOURCE_FORMAT = "cuda"
BINARY_FORMAT = "cubin"

_cache: OrderedDict[tuple[str, str, str], bytes] = OrderedDict()
_CACHE_ENTRIES = 64
_lock = threading.Lock()
_compile_lock = threading.Lock()


# -- TVM's serialised CUDA module: fmt, function table, data ------------------------------------
def _string(data: bytes) -> bytes:
    return struct.pack("<Q", len(data)) + data


def _read_string(buf: bytes, pos: int) -> tuple[bytes, int]:
    if pos + 8 > len(buf):
        raise InternalError("unexpected layout of a serialised TVM module (truncated)")
    (n,) = struct.unpack_from("<Q", buf, pos)
    if pos + 8 + n > len(buf):
        raise InternalError("unexpected layout of a serialised TVM module (bad length)")
    return buf[pos + 8:pos + 8 + n], pos + 8 + n


def _module_bytes(module: Any) -> bytes:
    """What ``module`` serialises to (its ``SaveToBytes``), as ``export_library`` embeds it.

    Read back from TVM's packing of a container that imports only ``module``: a header, the
    import tree, then each module's kind and bytes (the container's first).
    """
    import tvm_ffi

    from ios_tvm import _native

    _native.load()
    container = tvm_ffi.get_global_func("ios_tvm.cuda.serialized_module")(
        "ios_tvm.container", b"", "", "")
    container.import_module(module)
    blob = bytes(tvm_ffi.get_global_func("runtime.ModulePackImportsToTensor")(container)
                 .numpy().tobytes())
    pos = 8  # total size
    (rows,) = struct.unpack_from("<Q", blob, pos)
    pos += 8 + 8 * rows  # import tree: row pointers
    (children,) = struct.unpack_from("<Q", blob, pos)
    pos += 8 + 8 * children  # and child indices
    found = []
    for _ in range(rows - 1):
        kind, pos = _read_string(blob, pos)
        if kind != b"_lib":
            payload, pos = _read_string(blob, pos)
            found.append((kind.decode(), payload))
    if [k for k, _ in found] != ["ios_tvm.container", module.kind]:
        raise InternalError(f"unexpected packing of a {module.kind} module: "
                            f"{[k for k, _ in found]}")
    return found[1][1]


def _split_payload(payload: bytes, source: str) -> tuple[str, bytes]:
    """``(fmt, function table bytes)`` of a serialised CUDA module whose data is ``source``."""
    fmt, pos = _read_string(payload, 0)
    tail = _string(source.encode())
    if not payload.endswith(tail) or len(payload) - len(tail) < pos:
        raise InternalError("unexpected layout of TVM's serialised CUDA module (this ios-tvm "
                            "supports apache-tvm 0.27)")
    return fmt.decode(), payload[pos:len(payload) - len(tail)]


def module_format(module: Any) -> str:
    """The format of a CUDA module's code: ``"cuda"`` (source) or ``"cubin"``/``"fatbin"``/..."""
    fmt, _ = _read_string(_module_bytes(module), 0)
    return fmt.decode()


def cuda_modules(module: Any) -> list[Any]:
    """Every module of kind ``"cuda"`` in the import tree of ``module`` (once each)."""
    out: list[Any] = []
    stack = [getattr(module, "mod", module)]
    seen: list[Any] = []
    while stack:
        m = stack.pop()
        if any(m.same_as(s) for s in seen):
            continue
        seen.append(m)
        if m.kind == "cuda":
            out.append(m)
        stack.extend(m.imports)
    return out


# -- compilers ----------------------------------------------------------------------------------
def _nvrtc_available() -> bool:
    try:
        from cuda.bindings import nvrtc

        nvrtc.nvrtcVersion()
    except Exception:  # not installed, or its libnvrtc does not load
        return False
    return True


def _pip_cuda_include() -> Path | None:
    """The CUDA headers of pip's CUDA wheels (``nvidia/cu13/include``, with ``cccl``)."""
    try:
        import nvidia
    except ImportError:
        return None
    for root in getattr(nvidia, "__path__", []):
        for sub in ("cu13", "cu12"):
            inc = Path(root) / sub / "include"
            if (inc / "cuda_runtime.h").is_file():
                return inc
    return None


@contextlib.contextmanager
def _cuda_path_for_nvrtc() -> Iterator[None]:
    """Point ``$CUDA_PATH`` at CUDA headers TVM's NVRTC call can find.

    TVM looks in ``$CUDA_PATH/include`` and ``$CUDA_PATH/targets/<arch>/include[/cccl]``; pip's
    headers live in one directory, so a temporary toolkit directory links both there. A
    ``$CUDA_PATH`` (or nvcc's toolkit) with headers is left as it is.
    """
    def has_headers(root: str | None) -> bool:
        return bool(root) and os.path.isfile(os.path.join(str(root), "include",
                                                          "cuda_runtime.h"))

    current = os.environ.get("CUDA_PATH")
    nvcc = shutil.which("nvcc")
    toolkit = os.path.realpath(os.path.join(nvcc, "..", "..")) if nvcc else None
    if has_headers(current) or (current is None and has_headers(toolkit)):
        yield
        return
    inc = _pip_cuda_include()
    if inc is None:
        raise CudaCompileError("compiling CUDA kernels with NVRTC needs the CUDA headers: "
                               "pip install 'ios-tvm[cuda]' (nvidia-cuda-runtime, "
                               "nvidia-cuda-cccl), or set CUDA_PATH to a CUDA toolkit")
    with tempfile.TemporaryDirectory(prefix="ios_tvm_cuda_") as tmp:
        import platform

        os.symlink(inc, os.path.join(tmp, "include"))
        triple = f"{platform.machine()}-{platform.system().lower()}"
        os.makedirs(os.path.join(tmp, "targets", triple))
        os.symlink(inc, os.path.join(tmp, "targets", triple, "include"))
        os.environ["CUDA_PATH"] = tmp
        try:
            yield
        finally:
            if current is None:
                os.environ.pop("CUDA_PATH", None)
            else:
                os.environ["CUDA_PATH"] = current


def cuda_compiler() -> str:
    """The compiler :func:`compile_source` uses here: ``"nvrtc"`` or ``"nvcc"``.

    Raises :class:`CudaCompileError` when there is none.
    """
    wanted = os.environ.get(COMPILER_ENV, "").strip().lower()
    if wanted not in ("", "nvrtc", "nvcc"):
        raise CudaCompileError(f"${COMPILER_ENV}={wanted!r}: use nvrtc or nvcc")
    if wanted in ("", "nvrtc") and _nvrtc_available():
        return "nvrtc"
    if wanted in ("", "nvcc") and shutil.which("nvcc"):
        return "nvcc"
    raise CudaCompileError(
        "compiling CUDA kernels at build time needs NVRTC (pip install 'ios-tvm[cuda]': "
        "cuda-bindings, nvidia-cuda-nvrtc) or nvcc on PATH"
        + (f" (${COMPILER_ENV}={wanted})" if wanted else ""))


def target_arch(target: Any) -> str:
    """The ``sm_XY`` a CUDA target compiles for (``arch``; default ``sm_90``, as ``"cuda"``)."""
    attrs = getattr(target, "attrs", None) or {}
    arch = str(attrs["arch"]) if "arch" in attrs else "sm_90"
    if not arch.startswith("sm_"):
        raise CudaCompileError(f"CUDA target arch {arch!r}: an sm_XY is needed to compile "
                               "kernels at build time")
    return arch


def compile_source(source: str, arch: str) -> bytes:
    """Compile CUDA source (one TVM CUDA module) to a cubin for ``arch`` (cached)."""
    compiler = cuda_compiler()
    key = (hashlib.sha256(source.encode()).hexdigest(), arch, compiler)
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]

    # One compile at a time: the NVRTC path points $CUDA_PATH at a temporary directory.
    with _compile_lock:
        binary = _compile(source, arch, compiler)
    with _lock:
        _cache[key] = binary
        while len(_cache) > _CACHE_ENTRIES:
            _cache.popitem(last=False)
    return binary


def _compile(source: str, arch: str, compiler: str) -> bytes:
    import tvm
    from tvm.support import nvcc

    try:
        if compiler == "nvrtc":
            with _cuda_path_for_nvrtc():
                binary = nvcc.compile_cuda(source, target_format=BINARY_FORMAT, arch=arch,
                                           compiler="nvrtc")
        else:  # TVM's nvcc path also reads the arch from the current target
            with tvm.target.Target({"kind": "cuda", "arch": arch}):
                binary = nvcc.compile_cuda(source, target_format=BINARY_FORMAT, arch=arch,
                                           compiler="nvcc")
    except CudaCompileError:
        raise
    except Exception as e:  # RuntimeError with the compiler's log, or a missing header
        raise CudaCompileError(f"{compiler} failed to compile CUDA kernels for {arch}: "
                               f"{e}") from e
    binary = bytes(binary)
    if not binary.startswith(b"\x7fELF"):
        raise CudaCompileError(f"{compiler} returned no cubin for {arch}")
    return binary


# -- during a build: TVM's compile callback ----------------------------------------------------
#: The global TVM's CUDA codegen calls to compile CUDA source, where TVM has a CUDA runtime.
COMPILE_CALLBACK = "tvm_callback_cuda_compile"
_callback_lock = threading.RLock()


def is_cuda_target(target: Any) -> bool:
    """Whether ``target`` (a ``tvm.target.Target``) is a CUDA target."""
    kind = getattr(target, "kind", None)
    return getattr(kind, "name", None) == "cuda"


@contextlib.contextmanager
def cuda_build_scope(target: Any) -> Iterator[None]:
    """Around a ``tvm.tirx.build``/``tvm.compile`` for ``target``: TVM compiles with our compiler.

    Where TVM has its CUDA runtime (a GPU machine, or ``libcuda.so.1`` present), its CUDA
    codegen compiles at build time through the global ``tvm_callback_cuda_compile``, whose
    default takes the arch from ``Target.current()`` (unset there) or else from the GPU of
    this machine, not from the target. For the duration of the block that global compiles
    for the target's arch with :func:`compile_source`; the previous one is restored after.
    (Process-wide while it lasts; builds in several threads are serialised by a lock.)
    Without a CUDA runtime TVM does not call it and keeps CUDA source, which
    :func:`compile_cuda_kernels` compiles after the build. A no-op for other targets.
    """
    if not is_cuda_target(target):
        yield
        return
    import tvm_ffi

    arch = target_arch(target)

    def compile_callback(code: str, *_: Any) -> bytes:
        return compile_source(str(code), arch)

    with _callback_lock:
        previous = tvm_ffi.get_global_func(COMPILE_CALLBACK, allow_missing=True)
        tvm_ffi.register_global_func(COMPILE_CALLBACK, compile_callback, override=True)
        try:
            yield
        finally:
            if previous is not None:
                tvm_ffi.register_global_func(COMPILE_CALLBACK, previous, override=True)
            else:
                tvm_ffi.remove_global_func(COMPILE_CALLBACK)


def build_cuda_library(mod: Any, target: Any) -> Any:
    """``tvm.tirx.build(mod, target)``, with CUDA kernels compiled to device code.

    (:func:`cuda_build_scope` and :func:`compile_cuda_kernels`; other targets: a plain build.)
    """
    import tvm

    with cuda_build_scope(target):
        lib = tvm.tirx.build(mod, target=target)
    return compile_cuda_kernels(lib, target) if is_cuda_target(target) else lib


# -- rewriting a module tree --------------------------------------------------------------------
def _binary_module(source_module: Any, arch: str) -> Any | None:
    """The compiled twin of a CUDA source module, or None if it already holds device code."""
    import tvm_ffi

    payload = _module_bytes(source_module)
    fmt, _ = _read_string(payload, 0)
    if fmt.decode() != SOURCE_FORMAT:
        return None
    source = source_module.inspect_source("cuda")
    _, table = _split_payload(payload, source)
    binary = compile_source(source, arch)
    new_payload = _string(BINARY_FORMAT.encode()) + table + _string(binary)
    loader = tvm_ffi.get_global_func("ffi.Module.load_from_bytes.cuda", allow_missing=True)
    if loader is not None:  # TVM's CUDA runtime is here: its own (runnable) module
        return loader(new_payload)
    return tvm_ffi.get_global_func("ios_tvm.cuda.serialized_module")(
        "cuda", new_payload, BINARY_FORMAT, source)  # (the source for inspect_source only)


def compile_cuda_kernels(module: Any, target: Any) -> Any:
    """Compile every CUDA source module in ``module``'s import tree to a cubin, in place.

    ``module`` is a runtime module (a kernel library from ``tvm.tirx.build``) or a Relax VM
    executable (``tvm.compile``); ``target`` the CUDA target it was built for (its ``arch``).
    Returns ``module``. A module without CUDA kernels, or whose kernels are already compiled,
    is returned unchanged. Raises :class:`CudaCompileError` when no compiler is installed or
    it fails.
    """
    root = getattr(module, "mod", module)  # a relax Executable wraps its module
    if not cuda_modules(root):
        return module
    arch = target_arch(target)
    done: list[tuple[Any, Any]] = []  # (source module, its replacement); a tree may share

    def replacement(m: Any) -> Any:
        for old, new in done:
            if old.same_as(m):
                return new
        new = _binary_module(m, arch) if m.kind == "cuda" else None
        done.append((m, new if new is not None else m))
        return done[-1][1]

    visited: list[Any] = []

    def visit(parent: Any) -> None:
        if any(parent.same_as(v) for v in visited):
            return
        visited.append(parent)
        children = list(parent.imports)
        for c in children:
            visit(c)
        new = [replacement(c) for c in children]
        if any(not n.same_as(c) for n, c in zip(new, children, strict=True)):
            parent.clear_imports()
            for n in new:
                parent.import_module(n)

    if root.kind == "cuda":
        raise CudaCompileError("compile_cuda_kernels needs the host module that imports the "
                               "CUDA module, not the CUDA module itself")
    visit(root)
    return module
