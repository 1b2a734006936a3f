"""Every error ios-tvm raises, in one place.

Two families, as TVM's C++ separates ``ValueError`` from ``InternalError``:

* **The caller's mistakes and bad data** (also ``ValueError``, so callers that catch
  ``ValueError`` keep working): a model, graph, schedule, plan, setting or input that ios-tvm
  cannot take. The message names the file, operator, tensor or setting at fault.
* **Failures of the environment** (a cache file, a remote device, a kernel at run time), which
  are neither: :class:`CacheError`, :class:`RPCError`, :class:`ExecutionError`.
* **Broken invariants** (:class:`InternalError`, also ``RuntimeError``): ios-tvm's own bug.

Code raises a specific class, never :class:`IosTvmError` itself (``tests/test_errors.py``).
:func:`register_errors` registers every class with tvm-ffi, so an error raised in Python code
that C++ called (a Relax pass, a packed function run by the executor) keeps its type when it
comes back through the FFI instead of turning into a ``RuntimeError``.
"""

from __future__ import annotations


class IosTvmError(Exception):
    """Base class of all ios-tvm errors (catch this; raise a subclass)."""


# -- the caller's mistakes and bad data ----------------------------------------------------------
class ModelLoadError(IosTvmError, ValueError):
    """A model could not be read or imported, or lacks a value it needs (names the file)."""


class UnsupportedGraphError(IosTvmError, ValueError):
    """The model contains something ios-tvm cannot schedule or run (named in the message)."""


class ScheduleError(IosTvmError, ValueError):
    """A schedule violates a rule: an op missing or repeated, a dependency or a limit broken."""


class PlanFormatError(IosTvmError, ValueError):
    """A plan (or artifact) is corrupt, truncated, of another version or target."""


class ConfigError(IosTvmError, ValueError):
    """A setting is unknown, out of range or inconsistent (names it and what it accepts)."""


class MergeError(IosTvmError, ValueError):
    """Ops cannot be merged, or a merged kernel could not be built or does not check out."""


class SampleInputError(IosTvmError, ValueError):
    """Sample inputs given for profiling do not fit the model (named input, shape or dtype)."""


class ExecutorArgumentError(IosTvmError, ValueError):
    """An executor was called with bad arguments.

    An input of the wrong shape or dtype, an input never set before a run, benchmark counts
    out of range.
    """


class TuningDatabaseError(IosTvmError, ValueError):
    """A MetaSchedule tuning database is missing, corrupt or tuned for another target."""


class LearnedModelError(IosTvmError, ValueError):
    """A saved learned cost model does not fit (names the file).

    Another format version, feature schema or device, or trained on measurements the
    measurement cache does not hold.
    """


# -- the environment ------------------------------------------------------------------------------
class CacheError(IosTvmError):
    """The measurement cache file is unusable (the message names it)."""


class RPCError(IosTvmError):
    """Remote profiling failed (tracker unreachable, no server, a session died, ...)."""


class ExecutionError(IosTvmError, RuntimeError):
    """A run failed: a kernel raised (the message names the call, kernel and node)."""


class CudaUnavailableError(IosTvmError):
    """A CUDA artifact cannot run here: no CUDA device, driver or runtime (says which)."""


class CudaCompileError(IosTvmError):
    """CUDA kernels could not be compiled to device code at build time.

    No compiler (NVRTC from ``pip install 'ios-tvm[cuda]'``, or nvcc), or it failed (the
    message has its log).
    """


# -- ios-tvm's own bugs ---------------------------------------------------------------------------
class InternalError(IosTvmError, RuntimeError):
    """An invariant of ios-tvm does not hold: a bug; please report it with the message."""


# -- not an error: the process is asked to stop ------------------------------------------------
class Terminated(BaseException):  # noqa: N818 (named like KeyboardInterrupt, its sibling)
    """SIGTERM arrived; raised by ios-tvm's handlers so that ``finally`` blocks clean up.

    A ``BaseException``, like ``KeyboardInterrupt``: ``except Exception`` does not stop it.
    """


def all_errors() -> list[type[IosTvmError]]:
    """Every error class of ios-tvm, the base first."""
    return [IosTvmError, *(cls for cls in globals().values() if isinstance(cls, type)
                           and issubclass(cls, IosTvmError) and cls is not IosTvmError)]


def register_errors() -> None:
    """Register every error class with tvm-ffi (idempotent; see the module docstring)."""
    import tvm_ffi

    for cls in all_errors():
        tvm_ffi.register_error(cls)
