"""IOS-Merge: several convolutions (or matmuls) that read one tensor become one kernel.

IOS's second strategy (Ding et al., MLSys 2021, §5; the project's IOS brief §1.5-1.6). Convs
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

The module has three layers:

* Pure Python, no TVM: :func:`merge_problem` / :func:`merge_predicate` (the search's
  ``can_merge``), :class:`MergeSpec` (what a merge computes) and :func:`rewrite_merges`,
  which turns a graph and a schedule with merge stages into an equivalent graph with one
  node per merged kernel and views for the original outputs (used by
  :func:`ios_tvm.lower.make_plan`).
* NumPy: :func:`merged_weights` prepares the merged weights at build time.
* TVM (imported lazily): :class:`MergeCompiler` generates each merged kernel on demand
  (a Relax function -> :func:`ios_tvm.extract.lower_to_kernels`, i.e. legalize + fuse + TIR,
  exactly like the model's own kernels), compiles, checks it numerically against the
  original kernels, and caches it; it also builds the one-call artifact the measured cost
  model times a merge stage with.

Conservative on purpose: only kernels whose fused op list is understood are merged, i.e.
``conv2d`` / ``matmul`` optionally followed by ``add`` of a per-channel constant (the bias)
and optionally by ``relu``, ``sigmoid`` or ``tanh``. Anything else (a residual add fused into
the conv, a clip whose bounds are not recorded, grouped convs, other layouts) is left alone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .errors import IosTvmError
from .graph import OpGraph, OpNode, TensorInfo, dtype_bytes
from .schedule import Schedule, Stage

logger = logging.getLogger(__name__)

__all__ = [
    "ACTIVATIONS", "MERGE_ALIGNMENT", "MERGE_KINDS", "MergeCompiler", "MergeError",
    "MergeMember", "MergeRewrite", "MergeSpec", "MergedKernel", "merge_member",
    "merge_predicate", "merge_problem", "merge_spec", "merge_tensor_names",
    "merged_relax_module", "merged_weights", "rewrite_merges",
]

#: Slices of the merged output must start at multiples of this many bytes (TVM's
#: ``kAllocAlignment``; the same as :data:`ios_tvm.plan.VIEW_ALIGNMENT`).
MERGE_ALIGNMENT = 64
#: Anchor ops that merge.
MERGE_KINDS = ("conv2d", "matmul")
#: Element-wise activations a merged kernel applies once to all channels.
ACTIVATIONS = ("relu", "sigmoid", "tanh")
#: Prefix of merged kernels' names (and of the tensors a merge adds to the graph).
MERGED_KERNEL_PREFIX = "ios_merge"


class MergeError(IosTvmError, ValueError):
    """Ops cannot be merged, or a merged kernel could not be built or does not check out."""


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
        The operator graph (its node attrs come from :func:`ios_tvm.extract.extract_graph`).
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


# --------------------------------------------------------------------------------------------
# graph rewriting (pure Python)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MergedKernel:
    """A compiled merged kernel: its spec, name and argument order.

    ``arg_roles`` names the kernel's inputs in call order (``"data"``, ``"weight"``,
    ``"bias"``); the output comes last. ``flops`` is its logical FLOP count.
    """

    spec: MergeSpec
    name: str
    arg_roles: tuple[str, ...]
    flops: float = 0.0


def merge_tensor_names(ops: Sequence[int]) -> dict[str, str]:
    """Names of the tensors a merge of ``ops`` adds: ``weight``, ``bias`` and ``out``."""
    tag = f"{MERGED_KERNEL_PREFIX}.{'_'.join(str(o) for o in sorted(ops))}"
    return {"weight": f"{tag}.weight", "bias": f"{tag}.bias", "out": f"{tag}.out"}


@dataclass(frozen=True)
class MergeRewrite:
    """A graph and schedule with every merge stage turned into one kernel call.

    ``schedule`` runs ``graph``; its stage ``i`` corresponds to stage ``i`` of the original
    schedule, and ``strategies[i]`` is the original stage's strategy (a merge stage became a
    one-op stage). ``node_of[op]`` is the new node id of original op ``op``.
    """

    graph: OpGraph
    schedule: Schedule
    strategies: tuple[str, ...]
    node_of: tuple[int, ...]
    kernels: Mapping[tuple[int, ...], MergedKernel] = field(default_factory=dict)


def rewrite_merges(graph: OpGraph, schedule: Schedule,
                   kernels: Mapping[tuple[int, ...], MergedKernel]) -> MergeRewrite:
    """Replace the ops of every merge stage of ``schedule`` by one merged kernel call.

    The merged node takes the place of the first op (so ids stay a topological order), reads
    the shared tensor and the merged weights (new ``const`` tensors named by
    :func:`merge_tensor_names`) and writes the merged output; each original output becomes a
    view of its slice (``alias_of`` the merged output, ``offset`` bytes in). Everything else
    is unchanged.

    Parameters
    ----------
    graph, schedule
        A graph and a valid schedule of it.
    kernels
        The merged kernel of every merge stage, by its ops (ascending).
    """
    strategies = tuple(s.strategy for s in schedule.stages)
    merges = [s.ops for s in schedule.stages if s.strategy == "merge"]
    if not merges:
        return MergeRewrite(graph, schedule, strategies, tuple(range(len(graph.nodes))), {})
    tensors = dict(graph.tensors)
    head: dict[int, OpNode] = {}
    dropped: set[int] = set()
    for ops in merges:
        mk = kernels.get(ops)
        if mk is None:
            raise MergeError(f"no merged kernel for the merge stage of ops {list(ops)}")
        spec = mk.spec
        if spec.ops != ops:
            raise MergeError(f"the merged kernel of ops {list(ops)} merges ops {list(spec.ops)}")
        names = merge_tensor_names(ops)
        for key in ("weight", "bias", "out"):
            if names[key] in tensors:
                raise MergeError(f"tensor name {names[key]!r} is already taken")
        tensors[names["weight"]] = TensorInfo(names["weight"], spec.weight_shape, spec.dtype,
                                              "const")
        if spec.has_bias:
            tensors[names["bias"]] = TensorInfo(names["bias"], spec.bias_shape, spec.dtype,
                                                "const")
        tensors[names["out"]] = TensorInfo(names["out"], spec.out_shape, spec.dtype)
        for m, off in zip(spec.members, spec.offsets, strict=True):
            tensors[m.output] = replace(tensors[m.output], alias_of=names["out"], offset=off)
        role = {"data": spec.data, "weight": names["weight"], "bias": names["bias"]}
        inputs = tuple(role[r] for r in mk.arg_roles)
        nbytes = sum(tensors[t].nbytes for t in (*inputs, names["out"]))
        members = [graph.nodes[o].name for o in ops]
        head[ops[0]] = OpNode(f"{mk.name}@{names['out']}", mk.name, inputs, (names["out"],),
                              mk.flops or sum(graph.nodes[o].flops for o in ops), nbytes,
                              {"op": "merge", "kind": spec.kind, "kernel": mk.name,
                               "members": members, "ops": list(ops)})
        dropped.update(ops[1:])
    nodes: list[OpNode] = []
    node_of = [-1] * len(graph.nodes)
    for i, node in enumerate(graph.nodes):
        if i in dropped:
            continue
        node_of[i] = len(nodes)
        nodes.append(head.get(i, node))
    for ops in merges:
        for o in ops[1:]:
            node_of[o] = node_of[ops[0]]
    new_graph = OpGraph(nodes, tensors, graph.inputs, graph.outputs)
    stages = []
    for s in schedule.stages:
        if s.strategy == "merge":
            stages.append(Stage(((node_of[s.ops[0]],),), "concurrent"))
        else:
            stages.append(Stage(tuple(tuple(node_of[o] for o in g) for g in s.groups),
                                s.strategy))
    new_schedule = Schedule(tuple(stages), schedule.cost, dict(schedule.meta))
    return MergeRewrite(new_graph, new_schedule, strategies, tuple(node_of), dict(kernels))


# --------------------------------------------------------------------------------------------
# weights (NumPy)
# --------------------------------------------------------------------------------------------
def _numpy(value: Any) -> np.ndarray:
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)


def merged_weights(spec: MergeSpec, values: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The merged weight (and bias) of ``spec``, built from the members' weight values.

    Conv: a zero ``(C, Cin, Kh, Kw)`` tensor with member ``i``'s kernel in output channels
    ``[start_i, start_i + C_i)``, centred at ``((Kh - kh_i) / 2, (Kw - kw_i) / 2)``. Matmul:
    the ``(K, N_i)`` weights side by side. Biases are concatenated per channel (zeros for a
    member without one; a broadcast bias is expanded).

    Parameters
    ----------
    spec
        The merge.
    values
        Weight values by tensor name (numpy arrays or TVM tensors).

    Returns
    -------
    dict
        ``{"weight": W}`` plus ``{"bias": B}`` when ``spec.has_bias``.
    """
    w = np.zeros(spec.weight_shape, dtype=spec.dtype)
    b = np.zeros(spec.channels, dtype=spec.dtype)
    kh, kw = spec.kernel
    for m, c0 in zip(spec.members, spec.channel_starts, strict=True):
        wi = _numpy(values[m.weight])
        if spec.kind == "conv2d":
            dh, dw = (kh - m.kernel[0]) // 2, (kw - m.kernel[1]) // 2
            w[c0:c0 + m.channels, :, dh:dh + m.kernel[0], dw:dw + m.kernel[1]] = wi
        else:
            w[:, c0:c0 + m.channels] = wi
        if m.bias is not None:
            b[c0:c0 + m.channels] = np.broadcast_to(_numpy(values[m.bias]).reshape(-1),
                                                    (m.channels,))
    out = {"weight": w}
    if spec.has_bias:
        out["bias"] = b.reshape(spec.bias_shape)
    return out


# --------------------------------------------------------------------------------------------
# generating, compiling and checking merged kernels (TVM)
# --------------------------------------------------------------------------------------------
def merged_relax_module(spec: MergeSpec) -> Any:
    """A Relax module whose ``main(data, weight[, bias])`` computes the merged kernel."""
    from tvm import relax

    dtype = spec.dtype
    data = relax.Var("data", relax.TensorType(list(spec.data_shape), dtype))
    weight = relax.Var("weight", relax.TensorType(list(spec.weight_shape), dtype))
    params = [data, weight]
    bias = None
    if spec.has_bias:
        bias = relax.Var("bias", relax.TensorType(list(spec.bias_shape), dtype))
        params.append(bias)
    acts = {"relu": relax.op.nn.relu, "sigmoid": relax.op.sigmoid, "tanh": relax.op.tanh}
    bb = relax.BlockBuilder()
    with bb.function("main", params):
        with bb.dataflow():
            if spec.kind == "conv2d":
                y = bb.emit(relax.op.nn.conv2d(data, weight, strides=spec.strides,
                                               padding=spec.padding, dilation=spec.dilation,
                                               groups=1, data_layout="NCHW",
                                               kernel_layout="OIHW"))
            else:
                y = bb.emit(relax.op.matmul(data, weight))
            if bias is not None:
                y = bb.emit(relax.op.add(y, bias))
            if spec.act is not None:
                y = bb.emit(acts[spec.act](y))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


class MergeCompiler:
    """Generates, compiles, checks and caches the merged kernels of one model.

    Each merged kernel is a Relax function (:func:`merged_relax_module`) lowered by the same
    function that lowered the model (:func:`ios_tvm.extract.lower_to_kernels`, so legalize +
    fuse + TIR, and dlight on GPU) into one fused PrimFunc, on demand and once per distinct
    :attr:`MergeSpec.signature`.

    Parameters
    ----------
    extraction
        The model (:func:`ios_tvm.extract.graph_from_model`), with its target.
    lib
        The model's compiled kernel library; needed to check merged kernels against the
        original ones (built on first use when None).
    params
        Values of weight *parameters* (constants come from the module).
    lower_kwargs
        Extra keyword arguments for ``lower_to_kernels`` (use the model's own lowering
        options, so merged and original kernels are scheduled alike).
    verify
        Check every merge numerically against its original kernels (when the target's
        device is on this machine) before it is measured or lowered.
    """

    def __init__(self, extraction: Any, *, lib: Any = None,
                 params: Mapping[str, Any] | None = None,
                 lower_kwargs: Mapping[str, Any] | None = None, verify: bool = True) -> None:
        self.extraction = extraction
        self.graph: OpGraph = extraction.graph
        self.lib = lib
        self.params = dict(params) if params is not None else None
        self.lower_kwargs = dict(lower_kwargs or {})
        self.verify_merges = verify
        self._specs: dict[tuple[int, ...], MergeSpec] = {}
        self._funcs: dict[str, tuple[Any, tuple[str, ...], float]] = {}
        self._modules: dict[str, Any] = {}
        self._checked: dict[tuple[int, ...], float] = {}
        self._values: dict[str, Any] | None = None

    # -- specs and kernels -----------------------------------------------------------------
    def spec(self, ops: Sequence[int]) -> MergeSpec:
        """The spec of merging ``ops`` (cached); raises :class:`MergeError` if illegal."""
        key = tuple(sorted(ops))
        spec = self._specs.get(key)
        if spec is None:
            spec = self._specs[key] = merge_spec(self.graph, key)
        return spec

    def kernel(self, ops: Sequence[int]) -> MergedKernel:
        """The merged kernel of ``ops``, generated and lowered on first use."""
        spec = self.spec(ops)
        name = spec.kernel_name
        if name not in self._funcs:
            self._funcs[name] = self._lower(spec)
        _, roles, flops = self._funcs[name]
        return MergedKernel(spec, name, roles, flops)

    def _lowering_options(self) -> dict[str, Any]:
        """``lower_to_kernels`` options: the given ones, else those the model was lowered with.

        If the model's kernels were left unscheduled on purpose (``cpu_schedule=False``: its
        :mod:`ios_tvm.cpu_schedule` report has unscheduled kernels and none scheduled by a
        rule), merged kernels are too, so merged and original kernels compete on equal terms.
        """
        import inspect

        from .extract import lower_to_kernels

        options = dict(self.lower_kwargs)
        # Merged convs are built NCHW (their consumers read channel slices of the output).
        options.setdefault("cpu_layout", None)
        if "cpu_schedule" in options or \
                "cpu_schedule" not in inspect.signature(lower_to_kernels).parameters:
            return options
        try:
            from .cpu_schedule import schedule_report
        except ImportError:  # pragma: no cover - the module ships with ios-tvm
            return options
        report = schedule_report(self.extraction.mod)
        if report is not None:
            ruled = [h for h in report.kernels.values()
                     if h not in ("unscheduled", "tuned", "prescheduled")]
            if report.num_unscheduled and not ruled:
                options["cpu_schedule"] = False
        return options

    def _lower(self, spec: MergeSpec) -> tuple[Any, tuple[str, ...], float]:
        import tvm
        from tvm import relax

        from .extract import KERNEL_INFO_ATTR, lower_to_kernels

        target = self.extraction.target
        lowered = lower_to_kernels(merged_relax_module(spec), target, **self._lowering_options())
        calls = []
        for block in lowered["main"].body.blocks:
            for b in block.bindings:
                v = b.value
                if isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.Op) and \
                        v.op.name == "relax.call_tir":
                    calls.append(v)
                elif isinstance(v, relax.Call):
                    raise MergeError(f"the merged {spec.kind} lowered to a {v.op} call besides "
                                     "its kernel")
        if len(calls) != 1:
            raise MergeError(f"the merged {spec.kind} lowered to {len(calls)} kernels, not one")
        call = calls[0]
        roles = []
        for arg in call.args[1].fields:
            if not isinstance(arg, relax.Var) or arg.name not in ("data", "weight", "bias"):
                raise MergeError(f"the merged kernel takes an unexpected argument {arg}")
            roles.append(str(arg.name))
        gv = call.args[0]
        func = lowered[gv].with_attr("global_symbol", spec.kernel_name)
        info = json.loads(str(lowered.get_attr(KERNEL_INFO_ATTR)))
        flops = float(info.get("kernels", {}).get(gv.name_hint, {}).get("flops", 0.0))
        return func, tuple(roles), flops

    def module(self, kernels: Sequence[MergedKernel], base: Any = None) -> Any:
        """A runtime module with ``kernels`` (compiled together), importing ``base`` if given.

        Without ``base`` a single kernel's module is cached (for measuring); with ``base``
        (the model's kernel library) a fresh module is built, so the result finds every
        kernel of a plan and ``export_library`` links them into one file.
        """
        distinct = {k.name: k for k in kernels}
        if base is None and len(distinct) == 1:
            (name,) = distinct
            if name not in self._modules:
                self._modules[name] = self._build(list(distinct))
            return self._modules[name]
        mod = self._build(list(distinct))
        if base is not None:
            mod.import_module(base)
        return mod

    def _build(self, names: Sequence[str]) -> Any:
        import tvm

        for n in names:
            if n not in self._funcs:
                raise MergeError(f"merged kernel {n!r} was not generated by this compiler")
        funcs = {tvm.ir.GlobalVar(n): self._funcs[n][0] for n in names}
        return tvm.tirx.build(tvm.IRModule(funcs), target=self.extraction.target)

    # -- weights ---------------------------------------------------------------------------
    def values(self) -> dict[str, Any]:
        """Every weight of the model by tensor name (constants and given params)."""
        if self._values is None:
            from .lower import weights_of

            self._values = weights_of(self.extraction, self.params)
        return self._values

    def weights(self, kernel: MergedKernel) -> dict[str, np.ndarray]:
        """The merged weights of ``kernel`` under the tensor names the plan uses."""
        names = merge_tensor_names(kernel.spec.ops)
        return {names[role]: value
                for role, value in merged_weights(kernel.spec, self.values()).items()}

    # -- checking --------------------------------------------------------------------------
    def base_library(self) -> Any:
        """The model's kernel library (built on first use)."""
        if self.lib is None:
            from .lower import build_kernel_library

            self.lib = build_kernel_library(self.extraction.mod, self.extraction.target)
        return self.lib

    def device(self) -> Any | None:
        """The target's device 0 if present on this machine, else None."""
        import tvm

        from .lower import target_device_type

        if target_device_type(self.extraction.target) == "cpu":
            return tvm.cpu(0)
        try:
            dev = tvm.cuda(0)
            return dev if dev.exist else None
        except Exception:  # no CUDA runtime at all
            return None

    def check(self, ops: Sequence[int], *, seed: int = 0) -> float:
        """Run the merged kernel and the original kernels on random data and compare.

        Returns the largest absolute difference relative to the largest reference value;
        raises :class:`MergeError` if it exceeds 1e-3. Returns NaN (unchecked) when the
        target's device is not on this machine or checking is off. Cached per op set.
        """
        key = tuple(sorted(ops))
        if key in self._checked:
            return self._checked[key]
        dev = self.device() if self.verify_merges else None
        if dev is None:
            self._checked[key] = float("nan")
            return float("nan")
        import tvm

        mk = self.kernel(key)
        spec = mk.spec
        rng = np.random.default_rng(seed)
        values = self.values()
        x = rng.standard_normal(spec.data_shape).astype(spec.dtype)
        tx = tvm.runtime.tensor(x, dev)
        base = self.base_library()
        refs = []
        for m in spec.members:
            node = self.graph.nodes[m.node]
            args = [tx if t == spec.data else tvm.runtime.tensor(_numpy(values[t]), dev)
                    for t in node.inputs]
            out = self.graph.tensors[m.output]
            res = tvm.runtime.empty(out.shape, out.dtype, dev)
            base.get_function(node.kernel, query_imports=True)(*args, res)
            refs.append(res.numpy())
        weights = merged_weights(spec, values)
        role = {"data": tx, **{r: tvm.runtime.tensor(v, dev) for r, v in weights.items()}}
        out = tvm.runtime.empty(spec.out_shape, spec.dtype, dev)
        self.module([mk])[mk.name](*(role[r] for r in mk.arg_roles), out)
        merged = out.numpy()
        axis = 1 if spec.kind == "conv2d" else len(spec.out_shape) - 1
        scale = max(max(float(np.abs(r).max()) for r in refs), 1e-6)
        err = 0.0
        for m, c0, ref in zip(spec.members, spec.channel_starts, refs, strict=True):
            got = np.take(merged, range(c0, c0 + m.channels), axis=axis)
            err = max(err, float(np.abs(got - ref).max()) / scale)
        self._checked[key] = err
        if not err <= 1e-3:
            raise MergeError(f"the merged kernel of ops {list(key)} differs from the original "
                             f"kernels by {err:.2e} (relative); not merging them")
        return err

    # -- measuring -------------------------------------------------------------------------
    def artifact(self, ops: Sequence[int]) -> Any:
        """A one-call artifact running the merged kernel of ``ops`` (for timing it).

        Its plan has the shared input (``input``), the merged weights (``param``) and the
        merged output (``storage``), one call and one stage.
        """
        from .executor import Artifact
        from .lower import target_device_type
        from .plan import Plan, PlanCall, PlanStage, PlanTensor

        mk = self.kernel(ops)
        spec = mk.spec
        names = merge_tensor_names(spec.ops)
        index = {"data": 0, "weight": 1, "bias": 2}
        tensors = [PlanTensor(spec.data, spec.data_shape, spec.dtype, "input"),
                   PlanTensor(names["weight"], spec.weight_shape, spec.dtype, "param")]
        if spec.has_bias:
            tensors.append(PlanTensor(names["bias"], spec.bias_shape, spec.dtype, "param"))
        out_index = len(tensors)
        tensors.append(PlanTensor(names["out"], spec.out_shape, spec.dtype, "storage", 0))
        out_bytes = tensors[-1].nbytes
        call = PlanCall(mk.name, (*(index[r] for r in mk.arg_roles), out_index), 1,
                        f"{mk.name}@{names['out']}")
        target = self.extraction.target
        plan = Plan(str(target), target_device_type(target), tuple(tensors), (out_bytes,),
                    (call,), (PlanStage(((0,),), "merge"),), (0,), (out_index,),
                    {"merge_of": [self.graph.nodes[o].name for o in spec.ops]})
        plan.validate()
        return Artifact(plan, self.module([mk]), self.weights(mk))
