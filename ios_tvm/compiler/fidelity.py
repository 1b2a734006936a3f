"""Fidelity of a cost model: the latency it predicts for a plan against the plan's measured run.

A plan's predicted latency is the sum of its stages' costs (what the search minimised); its
measured latency is the median whole run. :func:`fidelity` puts them side by side with the
relative error ``(predicted - measured) / measured`` (> 0: the model is pessimistic).
:func:`stages_in_plan` times each stage inside real runs of a plan (the executor's
``profile_run``), which tells where a prediction goes wrong: a stage that costs more in the
plan than alone (cold caches after another stage, thread-pool wake-up, the barrier) or less.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any


def fidelity(predicted_stage_seconds: Mapping[str, Sequence[float]],
             measured_seconds: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """Per plan: ``predicted_ms`` (sum of stage costs), ``measured_ms`` and ``rel_error``.

    Plans without a measurement are left out.
    """
    out: dict[str, dict[str, float]] = {}
    for plan, stages in predicted_stage_seconds.items():
        measured = measured_seconds.get(plan)
        if measured is None or measured <= 0:
            continue
        predicted = float(sum(stages))
        out[plan] = {"predicted_ms": predicted * 1e3, "measured_ms": float(measured) * 1e3,
                     "rel_error": (predicted - measured) / measured}
    return out


def stages_in_plan(executor: Any, *, warmup: int = 3, repeat: int = 20) -> dict[str, Any]:
    """Median seconds of each stage inside whole runs of ``executor``'s plan, and of the run.

    Returns ``{"stage_seconds": [...], "run_seconds": s, "sum_of_stages": s}`` (medians over
    ``repeat`` runs; the run's time minus the sum is what lies between stages).
    """
    rows = executor.profile_run(warmup=warmup, repeat=repeat)
    stages = [statistics.median(r[i] for r in rows) for i in range(len(rows[0]) - 1)]
    return {"stage_seconds": stages, "run_seconds": statistics.median(r[-1] for r in rows),
            "sum_of_stages": sum(stages)}
