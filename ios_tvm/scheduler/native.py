"""The IOS DP of one part in C++ (``passes/ios_dp.cc``): a drop-in for ``_PartSearch``.

:func:`solve_part_native` returns exactly what ``ios_tvm.scheduler.search._PartSearch`` computes
for a
part ``[lo, hi)`` (the same stages, total cost, state and transition counts; ties break the
same way) and charges the same :class:`~ios_tvm.scheduler.stage_cost.StageCostCache` with the same
counters, only much faster. The cost model and the merge predicate stay in Python; the C++ DP
calls them back once per distinct stage.

Masks cross the FFI as ``int64``. A part of 64 ops uses bit 63, so masks are passed as the
two's-complement reinterpretation of their 64 bits (:func:`_to_i64` / :func:`_to_u64`); parts
of up to :data:`MAX_NATIVE_OPS` = 64 ops are supported.

Set ``IOS_TVM_NATIVE_SEARCH=0`` to make :func:`native_search_enabled` return False (the search
then uses the Python DP).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from ios_tvm import _native
from ios_tvm.ir.graph import OpGraph
from ios_tvm.ir.schedule import Stage
from ios_tvm.scheduler.bits import bits_of
from ios_tvm.scheduler.config import SearchConfig
from ios_tvm.scheduler.stage_cost import StageCostCache

#: Largest part the native DP takes (one bit per op in a uint64).
MAX_NATIVE_OPS = 64
#: Environment switch: ``IOS_TVM_NATIVE_SEARCH=0`` disables the native DP.
ENV_VAR = "IOS_TVM_NATIVE_SEARCH"
_U64 = 1 << 64
_M64 = _U64 - 1
_I64_MIN = 1 << 63
_STRATEGIES = {"concurrent": "concurrent", "merge": "merge"}
_solve_part: Any = None


def _to_i64(mask: int) -> int:
    """Reinterpret a 64-bit mask as a signed int64 for the FFI."""
    return mask - _U64 if mask >= _I64_MIN else mask


def _to_u64(value: int) -> int:
    """Inverse of :func:`_to_i64`."""
    return value & _M64


def native_search_enabled() -> bool:
    """Whether :func:`ios_tvm.scheduler.search.search` should use the native DP.

    True when the native library loads and ``$IOS_TVM_NATIVE_SEARCH`` is not ``0``.
    """
    if os.environ.get(ENV_VAR, "1").strip().lower() in ("0", "false", "no", "off"):
        return False

    return _native.native_available()


def _get_solve_part() -> Any:
    global _solve_part
    if _solve_part is None:
        import tvm_ffi


        _native.load()
        _solve_part = tvm_ffi.get_global_func("ios_tvm.search.solve_part")
    return _solve_part


def _stage(lo: int, groups: list[int], strategy: str) -> Stage:
    """The stage whose groups are the local masks ``groups`` of the part starting at ``lo``."""
    gs = sorted(tuple(lo + b for b in bits_of(g)) for g in groups)
    return Stage(tuple(gs), strategy)


def solve_part_native(graph: OpGraph, lo: int, hi: int, cfg: SearchConfig,
                      cost_cache: StageCostCache,
                      can_merge: Callable[[OpGraph, tuple[int, ...]], bool] | None,
                      ) -> tuple[list[Stage], float, int, int]:
    """Run the IOS DP over the part ``[lo, hi)`` of ``graph`` in C++.

    Parameters
    ----------
    graph
        The operator graph; ``[lo, hi)`` must be a part (no edges from later ops into it).
    lo, hi
        The part's node ids; at most :data:`MAX_NATIVE_OPS` ops.
    cfg
        Strategy and the limits ``max_group_size`` (r) and ``max_groups`` (s).
    cost_cache
        The search's stage cost memo; looked up as ``cost_cache.lookup(mask << lo, ...)``
        exactly like the Python DP, and its ``calls`` counter is advanced by every lookup the
        DP made (the C++ side answers repeats from its own memo).
    can_merge
        The merge predicate ``(graph, op ids) -> bool``, or None (no merge stages).

    Returns
    -------
    stages : list of Stage
        The optimal stages of the part, first to last, in global op ids.
    total : float
        Their summed cost.
    states : int
        DP states solved (non-empty down-sets), as ``len(_PartSearch.memo) - 1``.
    transitions : int
        Endings tried, as ``_PartSearch.transitions``.

    Raises
    ------
    ValueError
        If the part is empty or has more than :data:`MAX_NATIVE_OPS` ops.
    ImportError
        If the native library is not built.
    """
    n = hi - lo
    if not 0 < n <= MAX_NATIVE_OPS:
        raise ValueError(f"part [{lo}, {hi}) has {n} ops; the native DP takes 1..{MAX_NATIVE_OPS}")
    solve_part = _get_solve_part()
    full = (1 << n) - 1
    desc = [_to_i64((graph.descendant_masks[lo + i] >> lo) & full) for i in range(n)]
    concurrent = cfg.strategy in ("concurrent", "both")
    merge = cfg.strategy in ("merge", "both") and can_merge is not None
    # Exceptions raised in a callback reach Python again as a generic FFI error of the same
    # type name; keep the original so the caller sees the real exception (e.g. IosTvmError).
    errors: list[BaseException] = []

    lookup = cost_cache.lookup

    def cost_cb(mask: int, groups: Any, strategy: str) -> float:
        try:
            name = _STRATEGIES[strategy]  # a plain str, not the FFI's String subclass
            return lookup((mask & _M64) << lo, name,
                          lambda: _stage(lo, [g & _M64 for g in groups], name))
        except BaseException as e:
            errors.append(e)
            raise

    def merge_cb(mask: int) -> bool:
        try:
            assert can_merge is not None
            return bool(can_merge(graph, tuple(lo + b for b in bits_of(_to_u64(mask)))))
        except BaseException as e:
            errors.append(e)
            raise

    try:
        total, states, transitions, requests, callbacks, raw_stages = solve_part(
            n, desc, cfg.max_group_size, cfg.max_groups, concurrent, merge, not concurrent,
            cost_cb, merge_cb if merge else None)
    except Exception:
        if errors:
            raise errors[0] from None
        raise
    # The Python DP calls lookup() once per transition; the C++ DP only once per distinct
    # stage. Count the repeats it answered itself so the stats stay identical.
    cost_cache.counters.calls += int(requests) - int(callbacks)
    stages = [_stage(lo, [_to_u64(int(g)) for g in groups], _STRATEGIES[strategy])
              for strategy, groups in raw_stages]
    return stages, float(total), int(states), int(transitions)
