"""Schedules: stages, run one after another, of groups of ops that run concurrently.

A :class:`Schedule` is the search's output and the lowering's input. A stage either runs its
groups concurrently (one stream or worker thread per group, ops of a group in order) or
merges its ops into one kernel. :func:`validate_schedule` checks a schedule against a graph
and names the first violation it finds.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ios_tvm.errors import ScheduleError
from ios_tvm.ir.graph import OpGraph

STRATEGIES = ("concurrent", "merge")
SCHEDULE_FORMAT = "ios_tvm.Schedule"
SCHEDULE_VERSION = 1


@dataclass(frozen=True, slots=True)
class Stage:
    """One stage: groups of op ids and how they run.

    For ``strategy == "concurrent"`` each group runs on its own stream, its ops in order.
    For ``strategy == "merge"`` the stage has one group whose ops become one merged kernel.
    """

    groups: tuple[tuple[int, ...], ...]
    strategy: str = "concurrent"

    @property
    def ops(self) -> tuple[int, ...]:
        """All op ids of the stage, ascending."""
        return tuple(sorted(op for g in self.groups for op in g))

    @property
    def mask(self) -> int:
        """Bitmask of the stage's ops."""
        m = 0
        for g in self.groups:
            for op in g:
                m |= 1 << op
        return m

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {"strategy": self.strategy, "groups": [list(g) for g in self.groups]}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Stage:
        """Inverse of :meth:`to_json`."""
        groups = tuple(tuple(int(op) for op in g) for g in d["groups"])
        return cls(groups, d.get("strategy", "concurrent"))


@dataclass(frozen=True)
class Schedule:
    """An ordered list of stages covering every op of a graph exactly once.

    ``cost`` is the search's estimate in seconds (sum of stage costs), if known; ``meta``
    holds free-form provenance (strategy, limits, cost model, graph size).
    """

    stages: tuple[Stage, ...]
    cost: float | None = None
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __len__(self) -> int:
        return len(self.stages)

    @property
    def num_ops(self) -> int:
        """Number of ops scheduled."""
        return sum(len(g) for s in self.stages for g in s.groups)

    @property
    def max_groups(self) -> int:
        """The largest number of groups in any stage (streams needed)."""
        return max((len(s.groups) for s in self.stages), default=0)

    def summary(self) -> str:
        """A one-line description, e.g. ``"41 stages (12 concurrent, 2 merged), max 4 groups"``."""
        conc = sum(1 for s in self.stages if s.strategy == "concurrent" and len(s.groups) > 1)
        merged = sum(1 for s in self.stages if s.strategy == "merge")
        text = (f"{len(self.stages)} stages ({conc} concurrent, {merged} merged), "
                f"max {self.max_groups} groups")
        if self.cost is not None:
            text += f", cost {self.cost * 1e3:.3f} ms"
        return text

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {"format": SCHEDULE_FORMAT, "version": SCHEDULE_VERSION, "cost": self.cost,
                "meta": dict(self.meta), "stages": [s.to_json() for s in self.stages]}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Schedule:
        """Inverse of :meth:`to_json`; rejects other formats and newer versions."""
        if not isinstance(d, Mapping) or d.get("format") != SCHEDULE_FORMAT:
            raise ScheduleError(f"not an {SCHEDULE_FORMAT} document")
        version = d.get("version")
        if not isinstance(version, int) or version > SCHEDULE_VERSION:
            raise ScheduleError(f"schedule version {version!r} is not supported by this ios-tvm "
                                f"(it reads versions <= {SCHEDULE_VERSION})")
        try:
            stages = tuple(Stage.from_json(s) for s in d["stages"])
        except (KeyError, TypeError, ValueError) as e:
            raise ScheduleError(f"malformed schedule stage: {e}") from e
        return cls(stages, d.get("cost"), d.get("meta", {}))

    def dumps(self, **kw: Any) -> str:
        """Serialise to a JSON string."""
        return json.dumps(self.to_json(), **kw)

    @classmethod
    def loads(cls, text: str) -> Schedule:
        """Parse a JSON string written by :meth:`dumps`."""
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ScheduleError(f"schedule is not valid JSON: {e}") from e
        return cls.from_json(d)


def make_schedule(stages: Iterable[Stage | Sequence[Sequence[int]]], cost: float | None = None,
                  **meta: Any) -> Schedule:
    """Build a :class:`Schedule` from stages or plain nested lists of op ids."""
    out = []
    for s in stages:
        if isinstance(s, Stage):
            out.append(s)
        else:
            out.append(Stage(tuple(tuple(g) for g in s)))
    return Schedule(tuple(out), cost, meta)


def validate_schedule(graph: OpGraph, schedule: Schedule, *, max_groups: int | None = None,
                      max_group_size: int | None = None) -> None:
    """Check that ``schedule`` is a valid schedule of ``graph``; raise ScheduleError if not.

    Rules: every op appears exactly once; each group lists its ops in id (topological)
    order; an op's predecessors run in an earlier stage or earlier in the same group; no
    group of a stage depends on another group of that stage; merge stages have one group
    of at least two ops; the limits, when given, hold for concurrent stages.
    """
    n = len(graph.nodes)
    stage_of = [-1] * n
    group_of = [-1] * n
    for si, stage in enumerate(schedule.stages):
        if stage.strategy not in STRATEGIES:
            raise ScheduleError(f"stage {si}: unknown strategy {stage.strategy!r} "
                                f"(expected one of {', '.join(STRATEGIES)})")
        if not stage.groups or any(not g for g in stage.groups):
            raise ScheduleError(f"stage {si}: empty stage or empty group")
        if stage.strategy == "merge" and (len(stage.groups) != 1 or len(stage.groups[0]) < 2):
            raise ScheduleError(f"stage {si}: a merge stage must be one group of >= 2 ops")
        if stage.strategy == "concurrent":
            if max_groups is not None and len(stage.groups) > max_groups:
                raise ScheduleError(f"stage {si}: {len(stage.groups)} groups exceed the limit "
                                    f"of {max_groups}")
            for g in stage.groups:
                if max_group_size is not None and len(g) > max_group_size:
                    raise ScheduleError(f"stage {si}: group {list(g)} has {len(g)} ops, more "
                                        f"than the limit of {max_group_size}")
        for gi, group in enumerate(stage.groups):
            if list(group) != sorted(group):
                raise ScheduleError(f"stage {si}: group {list(group)} is not in topological order")
            for op in group:
                if not (isinstance(op, int) and 0 <= op < n):
                    raise ScheduleError(f"stage {si}: op {op!r} is not a node of the graph "
                                        f"(0..{n - 1})")
                if stage_of[op] >= 0:
                    raise ScheduleError(f"op {op} ({graph.nodes[op].name}) is scheduled twice "
                                        f"(stages {stage_of[op]} and {si})")
                stage_of[op] = si
                group_of[op] = gi
    missing = [i for i in range(n) if stage_of[i] < 0]
    if missing:
        names = ", ".join(f"{i} ({graph.nodes[i].name})" for i in missing[:5])
        raise ScheduleError(f"{len(missing)} op(s) not scheduled: {names}")
    for v in range(n):
        for u in graph.preds[v]:
            if stage_of[u] > stage_of[v]:
                raise ScheduleError(
                    f"op {v} ({graph.nodes[v].name}) in stage {stage_of[v]} runs before its input "
                    f"op {u} ({graph.nodes[u].name}) in stage {stage_of[u]}")
            if stage_of[u] == stage_of[v]:
                stage = schedule.stages[stage_of[v]]
                if stage.strategy == "merge":
                    raise ScheduleError(f"stage {stage_of[v]}: merged ops {u} and {v} depend on "
                                        "each other")
                if group_of[u] != group_of[v]:
                    raise ScheduleError(
                        f"stage {stage_of[v]}: op {v} ({graph.nodes[v].name}) depends on op {u} "
                        f"({graph.nodes[u].name}) in another group of the same stage")
