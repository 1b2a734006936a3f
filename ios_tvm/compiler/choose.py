"""The never-slower decision: which plan ships, the IOS plan or the sequential one.

One function, used by :func:`ios_tvm.build` to choose and by the benchmark harness to report
what a build would ship, so the two can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Choice:
    """The plan that ships (``"ios"`` or ``"sequential"``) and why, in one line."""

    chosen: str
    reason: str


def choose_plan(ios_seconds: float | None, sequential_seconds: float | None, *,
                same_schedule: bool, margin: float, where: str = "") -> Choice:
    """Ship the IOS plan only if it is at least ``margin`` faster than the sequential plan.

    ``same_schedule``: the search returned the sequential schedule (one plan, nothing to
    compare). Latencies of None mean the plans were not timed (no device here): the searched
    plan ships on its cost model's word.
    """
    if ios_seconds is None or sequential_seconds is None:
        return Choice("ios", "not measured (no device here); shipping the searched plan")
    if same_schedule:
        return Choice("sequential", "the search chose the sequential schedule")
    ios_ms, seq_ms = ios_seconds * 1e3, sequential_seconds * 1e3
    if ios_seconds <= sequential_seconds * (1.0 - margin):
        return Choice("ios", f"IOS {ios_ms:.3f} ms vs sequential {seq_ms:.3f} ms "
                             f"({sequential_seconds / ios_seconds:.2f}x)")
    on = f" on {where}" if where else ""
    return Choice("sequential", f"IOS {ios_ms:.3f} ms vs sequential {seq_ms:.3f} ms{on}: not "
                                f"{margin:.0%} faster; keeping sequential")
