"""RandWire-WS (regular regime, C = 154) as in the IOS benchmark (IOS ``models/randwire.py``).

Topology:

* front: conv(77, 3x3, s2, p1), no activation -> 77x112x112;
* four random stages with C, 2C, 4C, 8C = 154/308/616/1232 channels at 56/28/14/7, wired by
  the Watts-Strogatz graphs ``ws-16-4-0.75-2`` (stage 1) and ``ws-32-4-0.75-{3,4,5}``
  (stages 2-4) shipped in ``ios_tvm/models/randwire_graphs/`` (IOS's files, unchanged);
* tail: ReLU -> conv(1280, 1x1), no activation -> global average pool -> ``y`` of shape
  ``(batch, 1280, 1, 1)``.

In a stage, every graph node is one separable unit ReLU -> depthwise 3x3 (pad 1; stride 2 for
a node without predecessors, else 1) -> pointwise 1x1 to the stage's channels, neither conv
with an activation. A source node reads the stage input; any other node reads the plain sum of
its predecessors' outputs (in edge-file order); the stage output is the plain sum of the sink
nodes' outputs (in index order). Nodes are created in Kahn order with a LIFO stack, as IOS
does, which fixes the order of the ONNX nodes and of the weight draws.

226 convolutions (1 + 2 x 112 + 1); 120 IOS units (front 1, stages 17 + 33 x 3 including
the exit sums, tail 3): a node's input sum folds into its unit (``lazy_sum``), the exit sum
is an ``Identity`` unit of its own (``add``).

Follows IOS where it differs from the RandWire paper: plain sums instead of sigmoid-weighted
ones, a sum (not an average) at the stage output, no BatchNorm, no classifier.
"""

from __future__ import annotations

import os
from importlib import resources
from typing import Any

import onnx

from ios_tvm.errors import UnsupportedGraphError
from ios_tvm.models._builder import NetBuilder, NetValue, OnnxBuilder

__all__ = ["RANDWIRE_GRAPHS", "define_randwire", "load_randwire_graph", "randwire"]

#: Graph files of the four random stages, in stage order.
RANDWIRE_GRAPHS = ("ws-16-4-0.75-2", "ws-32-4-0.75-3", "ws-32-4-0.75-4", "ws-32-4-0.75-5")


def load_randwire_graph(path: str | os.PathLike[str]) -> tuple[int, list[tuple[int, int]]]:
    """Read a RandWire graph file: node count and edges ``(u, v)`` with ``u < v``.

    The format is IOS's: the node count ``n``, the edge count ``m``, then ``m`` pairs ``u v``.

    Parameters
    ----------
    path
        A file path, or the name of a shipped graph (e.g. ``"ws-16-4-0.75-2"``, with or without
        ``.txt``; see :data:`RANDWIRE_GRAPHS`).

    Returns
    -------
    tuple of int and list of tuple of int
        ``(n, edges)``, the edges in file order.

    Raises
    ------
    UnsupportedGraphError
        No such shipped graph, or a malformed file (named in the message).
    """
    name = os.fspath(path)
    if os.path.sep not in name and not os.path.exists(name):
        fname = name if name.endswith(".txt") else f"{name}.txt"
        res = resources.files(__package__).joinpath("randwire_graphs", fname)
        if not res.is_file():
            raise UnsupportedGraphError(f"no packaged RandWire graph {name!r}; packaged: "
                                        f"{', '.join(RANDWIRE_GRAPHS)}")
        text = res.read_text(encoding="utf-8")
    else:
        with open(name, encoding="utf-8") as f:
            text = f.read()
    tokens = text.split()
    try:
        n, m = int(tokens[0]), int(tokens[1])
        nums = [int(t) for t in tokens[2:2 + 2 * m]]
    except (IndexError, ValueError) as e:
        raise UnsupportedGraphError(f"malformed RandWire graph file {name!r}: {e}") from None
    if len(nums) != 2 * m:
        raise UnsupportedGraphError(f"RandWire graph file {name!r} lists fewer than {m} edges")
    edges = list(zip(nums[0::2], nums[1::2], strict=True))
    for u, v in edges:
        if not 0 <= u < v < n:
            raise UnsupportedGraphError(f"RandWire graph file {name!r}: bad edge ({u}, {v}) "
                                        f"for n = {n}")
    return n, edges


def _stage(b: NetBuilder, x: NetValue, channels: int, graph: str) -> NetValue:
    n, edges = load_randwire_graph(graph)
    indeg = [0] * n
    outs: list[list[int]] = [[] for _ in range(n)]
    ins: list[list[int]] = [[] for _ in range(n)]
    for u, v in edges:
        indeg[v] += 1
        outs[u].append(v)
        ins[v].append(u)
    out: list[Any] = [None] * n
    stack = [u for u in range(n) if indeg[u] == 0]
    while stack:
        u = stack.pop()
        if ins[u]:
            src = b.lazy_sum([out[p] for p in ins[u]], name=f"node{u}/in")
            out[u] = b.sep_conv(src, channels, 3, 1, name=f"node{u}")
        else:
            out[u] = b.sep_conv(x, channels, 3, 2, name=f"node{u}")
        for v in outs[u]:
            indeg[v] -= 1
            if indeg[v] == 0:
                stack.append(v)
    return b.add([out[u] for u in range(n) if not outs[u]], name="exit")


def randwire(batch: int = 1, seed: int = 0) -> onnx.ModelProto:
    """Build IOS's RandWire-WS large network (224x224 input) as an ONNX model.

    Parameters
    ----------
    batch
        Batch size of the input ``x`` of shape ``(batch, 3, 224, 224)``.
    seed
        Seed of the deterministic random weights.

    Returns
    -------
    onnx.ModelProto
        Input ``x``, output ``y`` of shape ``(batch, 1280, 1, 1)``.
    """
    return define_randwire(OnnxBuilder("randwire", seed), batch)


def define_randwire(b: NetBuilder, batch: int = 1, channels: int = 154) -> Any:
    """Define RandWire-WS with C = ``channels`` on ``b``; returns ``b.finish(y)``."""
    x = b.input(batch, 3, 224, 224)
    with b.scope("front"):
        x = b.conv(x, channels // 2, 3, stride=2, pad=1, act=None, name="conv")  # 77x112x112
    for i, graph in enumerate(RANDWIRE_GRAPHS):
        with b.scope(f"stage{i + 1}"):
            x = _stage(b, x, channels * 2 ** i, graph)
    with b.scope("tail"):
        x = b.relu(x)
        x = b.conv(x, 1280, 1, act=None, name="conv")
        y = b.global_avg_pool(x, name="avgpool")
    return b.finish(y)
