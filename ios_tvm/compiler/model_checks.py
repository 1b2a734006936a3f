"""What a model must satisfy before TVM sees it, checked up front with errors that name the fault.

ONNX models are refused where ONNX Runtime refuses them (opset, duplicate names, tensors
defined twice, schema and type/shape inference failures, kernel shapes unlike the weights);
every model's inputs need static sizes (``input_shapes`` for dynamic ones) and no tensor may
exceed this machine's memory (:func:`max_tensor_bytes`), so a bad model fails in one line
before lowering instead of deep inside TVM.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tvm
from tvm import relax

from ios_tvm.errors import ModelLoadError, UnsupportedGraphError


# --------------------------------------------------------------------------------------------
# ONNX
# --------------------------------------------------------------------------------------------
def _onnx_dims(value_info: Any) -> list[int | str] | None:
    """Dims of an ONNX graph input: ints, dim_param names, or "?" for unnamed unknown dims.

    Returns None when the rank itself is unknown.
    """
    ttype = value_info.type.tensor_type
    if not ttype.HasField("shape"):
        return None
    dims: list[int | str] = []
    for d in ttype.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))  # 0 and negative sizes are refused by the caller
        elif d.HasField("dim_param") and d.dim_param:
            dims.append(d.dim_param)
        else:
            dims.append("?")
    return dims


def _check_onnx_inputs(model: Any, input_shapes: ShapeDict | None, src: str,
                       dtype: str | Mapping[str, str] = "float32") -> None:
    """Every input gets a static, non-empty shape of a size this machine can hold.

    Dynamic dims must be given a size (the scheduler needs static shapes); the sizes are
    checked here, before any lowering, against :func:`max_tensor_bytes`.
    """
    import onnx

    init_names = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in init_names]
    _check_shapes_arg(input_shapes, [i.name for i in inputs], f"ONNX model {src}")
    shapes = dict(input_shapes or {})
    for inp in inputs:
        dims = _onnx_dims(inp)
        for axis, d in enumerate(dims or []):
            if isinstance(d, int) and d < 0:
                raise ModelLoadError(f"input {inp.name!r} of {src} has an invalid size {d} "
                                     f"(axis {axis}, dims {dims})")
        if inp.name in shapes:
            given = tuple(int(d) for d in shapes[inp.name])
            if dims is not None and len(dims) != len(given):
                raise ModelLoadError(
                    f"input_shapes[{inp.name!r}] = {given} has rank {len(given)} but input "
                    f"{inp.name!r} of {src} has rank {len(dims)} (dims {dims})")
            if dims is not None:
                for axis, (d, g) in enumerate(zip(dims, given, strict=True)):
                    if isinstance(d, int) and d != g:
                        raise ModelLoadError(
                            f"input_shapes[{inp.name!r}] = {given} disagrees with the static dim "
                            f"{d} (axis {axis}) of input {inp.name!r} in {src}")
            static = list(given)
        else:
            if dims is None:
                raise UnsupportedGraphError(
                    f"input {inp.name!r} of {src} has unknown rank; "
                    f"{_shape_hint(inp.name, [])}")
            for axis, d in enumerate(dims):
                if not isinstance(d, int):
                    raise UnsupportedGraphError(
                        f"input {inp.name!r} of {src} has symbolic dim {d!r} (axis {axis}); "
                        f"{_shape_hint(inp.name, dims)}")
                if d == 0:
                    raise UnsupportedGraphError(
                        f"input {inp.name!r} of {src} has a zero-size dimension (axis {axis}, "
                        f"shape {tuple(dims)}): ios-tvm schedules non-empty tensors only")
            static = [int(d) for d in dims]
        if isinstance(dtype, Mapping) and inp.name in dtype:
            itemsize = np.dtype(str(dtype[inp.name])).itemsize
        else:
            elem = inp.type.tensor_type.elem_type
            try:
                itemsize = onnx.helper.tensor_dtype_to_np_dtype(elem).itemsize
            except (KeyError, ValueError, TypeError):
                raise ModelLoadError(f"input {inp.name!r} of {src} has an unknown element "
                                     f"type {elem}") from None
        _check_size(f"input {inp.name!r} of {src}", static, itemsize)


def _check_onnx_ops(model: Any, src: str) -> None:
    """Name every op type TVM's importer cannot convert, with the nodes that use it.

    TVM's own check (``OpNotImplemented``) lists only op types; naming the nodes helps find
    them in a large model.
    """
    try:
        from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map
        supported = set(_get_convert_map()) | {"If", "Constant"}
    except Exception:  # private API: if it moves, fall back to TVM's own error
        return
    bad: dict[str, list[str]] = {}
    for i, node in enumerate(model.graph.node):
        if node.op_type not in supported:
            in_default = node.domain in ("", "ai.onnx")
            key = node.op_type if in_default else f"{node.domain}.{node.op_type}"
            bad.setdefault(key, []).append(node.name or f"#{i}")
    if bad:
        parts = [f"{op} (node{'s' if len(ns) > 1 else ''} {', '.join(map(repr, ns[:5]))}"
                 f"{', ...' if len(ns) > 5 else ''})" for op, ns in bad.items()]
        raise UnsupportedGraphError(
            f"ONNX model {src} uses operator(s) that TVM's Relax ONNX importer does not support: "
            + "; ".join(parts))


def _node_label(node: Any, index: int) -> str:
    """How an error names an ONNX node: its name (or its position) and its op type."""
    return f"node {node.name or f'#{index}'!r} ({node.op_type})"


def _check_onnx_graph(model: Any, src: str) -> Any:
    """Refuse what ONNX Runtime refuses, naming the node or tensor; sort unsorted nodes.

    Refused: an ``ai.onnx`` opset newer than the installed ``onnx`` knows, or below 1; two
    nodes of one name; a tensor defined twice (by two nodes, or by a node and an input or
    initializer); a node or graph output reading a tensor nothing defines; a cycle. Nodes
    out of topological order, which ONNX Runtime accepts, are sorted (in a copy).
    """
    import onnx

    newest = onnx.defs.onnx_opset_version()
    default = [imp.version for imp in model.opset_import if imp.domain in ("", "ai.onnx")]
    for version in default:
        if not 1 <= version <= newest:
            raise ModelLoadError(
                f"ONNX model {src} imports opset {version} of the default domain; the "
                f"installed onnx {onnx.__version__} knows opsets 1 to {newest}")
    graph = model.graph
    if not default and any(n.domain in ("", "ai.onnx") for n in graph.node):
        raise ModelLoadError(f"ONNX model {src} uses operators of the default domain but "
                             "imports no opset of it (opset_import)")
    defined: dict[str, str] = {}

    def define(name: str, by: str) -> None:
        if name in defined:
            raise ModelLoadError(f"ONNX model {src} defines tensor {name!r} twice: by "
                                 f"{defined[name]} and by {by}")
        defined[name] = by

    for t in graph.initializer:
        define(t.name, "an initializer")
    init_names = set(defined)
    for inp in graph.input:
        if inp.name not in init_names:  # an input may also be an initializer (its default)
            define(inp.name, "a graph input")
    names: dict[str, int] = {}
    producer: dict[str, int] = {}
    for i, node in enumerate(graph.node):
        if node.name:
            if node.name in names:
                raise ModelLoadError(
                    f"ONNX model {src} has two nodes named {node.name!r}: #{names[node.name]} "
                    f"({graph.node[names[node.name]].op_type}) and #{i} ({node.op_type})")
            names[node.name] = i
        for out in node.output:
            if out:
                define(out, _node_label(node, i))
                producer[out] = i
    for i, node in enumerate(graph.node):
        for inp in node.input:
            if inp and inp not in defined:
                raise ModelLoadError(
                    f"{_node_label(node, i)} of {src} reads tensor {inp!r}, which no node, "
                    "graph input or initializer defines")
    listed: set[str] = set()
    for out in graph.output:
        if out.name not in defined:
            raise ModelLoadError(f"output {out.name!r} of {src} is not defined by any node, "
                                 "graph input or initializer")
        if out.name in listed:
            raise ModelLoadError(f"ONNX model {src} lists output {out.name!r} twice")
        listed.add(out.name)
    order = _topological_order(graph, producer, src)
    if order == list(range(len(graph.node))):
        return model
    sorted_model = onnx.ModelProto()
    sorted_model.CopyFrom(model)
    del sorted_model.graph.node[:]
    sorted_model.graph.node.extend(graph.node[i] for i in order)
    return sorted_model


def _topological_order(graph: Any, producer: Mapping[str, int], src: str) -> list[int]:
    """Node indices in a topological order, the given order where it already is one."""
    import heapq

    n = len(graph.node)
    succ: list[list[int]] = [[] for _ in range(n)]
    indegree = [0] * n
    for i, node in enumerate(graph.node):
        for p in {producer[t] for t in node.input if t in producer}:
            succ[p].append(i)
            indegree[i] += 1
    ready = [i for i in range(n) if indegree[i] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for j in succ[i]:
            indegree[j] -= 1
            if indegree[j] == 0:
                heapq.heappush(ready, j)
    if len(order) < n:
        stuck = min(i for i in range(n) if indegree[i] > 0)
        raise ModelLoadError(f"the nodes of {src} form a cycle through "
                             f"{_node_label(graph.node[stuck], stuck)}")
    return order


def _check_onnx_nodes(model: Any, src: str) -> None:
    """Check each node against its operator's schema, as ONNX Runtime does when it loads.

    An attribute the operator does not define, a missing required one, the wrong number of
    inputs or outputs, or a conv ``kernel_shape`` unlike its weights is refused, naming the
    node (TVM's importer ignores such attributes and fails obscurely on missing inputs).
    Nodes with subgraphs (If, Loop) are left to the importer and the scheduler.
    """
    import onnx

    ctx = onnx.checker.C.CheckerContext()
    ctx.ir_version = model.ir_version
    ctx.opset_imports = {imp.domain: imp.version for imp in model.opset_import}
    weights = {t.name: t for t in model.graph.initializer}
    for i, node in enumerate(model.graph.node):
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for a in node.attribute):
            continue
        try:
            onnx.checker.check_node(node, ctx)
        except Exception as e:  # onnx raises ValidationError (and others for odd protos)
            text = " ".join(str(e).split()).split(" ==> Context:")[0]
            raise ModelLoadError(f"{_node_label(node, i)} of {src} is invalid: {text}") from e
        _check_kernel_shape(node, i, weights, src)


def _check_kernel_shape(node: Any, index: int, weights: Mapping[str, Any], src: str) -> None:
    """Refuse a conv whose ``kernel_shape`` differs from its weights' kernel size.

    TVM ignores the attribute; ONNX Runtime refuses to run such a model.
    """
    if node.op_type not in ("Conv", "ConvTranspose") or len(node.input) < 2:
        return
    w = weights.get(node.input[1])
    ks = next((list(a.ints) for a in node.attribute if a.name == "kernel_shape"), None)
    if w is None or ks is None or list(w.dims[2:]) == ks:
        return
    raise ModelLoadError(f"{_node_label(node, index)} of {src} has kernel_shape {ks}, but its "
                         f"weight {node.input[1]!r} has kernel size {list(w.dims[2:])}")


def _check_onnx_types(model: Any, src: str) -> None:
    """Run ONNX's strict type and shape inference, which ONNX Runtime also runs on load.

    It refuses what TVM's importer would silently ignore or fail on deep inside (a conv on a
    bool tensor, a ``kernel_shape`` that disagrees with the weights). Shapes the model
    declares for intermediate tensors and outputs are left out: ONNX Runtime merges those
    leniently (and ``input_shapes`` may change them). Models over protobuf's 2 GB limit are
    not checked (inference needs the whole model in one message).
    """
    import onnx

    if model.ByteSize() >= 2**31 - 1:
        return
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.value_info[:]
    for out in probe.graph.output:
        out.type.tensor_type.ClearField("shape")
    try:
        onnx.shape_inference.infer_shapes(probe, check_type=True, strict_mode=True)
    except (onnx.shape_inference.InferenceError, ValueError, TypeError) as e:
        # (ValueError: a tensor type onnx does not know, e.g. elem_type 1000)
        text = " ".join(str(e).split())
        raise ModelLoadError(f"ONNX model {src} fails ONNX's type and shape inference: "
                             f"{text}") from e


def _failing_onnx_node(exc: BaseException) -> str | None:
    """The ONNX node TVM's importer was converting when it raised ``exc``, if known.

    Read from the importer's frame (``_construct_nodes`` loops over ``graph.node`` with a
    local ``node``); None when the error came from elsewhere.
    """
    tb = exc.__traceback__
    node = None
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "_construct_nodes":
            node = tb.tb_frame.f_locals.get("node", node)
        tb = tb.tb_next
    if node is None or not hasattr(node, "op_type"):
        return None
    return f"node {node.name or '(unnamed)'!r} ({node.op_type})"


ShapeDict = Mapping[str, Sequence[int]]


def _shape_hint(name: str, shape: Sequence[Any]) -> str:
    """Suggest how to give an input's shape: known dims filled in, unknown ones shown as 1."""
    dims = [str(d) if isinstance(d, int) else "1" for d in shape] or ["1"]
    sym = [repr(d) for d in shape if not isinstance(d, int)]
    py = ", ".join(dims) + ("," if len(dims) == 1 else "")
    note = f" with your size for {', '.join(sym)}" if sym else " with the input's real shape"
    return (f"pass input_shapes={{{name!r}: ({py})}} or --input-shapes "
            f"{name}:{','.join(dims)}{note}")


def _check_shapes_arg(input_shapes: ShapeDict | None, known: Sequence[str], what: str) -> None:
    """Reject input_shapes keys that name no input, and non-integer dims."""
    if not input_shapes:
        return
    unknown = [k for k in input_shapes if k not in known]
    if unknown:
        raise ModelLoadError(f"input_shapes names {unknown} but {what} has inputs {list(known)}")
    for k, v in input_shapes.items():
        try:
            dims = [int(d) for d in v]
        except (TypeError, ValueError):
            raise ModelLoadError(f"input_shapes[{k!r}] = {v!r} is not a sequence of ints") from None
        if any(d <= 0 for d in dims):
            raise ModelLoadError(f"input_shapes[{k!r}] = {tuple(dims)} has a non-positive dim")


def max_tensor_bytes() -> int:
    """The largest tensor ios-tvm accepts: this machine's physical memory.

    Every tensor of a plan is allocated at once, so a model with a tensor larger than memory
    cannot run here; :func:`load_model` refuses it before any lowering. The environment
    variable ``IOS_TVM_MAX_TENSOR_BYTES`` sets another limit (bytes).
    """
    env = os.environ.get("IOS_TVM_MAX_TENSOR_BYTES")
    if env:
        try:
            return int(env)
        except ValueError:
            raise ModelLoadError(f"IOS_TVM_MAX_TENSOR_BYTES={env!r} is not a number of "
                                 "bytes") from None
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # no sysconf: a limit no model reaches
        return 1 << 46


def _check_size(what: str, shape: Sequence[int], itemsize: int) -> None:
    """Refuse a tensor larger than :func:`max_tensor_bytes`, naming it and its size."""
    nbytes = itemsize
    for d in shape:
        nbytes *= int(d)
    limit = max_tensor_bytes()
    if nbytes > limit:
        raise ModelLoadError(
            f"{what} has shape {tuple(int(d) for d in shape)}: {nbytes:,} bytes, more than the "
            f"largest tensor ios-tvm allocates here ({limit:,} bytes, this machine's memory; "
            "set IOS_TVM_MAX_TENSOR_BYTES to change)")


def _check_relax_sizes(mod: tvm.IRModule, fname: str, src: str) -> None:
    """Refuse any static tensor of the entry function over :func:`max_tensor_bytes`."""
    func = mod[fname]

    def check(what: str, ty: Any) -> None:
        if isinstance(ty, tvm.ir.TupleType):
            for i, f in enumerate(ty.fields):
                check(f"{what}[{i}]", f)
            return
        if not isinstance(ty, relax.TensorType) or ty.shape is None:
            return
        dims = list(ty.shape.values)
        if not all(isinstance(d, tvm.tirx.IntImm) for d in dims) or ty.dtype in ("", "void"):
            return
        itemsize = max(1, (tvm.DataType(str(ty.dtype)).bits * tvm.DataType(str(ty.dtype)).lanes
                           + 7) // 8)
        _check_size(what, [int(d.value) for d in dims], itemsize)

    for p in func.params:
        check(f"input {p.name!r} of {src}", p.ty)
    body = func.body
    for block in body.blocks if isinstance(body, relax.SeqExpr) else []:
        for b in block.bindings:
            op = getattr(getattr(b.value, "op", None), "name", None)
            check(f"tensor {b.var.name!r}{f' ({op})' if op else ''} of {src}", b.var.ty)
