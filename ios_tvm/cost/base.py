"""What a measured cost model is handed: a stage profiler, and how stages are timed.

The compiler side implements :class:`StageProfiler` (a local executor,
:class:`~ios_tvm.compiler.profiling.LocalProfiler`, or remote devices,
:class:`~ios_tvm.cost.rpc.RPCProfiler`); :class:`~ios_tvm.cost.measured.MeasuredCost` only
calls it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class StageProfiler(Protocol):
    """Runs one candidate stage (groups of call ids) and returns seconds per run per repeat."""

    def profile(self, groups: Sequence[Sequence[int]]) -> list[float]:
        """Seconds per run of the stage, one value per repeat."""
        ...


@dataclass
class ProfileSettings:
    """How each stage is timed (IOS used warmup 2, number 6, repeat 6)."""

    warmup: int = 2
    number: int = 6
    repeat: int = 6
