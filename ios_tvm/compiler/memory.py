"""Storage planning that is safe under concurrency.

Relax's ``StaticPlanBlockMemory`` assumes one kernel at a time; reusing its plan for a
concurrent schedule would let two groups of a stage write the same buffer. Here lifetimes
are counted in *stages*: a tensor is live from the stage that writes it to the last stage
that reads it (graph outputs to the end). Two tensors may share storage only if their stage
intervals do not overlap, so nothing live in one stage ever aliases anything else live in
that stage, whichever group runs first.

One refinement: a tensor written and last read inside one group of one stage (the middle of
a chain, say) is *group-local*, live only between those two positions of the group. The ops
of a group run in order on one stream or thread, so two group-local tensors of the same
group whose position intervals do not overlap may share storage; a group-local tensor still
conflicts with every tensor of another group of its stage and with every tensor whose stage
interval covers its stage. :func:`check_storage` re-derives the lifetimes and verifies an
assignment; tests and the lowering call it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ios_tvm.errors import InternalError
from ios_tvm.ir.graph import OpGraph
from ios_tvm.ir.schedule import Schedule


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


#: A group-local lifetime: (stage, group index, first position, last position).
_Local = tuple[int, int, int, int]


def group_local_lifetimes(graph: OpGraph, schedule: Schedule) -> dict[str, _Local]:
    """The activation tensors written and last read inside one group of one stage.

    Graph outputs, tensors read in another stage or group, and tensors read through a view
    are not group-local.
    """
    where: dict[int, tuple[int, int, int]] = {}
    for si, stage in enumerate(schedule.stages):
        if stage.strategy != "concurrent":
            continue  # a merged stage is one kernel: nothing inside it to reuse
        for gi, g in enumerate(stage.groups):
            for pos, op in enumerate(g):
                where[op] = (si, gi, pos)
    outputs = {_base(graph, t) for t in graph.outputs}
    local: dict[str, _Local] = {}
    spoiled: set[str] = set(outputs)
    for op, node in enumerate(graph.nodes):
        for t in node.outputs:
            info = graph.tensors[t]
            if info.kind == "activation" and info.alias_of is None and op in where:
                si, gi, pos = where[op]
                local[t] = (si, gi, pos, pos)
    for op, node in enumerate(graph.nodes):
        for t in node.inputs:
            base = _base(graph, t)
            if base not in local:
                continue
            si, gi, first, last = local[base]
            if base != t or op not in where or where[op][:2] != (si, gi):
                spoiled.add(base)
            else:
                local[base] = (si, gi, first, max(last, where[op][2]))
    return {t: v for t, v in local.items() if t not in spoiled}


def _conflict(a: str, b: str, life: Mapping[str, tuple[int, int]],
              local: Mapping[str, _Local]) -> bool:
    """Whether tensors ``a`` and ``b`` may be live at the same time (see the module doc)."""
    la, lb = local.get(a), local.get(b)
    if la is not None and lb is not None:
        if la[:2] != lb[:2]:
            return la[0] == lb[0]  # other groups of one stage run concurrently
        return not (la[3] < lb[2] or lb[3] < la[2])
    (a0, a1), (b0, b1) = life[a], life[b]
    return not (a1 < b0 or b1 < a0)


def plan_storage(graph: OpGraph, schedule: Schedule, *, reuse: bool = True) -> StoragePlan:
    """Assign activation tensors to storages; see the module docstring for the rule.

    Tensors are placed in order of their first stage (largest first within a stage). A
    storage is free for a new tensor once every tensor in it died in an earlier stage; the
    smallest free storage that fits is taken, else the largest free one grows, else a new
    one is made. With ``reuse=False`` every tensor gets its own storage.
    """
    life = stage_lifetimes(graph, schedule)
    local = group_local_lifetimes(graph, schedule)
    # By first stage, largest first (big tensors pick storages before small ones split them).
    order = sorted(life, key=lambda t: (life[t][0], -graph.tensors[t].nbytes, t))
    sizes: list[int] = []
    members: list[list[str]] = []
    storage_of: dict[str, int] = {}
    for t in order:
        nbytes = graph.tensors[t].nbytes
        sid = -1
        if reuse:
            free = [s for s in range(len(sizes))
                    if not any(_conflict(t, u, life, local) for u in members[s])]
            fitting = [s for s in free if sizes[s] >= nbytes]
            if fitting:
                sid = min(fitting, key=lambda s: (sizes[s], s))
            elif free:
                sid = max(free, key=lambda s: (sizes[s], -s))
        if sid < 0:
            sid = len(sizes)
            sizes.append(0)
            members.append([])
        sizes[sid] = max(sizes[sid], nbytes)
        members[sid].append(t)
        storage_of[t] = sid
    plan = StoragePlan(storage_of, tuple(sizes), life)
    check_storage(graph, schedule, plan)
    return plan


def check_storage(graph: OpGraph, schedule: Schedule, plan: StoragePlan) -> None:
    """Check a storage plan against the schedule's stage lifetimes.

    Raises if two tensors sharing a storage may ever be live at the same time (the rule of
    the module docstring), or if a storage is smaller than a tensor placed in it.
    """
    life = stage_lifetimes(graph, schedule)
    local = group_local_lifetimes(graph, schedule)
    missing = set(life) - set(plan.storage_of)
    if missing:
        raise InternalError(f"storage plan misses tensor(s) {sorted(missing)[:5]}")
    by_storage: dict[int, list[str]] = {}
    for t, sid in plan.storage_of.items():
        if not 0 <= sid < len(plan.storage_nbytes):
            raise InternalError(f"tensor {t!r} is placed in unknown storage {sid}")
        if plan.storage_nbytes[sid] < graph.tensors[t].nbytes:
            raise InternalError(f"tensor {t!r} ({graph.tensors[t].nbytes} B) does not fit storage "
                                f"{sid} ({plan.storage_nbytes[sid]} B)")
        by_storage.setdefault(sid, []).append(t)
    for sid, tensors in by_storage.items():
        for i, ta in enumerate(tensors):
            for tb in tensors[i + 1:]:
                if _conflict(ta, tb, life, local):
                    raise InternalError(
                        f"tensors {ta!r} ({_describe(ta, life, local)}) and {tb!r} "
                        f"({_describe(tb, life, local)}) share storage {sid} while both may "
                        "be live")


def _describe(t: str, life: Mapping[str, tuple[int, int]], local: Mapping[str, _Local]) -> str:
    if t in local:
        si, gi, first, last = local[t]
        return f"stage {si} group {gi} ops {first}-{last}"
    return f"stages {life[t][0]}-{life[t][1]}"


def peak_bytes(graph: OpGraph, schedules: Sequence[Schedule]) -> list[int]:
    """Planned activation bytes of each schedule (for comparing a plan to sequential)."""
    return [plan_storage(graph, s).total_nbytes for s in schedules]
