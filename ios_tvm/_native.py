"""Load ios-tvm's native library (``libios_tvm_native.so``) once.

The library holds the C++ half of ios-tvm (the search DP now, the runtime later) and registers
its functions as tvm-ffi globals under ``ios_tvm.*`` when it loads. It links
``libtvm_ffi.so`` and ``libtvm_runtime.so`` from the pip wheels; both are loaded here first
(``import tvm_ffi``, and the runtime library by path, without the slow ``import tvm``).

Where it looks, first hit wins:

1. ``$IOS_TVM_NATIVE_LIB`` (a path to the ``.so``), if set;
2. the ``ios_tvm`` package directories (a wheel or editable install puts it there);
3. the source tree's ``build/dev`` and then ``build/*`` (``cmake --build build/dev``).

Build it with ``bash scripts/setup.sh``.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
import threading
from pathlib import Path
from typing import Any

LIB_NAME = "libios_tvm_native.so"
ENV_VAR = "IOS_TVM_NATIVE_LIB"
_PKG_DIR = Path(__file__).resolve().parent
_REPO_DIR = _PKG_DIR.parent
_lock = threading.Lock()
_module: Any = None
_path: Path | None = None
_error: ImportError | None = None


def candidate_paths() -> list[Path]:
    """Return the places searched for the native library, in search order."""
    out: list[Path] = []
    env = os.environ.get(ENV_VAR)
    if env:
        out.append(Path(env))
    # The package's search path (an editable install adds site-packages, where the library
    # is installed, to the source tree); read from sys.modules, no import of the package.
    package = sys.modules.get(__package__ or "")
    for d in [*getattr(package, "__path__", []), str(_PKG_DIR)]:
        out.append(Path(d) / LIB_NAME)
    build = _REPO_DIR / "build"
    out.append(build / "dev" / LIB_NAME)
    if build.is_dir():
        others = sorted((p for p in build.glob(f"*/{LIB_NAME}") if p.parent.name != "dev"),
                        key=lambda p: p.stat().st_mtime, reverse=True)
        out.extend(others)
    seen: set[Path] = set()
    unique = []
    for p in out:
        if p not in seen:
            seen.add(p)
            unique.append(p)
    return unique


def _preload_tvm_runtime() -> None:
    """Load the apache-tvm wheel's libtvm_runtime.so globally (the .so has no RUNPATH to it)."""
    spec = importlib.util.find_spec("tvm")  # does not import tvm
    if spec is None or spec.origin is None:
        raise ImportError("apache-tvm is not installed; pip install apache-tvm==0.27.0.post1 "
                          "(or run bash scripts/setup.sh)")
    runtime = Path(spec.origin).parent / "lib" / "libtvm_runtime.so"
    ctypes.CDLL(str(runtime), mode=ctypes.RTLD_GLOBAL)


def load() -> Any:
    """Load the native library (once) and return it as a ``tvm_ffi.Module``.

    Returns
    -------
    tvm_ffi.Module
        The loaded library; its registered globals (``ios_tvm.search.solve_part``, ...) are
        reachable through ``tvm_ffi.get_global_func`` from now on.

    Raises
    ------
    ImportError
        When no built library is found (the message lists the paths searched) or it fails to
        load.
    """
    global _module, _path, _error
    if _module is not None:
        return _module
    with _lock:
        if _module is not None:
            return _module
        if _error is not None:
            raise _error
        import tvm_ffi

        paths = candidate_paths()
        found = next((p for p in paths if p.is_file()), None)
        if found is None:
            _error = ImportError(
                f"ios-tvm native library {LIB_NAME} not found; searched: "
                + ", ".join(str(p) for p in paths)
                + ". Build it with `bash scripts/setup.sh` (or `cmake -S . -B build/dev -G Ninja "
                "&& cmake --build build/dev`), or point $" + ENV_VAR + " at it.")
            raise _error
        try:
            _preload_tvm_runtime()
            module = tvm_ffi.load_module(str(found))
        except (OSError, RuntimeError) as e:
            _error = ImportError(f"failed to load the ios-tvm native library {found}: {e}. "
                                 "Rebuild it with `bash scripts/setup.sh`.")
            raise _error from e
        _module, _path = module, found
        return module


def library_path() -> Path:
    """Return the path of the loaded native library (loading it if needed)."""
    load()
    assert _path is not None
    return _path


def native_available() -> bool:
    """Return True when the native library is built and loads; never raises."""
    try:
        load()
    except ImportError:
        return False
    return True
