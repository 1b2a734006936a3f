"""Scheduling units: chains of kernels collapsed into one node before the search.

IOS schedules *operators* of the network (a separable conv with its ReLU is one unit), while
TVM's fusion leaves one kernel per fused group, so a ReLU-SepConv unit of RandWire or
NASNet becomes two or three kernels in a chain. The search's state space grows with the
number of nodes per part, so on wide graphs the part-size limit cuts the graph far more
often at kernel granularity than at IOS's, and stages cannot span a cut.

A *chain* is a maximal path ``v1 -> v2 -> ... -> vk`` where every ``vi`` but the last has
``v(i+1)`` as its only successor and every ``vi`` but the first has ``v(i-1)`` as its only
predecessor. Its kernels can never run concurrently with each other, and running them
back to back in one group gives up only the option of splitting the chain across stages.
:func:`collapse_chains` turns every chain into one unit; the search then runs on the unit
graph and :meth:`Units.expand` maps unit stages back to kernel stages.

Edges into a unit reach only its head and edges out leave only its tail, so numbering
units by their head kernel keeps ids a topological order, and the kernels of an expanded
group, sorted by id, are in a valid order.
"""

from __future__ import annotations

from dataclasses import dataclass

from ios_tvm.ir.graph import OpGraph
from ios_tvm.ir.schedule import Stage


@dataclass(frozen=True)
class Units:
    """The unit graph of an :class:`~ios_tvm.ir.graph.OpGraph` and each unit's kernels.

    ``members[u]`` are the kernel ids of unit ``u`` in chain order; ``unit_of[op]`` is the
    unit holding kernel ``op``.
    """

    graph: OpGraph
    members: tuple[tuple[int, ...], ...]
    unit_of: tuple[int, ...]

    @property
    def collapsed(self) -> int:
        """How many kernels the collapse removed (kernels minus units)."""
        return len(self.unit_of) - len(self.members)

    def expand(self, stage: Stage) -> Stage:
        """The kernel-level stage of a unit-level ``stage`` (groups' kernels sorted by id)."""
        return Stage(tuple(tuple(sorted(op for u in g for op in self.members[u]))
                           for g in stage.groups), stage.strategy)

    def single_kernel(self, units: tuple[int, ...]) -> tuple[int, ...] | None:
        """The kernels of ``units`` if each unit is one kernel, else None (for merging)."""
        if any(len(self.members[u]) != 1 for u in units):
            return None
        return tuple(self.members[u][0] for u in units)


def collapse_chains(graph: OpGraph) -> Units:
    """Collapse every chain of ``graph`` into one unit (see the module docstring)."""
    n = len(graph.nodes)
    preds, succs = graph.preds, graph.succs
    # v continues the chain of its only predecessor p when p has v as its only successor.
    joins_pred = [len(preds[v]) == 1 and len(succs[preds[v][0]]) == 1 for v in range(n)]
    members: list[tuple[int, ...]] = []
    unit_of = [-1] * n
    for head in range(n):
        if joins_pred[head]:
            continue
        chain = [head]
        while len(succs[chain[-1]]) == 1 and joins_pred[succs[chain[-1]][0]]:
            chain.append(succs[chain[-1]][0])
        for op in chain:
            unit_of[op] = len(members)
        members.append(tuple(chain))
    edges = sorted({(unit_of[u], unit_of[v]) for u in range(n) for v in succs[u]
                    if unit_of[u] != unit_of[v]})
    return Units(OpGraph.from_edges(len(members), edges), tuple(members), tuple(unit_of))
