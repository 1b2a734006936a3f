"""The local stage profiler's adaptive repeats (ios_tvm/compiler/profiling.py)."""

from __future__ import annotations

from collections.abc import Sequence

from ios_tvm.compiler.profiling import LocalProfiler
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
    assert len(got) == 36  # never more runs than number * repeat
    assert all(c[1] == 1 for c in ex.calls)


def test_a_short_stage_is_timed_with_several_runs_per_repeat() -> None:
    ex = FakeExecutor([1e-5, 1e-5, 1e-5, 1.0e-5, 1.01e-5, 0.99e-5])
    p = LocalProfiler(ex, ProfileSettings(2, 6, 6))
    assert p.profile([[0]]) == [1.0e-5, 1.01e-5, 0.99e-5]
    assert ex.calls == [(2, 1, 3), (0, 6, 3)] and p.runs == 2 + 3 + 18


def test_fixed_repeats_when_not_adaptive() -> None:
    ex = FakeExecutor([1.0] * 6)
    p = LocalProfiler(ex, ProfileSettings(2, 6, 6), adaptive=False)
    assert len(p.profile([[0]])) == 6 and ex.calls == [(2, 6, 6)]
