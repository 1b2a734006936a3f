"""Cutting large graphs into parts that the schedule search handles one at a time.

A part is a contiguous range of node ids. Because ids are a topological order, every
prefix is predecessor-closed, so running the parts' schedules one after another is valid.
Cuts go where few tensors cross them: a cut crossed by the output of one node only is a
block boundary (the end of an Inception module, a residual add), and cutting there loses
little concurrency. Graphs no larger than ``max_part_size`` are not cut at all, so the
search stays exact on them.
"""

from __future__ import annotations

from ios_tvm.ir.graph import OpGraph


def cut_widths(graph: OpGraph) -> list[int]:
    """``widths[i]`` = number of nodes before position ``i`` that feed a node at or after ``i``.

    ``widths[0]`` is 0; a width of 1 means the graph narrows to a single tensor there.
    """
    n = len(graph.nodes)
    delta = [0] * (n + 1)
    for u, succs in enumerate(graph.succs):
        if succs:
            # u crosses every cut position in (u, last consumer].
            delta[u + 1] += 1
            delta[succs[-1] + 1] -= 1
    widths = []
    running = 0
    for i in range(n):
        running += delta[i]
        widths.append(running)
    return widths


def partition(graph: OpGraph, max_part_size: int) -> list[tuple[int, int]]:
    """Split ``graph`` into node ranges ``[lo, hi)`` of at most ``max_part_size`` nodes.

    The cuts minimise the summed excess width (width minus one) over cuts; among equally
    narrow choices the one with more cuts wins, so every block boundary inside a large graph
    becomes a cut and parts stay small.
    """
    if not isinstance(max_part_size, int) or max_part_size < 1:
        raise ValueError(f"max_part_size must be a positive integer, got {max_part_size!r}")
    n = len(graph.nodes)
    if n == 0:
        return []
    if n <= max_part_size:
        return [(0, n)]
    widths = cut_widths(graph)
    inf = (float("inf"), 0)
    # best[i] = (penalty, -cuts) of the best partition of nodes [0, i) ending with a cut at i.
    best: list[tuple[float, int]] = [inf] * (n + 1)
    back = [0] * (n + 1)
    best[0] = (0.0, 0)
    for i in range(1, n + 1):
        penalty_here = 0 if i == n else max(widths[i] - 1, 0)
        for j in range(max(0, i - max_part_size), i):
            if best[j] == inf:
                continue
            cand = (best[j][0] + penalty_here, best[j][1] - (0 if i == n else 1))
            if cand < best[i]:
                best[i] = cand
                back[i] = j
    parts = []
    i = n
    while i > 0:
        parts.append((back[i], i))
        i = back[i]
    return parts[::-1]
