"""What hardware and TVM build the tests have: one place to ask whether a CUDA GPU is usable.

``IOS_TVM_REQUIRE_GPU=1`` (set by ``scripts/gpu_first_light.sh``, for a run on a machine that
has a GPU) turns a missing GPU from a reason to skip into a failure: on a device with ten
minutes of GPU time, GPU tests that skip silently (because ``import tvm`` swallowed a failed
load of ``libcudart.so.13``, say) waste the whole call. :func:`gpu_problem` says, in one line,
why no GPU is usable; ``tests/conftest.py`` fails every ``gpu``-marked test with it.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import subprocess

REQUIRE_GPU_ENV = "IOS_TVM_REQUIRE_GPU"


def gpu_required() -> bool:
    """Whether a missing GPU must fail the GPU tests (``IOS_TVM_REQUIRE_GPU=1``)."""
    return os.environ.get(REQUIRE_GPU_ENV, "").strip().lower() in ("1", "true", "yes")


def runtime_only() -> bool:
    """Whether TVM runs runtime-only (``TVM_USE_RUNTIME_LIB=1``: no compiler library)."""
    try:
        import tvm

        return bool(getattr(tvm.base, "_RUNTIME_ONLY", False))
    except Exception:
        return os.environ.get("TVM_USE_RUNTIME_LIB") == "1"


@functools.cache
def has_compiler() -> bool:
    """Whether TVM's compiler (``tvm.relax``, targets, codegen) is importable; memoised."""
    if runtime_only():
        return False
    try:
        import tvm.relax  # noqa: F401

        return True
    except Exception:
        return False


def _driver_sees_gpu() -> str:
    """What the machine says about its GPUs without TVM: "" when it says nothing."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            r = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
            if r.returncode == 0 and "GPU" in r.stdout:
                return r.stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        ctypes.CDLL("libcuda.so.1")
        return "libcuda.so.1 (the NVIDIA driver) loads"
    except OSError:
        return ""


@functools.cache
def gpu_problem() -> str:
    """Why no CUDA GPU is usable through TVM, in one line; "" when one is. Never raises.

    In runtime-only mode TVM loads no CUDA runtime by itself, so this loads it the way the
    executor does (``ios_tvm.runtime.executor.load_cuda_runtime``) and reports a failure to
    load it (a missing ``libcudart.so.13``) rather than "no GPU". With the full TVM a failed
    load is swallowed by ``import tvm``; ``tvm.cuda(0).exist`` is then False, and this says
    whether the driver sees a GPU all the same.
    """
    try:
        import tvm
    except Exception as e:
        return f"import tvm failed: {type(e).__name__}: {e}"
    if runtime_only():
        try:
            from ios_tvm.runtime.executor import load_cuda_runtime

            load_cuda_runtime()
        except Exception as e:
            return (f"TVM's CUDA runtime (libtvm_runtime_cuda.so) failed to load: "
                    f"{type(e).__name__}: {e} (it needs libcudart.so.13 and the driver's "
                    "libcuda.so.1 on the loader path)")
    try:
        if bool(tvm.cuda(0).exist):
            return ""
    except Exception as e:
        return f"tvm.cuda(0).exist raised {type(e).__name__}: {e}"
    seen = _driver_sees_gpu()
    if seen:
        return (f"tvm.cuda(0).exist is False although the driver sees a GPU ({seen}): TVM's "
                "CUDA runtime did not load (full TVM swallows that at import; is "
                "libcudart.so.13 on LD_LIBRARY_PATH?)")
    return "no CUDA GPU: tvm.cuda(0).exist is False and nvidia-smi/libcuda.so.1 see none"


def has_cuda() -> bool:
    """Whether a CUDA GPU is usable through TVM; memoised and never raises."""
    return gpu_problem() == ""
