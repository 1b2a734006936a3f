"""The zoo's networks as OpGraphs (``ios_tvm.models.opgraph``): structure, costs, merges, search."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from ios_tvm.cost import AnalyticCost
from ios_tvm.errors import UnsupportedGraphError
from ios_tvm.ir.graph import OpGraph
from ios_tvm.ir.schedule import validate_schedule
from ios_tvm.models.opgraph import (
    BENCH_GRAPHS,
    RANDWIRE_GRAPHS,
    inception_block,
    inception_v3,
    load_randwire_graph,
    nasnet_large,
    randwire,
    randwire_stage_graph,
    squeezenet,
)
from ios_tvm.scheduler.config import SearchConfig
from ios_tvm.scheduler.merge import merge_predicate, merge_problem
from ios_tvm.scheduler.partition import partition
from ios_tvm.scheduler.search import search

# name -> (kernel-granularity node range, IOS unit count, graph width, output shape at batch 1)
EXPECTED = {
    "inception_v3": ((119, 119), 119, 6, (1, 2048, 1, 1)),
    "randwire": ((280, 300), 120, 8, (1, 1280, 1, 1)),
    "nasnet_large": ((680, 720), 374, 15, (1, 3360, 1, 1)),
    "squeezenet": ((50, 50), 50, 3, (1, 1000, 1, 1)),
    "inception_block": ((9, 9), 9, 4, (1, 256, 35, 35)),
    # Not IOS benchmark networks; ResNet-50's IOS count is IOS's 86 plus the global pool.
    "resnet50": ((71, 71), 87, 2, (1, 2048, 1, 1)),
    "sample": ((5, 5), 5, 3, (1, 192, 28, 28)),
}

#: Anchor ops of the nodes (as graph extraction names them); pools among them.
POOLS = {"max_pool2d", "avg_pool2d", "mean"}
OPS = {"conv2d", "concat", "add", "identity", "relu", "sep_conv", *POOLS}


def _part_width(graph: OpGraph, lo: int, hi: int) -> int:
    """Largest antichain inside the node range (brute force over bitmasks; ranges are small)."""
    full = ((1 << hi) - 1) ^ ((1 << lo) - 1)
    reach = [(graph.descendant_masks[i] | graph.ancestor_masks[i]) & full for i in range(lo, hi)]
    best = 0

    def grow(i: int, chosen: int, size: int) -> None:
        nonlocal best
        best = max(best, size)
        for j in range(i, hi - lo):
            if not reach[j] & chosen and size + (hi - lo - j) > best:
                grow(j + 1, chosen | (1 << (lo + j)), size + 1)

    grow(0, 0, 0)
    return best


@pytest.mark.parametrize("granularity", ["kernel", "ios"])
@pytest.mark.parametrize("name", sorted(BENCH_GRAPHS))
def test_builder_gives_a_valid_graph(name: str, granularity: str) -> None:
    g = BENCH_GRAPHS[name](1, granularity)
    (lo, hi), units, width, out_shape = EXPECTED[name]
    if granularity == "kernel":
        assert lo <= len(g.nodes) <= hi
    else:
        assert len(g.nodes) == units  # the paper's #operators
    assert g.width == width
    assert [g.tensors[t].shape for t in g.outputs] == [out_shape]
    assert [g.tensors[t].kind for t in g.inputs] == ["input"]
    names = [n.name for n in g.nodes]
    assert len(set(names)) == len(names)
    for node in g.nodes:
        assert node.attrs["op"] in OPS
        assert node.attrs["kernel"] == node.kernel
        assert node.attrs["out_shape"] == list(g.tensors[node.outputs[0]].shape)
        assert node.nbytes > 0
        out = g.tensors[node.outputs[0]]
        assert len(out.shape) == 4 and out.dtype == "float32" and min(out.shape) >= 1
        read = sum(g.tensors[t].nbytes for t in node.inputs)
        assert node.nbytes == read + out.nbytes
        if node.attrs["op"] in ("conv2d", "sep_conv", *POOLS):
            assert node.flops > 0
    # A graph round-trips through JSON (attrs are plain data).
    again = OpGraph.from_json(g.to_json())
    assert [n.attrs for n in again.nodes] == [n.attrs for n in g.nodes]


def test_inception_v3_structure() -> None:
    g = inception_v3()
    ops = Counter(n.attrs["op"] for n in g.nodes)
    assert ops == {"conv2d": 94, "max_pool2d": 4, "avg_pool2d": 9, "mean": 1, "concat": 11}
    assert sum(ops[p] for p in POOLS) == 14
    # The Inception-E concat reads six branches.
    assert max(len(n.inputs) for n in g.nodes if n.attrs["op"] == "concat") == 6
    assert sum(n.flops for n in g.nodes) == pytest.approx(11.45e9, rel=0.01)


def test_conv_attrs_flops_and_bytes() -> None:
    g = inception_v3(batch=2)
    node = next(n for n in g.nodes if n.name == "Mixed_5b/branch5x5_2")
    # 48 -> 64 channels, 5x5, stride 1, padding 2, groups 1, ReLU after, nothing before.
    assert node.attrs == {
        "op": "conv2d", "kernel": "fused_conv2d_add_relu", "ops": ["conv2d", "add", "relu"],
        "relax_op": "relax.nn.conv2d", "arg_shapes": [[2, 48, 35, 35], [64, 48, 5, 5]],
        "data_layout": "NCHW", "kernel_layout": "OIHW", "out_layout": "NCHW", "out_dtype": None,
        "dilation": [1, 1], "groups": 1, "padding": [2, 2, 2, 2], "strides": [1, 1],
        "data_shape": [2, 48, 35, 35], "weight_shape": [64, 48, 5, 5],
        "out_shape": [2, 64, 35, 35]}
    assert node.kernel == "fused_conv2d_add_relu"
    assert node.inputs == ("Mixed_5b/branch5x5_1", "Mixed_5b/branch5x5_2.weight",
                           "Mixed_5b/branch5x5_2.bias")
    assert g.tensors["Mixed_5b/branch5x5_2.bias"].shape == (1, 64, 1, 1)  # as TVM imports it
    assert g.tensors[node.outputs[0]].shape == (2, 64, 35, 35)
    assert node.flops == 2 * 2 * 64 * 48 * 5 * 5 * 35 * 35
    assert node.nbytes == 4 * (2 * 48 * 35 * 35 + 64 * 48 * 25 + 64 + 2 * 64 * 35 * 35)


def test_batch_scales_activations_not_weights() -> None:
    g1, g4 = squeezenet(1), squeezenet(4)
    assert [g4.tensors[t].shape[0] for t in g4.outputs] == [4]
    for a, b in zip(g1.nodes, g4.nodes, strict=True):
        assert b.flops == pytest.approx(4 * a.flops)
        assert a.inputs == b.inputs
    w = "fire2/squeeze.weight"
    assert g1.tensors[w].shape == g4.tensors[w].shape == (16, 96, 1, 1)
    with pytest.raises(UnsupportedGraphError):
        squeezenet(0)
    with pytest.raises(UnsupportedGraphError):
        squeezenet(1, "units")


def test_nasnet_kernels_and_parts() -> None:
    g = nasnet_large()
    dw = [n for n in g.nodes if n.attrs["op"] == "conv2d" and n.attrs["groups"] > 1]
    assert dw and all(n.attrs["groups"] == n.attrs["data_shape"][1] == n.attrs["weight_shape"][0]
                      for n in dw)
    # Each depthwise conv feeds exactly its pointwise conv.
    for n in dw:
        (succ,) = g.succs[g.producer[n.outputs[0]]]
        assert g.nodes[succ].attrs["weight_shape"][2:] == [1, 1]
    # At IOS granularity, parts of at most 21 units are exactly IOS's per-cell parts.
    units = nasnet_large(granularity="ios")
    sizes = [hi - lo for lo, hi in partition(units, 21)]
    cell_sizes = [18, 16, 16, 16, 16, 16]
    assert sizes == [1, 18, 21, *cell_sizes, 19, *cell_sizes, 19, *cell_sizes, 1, 1]
    # Each part (cell) has width at most 8 (the whole graph has 15: cells overlap).
    parts = partition(g, 40)
    assert max(hi - lo for lo, hi in parts) <= 40
    lo, hi = max(parts, key=lambda p: p[1] - p[0])
    assert _part_width(g, lo, hi) <= 8


def test_randwire_stages() -> None:
    g = randwire()
    ops = Counter(n.attrs["op"] for n in g.nodes)
    # 112 separable units (dw + pw) + front and tail convs; one pool (GAP).
    assert ops["conv2d"] == 2 * 112 + 2 and sum(ops[p] for p in POOLS) == ops["mean"] == 1
    units = randwire(granularity="ios")
    assert Counter(n.attrs["op"] for n in units.nodes)["sep_conv"] == 112
    stage1 = [n for n in g.nodes if n.name.startswith("stage1/") and n.name.endswith("/dw")]
    strides = Counter(n.attrs["strides"][0] for n in stage1)
    assert strides == {2: 6, 1: 10}  # ws-16-4-0.75-2 has 6 source nodes


def test_randwire_graph_files(tmp_path) -> None:
    assert len(RANDWIRE_GRAPHS) == 4
    n, edges = load_randwire_graph("ws-16-4-0.75-2")
    assert (n, len(edges)) == (16, 32)
    for name in RANDWIRE_GRAPHS[1:]:
        n, edges = load_randwire_graph(f"{name}.txt")
        assert (n, len(edges)) == (32, 64) and all(u < v for u, v in edges)
    g = randwire_stage_graph("ws-32-4-0.75-3")
    assert len(g.nodes) == 32 and g.num_edges == 64
    path = tmp_path / "tiny.txt"
    path.write_text("3\n2\n0 1\n0 2\n")
    assert randwire_stage_graph(path).width == 2
    path.write_text("3\n2\n1 0\n")
    with pytest.raises(UnsupportedGraphError):
        load_randwire_graph(path)
    with pytest.raises(UnsupportedGraphError):
        load_randwire_graph("ws-99-nope")


def test_merge_predicate() -> None:
    # The compiler's predicate decides on the zoo graphs as on extracted kernels.
    g = inception_block()
    ids = {n.name.split("/", 1)[1]: i for i, n in enumerate(g.nodes)}
    ones = (ids["branch1x1"], ids["branch5x5_1"], ids["branch3x3dbl_1"])
    assert merge_predicate(g, ones)
    assert merge_predicate(g, ones[:2])
    assert not merge_predicate(g, ones[:1])
    pool = (ids["branch1x1"], ids["branch_pool/avgpool"])
    assert not merge_predicate(g, pool)
    assert "not conv2d or matmul" in merge_problem(g, pool)
    assert not merge_predicate(g, (ids["branch1x1"], ids["branch5x5_2"]))  # different input
    assert "read different tensors" in merge_problem(g, (ids["branch1x1"], ids["branch5x5_2"]))
    nas = nasnet_large()
    dw = [i for i, n in enumerate(nas.nodes) if n.attrs.get("groups", 1) > 1]
    assert not merge_predicate(nas, tuple(dw[:2]))
    # Two depthwise convs on one tensor (a normal cell's c1 branches on xl), and two relu_convs
    # on one tensor (a first cell's paths): IOS merges neither (Sequential units).
    nid = {n.name: i for i, n in enumerate(nas.nodes)}
    pair = (nid["cell_1/comb_iter_1_left/sep1/dw"], nid["cell_1/comb_iter_1_right/sep1/dw"])
    assert nas.nodes[pair[0]].inputs[0] == nas.nodes[pair[1]].inputs[0]
    assert not merge_predicate(nas, pair)
    paths = (nid["cell_0/path_1"], nid["cell_0/path_2"])
    assert not merge_predicate(nas, paths)
    assert "do not start with conv2d" in merge_problem(nas, paths)
    # Same-centred 1x3 and 3x1 convs on one tensor merge (into a 3x3 conv), as in IOS.
    v3 = inception_v3()
    vid = {n.name: i for i, n in enumerate(v3.nodes)}
    assert merge_predicate(v3, (vid["Mixed_7b/branch3x3_2a"], vid["Mixed_7b/branch3x3_2b"]))
    # Unlike IOS, not at batch > 1, where a channel slice of the merged output is strided.
    assert not merge_predicate(inception_block(batch=2), ones)


def test_zoo_graphs_and_merge_predicate_need_no_tvm() -> None:
    code = ("import sys\n"
            "class NoTvm:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('tvm', 'tvm_ffi'):\n"
            "            raise ImportError(f'{name} imported')\n"
            "sys.meta_path.insert(0, NoTvm())\n"
            "from ios_tvm.scheduler.merge import merge_predicate\n"
            "from ios_tvm.models import BUILTIN_MODELS\n"
            "from ios_tvm.models.opgraph import inception_block\n"
            "assert merge_predicate(inception_block(), (0, 1))\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_attrs_match_graph_extraction() -> None:
    """Every attribute of a zoo graph node has the value extraction gives the real kernel."""
    pytest.importorskip("tvm")
    from ios_tvm.compiler.extract import graph_from_model
    from ios_tvm.models._builder import OnnxBuilder
    from ios_tvm.models.inception_v3 import define_inception_block

    kw = {"channels": 16, "size": 8, "pool_features": 16}
    g = inception_block(**kw)
    real = graph_from_model(define_inception_block(OnnxBuilder("block"), **kw), "llvm").graph
    assert len(real.nodes) == len(g.nodes)
    for node in g.nodes:
        twins = [n for n in real.nodes
                 if (n.attrs["op"], n.attrs["arg_shapes"], n.attrs["out_shape"])
                 == (node.attrs["op"], node.attrs["arg_shapes"], node.attrs["out_shape"])]
        assert twins, node.name
        ours = {k: v for k, v in node.attrs.items() if k != "kernel"}  # TVM numbers kernels
        assert {k: twins[0].attrs.get(k) for k in ours} == ours, node.name
        assert [real.tensors[t].shape for t in twins[0].inputs] == \
            [g.tensors[t].shape for t in node.inputs]


def _check_search(g: OpGraph, strategy: str, max_part_size: int = 40) -> dict:
    cost = AnalyticCost(g, "v100")
    # IOS's own formulation (one DP node per graph node), so state counts match the paper's.
    cfg = SearchConfig(strategy=strategy, max_part_size=max_part_size, collapse_chains=False)
    result = search(g, cost, cfg, can_merge=merge_predicate)
    validate_schedule(g, result.schedule, max_groups=cfg.max_groups,
                      max_group_size=cfg.max_group_size)
    seq = search(g, cost, SearchConfig(strategy="sequential")).schedule.cost
    assert result.schedule.cost <= seq * (1 + 1e-12)
    assert result.schedule.cost == pytest.approx(sum(cost(s) for s in result.schedule.stages))
    return {"states": result.stats.states, "cost": result.schedule.cost, "seq": seq}


@pytest.mark.parametrize("strategy", ["concurrent", "merge", "both"])
@pytest.mark.parametrize("builder", [inception_block, squeezenet])
def test_search_small_graphs(builder, strategy: str) -> None:
    out = _check_search(builder(), strategy)
    if strategy != "merge":
        assert out["cost"] < out["seq"]


def test_search_inception_v3_matches_ios_state_count() -> None:
    out = _check_search(inception_v3(), "both")
    assert out["states"] == 1206  # brief §1.8, IOS's own count
    assert out["cost"] < out["seq"]


@pytest.mark.slow
@pytest.mark.parametrize("name,part_size,states", [("randwire", 40, 14734),
                                                    ("nasnet_large", 21, 42966)])
def test_search_large_graphs_at_ios_granularity(name: str, part_size: int, states: int) -> None:
    out = _check_search(BENCH_GRAPHS[name](granularity="ios"), "concurrent", part_size)
    assert out["states"] == states  # brief §1.8
    assert out["cost"] < out["seq"]


def test_bench_search_script(tmp_path) -> None:
    # Inception V3 has more kernels than a part holds, so the search collapses chains: its
    # groups then hold up to r units, each a chain of kernels.
    out = tmp_path / "search.json"
    script = Path(__file__).resolve().parent.parent / "scripts" / "bench_search.py"
    subprocess.run([sys.executable, str(script), "--models", "inception_v3,inception_block",
                    "--strategies", "both", "-r", "2", "-s", "3", "--timeout", "300",
                    "--out", str(out)],
                   check=True, capture_output=True)
    rows = json.loads(out.read_text())["results"]
    assert [r["model"] for r in rows] == ["inception_v3", "inception_block"]
    assert not any(r["timed_out"] for r in rows)
    assert all(r["cost"] <= r["sequential_cost"] * (1 + 1e-12) for r in rows)


def test_search_randwire_stage_dag() -> None:
    g = randwire_stage_graph("ws-16-4-0.75-2")
    cost = AnalyticCost(g, "v100")
    result = search(g, cost, SearchConfig(max_part_size=16))
    validate_schedule(g, result.schedule, max_groups=8, max_group_size=3)
    assert result.stats.parts == 1
    assert result.schedule.cost < search(g, cost, SearchConfig(strategy="sequential")).schedule.cost
