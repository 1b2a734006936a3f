"""OpGraph construction, derived relations, errors and JSON round trip."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ios_tvm import OpGraph, OpNode, TensorInfo, UnsupportedGraphError
from ios_tvm.scheduler.partition import cut_widths, partition


def test_from_edges_relations():
    g = OpGraph.from_edges(5, [(0, 1), (0, 2), (1, 3), (2, 3), (3, 4)])
    assert g.preds == ((), (0,), (0,), (1, 2), (3,))
    assert g.succs == ((1, 2), (3,), (3,), (4,), ())
    assert g.descendant_masks[0] == 0b11110 and g.ancestor_masks[4] == 0b01111
    assert g.width == 2 and g.num_edges == 5
    assert g.outputs == ("t4",) and g.inputs == ("x",)


@given(st.integers(1, 8), st.data())
def test_width_is_the_largest_antichain(n, data):
    edges = [(u, v) for v in range(n) for u in range(v) if data.draw(st.booleans())]
    g = OpGraph.from_edges(n, edges)
    reach = g.descendant_masks
    lo = data.draw(st.integers(0, n - 1))
    hi = data.draw(st.integers(lo + 1, n))
    best = best_range = 0
    for mask in range(1, 1 << n):
        ops = [i for i in range(n) if mask >> i & 1]
        if all(not (reach[a] >> b & 1) for a in ops for b in ops):
            best = max(best, len(ops))
            if all(lo <= i < hi for i in ops):
                best_range = max(best_range, len(ops))
    assert g.width == best
    assert g.range_width(lo, hi) == best_range


def test_views_are_not_nodes():
    tensors = {
        "x": TensorInfo("x", (1, 8), kind="input"),
        "w": TensorInfo("w", (8, 8), kind="const"),
        "a": TensorInfo("a", (1, 8)),
        "a_view": TensorInfo("a_view", (2, 4), alias_of="a"),
        "b": TensorInfo("b", (2, 4)),
    }
    nodes = [OpNode("mm", "matmul", ("x", "w"), ("a",)),
             OpNode("relu", "relu", ("a_view",), ("b",))]
    g = OpGraph(nodes, tensors, ["x"], ["b", "a_view"])
    assert g.preds == ((), (0,))
    assert g.source_node("a_view") == 0 and g.source_node("w") is None
    assert tensors["a_view"].nbytes == 32


@pytest.mark.parametrize(
    ("edges", "message"),
    [
        ([(1, 0)], r"edge \(1, 0\) does not go from a lower to a higher id"),
        ([(0, 5)], r"edge \(0, 5\) names a node outside 0..2"),
    ],
)
def test_from_edges_errors(edges, message):
    with pytest.raises(UnsupportedGraphError, match=message):
        OpGraph.from_edges(3, edges)


def test_constructor_errors():
    t = {"x": TensorInfo("x", (1,), kind="input"), "y": TensorInfo("y", (1,))}
    with pytest.raises(UnsupportedGraphError, match="written by both 'a' and 'b'"):
        OpGraph([OpNode("a", "k", ("x",), ("y",)), OpNode("b", "k", ("x",), ("y",))], t)
    with pytest.raises(UnsupportedGraphError, match="node ids must be a topological order"):
        OpGraph([OpNode("a", "k", ("z",), ("x",)), OpNode("b", "k", ("y",), ("z",))],
                {**t, "z": TensorInfo("z", (1,))})
    with pytest.raises(UnsupportedGraphError, match="unknown tensor 'q'"):
        OpGraph([OpNode("a", "k", ("q",), ("y",))], t)
    with pytest.raises(UnsupportedGraphError, match="unknown dtype 'float7'"):
        TensorInfo("x", (1,), "float7").nbytes  # noqa: B018


def test_json_round_trip():
    g = OpGraph.from_edges(4, [(0, 1), (0, 2), (1, 3), (2, 3)], flops=[1, 2, 3, 4])
    back = OpGraph.from_json(g.to_json())
    assert back.nodes == g.nodes and back.tensors == g.tensors and back.preds == g.preds
    with pytest.raises(UnsupportedGraphError, match="not an ios_tvm.OpGraph document"):
        OpGraph.from_json({"format": "x"})


def test_cut_widths_and_partition():
    # 0 -> {1, 2} -> 3 -> {4, 5} -> 6
    g = OpGraph.from_edges(7, [(0, 1), (0, 2), (1, 3), (2, 3), (3, 4), (3, 5), (4, 6), (5, 6)])
    assert cut_widths(g) == [0, 1, 2, 2, 1, 2, 2]
    assert partition(g, 7) == [(0, 7)]
    parts = partition(g, 4)
    assert parts[0][0] == 0 and parts[-1][1] == 7
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:], strict=False))
    cuts = [lo for lo, _ in parts[1:]]
    assert all(cut_widths(g)[c] == 1 for c in cuts)
    assert all(hi - lo <= 4 for lo, hi in parts)
