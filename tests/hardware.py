"""What hardware the tests have: one place to ask whether a CUDA GPU is usable."""

from __future__ import annotations

import functools


@functools.cache
def has_cuda() -> bool:
    """Whether a CUDA GPU is usable through TVM; memoised and never raises."""
    try:
        import tvm

        return bool(tvm.cuda(0).exist)
    except Exception:
        return False
