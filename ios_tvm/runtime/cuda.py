"""TVM's CUDA runtime in this process: load it once, and say in one line why CUDA cannot run.

Runtime side (imports only ``tvm_ffi``, ``tvm.runtime`` and the standard library).

In runtime-only mode (``TVM_USE_RUNTIME_LIB=1``, the device kit) ``import tvm`` loads no
CUDA runtime: :func:`load_cuda_runtime` loads ``tvm/lib/libtvm_runtime_cuda.so`` (or
``$TVM_DEVKIT_CUDA_LIB``) globally, once, which registers TVM's CUDA device API and its
loader of CUDA modules. That library needs ``libcudart.so.13`` and the driver's
``libcuda.so.1``; when the loader path has no ``libcudart.so.13`` the one of pip's
``nvidia-cuda-runtime`` (``site-packages/nvidia/cu13/lib``) is loaded first. The full
``import tvm`` tries the same load and drops a failure silently; here a failure is a
:class:`~ios_tvm.errors.CudaUnavailableError` that says what is missing.
"""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path

from ios_tvm.errors import CudaUnavailableError

CUDART_SONAME = "libcudart.so.13"
#: TVM's loader of serialised CUDA modules, registered by libtvm_runtime_cuda.so.
CUDA_MODULE_LOADER = "ffi.Module.load_from_bytes.cuda"

_lock = threading.Lock()
_loaded = False


def _tvm_dir() -> Path:
    import tvm

    return Path(tvm.__file__).parent


def _runtime_only() -> bool:
    import tvm

    return bool(getattr(tvm.base, "_RUNTIME_ONLY", False))


def pip_cudart() -> Path | None:
    """``libcudart.so.13`` of pip's ``nvidia-cuda-runtime`` wheel, if installed."""
    try:
        import nvidia
    except ImportError:
        return None
    for root in getattr(nvidia, "__path__", []):
        path = Path(root) / "cu13" / "lib" / CUDART_SONAME
        if path.is_file():
            return path
    return None


def _loader_registered() -> bool:
    import tvm_ffi

    return tvm_ffi.get_global_func(CUDA_MODULE_LOADER, allow_missing=True) is not None


def _preload_cudart() -> None:
    """Make ``libcudart.so.13`` resolvable: the loader path's, else pip's (loaded by path)."""
    try:
        ctypes.CDLL(CUDART_SONAME, mode=ctypes.RTLD_GLOBAL)
        return
    except OSError:
        pass
    path = pip_cudart()
    if path is None:
        raise CudaUnavailableError(
            f"TVM's CUDA runtime needs {CUDART_SONAME}: none on the loader path and no pip "
            "nvidia-cuda-runtime (pip install 'ios-tvm[cuda]', or add the CUDA toolkit's lib "
            "directory to LD_LIBRARY_PATH)")
    try:
        ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    except OSError as e:
        raise CudaUnavailableError(f"cannot load {path}: {e}") from e


def load_cuda_runtime() -> None:
    """Make TVM's CUDA runtime available in this process (once; thread-safe).

    Nothing to do when it is loaded already (the full ``import tvm`` loads it on a machine
    with CUDA). Raises :class:`~ios_tvm.errors.CudaUnavailableError` naming what is missing:
    ``libcudart.so.13``, the driver (``libcuda.so.1``) or TVM's library.
    """
    global _loaded
    if _loaded:
        return
    with _lock:
        if _loaded:
            return
        if not _loader_registered():
            lib = os.environ.get("TVM_DEVKIT_CUDA_LIB") or str(
                _tvm_dir() / "lib" / "libtvm_runtime_cuda.so")
            if not Path(lib).is_file():
                raise CudaUnavailableError(f"TVM's CUDA runtime {lib} is missing (this TVM "
                                           "was built without CUDA?)")
            _preload_cudart()
            try:
                ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
            except OSError as e:
                why = str(e)
                if "libcuda.so" in why:
                    why = f"no CUDA driver (libcuda.so.1 not found): {why}"
                raise CudaUnavailableError(f"cannot load TVM's CUDA runtime {lib}: "
                                           f"{why}") from e
            if not _loader_registered():
                raise CudaUnavailableError(f"{lib} loaded but registered no CUDA module loader "
                                           f"({CUDA_MODULE_LOADER})")
        _loaded = True


def loaded_libraries(fragment: str) -> list[str]:
    """Files mapped into this process whose name contains ``fragment`` (Linux; sorted)."""
    out: set[str] = set()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split(None, 5)
                if len(parts) == 6 and fragment in os.path.basename(parts[5].strip()):
                    out.add(os.path.realpath(parts[5].strip()))
    except OSError:
        return []
    return sorted(out)


def cuda_device_problem(index: int = 0) -> str:
    """Why CUDA device ``index`` cannot run kernels, in one line; ``""`` when it can.

    Loads the CUDA runtime (:func:`load_cuda_runtime`), then asks libcudart, the same one
    TVM uses, how many devices there are (``cudaGetDeviceCount``: the first CUDA call). Never
    raises.
    """
    try:
        load_cuda_runtime()
        cudart = ctypes.CDLL(CUDART_SONAME, mode=ctypes.RTLD_GLOBAL | os.RTLD_NOLOAD)
    except (CudaUnavailableError, OSError) as e:
        return str(e)
    count = ctypes.c_int(0)
    status = cudart.cudaGetDeviceCount(ctypes.byref(count))
    if status != 0:
        cudart.cudaGetErrorString.restype = ctypes.c_char_p
        cudart.cudaGetErrorName.restype = ctypes.c_char_p
        text = (cudart.cudaGetErrorString(status) or b"?").decode(errors="replace")
        name = (cudart.cudaGetErrorName(status) or b"?").decode(errors="replace")
        kind = "no CUDA device" if name == "cudaErrorNoDevice" else "CUDA unavailable"
        return f"{kind}: cudaGetDeviceCount failed with {name} ({text})"
    if index >= count.value:
        return (f"no CUDA device {index}: this machine has {count.value} CUDA device(s)"
                if count.value else "no CUDA device: cudaGetDeviceCount found none")
    return ""


def cubin_runs_on(arch: str, compute_version: str) -> bool:
    """Whether a cubin for ``arch`` (``"sm_90"``) runs on a GPU of ``compute_version`` (``"9.0"``).

    A cubin holds machine code for one architecture: it runs on GPUs of the same major
    version and a minor version at least its own; an ``a`` (arch-specific) cubin only on
    exactly its own.
    """
    digits = arch.removeprefix("sm_").rstrip("abcdefghijklmnopqrstuvwxyz")
    suffix = arch.removeprefix("sm_")[len(digits):]
    try:
        major, minor = (int(x) for x in str(compute_version).split(".")[:2])
        want_major, want_minor = int(digits[:-1]), int(digits[-1])
    except ValueError:
        return True  # unknown spelling: let the driver decide
    if suffix == "a":
        return (major, minor) == (want_major, want_minor)
    return major == want_major and minor >= want_minor
