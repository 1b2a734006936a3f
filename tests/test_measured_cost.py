"""The measurement cache (ios_tvm.cost.cache) and the measured cost model around it.

Unit tests of :class:`MeasurementCache` need no TVM; :class:`MeasuredCost` tests use a fake
profiler (counting calls, returning fixed latencies) on a real extraction, and the end-to-end
tests build real models with ``ios_tvm.build`` on the CPU.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import sqlite3
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from ios_tvm.cost.cache import CACHE_VERSION, MeasurementCache
from ios_tvm.errors import CacheError
from ios_tvm.scheduler.config import SearchConfig

sys.path.insert(0, str(Path(__file__).parent))

CTX = '{"device": "test"}'


# ---------------------------------------------------------------------------------------------
# MeasurementCache
# ---------------------------------------------------------------------------------------------
def test_put_get_and_contexts(tmp_path: Path) -> None:
    cache = MeasurementCache(tmp_path / "sub" / "m.sqlite")
    assert cache.get(CTX, "s") is None
    cache.put(CTX, "s", 1.5e-3, [1e-3, 1.5e-3, 2e-3])
    assert cache.get(CTX, "s") == 1.5e-3
    assert cache.get('{"device": "other"}', "s") is None   # contexts do not mix
    cache.put(CTX, "s", 2e-3, [2e-3])                        # replaced
    assert cache.get(CTX, "s") == 2e-3 and len(cache) == 1
    cache.close()
    again = MeasurementCache(tmp_path / "sub" / "m.sqlite")  # persisted
    assert again.get(CTX, "s") == 2e-3
    again.clear()
    assert len(again) == 0


@pytest.mark.parametrize("bad", [0.0, -1e-3, float("nan"), float("inf")])
def test_put_refuses_invalid_latencies(tmp_path: Path, bad: float) -> None:
    cache = MeasurementCache(tmp_path / "m.sqlite")
    with pytest.raises(ValueError, match="refusing"):
        cache.put(CTX, "s", bad, [bad])
    assert len(cache) == 0


def test_bad_on_corrupt_option(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="on_corrupt"):
        MeasurementCache(tmp_path / "m.sqlite", on_corrupt="ignore")


def _corrupt_file(path: Path) -> bytes:
    import random

    data = bytes(random.Random(7).randrange(256) for _ in range(8192))
    path.write_bytes(data)
    return data


def test_corrupt_file_raises_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite"
    data = _corrupt_file(path)
    with pytest.raises(CacheError, match=str(path).replace(".", r"\.")) as info:
        MeasurementCache(path)
    assert "on_corrupt='rebuild'" in str(info.value)
    assert path.read_bytes() == data  # left alone


def test_corrupt_file_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite"
    data = _corrupt_file(path)
    cache = MeasurementCache(path, on_corrupt="rebuild")
    aside = tmp_path / "m.sqlite.corrupt"
    assert aside.read_bytes() == data
    cache.put(CTX, "s", 1e-3, [1e-3])
    assert cache.get(CTX, "s") == 1e-3 and len(cache) == 1


def test_truncated_sqlite_file(tmp_path: Path) -> None:
    """A real cache cut short is also reported, not trusted."""
    path = tmp_path / "m.sqlite"
    cache = MeasurementCache(path)
    for i in range(300):
        cache.put(CTX, f"s{i}", 1e-3, [1e-3] * 6)
    cache.close()
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    path.write_bytes(path.read_bytes()[:100] + b"\x00" * 3000)
    with pytest.raises(CacheError, match="m.sqlite"):
        MeasurementCache(path).get(CTX, "s0")


@contextlib.contextmanager
def _read_only(folder: Path, *, whole_folder: bool):
    """Make the files of ``folder`` (and with ``whole_folder`` the folder) read-only for this
    process; as root, by acting as ``nobody`` meanwhile (root may write anything)."""
    files = [p for p in folder.iterdir() if p.is_file()]
    for p in files:
        p.chmod(0o444)
    if whole_folder:
        folder.chmod(0o555)
    as_root = os.geteuid() == 0
    try:
        if as_root:
            os.setegid(65534)
            os.seteuid(65534)
        yield
    finally:
        if as_root:
            os.seteuid(0)
            os.setegid(0)
        folder.chmod(0o755)
        for p in files:
            p.chmod(0o644)


@pytest.fixture
def open_folder() -> Any:
    """A folder that any user may read (pytest's tmp_path is private to its user)."""
    path = Path(tempfile.mkdtemp(prefix="ios_tvm_ro_"))
    path.chmod(0o755)
    yield path
    path.chmod(0o755)
    shutil.rmtree(path)


@pytest.mark.skipif(not hasattr(os, "seteuid"), reason="POSIX permissions")
@pytest.mark.parametrize("whole_folder", [False, True])
def test_read_only_cache_is_read_not_called_corrupt(open_folder: Path, whole_folder: bool,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """A shared cache this user may not write: read it, warn that nothing new is saved."""
    path = open_folder / "m.sqlite"
    cache = MeasurementCache(path)
    cache.put(CTX, "s", 1.5e-3, [1.5e-3])
    cache.close()
    before = path.read_bytes()
    with _read_only(open_folder, whole_folder=whole_folder), caplog.at_level("WARNING"):
        ro = MeasurementCache(path)
        assert ro.read_only
        assert ro.get(CTX, "s") == 1.5e-3 and ro.get(CTX, "other") is None
        ro.put(CTX, "new", 2e-3, [2e-3])  # not saved, and not an error
        assert ro.get(CTX, "new") is None and len(ro) == 1
        with pytest.raises(CacheError, match="read-only"):
            ro.clear()
        ro.close()
    assert "read-only" in caplog.text and "will not be saved" in caplog.text
    assert str(path) in caplog.text
    assert path.read_bytes() == before


@pytest.mark.skipif(not hasattr(os, "seteuid"), reason="POSIX permissions")
@pytest.mark.parametrize("whole_folder", [False, True])
def test_read_only_corrupt_cache_is_still_an_error(open_folder: Path, whole_folder: bool) -> None:
    """Garbage, or an SQLite file that is not a cache, is reported as such when read-only."""
    _corrupt_file(open_folder / "m.sqlite")
    with sqlite3.connect(open_folder / "other.sqlite") as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    with _read_only(open_folder, whole_folder=whole_folder):
        for name in ("m.sqlite", "other.sqlite"):
            with pytest.raises(CacheError, match=f"{name}.*not a valid ios-tvm measurement"):
                MeasurementCache(open_folder / name)


@pytest.mark.skipif(not hasattr(os, "seteuid"), reason="POSIX permissions")
def test_cache_in_a_read_only_folder_that_does_not_exist_yet(open_folder: Path) -> None:
    with _read_only(open_folder, whole_folder=True):
        with pytest.raises(CacheError, match="cannot create"):
            MeasurementCache(open_folder / "m.sqlite")


@pytest.mark.parametrize("stored", [-1.0, 0.0, "nan", "garbage", 1e999, -1e999])
def test_invalid_stored_value_is_dropped(tmp_path: Path, stored: Any) -> None:
    path = tmp_path / "m.sqlite"
    cache = MeasurementCache(path)
    cache.put(CTX, "good", 1e-3, [1e-3])
    with sqlite3.connect(path) as conn:  # another writer (or a bug) stores nonsense
        conn.execute("INSERT OR REPLACE INTO measurements VALUES (?, ?, ?, ?, ?)",
                     (CTX, "bad", stored, "[]", 0.0))
    assert cache.get(CTX, "bad") is None
    assert len(cache) == 1  # the row is gone
    assert cache.get(CTX, "good") == 1e-3


def _write_entries(path: str, worker: int, n: int) -> None:
    cache = MeasurementCache(path)
    for i in range(n):
        cache.put(CTX, f"w{worker}-s{i}", 1e-3 + i * 1e-6, [1e-3] * 6)
    cache.close()


def test_concurrent_writers(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite"
    MeasurementCache(path).close()  # both processes open an existing file
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_entries, args=(str(path), w, 200)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    cache = MeasurementCache(path)
    assert len(cache) == 400
    assert all(cache.get(CTX, f"w{w}-s{i}") == pytest.approx(1e-3 + i * 1e-6)
               for w in range(2) for i in range(200))


def test_cache_version_is_part_of_the_context() -> None:
    pytest.importorskip("tvm")
    from ios_tvm.compiler.profiling import measured_cost

    cost = measured_cost(_extraction("sample8"), profiler=FakeProfiler(), device="dev")
    assert f'"cache_version": {CACHE_VERSION}' in cost.context
    assert '"device": "dev"' in cost.context


# ---------------------------------------------------------------------------------------------
# MeasuredCost with a fake profiler
# ---------------------------------------------------------------------------------------------
class FakeProfiler:
    """Counts calls; a stage with g groups of k ops takes (k_max + 0.1 g) ms."""

    def __init__(self) -> None:
        self.calls: list[list[list[int]]] = []

    def profile(self, groups: Sequence[Sequence[int]]) -> list[float]:
        self.calls.append([list(g) for g in groups])
        t = (max(len(g) for g in groups) + 0.1 * len(groups)) * 1e-3
        return [t * 1.1, t, t * 0.9]


class FakeManyProfiler(FakeProfiler):
    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def profile_many(self, stages: Sequence[Sequence[Sequence[int]]]) -> list[list[float]]:
        self.batches.append(len(stages))
        return [self.profile(s) for s in stages]


_EXTRACTIONS: dict[str, Any] = {}


def _extraction(name: str) -> Any:
    if name not in _EXTRACTIONS:
        from ios_tvm.compiler.extract import graph_from_model
        from ios_tvm.models import sample_block

        _EXTRACTIONS[name] = graph_from_model(sample_block(channels=8, size=8), "llvm")
    return _EXTRACTIONS[name]


@pytest.fixture(scope="module")
def sample8() -> Any:
    pytest.importorskip("tvm")
    return _extraction("sample8")


def test_open_cache_resolves_every_form(tmp_path: Path) -> None:
    from ios_tvm.cost.cache import open_cache

    assert open_cache(False) is None and open_cache(None) is None
    at = open_cache(tmp_path / "a.sqlite")
    assert isinstance(at, MeasurementCache) and at.path == tmp_path / "a.sqlite"
    assert open_cache(str(tmp_path / "b.sqlite")).path == tmp_path / "b.sqlite"
    assert open_cache(at) is at


def test_make_stage_cost_picks_the_cost_model(sample8: Any, tmp_path: Path) -> None:
    """The one factory build() and bench() share: measured (here on a named fake profiler,
    persisted in the given cache), analytic (CPU preset for llvm), or the caller's own."""
    from ios_tvm.compiler.profiling import make_stage_cost
    from ios_tvm.cost import AnalyticCost
    from ios_tvm.cost.measured import MeasuredCost
    from ios_tvm.errors import IosTvmError
    from ios_tvm.ir.schedule import Stage

    class Named(FakeProfiler):
        def device_name(self) -> str:
            return "fake-dev"

    stage = Stage(((0,), (1,)))
    prof = Named()
    cost, measured = make_stage_cost(sample8, "measured", cache=tmp_path / "m.sqlite",
                                     profiler=prof)
    assert isinstance(measured, MeasuredCost) and measured.profiler is prof
    assert '"device": "fake-dev"' in measured.context
    assert cost(stage) == cost(stage) == pytest.approx(1.2e-3) and len(prof.calls) == 1
    assert MeasurementCache(tmp_path / "m.sqlite").get(measured.context,
                                                       measured.stage_key(stage)) is not None
    analytic, none = make_stage_cost(sample8, "analytic")
    assert none is None
    assert analytic(stage) == AnalyticCost(sample8.graph, "cpu")(stage)
    assert analytic(stage) != AnalyticCost(sample8.graph, "h100")(stage)
    own, none = make_stage_cost(sample8, lambda s: 0.5)
    assert none is None and own(stage) == 0.5
    # "learned" was the unknown name here until it became a cost model (issue 18).
    with pytest.raises(IosTvmError, match="unknown cost 'guessed'"):
        make_stage_cost(sample8, "guessed")
    learned, inner = make_stage_cost(sample8, "learned", cache=tmp_path / "m.sqlite",
                                     profiler=Named())
    from ios_tvm.cost.learned import LearnedCost

    assert isinstance(learned.cost, LearnedCost) and learned.cost.measured is inner


def test_twins_are_measured_once(sample8: Any, tmp_path: Path) -> None:
    """conv_b and conv_c are the same kernel on the same tensor shapes: one measurement."""
    from ios_tvm.compiler.profiling import measured_cost
    from ios_tvm.ir.schedule import Stage

    prof = FakeProfiler()
    cost = measured_cost(sample8, profiler=prof, device="dev", cache=None)
    keys = cost.keys
    twins = [(i, j) for i in range(len(keys)) for j in range(i + 1, len(keys))
             if keys[i] == keys[j]]
    assert twins, keys
    i, j = twins[0]
    a = cost(Stage(((i,),)))
    b = cost(Stage(((j,),)))
    assert a == b == pytest.approx(1.1e-3)  # the median
    # The twin reuses a measurement of this run: that is not "from the cache" (there is none).
    assert len(prof.calls) == 1 and cost.measured == 1 and cost.reused == 1
    assert cost.cache_hits == 0


@pytest.mark.parametrize("prefetch", [False, True])
def test_from_cache_counts_only_measurements_older_than_the_run(sample8: Any, tmp_path: Path,
                                                                prefetch: bool) -> None:
    """Issue 17 #11: a fresh cache served nothing, whatever the run reused of its own."""
    from ios_tvm.compiler.profiling import measured_cost
    from ios_tvm.scheduler.config import SearchConfig
    from ios_tvm.scheduler.search import candidate_stages, search

    cfg = SearchConfig(max_groups=4)
    path = tmp_path / "m.sqlite"

    def run() -> tuple[Any, Any]:
        cost = measured_cost(sample8, profiler=FakeManyProfiler(), device="dev",
                            cache=MeasurementCache(path))
        if prefetch:
            cost.prefetch(candidate_stages(sample8.graph, cfg))
        return cost, search(sample8.graph, cost, cfg).stats

    first, stats = run()
    keys = {first.stage_key(s) for s in candidate_stages(sample8.graph, cfg)}
    assert first.measured == len(keys) == len(MeasurementCache(path))
    assert first.cache_hits == 0
    assert first.reused == stats.stages_costed - len(keys) > 0  # sample8 has twins
    second, stats = run()  # everything was measured before this run, twins too
    assert second.measured == 0 and second.reused == 0
    assert second.cache_hits == stats.stages_costed


def test_invalid_cached_value_is_remeasured(sample8: Any, tmp_path: Path) -> None:
    from ios_tvm.compiler.profiling import measured_cost
    from ios_tvm.ir.schedule import Stage

    path = tmp_path / "m.sqlite"
    first = measured_cost(sample8, profiler=FakeProfiler(), device="dev",
                         cache=MeasurementCache(path))
    stage = Stage(((0,),))
    first(stage)
    key = first.stage_key(stage)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE measurements SET seconds=-5 WHERE stage=?", (key,))
    prof = FakeProfiler()
    second = measured_cost(sample8, profiler=prof, device="dev", cache=MeasurementCache(path))
    assert second(stage) == pytest.approx(1.1e-3)
    assert len(prof.calls) == 1 and second.measured == 1 and second.cache_hits == 0
    assert MeasurementCache(path).get(second.context, key) == pytest.approx(1.1e-3)


def test_profiler_returning_nonsense_is_not_cached(sample8: Any, tmp_path: Path) -> None:
    from ios_tvm.compiler.profiling import measured_cost
    from ios_tvm.errors import IosTvmError
    from ios_tvm.ir.schedule import Stage

    class Broken(FakeProfiler):
        def profile(self, groups: Sequence[Sequence[int]]) -> list[float]:
            return [float("nan")] * 3

    cache = MeasurementCache(tmp_path / "m.sqlite")
    cost = measured_cost(sample8, profiler=Broken(), device="dev", cache=cache)
    with pytest.raises(IosTvmError, match="nan"):
        cost(Stage(((0,),)))
    assert len(cache) == 0


def test_prefetch_measures_every_stage_once_in_one_batch(sample8: Any, tmp_path: Path) -> None:
    from ios_tvm.compiler.profiling import measured_cost
    from ios_tvm.scheduler.config import SearchConfig
    from ios_tvm.scheduler.search import candidate_stages, search

    cfg = SearchConfig(max_groups=4)
    stages = candidate_stages(sample8.graph, cfg)
    prof = FakeManyProfiler()
    cost = measured_cost(sample8, profiler=prof, device="dev",
                        cache=MeasurementCache(tmp_path / "m.sqlite"))
    n = cost.prefetch(stages)
    assert prof.batches == [n] and n == len({cost.stage_key(s) for s in stages})
    result = search(sample8.graph, cost, cfg)
    assert len(prof.calls) == n  # the search itself measured nothing
    assert result.stats.stages_costed == len(stages)
    assert cost.measured + cost.reused == result.stats.stages_costed and cost.cache_hits == 0
    # Prefetching again, or with a new cost model on the same cache, measures nothing.
    assert cost.prefetch(stages) == 0
    again = measured_cost(sample8, profiler=FakeManyProfiler(), device="dev",
                         cache=MeasurementCache(tmp_path / "m.sqlite"))
    assert again.prefetch(stages) == 0
    search(sample8.graph, again, cfg)
    assert again.measured == 0 and again.cache_hits == len(stages)


def test_candidate_stages_match_what_the_search_asks(sample8: Any) -> None:
    from ios_tvm.scheduler.config import SearchConfig
    from ios_tvm.scheduler.search import candidate_stages, search

    for cfg in (SearchConfig(), SearchConfig(max_groups=2, max_group_size=1),
                SearchConfig(strategy="greedy")):
        asked: set[tuple[int, str]] = set()

        def cost(stage: Any, asked: set[tuple[int, str]] = asked) -> float:
            asked.add((stage.mask, stage.strategy))
            return 1e-3 * len(stage.groups) + 1e-4 * sum(map(len, stage.groups))

        search(sample8.graph, cost, cfg)
        assert {(s.mask, s.strategy) for s in candidate_stages(sample8.graph, cfg)} == asked


# ---------------------------------------------------------------------------------------------
# end to end: ios_tvm.build with a cache file
# ---------------------------------------------------------------------------------------------
def _fast() -> Any:
    from ios_tvm.cost.base import ProfileSettings

    return ProfileSettings(warmup=1, number=3, repeat=3)


@pytest.fixture(scope="module")
def native() -> None:
    pytest.importorskip("tvm")
    from ios_tvm import _native

    if not _native.native_available():
        pytest.skip("native library not built")


def _stored_keys(path: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return {row[0] for row in conn.execute("SELECT stage FROM measurements")}


def _expected_counts(model: Any, known: set[str]) -> tuple[int, int, int]:
    """(measured, from cache, reused twins) of a default build of ``model`` on a cache that
    holds the stage keys ``known``: each stage the search costs is served by the cache when
    its key was there before, else measured once per key and reused for the other twins."""
    from ios_tvm.compiler.extract import graph_from_model
    from ios_tvm.compiler.profiling import measured_cost
    from ios_tvm.scheduler.search import candidate_stages

    ex = graph_from_model(model, "llvm", cpu_layout="NHWC")  # as build() lowers it
    keys = [measured_cost(ex, profiler=FakeProfiler(), device="dev").stage_key(s)
            for s in candidate_stages(ex.graph)]
    new = [k for k in keys if k not in known]
    return len(set(new)), len(keys) - len(new), len(new) - len(set(new))


def test_second_build_measures_nothing(native: None, tmp_path: Path) -> None:
    from ios_tvm.compiler.build import build
    from ios_tvm.models import sample_block

    path = tmp_path / "m.sqlite"
    model = sample_block(channels=8, size=8)
    # Every stage the DP visits (a pruned search measures fewer: test below).
    first = build(model, "llvm", cache=path, settings=_fast(), compare_vm=False,
                  config=SearchConfig(prune=False))
    measured, cached, reused = _expected_counts(model, set())
    # A fresh cache serves nothing; twins of a stage measured now are not "from cache".
    assert (first.stages_measured, first.stages_cached) == (measured, cached) == (measured, 0)
    assert measured > 0 and reused > 0
    assert measured + reused == first.search_stats.stages_costed
    n = len(MeasurementCache(path))
    assert n == first.stages_measured
    second = build(model, "llvm", cache=MeasurementCache(path), settings=_fast(),
                   compare_vm=False)
    assert second.stages_measured == 0
    assert second.stages_cached == second.search_stats.stages_costed > 0
    assert second.schedule == first.schedule or second.chosen != first.chosen
    assert len(MeasurementCache(path)) == n


def test_a_pruned_build_measures_a_subset_and_counts_it(native: None,
                                                         tmp_path: Path) -> None:
    """By default the search measures only the stages it can still choose: no more than the
    full search, each once, twins reused, and a second build measures nothing."""
    from ios_tvm.compiler.build import build
    from ios_tvm.models import sample_block

    path = tmp_path / "m.sqlite"
    model = sample_block(channels=8, size=8)
    first = build(model, "llvm", cache=path, settings=_fast(), compare_vm=False)
    measured, _, reused = _expected_counts(model, set())
    assert 0 < first.stages_measured <= measured and first.stages_cached == 0
    assert first.stages_measured + first.stages_reused == first.search_stats.stages_costed
    assert first.search_stats.rounds >= 1
    assert len(MeasurementCache(path)) == first.stages_measured
    second = build(model, "llvm", cache=MeasurementCache(path), settings=_fast(),
                   compare_vm=False)
    assert second.stages_measured == 0
    assert second.stages_cached == second.search_stats.stages_costed > 0


def test_models_sharing_kernels_share_measurements(native: None, tmp_path: Path) -> None:
    """inception_net(blocks=1) is inception_block plus one 1x1 conv: its stages without the
    new conv come from the first model's measurements."""
    import onnx_models as om

    from ios_tvm.compiler.build import build

    shared = tmp_path / "shared.sqlite"
    full = SearchConfig(prune=False)  # every stage the DP visits, as _expected_counts counts
    a = build(om.inception_block(), "llvm", cache=shared, settings=_fast(), compare_vm=False,
              config=full)
    measured, cached, reused = _expected_counts(om.inception_net(blocks=1), _stored_keys(shared))
    b = build(om.inception_net(blocks=1), "llvm", cache=shared, settings=_fast(),
              compare_vm=False, config=full)
    assert a.stages_measured > 0 and a.stages_cached == 0
    assert (b.stages_measured, b.stages_cached) == (measured, cached)
    assert measured + cached + reused == b.search_stats.stages_costed
    # Alone, model b would measure one stage per distinct stage key.
    assert 0 < b.stages_measured < measured + len({k for k in _stored_keys(shared)})
    assert cached > 0
    assert len(MeasurementCache(shared)) == a.stages_measured + b.stages_measured
