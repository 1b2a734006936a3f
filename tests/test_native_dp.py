"""The C++ part DP (passes/ios_dp.cc) against the Python ``_PartSearch``: identical results.

"Identical" means the same stages (not only the same cost), the same total, the same number
of DP states and transitions, and the same cost-cache counters and table.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ios_tvm
from ios_tvm import OpGraph, SearchConfig, Stage, _native, validate_schedule
from ios_tvm.cost import AnalyticCost
from ios_tvm.errors import IosTvmError
from ios_tvm.ir.schedule import Schedule
from ios_tvm.scheduler.native import MAX_NATIVE_OPS, native_search_enabled, solve_part_native
from ios_tvm.scheduler.partition import partition
from ios_tvm.scheduler.search import _PartSearch
from ios_tvm.scheduler.stage_cost import StageCostCache

needs_native = pytest.mark.skipif(not _native.native_available(),
                                  reason="native library not built (bash scripts/setup.sh)")

_REPO = Path(__file__).resolve().parents[1]
_RANDWIRE_DIRS = [_REPO / "ios_tvm" / "models" / "randwire_graphs",
                  Path("/work/shared/reference/randwire_graphs")]


def randwire(name: str) -> OpGraph:
    """A RandWire-WS graph file: n, m, then m lines "u v" with u < v."""
    for d in _RANDWIRE_DIRS:
        path = d / name
        if path.is_file():
            words = path.read_text().split()
            n, m = int(words[0]), int(words[1])
            edges = [(int(words[2 + 2 * i]), int(words[3 + 2 * i])) for i in range(m)]
            return OpGraph.from_edges(n, edges)
    pytest.skip(f"randwire graph {name} not found in {_RANDWIRE_DIRS}")


# -- inputs --------------------------------------------------------------------------------
@st.composite
def dags(draw: st.DrawFn, max_nodes: int = 12) -> OpGraph:
    """Random DAGs with ids in topological order (edges low -> high)."""
    n = draw(st.integers(1, max_nodes))
    density = draw(st.sampled_from([0.1, 0.25, 0.5]))
    edges = [(u, v) for v in range(n) for u in range(v) if draw(st.floats(0, 1)) < density]
    return OpGraph.from_edges(n, edges)


class HashCost:
    """A fixed pseudo-random cost per (op set, strategy), stable across processes."""

    def __init__(self, seed: int, ties: bool = False) -> None:
        self.seed = seed
        self.ties = ties

    def __call__(self, stage: Stage) -> float:
        rng = random.Random(f"{self.seed}:{stage.mask}:{stage.strategy}")
        if self.ties:  # few distinct values: exercises the tie-breaking order
            return float(rng.randint(1, 3))
        return rng.uniform(0.1, 2.0) * len(stage.ops) ** rng.uniform(0.3, 1.2)


def merge_table(seed: int):
    """A fixed pseudo-random merge predicate per op set."""

    def can_merge(graph: OpGraph, ops: tuple[int, ...]) -> bool:
        return random.Random(f"{seed}:merge:{ops}").random() < 0.6

    return can_merge


def run_both(graph: OpGraph, lo: int, hi: int, cfg: SearchConfig, cost, can_merge=None):
    """Solve one part with both DPs, each with its own fresh cost cache."""
    py_cache, nat_cache = StageCostCache(cost), StageCostCache(cost)
    part = _PartSearch(graph, lo, hi, cfg, py_cache, can_merge)
    py_stages = part.stages()
    py = (py_stages, part.memo[(1 << (hi - lo)) - 1], len(part.memo) - 1, part.transitions)
    nat = solve_part_native(graph, lo, hi, cfg, nat_cache, can_merge)
    return py, nat, py_cache, nat_cache


def assert_identical(graph, lo, hi, cfg, cost, can_merge=None) -> None:
    py, nat, py_cache, nat_cache = run_both(graph, lo, hi, cfg, cost, can_merge)
    assert nat[0] == py[0], "stages differ"
    assert nat[1] == py[1], "total cost differs"
    assert nat[2:] == py[2:], "states/transitions differ"
    assert nat_cache.counters == py_cache.counters
    assert nat_cache.table == py_cache.table


# -- loading -------------------------------------------------------------------------------
def test_native_library_loads_from_package():
    module = _native.load()  # fails with the searched paths and how to build
    assert module is _native.load()
    path = _native.library_path()
    assert path.is_file() and path.name == _native.LIB_NAME
    if not os.environ.get(_native.ENV_VAR):
        pkg_dirs = {Path(p).resolve() for p in ios_tvm.__path__}
        assert path.parent.resolve() in pkg_dirs, f"{path} is not inside the ios_tvm package"
    import tvm_ffi

    assert tvm_ffi.get_global_func("ios_tvm.search.solve_part") is not None
    assert _native.native_available()


def test_env_switch_disables_native(monkeypatch):
    monkeypatch.setenv("IOS_TVM_NATIVE_SEARCH", "0")
    assert not native_search_enabled()
    monkeypatch.setenv("IOS_TVM_NATIVE_SEARCH", "1")
    assert native_search_enabled() == _native.native_available()


# -- identical results ---------------------------------------------------------------------
@needs_native
@settings(max_examples=150)
@given(graph=dags(), seed=st.integers(0, 10_000), r=st.integers(1, 4), s=st.integers(1, 4),
       strategy=st.sampled_from(["concurrent", "merge", "both"]), ties=st.booleans())
def test_native_matches_python_random(graph, seed, r, s, strategy, ties):
    cfg = SearchConfig(strategy=strategy, max_group_size=r, max_groups=s)
    n = len(graph.nodes)
    assert_identical(graph, 0, n, cfg, HashCost(seed, ties), merge_table(seed))


@needs_native
@settings(max_examples=40)
@given(graph=dags(max_nodes=20), seed=st.integers(0, 10_000), size=st.integers(2, 7),
       strategy=st.sampled_from(["concurrent", "both"]))
def test_native_matches_python_on_parts(graph, seed, size, strategy):
    """Parts with lo > 0: local masks, and global ids in the stages and the cost cache."""
    cfg = SearchConfig(strategy=strategy, max_group_size=3, max_groups=3, max_part_size=size)
    stages = []
    for lo, hi in partition(graph, size):
        assert_identical(graph, lo, hi, cfg, HashCost(seed), merge_table(seed))
        stages += solve_part_native(graph, lo, hi, cfg, StageCostCache(HashCost(seed)),
                                    merge_table(seed))[0]
    validate_schedule(graph, Schedule(tuple(stages)))


@needs_native
def test_native_merge_without_predicate_uses_concurrent_only():
    graph = randwire("ws-16-4-0.75-2.txt")
    for strategy in ("merge", "both"):
        cfg = SearchConfig(strategy=strategy)
        assert_identical(graph, 0, len(graph.nodes), cfg, AnalyticCost(graph), None)


def _merge_small(graph: OpGraph, ops: tuple[int, ...]) -> bool:
    return len(ops) <= 3


@needs_native
@pytest.mark.parametrize("strategy", ["concurrent", "merge", "both"])
@pytest.mark.parametrize("r,s", [(1, 8), (2, 2), (3, 8)])
def test_native_matches_python_randwire16(strategy, r, s):
    graph = randwire("ws-16-4-0.75-2.txt")
    cfg = SearchConfig(strategy=strategy, max_group_size=r, max_groups=s)
    assert_identical(graph, 0, len(graph.nodes), cfg, AnalyticCost(graph), _merge_small)


@needs_native
@pytest.mark.slow
@pytest.mark.parametrize("name", ["ws-32-4-0.75-3.txt", "ws-32-4-0.75-4.txt",
                                  "ws-32-4-0.75-5.txt"])
def test_native_matches_python_randwire32(name):
    graph = randwire(name)
    cfg = SearchConfig(strategy="concurrent", max_group_size=3, max_groups=8, max_part_size=64)
    assert_identical(graph, 0, len(graph.nodes), cfg, AnalyticCost(graph))


@needs_native
@pytest.mark.parametrize("strategy", ["concurrent", "both"])
def test_native_64_op_part_uses_bit_63(strategy):
    """Two chains of 32 ops: masks with bit 63 set cross the FFI as negative int64."""
    edges = [(i, i + 2) for i in range(62)]
    graph = OpGraph.from_edges(64, edges)
    cfg = SearchConfig(strategy=strategy, max_group_size=2, max_groups=2, max_part_size=64)
    assert_identical(graph, 0, 64, cfg, HashCost(7), merge_table(7))
    stages, _, _, _ = solve_part_native(graph, 0, 64, cfg, StageCostCache(HashCost(7)),
                                        merge_table(7))
    assert any(63 in g for st_ in stages for g in st_.groups)
    validate_schedule(graph, Schedule(tuple(stages)))


@needs_native
def test_native_rejects_oversized_part():
    graph = OpGraph.from_edges(MAX_NATIVE_OPS + 1, [])
    with pytest.raises(ValueError, match="65 ops"):
        solve_part_native(graph, 0, MAX_NATIVE_OPS + 1, SearchConfig(),
                          StageCostCache(HashCost(0)), None)


@needs_native
def test_native_bad_input_names_value():
    import tvm_ffi

    solve = tvm_ffi.get_global_func("ios_tvm.search.solve_part")
    with pytest.raises(ValueError, match=r"desc\[0\] = 1"):
        solve(2, [1, 0], 3, 8, True, False, False, lambda m, g, s: 1.0, None)
    with pytest.raises(ValueError, match="max_group_size must be >= 1, got 0"):
        solve(2, [0, 0], 0, 8, True, False, False, lambda m, g, s: 1.0, None)
    with pytest.raises(ValueError, match="returned -1"):
        solve(2, [0, 0], 3, 8, True, False, False, lambda m, g, s: -1.0, None)


@needs_native
def test_native_passes_callback_exceptions_through():
    """An error in the cost model reaches the caller as the very same exception."""
    graph = randwire("ws-16-4-0.75-2.txt")
    err = IosTvmError("cost model exploded")

    def bad_cost(stage: Stage) -> float:
        if len(stage.ops) > 1:
            raise err
        return 1.0

    with pytest.raises(IosTvmError) as info:
        solve_part_native(graph, 0, len(graph.nodes), SearchConfig(),
                          StageCostCache(bad_cost), None)
    assert info.value is err
