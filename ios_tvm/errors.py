"""Error types of ios-tvm.

Every error a user can cause derives from :class:`IosTvmError`; the ones about bad input also
derive from ``ValueError`` so callers that already catch ``ValueError`` keep working.
"""

from __future__ import annotations


class IosTvmError(Exception):
    """Base class of all ios-tvm errors."""


class UnsupportedGraphError(IosTvmError, ValueError):
    """The model contains something the scheduler cannot handle (named in the message)."""


class ScheduleError(IosTvmError, ValueError):
    """A schedule violates a rule: an op missing or repeated, a dependency or a limit broken."""


class ModelLoadError(IosTvmError, ValueError):
    """A model file could not be read or imported (the message names the file)."""
