"""The local stage profiler's adaptive repeats (ios_tvm/compiler/profiling.py)."""

from __future__ import annotations

from collections.abc import Sequence

from ios_tvm.compiler.profiling import LocalProfiler, median_interval
from ios_tvm.cost.base import ProfileSettings


class FakeExecutor:
    """profile_stage returns the next values of a fixed list, one per repeat."""

    def __init__(self, values: Sequence[float]) -> None:
        self.values = list(values)
        self.calls: list[tuple[int, int, int]] = []

    def profile_stage(self, groups: object, *, warmup: int, number: int,
                      repeat: int) -> list[float]:
        self.calls.append((warmup, number, repeat))
        out, self.values = self.values[:repeat], self.values[repeat:]
        return out


def test_a_long_stage_stops_after_three_single_runs_that_agree() -> None:
    ex = FakeExecutor([2.00e-3, 2.02e-3, 1.99e-3, 9.0, 9.0])
    p = LocalProfiler(ex, ProfileSettings(2, 6, 6))
    assert p.profile([[0]]) == [2.00e-3, 2.02e-3, 1.99e-3]
    assert ex.calls == [(2, 1, 3)] and p.runs == 5  # 2 warm-up runs and 3 timed


def test_a_noisy_long_stage_is_measured_on_within_the_fixed_budget() -> None:
    values = [2e-3, 3e-3] * 30
    ex = FakeExecutor(values)
    p = LocalProfiler(ex, ProfileSettings(2, 6, 6))
    got = p.profile([[0]])
    assert len(got) == p.max_repeats == 12  # never more than max_repeats single runs
    assert all(c[1] == 1 for c in ex.calls)
    # ... nor more runs than the fixed settings would take.
    ex = FakeExecutor(values)
    p = LocalProfiler(ex, ProfileSettings(2, 2, 3))
    assert len(p.profile([[0]])) == 6


def test_one_outlier_does_not_cost_the_whole_budget() -> None:
    """From 9 repeats on, the median's 90% interval leaves out the extreme values: a 2x
    outlier (another process took the core) costs 6 more runs, not 33."""
    values = [2.0e-3, 4.0e-3, 2.01e-3, 2.0e-3, 1.99e-3, 2.02e-3, 2.0e-3, 2.01e-3, 1.99e-3]
    ex = FakeExecutor(values + [9.0] * 30)
    p = LocalProfiler(ex, ProfileSettings(2, 6, 6))
    got = p.profile([[0]])
    assert got == values and p.runs == 2 + 9


def test_median_interval_coverage() -> None:
    xs = list(range(20))
    assert median_interval(xs[:4]) == (0, 3)  # too few values: the whole range
    assert median_interval(xs[:9]) == (1, 7)  # 1 - 2 (1 + 9) / 512 = 96% >= 90%
    assert median_interval(xs[:9], 0.99) == (0, 8)
    assert median_interval(xs[:20]) == (5, 14)


def test_the_executor_is_made_on_the_first_stage_only() -> None:
    made = []

    def make() -> FakeExecutor:
        made.append(1)
        return FakeExecutor([1.0] * 10)

    p = LocalProfiler(None, ProfileSettings(1, 1, 3), make_executor=make)
    assert made == [] and p.setup_seconds == 0.0
    p.profile([[0]])
    p.profile([[0]])
    assert made == [1]


def test_a_short_stage_is_timed_with_several_runs_per_repeat() -> None:
    ex = FakeExecutor([1e-5, 1e-5, 1e-5, 1.0e-5, 1.01e-5, 0.99e-5])
    p = LocalProfiler(ex, ProfileSettings(2, 6, 6))
    assert p.profile([[0]]) == [1.0e-5, 1.01e-5, 0.99e-5]
    assert ex.calls == [(2, 1, 3), (0, 6, 3)] and p.runs == 2 + 3 + 18


def test_fixed_repeats_when_not_adaptive() -> None:
    ex = FakeExecutor([1.0] * 6)
    p = LocalProfiler(ex, ProfileSettings(2, 6, 6), adaptive=False)
    assert len(p.profile([[0]])) == 6 and ex.calls == [(2, 6, 6)]


class FakeColdExecutor(FakeExecutor):
    """profile_stage_cold also serves the list; profile_stage must not be called."""

    def profile_stage(self, *args: object, **kwargs: object) -> list[float]:
        raise AssertionError("a cold profiler timed a stage with warm weights")

    def profile_stage_cold(self, groups: object, *, warmup: int, repeat: int) -> list[float]:
        self.calls.append((warmup, 1, repeat))
        out, self.values = self.values[:repeat], self.values[repeat:]
        return out


def test_cold_weights_time_single_runs_adaptively_even_for_short_stages() -> None:
    """Each cold run needs its own eviction, so a short stage is not batched; one outlier
    costs a few more runs, as when warm."""
    values = [1.0e-5, 2.0e-5, 1.01e-5, 1.0e-5, 0.99e-5, 1.02e-5, 1.0e-5, 1.01e-5, 0.99e-5]
    ex = FakeColdExecutor(values + [9.0] * 30)
    p = LocalProfiler(ex, ProfileSettings(2, 6, 6), cold_weights=True)
    assert p.profile([[0]]) == values
    assert ex.calls == [(2, 1, 3), (0, 1, 3), (0, 1, 3)] and p.runs == 2 + 9
    ex = FakeColdExecutor([1.0] * 20)
    p = LocalProfiler(ex, ProfileSettings(2, 6, 5), adaptive=False, cold_weights=True)
    assert len(p.profile([[0]])) == 5 and ex.calls == [(2, 1, 5)]


def test_cold_weights_are_chosen_when_the_weights_outgrow_the_private_caches(
        monkeypatch) -> None:  # noqa: ANN001
    from types import SimpleNamespace

    from ios_tvm.compiler import profiling
    from ios_tvm.ir.graph import TensorInfo

    def model(weight_mib: int, target: str = "llvm") -> SimpleNamespace:
        tensors = {"x": TensorInfo("x", (1, 1 << 18)),
                   "w": TensorInfo("w", (weight_mib, 1 << 18), kind="param"),
                   "c": TensorInfo("c", (1 << 18,), kind="const")}
        return SimpleNamespace(graph=SimpleNamespace(tensors=tensors),
                               target=profiling.tvm.target.Target(target))

    assert profiling.weight_bytes(model(3)) == (3 + 1) << 20  # the input is not a weight
    monkeypatch.setattr(profiling, "cpu_cache_bytes", lambda: 8 << 20)
    assert not profiling.use_cold_weights(model(3))
    assert profiling.use_cold_weights(model(8))
    assert not profiling.use_cold_weights(model(8), False)
    assert profiling.use_cold_weights(model(1), True)
    assert not profiling.use_cold_weights(model(64, "cuda"), True)  # CPU only
    monkeypatch.setattr(profiling, "cpu_cache_bytes", lambda: 0)  # unknown: stay warm
    assert not profiling.use_cold_weights(model(64))
    # Cold measurements are cached apart from warm ones; warm keys are unchanged.
    m = model(1)
    warm = profiling.measurement_context(m, ProfileSettings())
    assert "weights" not in warm
    assert profiling.measurement_context(m, ProfileSettings(), cold_weights=True) == {
        **warm, "weights": "cold"}


def test_cpu_cache_bytes_reads_this_machine() -> None:
    """sysfs against glibc's own figure of the L2 size, times the kernels' threads."""
    import shutil
    import subprocess

    import pytest

    from ios_tvm.compiler.profiling import cpu_cache_bytes
    from ios_tvm.runtime.executor import default_cpu_threads

    getconf = shutil.which("getconf")
    out = subprocess.run([getconf, "LEVEL2_CACHE_SIZE"], capture_output=True, text=True,
                         check=False).stdout.strip() if getconf else ""
    l2 = int(out) if out.isdigit() else 0
    if l2 <= 0:
        pytest.skip("glibc does not report the L2 size here")
    assert cpu_cache_bytes() == l2 * default_cpu_threads()
