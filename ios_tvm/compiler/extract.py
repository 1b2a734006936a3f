"""Graph extraction: from a lowered Relax module to the scheduler's kernel graph.

:func:`extract_graph` makes one node per kernel call of the entry function (after
:func:`~ios_tvm.compiler.kernels.lower_to_kernels`, a dataflow of ``call_tir``), one tensor per
value, views for reshapes; :func:`graph_from_model` is load + lower + extract in one call.

:class:`Extraction` keeps the link back to the Relax function (binding var, kernel, call and
tensor sources per node/tensor) so that the lowering of a schedule to an executable plan can
find every kernel's arguments. Constant values are not copied into the OpGraph;
:attr:`TensorSource.expr` holds the ``GenericConst`` whose ``.value`` is the tensor.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import tvm
from tvm import relax

from ios_tvm.compiler.frontend import (
    INPUT_NAMES_ATTR,
    OUTPUT_NAMES_ATTR,
    ShapeDict,
    describe_model,
    entry_function,
    load_model,
    num_inputs,
)
from ios_tvm.compiler.kernels import KERNEL_INFO_ATTR, kernel_flops, lower_to_kernels
from ios_tvm.compiler.relax_util import CALL_DPS_PACKED, CALL_TIR, CALL_TIR_INPLACE, short_text
from ios_tvm.compiler.target import TargetLike, resolve_target
from ios_tvm.errors import IosTvmError, UnsupportedGraphError
from ios_tvm.ir.graph import OpGraph, OpNode, TensorInfo
from ios_tvm.models import resolve_model

logger = logging.getLogger(__name__)


#: TVM's ``OpPatternKind`` (include/tvm/relax/op_attr_types.h); no Python enum exists in 0.27.
OP_PATTERN_KINDS = {0: "elemwise", 1: "broadcast", 2: "injective", 3: "comm_reduce",
                    4: "out_elemwise_fusable", 7: "tuple", 8: "opaque"}


#: Ops that survive lowering as views of their first argument (no kernel, no copy).
_VIEW_OPS = ("relax.reshape", "relax.memory.view")


# --------------------------------------------------------------------------------------------
# extraction
# --------------------------------------------------------------------------------------------
@dataclass
class TensorSource:
    """Where a graph tensor comes from in the Relax function.

    Attributes
    ----------
    name
        The tensor's name in the OpGraph.
    kind
        ``"input"``, ``"param"``, ``"const"``, ``"activation"`` or ``"view"``.
    expr
        The Relax expression holding it: the parameter Var (input/param), the ``GenericConst``
        (const; ``expr.value`` is the runtime tensor), or the binding Var (activation, view;
        for a multi-output call the Var of the whole tuple).
    param_index
        Position among the function parameters (input/param).
    node
        Producing node id (activation).
    output_index
        Position among the producing node's outputs (activation).
    byte_offset
        Byte offset into the base tensor (view; 0 for reshapes).
    """

    name: str
    kind: str
    expr: Any = None
    param_index: int | None = None
    node: int | None = None
    output_index: int | None = None
    byte_offset: int = 0


@dataclass(frozen=True)
class Extraction:
    """An OpGraph together with the links back to the lowered Relax module.

    Attributes
    ----------
    graph
        The operator graph (node ``i`` is the ``i``-th kernel call in binding order).
    mod
        The lowered module the graph was extracted from.
    func_name
        The entry function's name.
    var_of_node
        The Relax binding Var of each node's call.
    kernel_of_node
        The kernel of each node: the ``GlobalVar`` of its PrimFunc (call_tir,
        call_tir_inplace), or the ``ExternFunc`` of a call_dps_packed.
    call_of_node
        The ``relax.Call`` of each node.
    sources
        For each tensor name, where its value comes from (see :class:`TensorSource`).
    inplace
        For call_tir_inplace: output tensor name -> the input tensor whose storage it reuses.
    target
        The target the module was lowered for, when known.
    """

    graph: OpGraph
    mod: tvm.IRModule
    func_name: str
    var_of_node: list[Any]
    kernel_of_node: list[Any]
    call_of_node: list[Any]
    sources: dict[str, TensorSource]
    inplace: dict[str, str] = field(default_factory=dict)
    target: Any = None

    @property
    def constants(self) -> dict[str, Any]:
        """Constant tensor name -> its ``GenericConst`` (``.value`` is the runtime tensor)."""
        return {n: s.expr for n, s in self.sources.items() if s.kind == "const"}

    @property
    def params(self) -> list[str]:
        """Tensor names of the function parameters, in call order (inputs, then params)."""
        ps = [s for s in self.sources.values() if s.param_index is not None]
        return [s.name for s in sorted(ps, key=lambda s: s.param_index)]

    def kernel_name(self, node: int) -> str:
        """Name of node ``node``'s kernel (PrimFunc or packed function)."""
        return self.graph.nodes[node].kernel


_Value = str | tuple["_Value", ...]  # a tensor name or a (nested) tuple of them


def _flatten(value: _Value) -> list[str]:
    if isinstance(value, str):
        return [value]
    return [t for v in value for t in _flatten(v)]


def _static_shape(ty: Any, what: str) -> tuple[tuple[int, ...], str]:
    """(shape, dtype) of a tensor type, or an UnsupportedGraphError naming ``what``."""
    if not isinstance(ty, relax.TensorType):
        raise UnsupportedGraphError(f"{what} is not a tensor (type {ty})")
    if ty.shape is None:
        raise UnsupportedGraphError(
            f"{what} has unknown shape (rank {ty.ndim if ty.ndim >= 0 else 'unknown'}); "
            "dynamic shapes are not supported: load the model with static input_shapes")
    dims = []
    for axis, d in enumerate(ty.shape.values):
        if not isinstance(d, tvm.tirx.IntImm):
            raise UnsupportedGraphError(
                f"{what} has symbolic dim {str(d)!r} (axis {axis}); dynamic shapes are not "
                "supported: load the model with input_shapes giving every dynamic input a "
                "size (data-dependent shapes, e.g. after NonZero, cannot be scheduled)")
        dims.append(int(d.value))
    dtype = str(ty.dtype)
    if not dtype or dtype == "void":
        raise UnsupportedGraphError(f"{what} has unknown dtype")
    return tuple(dims), dtype


class _Extractor:
    def __init__(self, mod: tvm.IRModule, fname: str, kinfo: Mapping[str, Any],
                 lowered: bool = False, input_names: Sequence[str] | None = None,
                 output_names: Sequence[str] | None = None) -> None:
        self.mod = mod
        self.fname = fname
        self.kinfo = kinfo
        self.lowered = lowered  # by lower_to_kernels (it records KERNEL_INFO_ATTR)
        self.input_names = input_names
        self.output_names = output_names
        # Internal tensors never take a model output's name (inputs keep theirs).
        self.reserved = set(output_names or ())
        self.val: dict[Any, _Value] = {}
        self.tensors: dict[str, TensorInfo] = {}
        self.sources: dict[str, TensorSource] = {}
        self.const_names: dict[Any, str] = {}
        self.nodes: list[OpNode] = []
        self.var_of_node: list[Any] = []
        self.kernel_of_node: list[Any] = []
        self.call_of_node: list[Any] = []
        self.inplace: dict[str, str] = {}
        self.flops_cache: dict[str, float] = {}

    # -- naming ----------------------------------------------------------------------------
    def fresh(self, base: str, reserved_ok: bool = False) -> str:
        base = base or "t"
        name, k = base, 0
        while name in self.tensors or name in self.sources or (
                name in self.reserved and not reserved_ok):
            k += 1
            name = f"{base}_{k}"
        return name

    def add_tensor(self, info: TensorInfo, src: TensorSource) -> str:
        self.tensors[info.name] = info
        self.sources[info.name] = src
        return info.name

    # -- values ----------------------------------------------------------------------------
    def const(self, c: Any, where: str) -> str:
        if c in self.const_names:
            return self.const_names[c]
        shape, dtype = _static_shape(c.ty, f"constant used by {where}")
        name = self.fresh(f"const{len(self.const_names)}")
        self.const_names[c] = name
        return self.add_tensor(TensorInfo(name, shape, dtype, "const"),
                               TensorSource(name, "const", c))

    def arg(self, e: Any, where: str) -> _Value:
        if isinstance(e, relax.Var):
            try:
                return self.val[e]
            except KeyError:
                raise UnsupportedGraphError(
                    f"{where} uses {e.name!r}, which is not bound before it") from None
        if isinstance(e, tvm.ir.GenericConst):
            return self.const(e, where)
        if isinstance(e, relax.Tuple):
            return tuple(self.arg(f, where) for f in e.fields)
        if isinstance(e, relax.TupleGetItem):
            return self.item(self.arg(e.tuple_value, where), int(e.index), where)
        if isinstance(e, relax.If):
            raise UnsupportedGraphError(
                f"{where} is control flow (relax If on {short_text(e.cond)}); only dataflow "
                "graphs can be scheduled")
        raise UnsupportedGraphError(
            f"{where} has argument {type(e).__name__} {short_text(e)}; only tensors, tuples and "
            "constants are supported as kernel arguments")

    @staticmethod
    def item(value: _Value, index: int, where: str) -> _Value:
        if isinstance(value, str):
            raise UnsupportedGraphError(f"{where} takes item {index} of a tensor, not a tuple")
        return value[index]

    def tensor_arg(self, e: Any, where: str) -> str:
        v = self.arg(e, where)
        if not isinstance(v, str):
            raise UnsupportedGraphError(f"{where} expects a tensor but gets a tuple")
        return v

    # -- bindings --------------------------------------------------------------------------
    def run(self) -> OpGraph:
        func = self.mod[self.fname]
        if not isinstance(func.body, relax.SeqExpr):
            raise UnsupportedGraphError(f"function {self.fname!r} is not a sequence of bindings")
        ninp = num_inputs(func)
        # The model's own input names (TVM's importer sanitises "input.1" to "input_1").
        names = list(self.input_names or ())
        if len(names) != ninp or len(set(names)) != ninp:
            names = [p.name for p in func.params[:ninp]]
        graph_inputs = []
        for i, p in enumerate(func.params):
            kind = "input" if i < ninp else "param"
            shape, dtype = _static_shape(p.ty, f"{kind} {p.name!r}")
            name = self.fresh(names[i] if i < ninp else p.name, reserved_ok=True)
            self.add_tensor(TensorInfo(name, shape, dtype, kind),
                            TensorSource(name, kind, p, param_index=i))
            self.val[p] = name
            graph_inputs.append(name)
        for block in func.body.blocks:
            for b in block.bindings:
                self.binding(b)
        where = f"the return value of {self.fname!r}"
        outputs = self.name_outputs(_flatten(self.arg(func.body.body, where)))
        graph = OpGraph(self.nodes, self.tensors, graph_inputs, outputs)
        self.check_inplace(graph)
        return graph

    def name_outputs(self, outputs: list[str]) -> list[str]:
        """Give the graph outputs the model's output names (``output0``, ... if unknown).

        An activation or view returned once is renamed; an input, a constant or a tensor
        returned a second time gets a view of its own under the output's name.
        """
        names = list(self.output_names or ())
        if len(names) != len(outputs) or not all(isinstance(n, str) and n for n in names):
            names = [f"output{i}" for i in range(len(outputs))]
        rename: dict[str, str] = {}
        for t, n in zip(outputs, names, strict=True):
            info = self.tensors[t]
            renamable = info.alias_of is not None or info.kind == "activation"
            if t != n and renamable and t not in rename and n not in self.tensors \
                    and n not in rename.values():
                rename[t] = n
        self.apply_renames(rename)
        named = []
        for t, n in zip(outputs, names, strict=True):
            t = rename.get(t, t)
            if t != n and n not in self.tensors:
                info = self.tensors[t]
                self.add_tensor(dataclasses.replace(info, name=n, alias_of=t, offset=0),
                                TensorSource(n, "view", self.sources[t].expr))
                t = n
            named.append(t)
        return named

    def apply_renames(self, rename: Mapping[str, str]) -> None:
        """Rename tensors everywhere they are named (tensors, sources, nodes, in-place map)."""
        if not rename:
            return

        def r(name: str | None) -> Any:
            return rename.get(name, name) if name is not None else None

        self.tensors = {r(k): dataclasses.replace(v, name=r(k), alias_of=r(v.alias_of))
                        for k, v in self.tensors.items()}
        self.sources = {r(k): dataclasses.replace(v, name=r(k)) for k, v in self.sources.items()}
        self.nodes = [dataclasses.replace(n, inputs=tuple(map(r, n.inputs)),
                                          outputs=tuple(map(r, n.outputs))) for n in self.nodes]
        self.inplace = {r(k): r(v) for k, v in self.inplace.items()}

    def binding(self, b: Any) -> None:
        var = b.var
        where = f"binding {var.name!r}"
        if isinstance(b, relax.MatchCast):
            # A match_cast of a static tensor to its own static shape is a no-op alias.
            v = self.arg(b.value, where)
            if isinstance(v, str):
                shape, _ = _static_shape(b.ty if hasattr(b, "ty") else var.ty, where)
                if shape == self.tensors[v].shape:
                    self.val[var] = v
                    return
            raise UnsupportedGraphError(f"{where} is a match_cast that changes the shape "
                                        f"({short_text(b.value)}); dynamic shapes are not "
                                        "supported")
        e = b.value
        if isinstance(e, relax.Var | tvm.ir.GenericConst | relax.Tuple | relax.TupleGetItem):
            self.val[var] = self.arg(e, where)  # alias, constant, tuple packing/unpacking
            return
        if isinstance(e, relax.If):
            raise UnsupportedGraphError(
                f"{where} is control flow (relax If on {short_text(e.cond)}); only dataflow "
                "graphs can be scheduled")
        if isinstance(e, relax.Call):
            if isinstance(e.op, tvm.ir.Op):
                name = e.op.name
                if name in (CALL_TIR, CALL_TIR_INPLACE, CALL_DPS_PACKED):
                    self.kernel_call(var, e, where)
                    return
                if name in _VIEW_OPS:
                    self.view(var, e, where)
                    return
                raise UnsupportedGraphError(self.not_a_kernel(where, e))
            if isinstance(e.op, tvm.ir.GlobalVar):
                callee = self.mod[e.op]
                what = "Relax function" if isinstance(callee, relax.Function) else "function"
                raise UnsupportedGraphError(
                    f"{where} calls {what} {e.op.name_hint!r} directly; only kernel calls are "
                    "supported (lower the module with lower_to_kernels so fused functions "
                    "become call_tir)")
            raise UnsupportedGraphError(f"{where} calls {short_text(e.op)}, which is not a kernel")
        raise UnsupportedGraphError(
            f"{where} binds a {type(e).__name__} ({short_text(e)}), which is not supported; "
            "expected a dataflow of kernel calls")

    def not_a_kernel(self, where: str, call: Any) -> str:
        """Why a call that is not a kernel cannot be scheduled (for the error message)."""
        name = call.op.name
        if name == "relax.call_pure_packed" and call.args:
            name = f"{name}({short_text(call.args[0])})"
        if self.lowered:
            # lower_to_kernels turned every op it could into a kernel; what is left runs in
            # TVM's VM, which here means shapes computed from values at run time.
            return (f"{where} calls {name}, which TVM's lowering leaves to run time: the model "
                    "computes a shape from tensor values (a data-dependent or dynamic shape, "
                    "e.g. NonZero, or Range/Reshape/Expand of a computed size); ios-tvm "
                    "schedules static shapes only")
        if name.startswith(("relax.builtin", "relax.vm", "relax.memory")):
            return (f"{where} calls {name}, which is not supported in a schedulable dataflow "
                    "(expected call_tir / call_dps_packed / reshape)")
        return (f"{where} calls {name}, which is neither a kernel call (call_tir, "
                "call_dps_packed) nor a view; lower the module with lower_to_kernels first")

    def view(self, var: Any, call: Any, where: str) -> None:
        base = self.tensor_arg(call.args[0], where)
        shape, dtype = _static_shape(var.ty, f"tensor {var.name!r}")
        offset = 0
        if call.op.name == "relax.memory.view" and len(call.args) > 3:
            off = call.args[3]
            if isinstance(off, tvm.tirx.IntImm):
                offset = int(off.value)
            elif not isinstance(off, relax.Call):  # a null_value() call means "no offset"
                raise UnsupportedGraphError(f"{where}: memory.view with a non-constant offset")
        root = base
        while self.tensors[root].alias_of is not None:
            root = self.tensors[root].alias_of
        name = self.fresh(var.name)
        self.add_tensor(TensorInfo(name, shape, dtype, self.tensors[root].kind, alias_of=base),
                        TensorSource(name, "view", var, byte_offset=offset))
        self.val[var] = name

    def kernel_call(self, var: Any, call: Any, where: str) -> None:
        op = call.op.name
        node_id = len(self.nodes)
        kernel_obj = call.args[0]
        if op == CALL_DPS_PACKED:
            if not isinstance(kernel_obj, relax.ExternFunc):
                raise UnsupportedGraphError(f"{where}: call_dps_packed of {short_text(kernel_obj)}")
            kernel = str(kernel_obj.global_symbol)
        else:
            kernel = kernel_obj.name_hint
            if len(call.args) > 2:
                raise UnsupportedGraphError(
                    f"{where} passes symbolic shape values to kernel {kernel!r} "
                    f"({short_text(call.args[2])}); dynamic shapes are not supported")
        args = call.args[1]
        inputs = _flatten(self.arg(args, where))
        out_ty = call.ty_args[0] if len(call.ty_args) else var.ty
        fields = list(out_ty.fields) if isinstance(out_ty, tvm.ir.TupleType) else [out_ty]
        outputs: list[str] = []
        for i, ty in enumerate(fields):
            base = var.name if len(fields) == 1 else f"{var.name}.{i}"
            shape, dtype = _static_shape(ty, f"tensor {base!r} (output of {where})")
            name = self.fresh(base)
            self.add_tensor(TensorInfo(name, shape, dtype, "activation"),
                            TensorSource(name, "activation", var, node=node_id, output_index=i))
            outputs.append(name)
        self.val[var] = outputs[0] if isinstance(out_ty, relax.TensorType) else tuple(outputs)
        attrs = self.node_attrs(kernel, op)
        if op == CALL_TIR_INPLACE:
            idx = [int(i) for i in call.attrs.inplace_indices]
            attrs["inplace_indices"] = idx
            for out, i in zip(outputs, idx, strict=False):
                if i >= 0:
                    self.inplace[out] = inputs[i]
        nbytes = sum(self.tensors[t].nbytes for t in dict.fromkeys([*inputs, *outputs]))
        flops = self.flops(kernel, op, outputs)
        # The first output's unique name (without ".0") keeps node names unique too.
        label = outputs[0] if len(outputs) == 1 else outputs[0].rsplit(".", 1)[0]
        self.nodes.append(OpNode(f"{kernel}@{label}", kernel, tuple(inputs), tuple(outputs),
                                 flops, nbytes, attrs))
        self.var_of_node.append(var)
        self.kernel_of_node.append(kernel_obj)
        self.call_of_node.append(call)

    def node_attrs(self, kernel: str, op: str) -> dict[str, Any]:
        if op == CALL_DPS_PACKED:
            return {"op": "packed", "kernel": kernel, "packed_func": kernel}
        info = self.kinfo.get(kernel, {})
        anchor = info.get("anchor") or {}
        attrs: dict[str, Any] = {"op": anchor.get("op") or _op_from_kernel_name(kernel),
                                 "kernel": kernel}
        if "ops" in info:
            attrs["ops"] = list(info["ops"])
        pattern = info.get("pattern")
        if pattern is None:
            f = self.mod[kernel]
            if f.attrs is not None and "op_pattern" in f.attrs:
                pattern = int(f.attrs["op_pattern"])
        if pattern is not None:
            attrs["pattern"] = pattern
            attrs["pattern_kind"] = OP_PATTERN_KINDS.get(pattern, str(pattern))
        for k, v in anchor.items():
            if k not in ("op",) and k not in attrs:
                attrs[k] = v
        return attrs

    def flops(self, kernel: str, op: str, outputs: Sequence[str]) -> float:
        if op == CALL_DPS_PACKED:
            return 0.0  # opaque library call: nothing to count
        if kernel not in self.flops_cache:
            recorded = self.kinfo.get(kernel, {}).get("flops")
            self.flops_cache[kernel] = (float(recorded) if recorded is not None
                                        else kernel_flops(self.mod[kernel]))
        return self.flops_cache[kernel]

    def check_inplace(self, graph: OpGraph) -> None:
        """An in-place kernel overwrites its input: every other reader must come before it."""
        if not self.inplace:
            return
        for out, inp in self.inplace.items():
            node = graph.producer[out]
            where = f"node {graph.nodes[node].name!r} (call_tir_inplace)"
            root = inp
            while graph.tensors[root].alias_of is not None:
                root = graph.tensors[root].alias_of
            if graph.tensors[root].kind != "activation":
                raise UnsupportedGraphError(
                    f"{where} overwrites {graph.tensors[root].kind} tensor {root!r} in place")
            anc = graph.ancestor_masks[node]
            for j, other in enumerate(graph.nodes):
                if j == node or not any(_root(graph, t) == root for t in other.inputs):
                    continue
                if not anc >> j & 1:
                    raise UnsupportedGraphError(
                        f"{where} overwrites {root!r}, which node {other.name!r} also reads "
                        "without a dependency ordering them; this would race when scheduled "
                        "concurrently")


def _root(graph: OpGraph, t: str) -> str:
    while graph.tensors[t].alias_of is not None:
        t = graph.tensors[t].alias_of
    return t


def _op_from_kernel_name(kernel: str) -> str:
    """Best-effort op name from a kernel name when no lowering record exists.

    ``fused_conv2d1_add_relu`` -> ``conv2d``; unknown names are kept whole (minus ``fused_`` and
    a trailing de-duplication number) so that merge predicates stay conservative.
    """
    name = kernel[len("fused_"):] if kernel.startswith("fused_") else kernel
    for known in ("conv2d_transpose", "conv1d", "conv2d", "conv3d", "max_pool2d", "avg_pool2d",
                  "adaptive_avg_pool2d", "matmul", "dense", "softmax", "layer_norm",
                  "group_norm", "batch_norm", "concatenate", "transpose"):
        if name.startswith(known):
            return known
    return name.rstrip("0123456789") or name


def _model_names(mod: tvm.IRModule, attr: str) -> list[str] | None:
    """The model's input or output names that :func:`~ios_tvm.compiler.frontend.load_model` kept."""
    # (attrs[...], not get_attr: get_attr fails on short strings in TVM 0.27)
    names = mod.attrs[attr] if mod.attrs is not None and attr in mod.attrs else None
    try:
        value = json.loads(str(names)) if names is not None else None
    except ValueError:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        return None
    return value


def extract_graph(mod: tvm.IRModule, func_name: str | None = None, *,
                  target: Any = None) -> Extraction:
    """Build the OpGraph of a lowered Relax function.

    One node per ``call_tir`` / ``call_tir_inplace`` / ``call_dps_packed`` binding, in binding
    order (a topological order). Tensors: function parameters are ``"input"`` (the first
    ``num_input``) or ``"param"``; ``GenericConst`` arguments are ``"const"`` (named
    ``const0``, ``const1``, ... by first use, deduplicated); call outputs are ``"activation"``
    (``var`` or ``var.i`` for a multi-output call). Alias bindings (``y = x``), tuples and
    tuple items are resolved; ``R.reshape`` / ``R.memory.view`` bindings become views
    (``alias_of``, no node). Graph outputs are the flattened return value, named as the
    model's outputs (:data:`ios_tvm.compiler.frontend.OUTPUT_NAMES_ATTR`, set for ONNX models) or
    ``output0``, ``output1``, ...; an output that is an input, a constant or another output
    becomes a view of it under its own name.

    Per node: ``flops`` from the lowering record (see :func:`lower_to_kernels`) or
    :func:`kernel_flops`; ``nbytes`` = bytes of the distinct input and output tensors;
    ``attrs`` = ``{"op", "kernel", "ops", "pattern", "pattern_kind"}`` plus the anchor op's
    Relax attributes (for conv2d: ``strides``, ``padding``, ``dilation``, ``groups``,
    ``data_shape``, ``weight_shape``, layouts, ...) when the module came from
    :func:`lower_to_kernels`.

    Parameters
    ----------
    mod
        A module lowered with :func:`lower_to_kernels` (or any module whose entry function is a
        dataflow of kernel calls with static shapes).
    func_name
        The entry function; default "main", else the only public Relax function.
    target
        The target the module was lowered for; default: the one :func:`lower_to_kernels`
        recorded on the module, else the current target (``with target:``), else None.

    Raises
    ------
    UnsupportedGraphError
        Control flow, symbolic dims (naming the tensor and dim), un-lowered Relax ops or other
        bindings that are not kernel calls, views, aliases or tuples (naming the binding).
    """
    fname = entry_function(mod, func_name)
    kinfo: dict[str, Any] = {}
    recorded = None
    record = mod.get_attr(KERNEL_INFO_ATTR) if mod.attrs is not None else None
    if record is not None:
        data = json.loads(str(record))
        kinfo = data.get("kernels", {})
        if data.get("target"):
            try:
                recorded = tvm.target.Target(json.loads(data["target"]))
            except Exception:
                recorded = data["target"]
    if target is None:
        target = recorded or tvm.target.Target.current(allow_none=True)
    ex = _Extractor(mod, fname, kinfo, lowered=record is not None,
                    input_names=_model_names(mod, INPUT_NAMES_ATTR),
                    output_names=_model_names(mod, OUTPUT_NAMES_ATTR))
    graph = ex.run()
    return Extraction(graph, mod, fname, ex.var_of_node, ex.kernel_of_node, ex.call_of_node,
                      ex.sources, ex.inplace, target)


def graph_from_model(model: Any, target: TargetLike = "llvm",
                     input_shapes: ShapeDict | None = None, *, cpu_schedule: bool = True,
                     database: Any = None, cpu_layout: str | None = None,
                     **load_kwargs: Any) -> Extraction:
    """Load, lower and extract in one call: ``extract_graph(lower_to_kernels(load_model()))``.

    ``cpu_schedule``, ``database`` and ``cpu_layout`` go to :func:`lower_to_kernels`;
    ``load_kwargs`` to :func:`ios_tvm.compiler.frontend.load_model` (``dtype``, ``params``,
    ``seed``).
    """
    model = resolve_model(model)
    mod = load_model(model, input_shapes, **load_kwargs)
    tgt = resolve_target(target)
    try:
        return extract_graph(lower_to_kernels(mod, tgt, cpu_schedule=cpu_schedule,
                                              database=database, cpu_layout=cpu_layout),
                             target=tgt)
    except IosTvmError as e:
        # Name the model: lowering and extraction see only the Relax module.
        raise type(e)(f"{describe_model(model)}: {e}") from e
