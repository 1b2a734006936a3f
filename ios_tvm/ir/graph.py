"""The operator graph: one node per fused kernel call, edges from the tensors they pass.

This is the scheduler's view of a model, free of TVM objects so that the search, the cost
models and most tests run without the compiler. :func:`ios_tvm.compiler.extract.extract_graph`
builds
it from a fused Relax function; :meth:`OpGraph.from_edges` builds it from a plain edge list.

Node ids are a topological order (every edge goes from a lower to a higher id). Views
(reshapes that TVM lowers to a memory view, no kernel) are not nodes: a view's output tensor
records ``alias_of`` and consumers of the view depend on the producer of its base.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from ios_tvm.errors import UnsupportedGraphError

#: Bytes per element of the dtypes TVM models use.
_DTYPE_BYTES = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1,
    "float8_e5m2": 1, "int64": 8, "int32": 4, "int16": 2, "int8": 1, "uint8": 1,
    "uint16": 2, "uint32": 4, "uint64": 8, "bool": 1,
}
TENSOR_KINDS = ("input", "param", "const", "activation")


def dtype_bytes(dtype: str) -> int:
    """Return the size in bytes of one element of ``dtype``."""
    try:
        return _DTYPE_BYTES[dtype]
    except KeyError:
        raise UnsupportedGraphError(f"unknown dtype {dtype!r}") from None


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """A tensor of the graph: a model input, a weight, a constant or an activation."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    kind: str = "activation"
    #: For a view: the tensor whose storage it shares (no kernel produces it).
    alias_of: str | None = None
    #: For a view: where its bytes start in the base tensor (e.g. a channel slice of a merged
    #: kernel's output; see :mod:`ios_tvm.scheduler.merge`).
    offset: int = 0

    @property
    def nbytes(self) -> int:
        """Size of the tensor in bytes."""
        n = dtype_bytes(self.dtype)
        for d in self.shape:
            n *= d
        return n

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        d: dict[str, Any] = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype,
                             "kind": self.kind}
        if self.alias_of is not None:
            d["alias_of"] = self.alias_of
        if self.offset:
            d["offset"] = self.offset
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> TensorInfo:
        """Inverse of :meth:`to_json`."""
        return cls(d["name"], tuple(int(x) for x in d["shape"]), d["dtype"], d["kind"],
                   d.get("alias_of"), int(d.get("offset", 0)))


@dataclass(frozen=True, slots=True)
class OpNode:
    """One fused kernel call.

    ``flops`` and ``nbytes`` (bytes read plus written) are estimates for the analytic cost
    model. ``attrs`` carries what a merge predicate needs (e.g. ``{"op": "conv2d", ...}``).
    """

    name: str
    kernel: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    flops: float = 0.0
    nbytes: int = 0
    attrs: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {"name": self.name, "kernel": self.kernel, "inputs": list(self.inputs),
                "outputs": list(self.outputs), "flops": self.flops, "nbytes": self.nbytes,
                "attrs": dict(self.attrs)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> OpNode:
        """Inverse of :meth:`to_json`."""
        return cls(d["name"], d["kernel"], tuple(d["inputs"]), tuple(d["outputs"]),
                   float(d.get("flops", 0.0)), int(d.get("nbytes", 0)), dict(d.get("attrs", {})))


class OpGraph:
    """A DAG of kernel calls whose node ids are a topological order.

    Parameters
    ----------
    nodes
        The kernel calls, in a topological order (a node reads only tensors that are graph
        inputs, params, constants, views, or outputs of earlier nodes).
    tensors
        Every tensor any node reads or writes, by name.
    inputs, outputs
        Names of the graph's inputs and outputs (outputs may be views or inputs).
    """

    __slots__ = ("nodes", "tensors", "inputs", "outputs", "producer", "preds", "succs",
                 "__dict__")

    def __init__(self, nodes: Sequence[OpNode], tensors: Mapping[str, TensorInfo],
                 inputs: Sequence[str] = (), outputs: Sequence[str] = ()) -> None:
        self.nodes: tuple[OpNode, ...] = tuple(nodes)
        self.tensors: dict[str, TensorInfo] = dict(tensors)
        self.inputs: tuple[str, ...] = tuple(inputs)
        self.outputs: tuple[str, ...] = tuple(outputs)
        self.producer: dict[str, int] = {}
        for i, node in enumerate(self.nodes):
            for t in node.outputs:
                if t not in self.tensors:
                    raise UnsupportedGraphError(f"node {node.name!r} writes unknown tensor {t!r}")
                if t in self.producer:
                    other = self.nodes[self.producer[t]].name
                    raise UnsupportedGraphError(
                        f"tensor {t!r} is written by both {other!r} and {node.name!r}")
                self.producer[t] = i
        preds: list[list[int]] = [[] for _ in self.nodes]
        succs: list[list[int]] = [[] for _ in self.nodes]
        for i, node in enumerate(self.nodes):
            for t in node.inputs:
                p = self.source_node(t)
                if p is None:
                    continue
                if p >= i:
                    raise UnsupportedGraphError(
                        f"node {node.name!r} (id {i}) reads {t!r} produced by "
                        f"{self.nodes[p].name!r} (id {p}); node ids must be a topological order")
                if p not in preds[i]:
                    preds[i].append(p)
                    succs[p].append(i)
        self.preds: tuple[tuple[int, ...], ...] = tuple(tuple(sorted(p)) for p in preds)
        self.succs: tuple[tuple[int, ...], ...] = tuple(tuple(sorted(s)) for s in succs)
        for t in (*self.inputs, *self.outputs):
            if t not in self.tensors:
                raise UnsupportedGraphError(f"graph input/output {t!r} is not a known tensor")

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_edges(cls, n: int, edges: Iterable[tuple[int, int]], *,
                   names: Sequence[str] | None = None,
                   flops: Sequence[float] | None = None,
                   shape: tuple[int, ...] = (1, 64, 28, 28)) -> OpGraph:
        """Build a graph of ``n`` nodes from edges ``(u, v)`` meaning v reads u's output.

        Each node writes one tensor ``t{i}`` of ``shape``; sources read the graph input ``x``;
        sinks are the graph outputs. Edges must go from a lower to a higher id.
        """
        pred_lists: list[list[int]] = [[] for _ in range(n)]
        for u, v in edges:
            if not (0 <= u < n and 0 <= v < n):
                raise UnsupportedGraphError(f"edge ({u}, {v}) names a node outside 0..{n - 1}")
            if u >= v:
                raise UnsupportedGraphError(
                    f"edge ({u}, {v}) does not go from a lower to a higher id; "
                    "number the nodes in a topological order")
            if u not in pred_lists[v]:
                pred_lists[v].append(u)
        names = list(names) if names is not None else [f"op{i}" for i in range(n)]
        tensors = {"x": TensorInfo("x", shape, kind="input")}
        nodes = []
        has_succ = [False] * n
        for v in range(n):
            for u in pred_lists[v]:
                has_succ[u] = True
        elem = TensorInfo("x", shape).nbytes
        for i in range(n):
            tensors[f"t{i}"] = TensorInfo(f"t{i}", shape)
            ins = tuple(f"t{u}" for u in sorted(pred_lists[i])) or ("x",)
            f = float(flops[i]) if flops is not None else 2.0 * elem
            nodes.append(OpNode(names[i], "kernel", ins, (f"t{i}",), f, elem * (len(ins) + 1)))
        outs = [f"t{i}" for i in range(n) if not has_succ[i]]
        return cls(nodes, tensors, ["x"], outs)

    # -- queries ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.nodes)

    def __repr__(self) -> str:
        return f"OpGraph({len(self.nodes)} nodes, {self.num_edges} edges, width {self.width})"

    def source_node(self, tensor: str) -> int | None:
        """Return the node whose kernel writes ``tensor`` (following views), or None."""
        seen = 0
        while True:
            if tensor in self.producer:
                return self.producer[tensor]
            info = self.tensors.get(tensor)
            if info is None:
                raise UnsupportedGraphError(f"reference to unknown tensor {tensor!r}")
            if info.alias_of is None:
                return None
            tensor = info.alias_of
            seen += 1
            if seen > len(self.tensors):
                raise UnsupportedGraphError(f"view cycle through tensor {tensor!r}")

    @property
    def edges(self) -> list[tuple[int, int]]:
        """All edges ``(u, v)``, sorted."""
        return [(u, v) for v, ps in enumerate(self.preds) for u in ps]

    @property
    def num_edges(self) -> int:
        """Number of node-to-node edges."""
        return sum(len(p) for p in self.preds)

    @cached_property
    def pred_masks(self) -> tuple[int, ...]:
        """Bitmask of each node's direct predecessors."""
        return tuple(sum(1 << u for u in ps) for ps in self.preds)

    @cached_property
    def succ_masks(self) -> tuple[int, ...]:
        """Bitmask of each node's direct successors."""
        return tuple(sum(1 << v for v in ss) for ss in self.succs)

    @cached_property
    def ancestor_masks(self) -> tuple[int, ...]:
        """Bitmask of each node's (strict) ancestors."""
        anc = [0] * len(self.nodes)
        for v, ps in enumerate(self.preds):
            m = 0
            for u in ps:
                m |= anc[u] | (1 << u)
            anc[v] = m
        return tuple(anc)

    @cached_property
    def descendant_masks(self) -> tuple[int, ...]:
        """Bitmask of each node's (strict) descendants."""
        desc = [0] * len(self.nodes)
        for u in range(len(self.nodes) - 1, -1, -1):
            m = 0
            for v in self.succs[u]:
                m |= desc[v] | (1 << v)
            desc[u] = m
        return tuple(desc)

    @cached_property
    def width(self) -> int:
        """Size of a maximum antichain (the most ops that could ever run at once)."""
        return self.range_width(0, len(self.nodes))

    def range_width(self, lo: int, hi: int) -> int:
        """Size of a maximum antichain among the nodes ``lo .. hi - 1``.

        Computed by Dilworth's theorem as the range's size minus a maximum matching in its
        reachability bipartite graph (reachability through nodes outside the range counts).
        """
        n = hi - lo
        full = ((1 << hi) - 1) ^ ((1 << lo) - 1)
        desc = [(self.descendant_masks[lo + i] & full) >> lo for i in range(n)]
        match_of_right = [-1] * n

        def augment(u: int, seen: list[bool]) -> bool:
            m = desc[u]
            while m:
                low = m & -m
                v = low.bit_length() - 1
                m ^= low
                if not seen[v]:
                    seen[v] = True
                    if match_of_right[v] < 0 or augment(match_of_right[v], seen):
                        match_of_right[v] = u
                        return True
            return False

        return n - sum(augment(u, [False] * n) for u in range(n))

    def subgraph_nodes(self, mask: int) -> list[int]:
        """Ids of the nodes in ``mask``, ascending."""
        return [i for i in range(len(self.nodes)) if mask >> i & 1]

    # -- serialisation ---------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict (see :meth:`from_json`)."""
        return {"format": "ios_tvm.OpGraph", "version": 1,
                "nodes": [n.to_json() for n in self.nodes],
                "tensors": [t.to_json() for t in self.tensors.values()],
                "inputs": list(self.inputs), "outputs": list(self.outputs)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> OpGraph:
        """Build a graph from :meth:`to_json` output."""
        if d.get("format") != "ios_tvm.OpGraph":
            raise UnsupportedGraphError(
                f"not an ios_tvm.OpGraph document (format={d.get('format')!r})")
        tensors = {t["name"]: TensorInfo.from_json(t) for t in d["tensors"]}
        return cls([OpNode.from_json(n) for n in d["nodes"]], tensors, d["inputs"], d["outputs"])

    def dumps(self) -> str:
        """Serialise to a JSON string."""
        return json.dumps(self.to_json())
