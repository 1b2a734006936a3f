"""RandWire-WS (regular regime, C = 154) as in the IOS benchmark (IOS brief §3.2).

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
the exit sums, tail 3).

Follows IOS where it differs from the RandWire paper: plain sums instead of sigmoid-weighted
ones, a sum (not an average) at the stage output, no BatchNorm, no classifier.
"""

from __future__ import annotations

from importlib import resources

import onnx

from ._builder import OnnxBuilder, Tensor

__all__ = ["RANDWIRE_GRAPHS", "randwire", "read_randwire_graph"]

#: Graph files of the four random stages, in stage order.
RANDWIRE_GRAPHS = ("ws-16-4-0.75-2", "ws-32-4-0.75-3", "ws-32-4-0.75-4", "ws-32-4-0.75-5")


def read_randwire_graph(name: str) -> tuple[int, list[tuple[int, int]]]:
    """Read a shipped RandWire graph file.

    Parameters
    ----------
    name
        File name without ``.txt``, e.g. ``"ws-16-4-0.75-2"``.

    Returns
    -------
    tuple[int, list[tuple[int, int]]]
        The node count ``n`` and the edges ``(u, v)`` in file order, ``u < v``.
    """
    res = resources.files(__package__).joinpath("randwire_graphs", f"{name}.txt")
    tokens = res.read_text(encoding="utf-8").split()
    n, m = int(tokens[0]), int(tokens[1])
    vals = [int(t) for t in tokens[2:2 + 2 * m]]
    if len(vals) != 2 * m:
        raise ValueError(f"RandWire graph {name}: expected {m} edges, found {len(vals) // 2}")
    edges = list(zip(vals[0::2], vals[1::2], strict=True))
    for u, v in edges:
        if not 0 <= u < v < n:
            raise ValueError(f"RandWire graph {name}: bad edge ({u}, {v}) for n = {n}")
    return n, edges


def _stage(b: OnnxBuilder, x: Tensor, channels: int, graph: str) -> Tensor:
    n, edges = read_randwire_graph(graph)
    indeg = [0] * n
    outs: list[list[int]] = [[] for _ in range(n)]
    ins: list[list[int]] = [[] for _ in range(n)]
    for u, v in edges:
        indeg[v] += 1
        outs[u].append(v)
        ins[v].append(u)
    out: list[Tensor | None] = [None] * n
    stack = [u for u in range(n) if indeg[u] == 0]
    while stack:
        u = stack.pop()
        if ins[u]:
            preds = [out[p] for p in ins[u]]
            src = b.add([p for p in preds if p is not None], name=f"node{u}/in")
            out[u] = b.sep_conv(src, channels, 3, 1, name=f"node{u}")
        else:
            out[u] = b.sep_conv(x, channels, 3, 2, name=f"node{u}")
        for v in outs[u]:
            indeg[v] -= 1
            if indeg[v] == 0:
                stack.append(v)
    sinks = [t for u, t in enumerate(out) if not outs[u] and t is not None]
    return b.add(sinks, name="exit")


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
    c = 154
    b = OnnxBuilder("randwire", seed)
    x = b.input(batch, 3, 224, 224)
    with b.scope("front"):
        x = b.conv(x, c // 2, 3, stride=2, pad=1, act=None, name="conv")  # 77 x 112 x 112
    for i, graph in enumerate(RANDWIRE_GRAPHS):
        with b.scope(f"stage{i + 1}"):
            x = _stage(b, x, c * 2 ** i, graph)
    with b.scope("tail"):
        x = b.relu(x)
        x = b.conv(x, 1280, 1, act=None, name="conv")
        y = b.global_avg_pool(x, name="avgpool")
    return b.finish(y)
