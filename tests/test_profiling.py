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


def test_adaptive_stops_when_the_repeats_agree() -> None:
    ex = FakeExecutor([1.00, 1.01, 0.99, 5.0, 5.0, 5.0])
    p = LocalProfiler(ex, ProfileSettings(2, 6, 6))
    assert p.profile([[0]]) == [1.00, 1.01, 0.99]
    assert ex.calls == [(2, 6, 3)] and p.repeats == 3


def test_adaptive_measures_on_while_the_repeats_disagree() -> None:
    ex = FakeExecutor([1.0, 1.5, 1.0, 1.0, 1.0, 1.0, 9.0])
    p = LocalProfiler(ex, ProfileSettings(2, 6, 6))
    assert p.profile([[0]]) == [1.0, 1.5, 1.0, 1.0, 1.0, 1.0]  # never more than repeat
    assert ex.calls == [(2, 6, 3), (1, 6, 3)] and p.repeats == 6


def test_fixed_repeats_when_not_adaptive() -> None:
    ex = FakeExecutor([1.0] * 6)
    p = LocalProfiler(ex, ProfileSettings(2, 6, 6), adaptive=False)
    assert len(p.profile([[0]])) == 6 and ex.calls == [(2, 6, 6)]
