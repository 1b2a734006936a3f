"""IOS-Merge: several convolutions (or matmuls) that read one tensor become one kernel.

IOS's second strategy (Ding et al., MLSys 2021, §5). Convs
that read the same tensor with the same stride and dilation, ``groups == 1`` and
*same-centred* padding compute exactly what one conv computes whose kernel is every kernel
zero-padded to the largest size (centred) and whose output channels are all of theirs,
concatenated. Each conv's bias rides along (concatenated, zeros where a conv has none) and
the activation, which must be the same for all, is applied once. Matmuls ``x @ W_i (+ b_i)``
that share ``x`` merge likewise by concatenating the ``W_i`` columns (the idea of Relax's
``CombineParallelMatmul``, but chosen by the search).

Consumers of each original kernel read its channel slice of the merged output. At batch 1
that slice is contiguous, so it is a *view* with a byte offset (plan version 2): no split
kernel, no copy. TVM kernels assume 64-byte aligned arguments (LLVM emits aligned vector
loads), so every slice must start at a multiple of 64 bytes; merges whose slices would not,
and merges at batch > 1 (where a channel slice is strided), are rejected.

This module decides which ops may merge and what the merged op computes (:class:`MergeSpec`);
:func:`merge_predicate` is the search's ``can_merge``. :mod:`ios_tvm.compiler.merge` builds
the merged kernels and weights and rewrites the graph for the plan.

Conservative on purpose: only kernels whose fused op list is understood are merged, i.e.
``conv2d`` / ``matmul`` optionally followed by ``add`` of a per-channel constant (the bias)
and optionally by ``relu``, ``sigmoid`` or ``tanh``. Anything else (a residual add fused into
the conv, a clip whose bounds are not recorded, grouped convs, other layouts) is left alone.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ios_tvm.errors import MergeError
from ios_tvm.ir.graph import OpGraph, TensorInfo, dtype_bytes

#: Slices of the merged output must start at multiples of this many bytes (TVM's
#: ``kAllocAlignment``; the same as :data:`ios_tvm.ir.plan.VIEW_ALIGNMENT`).
MERGE_ALIGNMENT = 64
#: Anchor ops that merge.
MERGE_KINDS = ("conv2d", "matmul")
#: Element-wise activations a merged kernel applies once to all channels.
ACTIVATIONS = ("relu", "sigmoid", "tanh")
#: Prefix of merged kernels' names (and of the tensors a merge adds to the graph).
MERGED_KERNEL_PREFIX = "ios_merge"


# --------------------------------------------------------------------------------------------
# analysis (pure Python)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MergeMember:
    """One original kernel as a merge sees it.

    Attributes
    ----------
    node
        Its node id.
    kind
        ``"conv2d"`` or ``"matmul"``.
    data, weight, bias, output
        Tensor names: the input it shares, its weight and bias (None without one), its output.
    act
        Its activation (one of :data:`ACTIVATIONS`) or None.
    channels
        Output channels (conv) or features (matmul).
    kernel
        Kernel ``(kh, kw)`` (conv).
    padding
        ``(top, left, bottom, right)`` (conv).
    strides, dilation
        Conv strides and dilation.
    """

    node: int
    kind: str
    data: str
    weight: str
    bias: str | None
    output: str
    act: str | None
    channels: int
    kernel: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    strides: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)


def _ints(value: Any, n: int) -> tuple[int, ...] | None:
    """``value`` as a tuple of n ints (an int or a 1-/n-list broadcast), else None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,) * n
    if isinstance(value, Sequence) and not isinstance(value, str):
        try:
            vals = tuple(int(v) for v in value)
        except (TypeError, ValueError):
            return None
        if len(vals) == 1:
            return vals * n
        return vals if len(vals) == n else None
    return None


def _epilogue(ops: Sequence[str], anchor: str) -> tuple[bool, str | None] | str:
    """``(has_bias_add, activation)`` for ``anchor [add] [act]``, else a reason."""
    ops = list(ops)
    if not ops or ops[0] != anchor:
        return f"its fused ops {ops} do not start with {anchor}"
    rest = ops[1:]
    has_add = bool(rest) and rest[0] == "add"
    if has_add:
        rest = rest[1:]
    act = None
    if rest and rest[0] in ACTIVATIONS:
        act = rest[0]
        rest = rest[1:]
    if rest:
        return (f"its fused ops {ops} are not {anchor} [+ add] [+ "
                f"{'|'.join(ACTIVATIONS)}]")
    return has_add, act


def _is_weight(info: TensorInfo) -> bool:
    return info.kind in ("const", "param") and info.alias_of is None


def _is_bias(shape: tuple[int, ...], channels: int, axis: int, rank: int) -> bool:
    """Whether ``shape`` broadcasts to ``rank`` dims as one value per channel on ``axis``."""
    if len(shape) > rank:
        return False
    full = (1,) * (rank - len(shape)) + tuple(shape)
    return all(d == 1 for i, d in enumerate(full) if i != axis) and full[axis] in (1, channels)


def merge_member(graph: OpGraph, op: int) -> MergeMember | str:
    """How node ``op`` would take part in a merge, or the reason it cannot.

    Parameters
    ----------
    graph
        The operator graph (its node attrs come from
        :func:`ios_tvm.compiler.extract.extract_graph`).
    op
        A node id.

    Returns
    -------
    MergeMember or str
        The member, or a sentence saying why the node is not mergeable.
    """
    node = graph.nodes[op]
    attrs = node.attrs
    kind = attrs.get("op")
    if kind not in MERGE_KINDS:
        return f"it is a {kind or 'unknown'} kernel, not {' or '.join(MERGE_KINDS)}"
    if attrs.get("relax_op") != f"relax.{'nn.' if kind == 'conv2d' else ''}{kind}":
        return "its anchor op was not recorded by lower_to_kernels"
    epi = _epilogue(attrs.get("ops", []), kind)
    if isinstance(epi, str):
        return epi
    has_add, act = epi
    if len(node.outputs) != 1:
        return "it has several outputs"
    out = graph.tensors[node.outputs[0]]
    out_dtype = attrs.get("out_dtype")
    if out_dtype not in (None, "", "void", out.dtype):
        return f"its out_dtype {out_dtype} differs from its output's dtype"
    if not out.dtype.startswith(("float", "bfloat")):
        return f"its output dtype {out.dtype} is not a float type"
    if list(out.shape) != list(attrs.get("out_shape") or []):
        return "its output shape does not match the recorded op"
    arg_shapes = attrs.get("arg_shapes") or []
    if len(arg_shapes) < 2 or not all(isinstance(s, list) for s in arg_shapes[:2]):
        return "its argument shapes were not recorded"
    data_shape, weight_shape = tuple(arg_shapes[0]), tuple(arg_shapes[1])
    if kind == "conv2d":
        if (attrs.get("data_layout"), attrs.get("kernel_layout")) != ("NCHW", "OIHW") or \
                attrs.get("out_layout") not in (None, "", "NCHW"):
            return "it is not an NCHW/OIHW conv"
        if attrs.get("groups") != 1:
            return f"it is a grouped conv (groups={attrs.get('groups')})"
        if len(data_shape) != 4 or len(weight_shape) != 4 or weight_shape[1] != data_shape[1]:
            return "its data/weight shapes are not those of a 2-D conv"
        channels, axis, rank = weight_shape[0], 1, 4
    else:
        if len(weight_shape) != 2 or len(data_shape) < 1 or data_shape[-1] != weight_shape[0]:
            return "it is not a matmul with a 2-D weight"
        channels, axis, rank = weight_shape[1], len(out.shape) - 1, len(out.shape)
    if out.shape[0] != 1 or math.prod(out.shape[:axis]) != 1:
        return (f"its output {out.shape} has more than one row/batch, so a channel slice of a "
                "merged output would not be contiguous")
    # Identify the arguments by shape and kind; anything unexpected means "do not merge".
    if len(node.inputs) != 2 + int(has_add) or len(set(node.inputs)) != len(node.inputs):
        return f"it takes {len(node.inputs)} arguments, not data, weight{', bias' * has_add}"
    infos = [graph.tensors[t] for t in node.inputs]
    data = [t for t, i in zip(node.inputs, infos, strict=True)
            if i.shape == data_shape and not _is_weight(i)]
    weight = [t for t, i in zip(node.inputs, infos, strict=True)
              if i.shape == weight_shape and _is_weight(i)]
    if len(data) != 1 or len(weight) != 1:
        return "its data and weight arguments cannot be told apart"
    bias = None
    if has_add:
        (bias,) = [t for t in node.inputs if t not in (data[0], weight[0])]
        binfo = graph.tensors[bias]
        if not _is_weight(binfo) or not _is_bias(binfo.shape, channels, axis, rank):
            return (f"its fused add is not a per-channel bias (operand {bias!r} of shape "
                    f"{binfo.shape})")
    if any(graph.tensors[t].dtype != out.dtype for t in (data[0], weight[0], *([bias] * has_add))):
        return "its arguments have different dtypes"
    if kind == "matmul":
        return MergeMember(op, kind, data[0], weight[0], bias, node.outputs[0], act, channels)
    raw = attrs.get("padding")
    if isinstance(raw, Sequence) and len(raw) == 2:  # (h, w): the same on both sides
        raw = [*raw, *raw]
    padding = _ints(raw, 4)
    strides = _ints(attrs.get("strides"), 2)
    dilation = _ints(attrs.get("dilation"), 2)
    if padding is None or strides is None or dilation is None:
        return "its padding, strides or dilation were not recorded"
    return MergeMember(op, kind, data[0], weight[0], bias, node.outputs[0], act, channels,
                       (weight_shape[2], weight_shape[3]), padding,  # type: ignore[arg-type]
                       strides, dilation)  # type: ignore[arg-type]


@dataclass(frozen=True)
class MergeSpec:
    """What one merged kernel computes (pure data; see the module docstring).

    Attributes
    ----------
    kind
        ``"conv2d"`` or ``"matmul"``.
    ops
        The merged node ids, ascending: the order of their slices in the merged output.
    members
        One :class:`MergeMember` per op.
    data, data_shape, dtype
        The shared input tensor, its shape and the dtype of everything.
    out_shape
        Shape of the merged output (channels of all members, in op order).
    kernel, padding, strides, dilation
        The merged conv's kernel size ``(Kh, Kw)``, padding ``(top, left, bottom, right)``,
        strides and dilation (conv only).
    act
        The activation applied once, or None.
    has_bias
        Whether any member has a bias (the others get zeros).
    channel_starts
        First channel of each member's slice.
    offsets
        Byte offset of each member's slice in the merged output.
    """

    kind: str
    ops: tuple[int, ...]
    members: tuple[MergeMember, ...]
    data: str
    data_shape: tuple[int, ...]
    dtype: str
    out_shape: tuple[int, ...]
    kernel: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    strides: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    act: str | None = None
    has_bias: bool = False
    channel_starts: tuple[int, ...] = ()
    offsets: tuple[int, ...] = ()

    @property
    def channels(self) -> int:
        """Output channels (features) of the merged kernel."""
        return sum(m.channels for m in self.members)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """``(C, Cin, Kh, Kw)`` for a conv, ``(K, N)`` for a matmul."""
        if self.kind == "conv2d":
            return (self.channels, self.data_shape[1], *self.kernel)
        return (self.data_shape[-1], self.channels)

    @property
    def bias_shape(self) -> tuple[int, ...]:
        """``(1, C, 1, 1)`` for a conv, ``(N,)`` for a matmul."""
        return (1, self.channels, 1, 1) if self.kind == "conv2d" else (self.channels,)

    @property
    def signature(self) -> str:
        """Everything the merged kernel's code depends on (not the weights), as JSON."""
        return json.dumps({"kind": self.kind, "data": list(self.data_shape),
                           "weight": list(self.weight_shape), "dtype": self.dtype,
                           "padding": list(self.padding), "strides": list(self.strides),
                           "dilation": list(self.dilation), "act": self.act,
                           "bias": self.has_bias}, sort_keys=True)

    @property
    def kernel_name(self) -> str:
        """The merged kernel's global symbol: equal specs share one compiled kernel."""
        digest = hashlib.sha1(self.signature.encode()).hexdigest()[:12]
        return f"{MERGED_KERNEL_PREFIX}_{self.kind}_{digest}"


def merge_problem(graph: OpGraph, ops: Sequence[int]) -> str | None:
    """Why ``ops`` cannot become one merged kernel, or None if they can.

    The rules (all must hold): at least two distinct ops; each is a mergeable conv2d or
    matmul (:func:`merge_member`); all of one kind, reading the same tensor; none depends on
    another; the same activation; for convs the same strides and dilation, the same output
    size and *same-centred* padding, i.e. every kernel zero-padded to the largest ``(Kh, Kw)``
    with its taps centred (``(Kh - kh)`` even) needs the same padding ``P`` on each side:
    ``p_i + (Kh - kh_i) / 2 * dilation == P``; batch (rows) 1; every slice of the merged
    output starts at a multiple of :data:`MERGE_ALIGNMENT` bytes.
    """
    spec = _spec_or_reason(graph, ops)
    return spec if isinstance(spec, str) else None


def merge_spec(graph: OpGraph, ops: Sequence[int]) -> MergeSpec:
    """The :class:`MergeSpec` of merging ``ops``; raises :class:`MergeError` with the reason."""
    spec = _spec_or_reason(graph, ops)
    if isinstance(spec, str):
        raise MergeError(f"ops {sorted(ops)} cannot be merged: {spec}")
    return spec


def _spec_or_reason(graph: OpGraph, ops: Sequence[int]) -> MergeSpec | str:
    ops = tuple(sorted(int(o) for o in ops))
    if len(ops) < 2 or len(set(ops)) != len(ops):
        return "a merge needs at least two distinct ops"
    if not all(0 <= o < len(graph.nodes) for o in ops):
        return "an op is not a node of the graph"
    members = []
    for o in ops:
        m = merge_member(graph, o)
        if isinstance(m, str):
            return f"op {o} ({graph.nodes[o].name}): {m}"
        members.append(m)
    first = members[0]
    for m in members[1:]:
        if m.kind != first.kind:
            return f"ops {first.node} and {m.node} are a {first.kind} and a {m.kind}"
        if m.data != first.data:
            return (f"ops {first.node} and {m.node} read different tensors "
                    f"({first.data!r}, {m.data!r})")
        if m.act != first.act:
            return f"ops {first.node} and {m.node} have different activations"
    anc = graph.ancestor_masks
    for a in ops:
        if any(anc[a] >> b & 1 for b in ops):
            return f"op {a} depends on another of the ops"
    data = graph.tensors[first.data]
    outs = [graph.tensors[m.output] for m in members]
    dtype = outs[0].dtype
    item = dtype_bytes(dtype)
    if first.kind == "conv2d":
        spatial = outs[0].shape[2:]
        for m, o in zip(members, outs, strict=True):
            if o.shape[2:] != spatial:
                return f"ops {first.node} and {m.node} have different output sizes"
            if m.strides != first.strides:
                return f"ops {first.node} and {m.node} have different strides"
            if m.dilation != first.dilation:
                return f"ops {first.node} and {m.node} have different dilations"
        kh = max(m.kernel[0] for m in members)
        kw = max(m.kernel[1] for m in members)
        dh, dw = first.dilation
        padding = None
        for m in members:
            sh, sw = kh - m.kernel[0], kw - m.kernel[1]
            if sh % 2 or sw % 2:
                return (f"op {m.node}'s {m.kernel[0]}x{m.kernel[1]} kernel cannot be centred in "
                        f"a {kh}x{kw} one")
            t, left, b, r = m.padding
            p = (t + sh // 2 * dh, left + sw // 2 * dw, b + sh // 2 * dh, r + sw // 2 * dw)
            if padding is None:
                padding = p
            elif p != padding:
                return (f"op {m.node}'s padding {m.padding} is not centred like op "
                        f"{first.node}'s {first.padding} (kernels "
                        f"{m.kernel} and {first.kernel})")
        inner = math.prod(spatial)
        out_shape = (1, sum(m.channels for m in members), *spatial)
        geometry: dict[str, Any] = {"kernel": (kh, kw), "padding": padding,
                                    "strides": first.strides, "dilation": first.dilation}
    else:
        inner = 1
        out_shape = (*outs[0].shape[:-1], sum(m.channels for m in members))
        geometry = {}
    starts, offsets, c = [], [], 0
    for m in members:
        starts.append(c)
        offsets.append(c * inner * item)
        c += m.channels
    for m, off in zip(members, offsets, strict=True):
        if off % MERGE_ALIGNMENT:
            return (f"op {m.node}'s slice would start at byte {off} of the merged output, not a "
                    f"multiple of {MERGE_ALIGNMENT} (TVM kernels need aligned arguments)")
    return MergeSpec(first.kind, ops, tuple(members), first.data, data.shape, dtype, out_shape,
                     act=first.act, has_bias=any(m.bias is not None for m in members),
                     channel_starts=tuple(starts), offsets=tuple(offsets), **geometry)


def merge_predicate(graph: OpGraph, ops: tuple[int, ...]) -> bool:
    """The search's ``can_merge``: convs or matmuls that :func:`merge_problem` accepts."""
    return merge_problem(graph, ops) is None
