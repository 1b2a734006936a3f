"""NASNet-A Large as in the IOS benchmark (``nasnet_large(stem_filters=96, filters=168)``).

Topology (IOS ``models/nasnet.py``), with F = 168:

stem conv(96, 3x3, s2, p0), no activation -> 96x165x165; cell_stem_0 (F/4) -> 168x83x83;
cell_stem_1 (F/2) -> 336x42x42; [first cell, normal x5] at F (42x42); reduction (2F);
[first, normal x5] at 2F (21x21); reduction (4F); [first, normal x5] at 4F (11x11); ReLU;
global average pool -> ``y`` of shape ``(batch, 3360, 1, 1)`` (5 x 4F).

Units: ``relu_conv`` = ReLU -> conv (no activation); ``sep(k, s)`` = ReLU -> depthwise kxk
stride s -> pointwise 1x1 (no activations); ``branch(x, out, k, s)`` = sep(k, s) to the input's
channels then sep(k, 1) to ``out`` (``branch_stem``: both to ``out``). Sums are ``Add`` nodes
in ONNX; in IOS's units c0 and c1 of the stem and reduction cells and stem1's right path are
``Identity`` units of their own (``add``), the other sums fold into their consumer's input
(``lazy_sum``). A cell reads ``x`` (previous cell) and ``x_prev`` (the one before):

* normal(L, R): xl = relu_conv(x_prev, L), xr = relu_conv(x, R); c0 = branch5(xr) +
  branch3(xl); c1 = branch5(xl) + branch3(xl); c2 = avg3(xr) + xl; c3 = avg3(xl) + avg3(xl);
  c4 = branch3(xr) + xr; out = concat(c0..c4) (5R channels);
* first(L, R): xl = concat(relu_conv(x_prev, L, s2), relu_conv(x_prev, L, s2)) (2L = R
  channels), xr = relu_conv(x, R); the combinations of the normal cell except that c0 =
  branch5(xr) + branch3(**xr**), as in IOS's code; out = concat(xl, c0..c4) (6R channels).
  The first cell after a reduction reads the cell two back as ``x_prev``;
* reduction(L, R): xl, xr as in the normal cell; c0 = branch5s2(xr) + branch7s2(xl);
  c1 = max3s2(xr) + branch7s2(xl); c2 = avg3s2(xr) + branch5s2(xl); c3 = avg3(c0) + c1;
  c4 = branch3(c0) + max3s2(xr); out = concat(max3s2(xr) + branch7s2(xl), c2, c3, c4)
  (4R channels): as in IOS's code, the concat sums c1's two terms again instead of reading
  c1 (the same values; one more sum);
* cell_stem_0(F/4) on the stem output h: x1 = relu_conv(h); like a reduction cell with x1 for
  xr and ``branch_stem`` on h for the xl branches, but c3 = avg3(c0) + c0 and the concat
  reads c1;
* cell_stem_1(F/2) on (cell_stem_0, h): xl = relu_conv(cell_stem_0), xr = relu_conv(h, s2) +
  relu_conv(h, s2) (F/4 channels); then a reduction cell whose concat reads c1.

488 convolutions; 374 IOS units. Pools are 3x3 with padding 1.

IOS deviations from the reference NASNet that are kept: the normal
cell's concat has five terms (the reference also concatenates xl, hence "4032"); cell_stem_0's
c3 adds c0 (reference: c1); cell_stem_1's right path sums its two strided 1x1 convs
(reference: concatenates them after a one-pixel shift); the first cell's c0 and the reduction
cell's concat as above (IOS's ``models/nasnet.py``; the reference NASNet applies the first
cell's branch3 to xl and reuses c1). No BatchNorm, no factorised reduction paths or asymmetric
padding, no classifier.

Choice where IOS's code is silent: average pools exclude the padding
(``count_include_pad=0``), as in the reference NASNet.
"""

from __future__ import annotations

from typing import Any

import onnx

from ios_tvm.models._builder import NetBuilder, NetValue, OnnxBuilder

__all__ = ["define_nasnet_large", "nasnet_large"]


def _avg(b: NetBuilder, x: NetValue, stride: int, name: str) -> NetValue:
    return b.avg_pool(x, 3, stride, 1, count_include_pad=False, name=name)


def _branch(b: NetBuilder, x: NetValue, out: int, kernel: int, stride: int, name: str,
            stem: bool = False) -> NetValue:
    """Two separable units; the first keeps the input channels (goes to ``out`` if ``stem``)."""
    mid = out if stem else x.channels
    y = b.sep_conv(x, mid, kernel, stride, name=f"{name}/sep1")
    return b.sep_conv(y, out, kernel, 1, name=f"{name}/sep2")


def _reduction_body(b: NetBuilder, xl: NetValue, xr: NetValue, out: int, *,
                    stem0: bool = False, stem1: bool = False) -> NetValue:
    """A reduction cell after its input convs (the stems differ as the module docstring says)."""
    c0l = _branch(b, xr, out, 5, 2, "comb_iter_0_left")
    c0r = _branch(b, xl, out, 7, 2, "comb_iter_0_right", stem=stem0)
    c0 = b.add([c0l, c0r], name="comb_iter_0")
    c1l = b.max_pool(xr, 3, 2, 1, name="comb_iter_1_left")
    c1r = _branch(b, xl, out, 7, 2, "comb_iter_1_right", stem=stem0)
    c1 = b.add([c1l, c1r], name="comb_iter_1")
    c2l = _avg(b, xr, 2, "comb_iter_2_left")
    c2r = _branch(b, xl, out, 5, 2, "comb_iter_2_right", stem=stem0)
    c2 = b.lazy_sum([c2l, c2r], name="comb_iter_2")
    c3r = _avg(b, c0, 1, "comb_iter_3_right")
    c3 = b.lazy_sum([c3r, c0 if stem0 else c1], name="comb_iter_3")
    c4l = _branch(b, c0, out, 3, 1, "comb_iter_4_left")
    c4r = b.max_pool(xr, 3, 2, 1, name="comb_iter_4_right")
    c4 = b.lazy_sum([c4l, c4r], name="comb_iter_4")
    first = c1 if stem0 or stem1 else b.lazy_sum([c1l, c1r], name="comb_iter_1_out")
    return b.concat([first, c2, c3, c4])


def _stem0(b: NetBuilder, h: NetValue, f: int) -> NetValue:
    x1 = b.relu_conv(h, f, name="conv_1x1")
    # x1 plays the right input, the stem output h the left one (through branch_stem).
    return _reduction_body(b, h, x1, f, stem0=True)


def _stem1(b: NetBuilder, x: NetValue, h: NetValue, f: int) -> NetValue:
    xl = b.relu_conv(x, f, name="conv_1x1")
    xr1 = b.relu_conv(h, f // 2, stride=2, name="path_1")
    xr2 = b.relu_conv(h, f // 2, stride=2, name="path_2")
    xr = b.add([xr1, xr2], name="final_path")
    # Roles swap with respect to a reduction cell: xl (from cell_stem_0) feeds the branches that
    # read the right input there (branch5 of c0, the pools), the summed paths the others.
    return _reduction_body(b, xr, xl, f, stem1=True)


def _combinations(b: NetBuilder, xl: NetValue, xr: NetValue, first: bool) -> list[NetValue]:
    """c0..c4 of the normal and the first cell (every branch keeps its input's channels)."""
    c0l = _branch(b, xr, xr.channels, 5, 1, "comb_iter_0_left")
    c0r_in = xr if first else xl
    c0r = _branch(b, c0r_in, c0r_in.channels, 3, 1, "comb_iter_0_right")
    c0 = b.lazy_sum([c0l, c0r], name="comb_iter_0")
    c1l = _branch(b, xl, xl.channels, 5, 1, "comb_iter_1_left")
    c1r = _branch(b, xl, xl.channels, 3, 1, "comb_iter_1_right")
    c1 = b.lazy_sum([c1l, c1r], name="comb_iter_1")
    c2l = _avg(b, xr, 1, "comb_iter_2_left")
    c2 = b.lazy_sum([c2l, xl], name="comb_iter_2")
    c3l = _avg(b, xl, 1, "comb_iter_3_left")
    c3r = _avg(b, xl, 1, "comb_iter_3_right")
    c3 = b.lazy_sum([c3l, c3r], name="comb_iter_3")
    c4l = _branch(b, xr, xr.channels, 3, 1, "comb_iter_4_left")
    c4 = b.lazy_sum([c4l, xr], name="comb_iter_4")
    return [c0, c1, c2, c3, c4]


def _first(b: NetBuilder, x: NetValue, x_prev: NetValue, left: int, right: int) -> NetValue:
    xl1 = b.relu_conv(x_prev, left, stride=2, name="path_1")
    xl2 = b.relu_conv(x_prev, left, stride=2, name="path_2")
    xl = b.concat([xl1, xl2], name="final_path")
    xr = b.relu_conv(x, right, name="conv_1x1")
    return b.concat([xl, *_combinations(b, xl, xr, first=True)])


def _normal(b: NetBuilder, x: NetValue, x_prev: NetValue, left: int, right: int) -> NetValue:
    xl = b.relu_conv(x_prev, left, name="conv_prev_1x1")
    xr = b.relu_conv(x, right, name="conv_1x1")
    return b.concat(_combinations(b, xl, xr, first=False))


def _reduction(b: NetBuilder, x: NetValue, x_prev: NetValue, left: int,
               right: int) -> NetValue:
    xl = b.relu_conv(x_prev, left, name="conv_prev_1x1")
    xr = b.relu_conv(x, right, name="conv_1x1")
    return _reduction_body(b, xl, xr, right)


def nasnet_large(batch: int = 1, seed: int = 0, stem_filters: int = 96,
                 filters: int = 168) -> onnx.ModelProto:
    """Build IOS's NASNet-A Large (331x331 input) as an ONNX model.

    Parameters
    ----------
    batch
        Batch size of the input ``x`` of shape ``(batch, 3, 331, 331)``.
    seed
        Seed of the deterministic random weights.
    stem_filters, filters
        Channels of the stem conv and the cell width F (must be divisible by 4).

    Returns
    -------
    onnx.ModelProto
        Input ``x``, output ``y`` of shape ``(batch, 20 * filters, 1, 1)``
        (``(batch, 3360, 1, 1)`` by default).
    """
    return define_nasnet_large(OnnxBuilder("nasnet_large", seed), batch, stem_filters, filters)


def define_nasnet_large(b: NetBuilder, batch: int = 1, stem_filters: int = 96,
                        filters: int = 168) -> Any:
    """Define NASNet-A Large on ``b`` (see :func:`nasnet_large`); returns ``b.finish(y)``."""
    if filters % 4:
        raise ValueError(f"filters must be divisible by 4, got {filters}")
    f = filters
    x0 = b.input(batch, 3, 331, 331)
    with b.scope("conv0"):
        h = b.conv(x0, stem_filters, 3, stride=2, act=None, name="conv")  # 165
    with b.scope("cell_stem_0"):
        s0 = _stem0(b, h, f // 4)  # 4 * F/4 = F channels, 83
    with b.scope("cell_stem_1"):
        s1 = _stem1(b, s0, h, f // 2)  # 4 * F/2 = 2F channels, 42
    outs = [s0, s1]
    cell = 0
    for stage, mult in enumerate((1, 2, 4)):
        if stage > 0:
            with b.scope(f"reduction_cell_{stage - 1}"):
                red = _reduction(b, outs[-1], outs[-2], mult * f, mult * f)
            prev = outs[-2]  # the first cell after a reduction reads the cell two back
            outs.append(red)
        else:
            prev = outs[-2]
        with b.scope(f"cell_{cell}"):
            outs.append(_first(b, outs[-1], prev, mult * f // 2, mult * f))
        cell += 1
        for _ in range(5):
            with b.scope(f"cell_{cell}"):
                outs.append(_normal(b, outs[-1], outs[-2], mult * f, mult * f))
            cell += 1
    x = b.relu(outs[-1], name="relu")
    y = b.global_avg_pool(x, name="avgpool")
    return b.finish(y)
