"""Storage planning that is safe under concurrency.

Relax's ``StaticPlanBlockMemory`` assumes one kernel at a time; reusing its plan for a
concurrent schedule would let two groups of a stage write the same buffer. Here lifetimes
are counted in *stages*: a tensor is live from the stage that writes it to the last stage
that reads it (graph outputs to the end). Two tensors may share storage only if their stage
intervals do not overlap, so nothing live in one stage ever aliases anything else live in
that stage, whichever group runs first. :func:`check_storage` re-derives the lifetimes and
verifies an assignment; tests and the lowering call it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .errors import IosTvmError
from .graph import OpGraph
from .schedule import Schedule


@dataclass(frozen=True)
class StoragePlan:
    """Activation storages and which tensor lives in which.

    ``storage_of`` maps every activation tensor (not views, inputs, params or constants)
    to a storage id; ``storage_nbytes[i]`` is the size of storage ``i``.
    """

    storage_of: Mapping[str, int]
    storage_nbytes: tuple[int, ...]
    lifetimes: Mapping[str, tuple[int, int]]

    @property
    def total_nbytes(self) -> int:
        """Bytes of activation memory the plan allocates (its peak)."""
        return sum(self.storage_nbytes)


def _base(graph: OpGraph, name: str) -> str:
    while (alias := graph.tensors[name].alias_of) is not None:
        name = alias
    return name


def stage_lifetimes(graph: OpGraph, schedule: Schedule) -> dict[str, tuple[int, int]]:
    """First and last stage index in which each activation tensor is live.

    A view keeps its base alive; graph outputs stay live to the last stage.
    """
    stage_of = [0] * len(graph.nodes)
    for si, stage in enumerate(schedule.stages):
        for g in stage.groups:
            for op in g:
                stage_of[op] = si
    end = max(len(schedule.stages) - 1, 0)
    life: dict[str, list[int]] = {}
    for op, node in enumerate(graph.nodes):
        for t in node.outputs:
            if graph.tensors[t].kind == "activation" and graph.tensors[t].alias_of is None:
                life[t] = [stage_of[op], stage_of[op]]
    for op, node in enumerate(graph.nodes):
        for t in node.inputs:
            base = _base(graph, t)
            if base in life:
                life[base][1] = max(life[base][1], stage_of[op])
    for t in graph.outputs:
        base = _base(graph, t)
        if base in life:
            life[base][1] = end
    return {t: (a, b) for t, (a, b) in life.items()}


def plan_storage(graph: OpGraph, schedule: Schedule, *, reuse: bool = True) -> StoragePlan:
    """Assign activation tensors to storages; see the module docstring for the rule.

    Tensors are placed in order of their first stage (largest first within a stage). A
    storage is free for a new tensor once every tensor in it died in an earlier stage; the
    smallest free storage that fits is taken, else the largest free one grows, else a new
    one is made. With ``reuse=False`` every tensor gets its own storage.
    """
    life = stage_lifetimes(graph, schedule)
    order = sorted(life, key=lambda t: (life[t][0], -graph.tensors[t].nbytes, t))
    sizes: list[int] = []
    free_after: list[int] = []  # last stage in which the storage is still in use
    storage_of: dict[str, int] = {}
    for t in order:
        start, stop = life[t]
        nbytes = graph.tensors[t].nbytes
        sid = -1
        if reuse:
            free = [s for s in range(len(sizes)) if free_after[s] < start]
            fitting = [s for s in free if sizes[s] >= nbytes]
            if fitting:
                sid = min(fitting, key=lambda s: (sizes[s], s))
            elif free:
                sid = max(free, key=lambda s: (sizes[s], -s))
        if sid < 0:
            sid = len(sizes)
            sizes.append(0)
            free_after.append(-1)
        sizes[sid] = max(sizes[sid], nbytes)
        free_after[sid] = stop
        storage_of[t] = sid
    plan = StoragePlan(storage_of, tuple(sizes), life)
    check_storage(graph, schedule, plan)
    return plan


def check_storage(graph: OpGraph, schedule: Schedule, plan: StoragePlan) -> None:
    """Check a storage plan against the schedule's stage lifetimes.

    Raises if two tensors sharing a storage are ever live in the same stage, or if a storage
    is smaller than a tensor placed in it.
    """
    life = stage_lifetimes(graph, schedule)
    missing = set(life) - set(plan.storage_of)
    if missing:
        raise IosTvmError(f"storage plan misses tensor(s) {sorted(missing)[:5]}")
    by_storage: dict[int, list[str]] = {}
    for t, sid in plan.storage_of.items():
        if not 0 <= sid < len(plan.storage_nbytes):
            raise IosTvmError(f"tensor {t!r} is placed in unknown storage {sid}")
        if plan.storage_nbytes[sid] < graph.tensors[t].nbytes:
            raise IosTvmError(f"tensor {t!r} ({graph.tensors[t].nbytes} B) does not fit storage "
                              f"{sid} ({plan.storage_nbytes[sid]} B)")
        by_storage.setdefault(sid, []).append(t)
    for sid, tensors in by_storage.items():
        spans = sorted((life[t][0], life[t][1], t) for t in tensors)
        a0, a1, ta = spans[0]
        for b0, b1, tb in spans[1:]:
            if b0 <= a1:
                raise IosTvmError(f"tensors {ta!r} (stages {a0}-{a1}) and {tb!r} (from stage {b0}) "
                                  f"share storage {sid} while both are live")
            if b1 > a1:
                a0, a1, ta = b0, b1, tb


def peak_bytes(graph: OpGraph, schedules: Sequence[Schedule]) -> list[int]:
    """Planned activation bytes of each schedule (for comparing a plan to sequential)."""
    return [plan_storage(graph, s).total_nbytes for s in schedules]
