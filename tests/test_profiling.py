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
