"""Model loading: ONNX files/protos, ``relax.frontend.nn`` modules and Relax IRModules.

First step of the data flow (see ``shared/design/architecture.md``)::

    ONNX / nn.Module / IRModule --load_model--> Relax IRModule (static shapes, weights bound)
        --extract.lower_to_kernels--> fused kernels --extract.extract_graph--> OpGraph

:func:`load_model` returns a Relax IRModule whose entry function has only the model inputs as
parameters (weights are bound as constants wherever their values are known) and whose input
shapes are static: the scheduler works per input shape, so a dynamic dimension must be given a
size here, and the error says how.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tvm
from tvm import relax

from .errors import IosTvmError, ModelLoadError, UnsupportedGraphError

ShapeDict = Mapping[str, Sequence[int]]

#: IRModule attributes (JSON lists of str) with the model's input and output names, in
#: order; :func:`load_model` sets them for ONNX models (TVM's importer renames inputs such as
#: ``input.1`` to ``input_1`` and calls outputs ``gv``), and extraction names the graph's
#: inputs and outputs so.
INPUT_NAMES_ATTR = "ios_tvm.input_names"
OUTPUT_NAMES_ATTR = "ios_tvm.output_names"

__all__ = [
    "INPUT_NAMES_ATTR", "OUTPUT_NAMES_ATTR", "describe_model", "error_text",
    "format_input_shapes", "load_model", "max_tensor_bytes", "parse_input_shapes", "tvm_errors",
]


def parse_input_shapes(text: str) -> dict[str, tuple[int, ...]]:
    """Parse the CLI form ``"x:1,3,224,224;mask:1,128"`` into ``{"x": (1, 3, 224, 224), ...}``.

    Inputs are separated by ``;`` (or whitespace); a name is separated from its dims by the
    *last* ``:`` so that names containing ``:`` still work.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    for item in text.replace(";", " ").split():
        name, sep, dims = item.rpartition(":")
        if not sep or not name:
            raise ModelLoadError(f"bad input shape {item!r}: expected NAME:D0,D1,... "
                                 "e.g. x:1,3,224,224")
        try:
            shapes[name] = tuple(int(d) for d in dims.split(",") if d.strip())
        except ValueError:
            raise ModelLoadError(f"bad input shape {item!r}: dims must be integers, "
                                 "e.g. x:1,3,224,224") from None
    return shapes


def format_input_shapes(shapes: ShapeDict) -> str:
    """Inverse of :func:`parse_input_shapes` (``{"x": (1, 3)}`` -> ``"x:1,3"``)."""
    return ";".join(f"{k}:{','.join(str(int(d)) for d in v)}" for k, v in shapes.items())


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


def error_text(exc: BaseException, limit: int = 400) -> str:
    """``exc`` as one line: TVM's messages span lines and may carry a C++ backtrace."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = " ".join(ln for ln in lines if not ln.startswith(("File ", "Traceback", "^")))
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _load_onnx(model: Any, input_shapes: ShapeDict | None, dtype: str | Mapping[str, str],
               src: str, path: str | None) -> tvm.IRModule:
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    checker_msg = None
    try:
        # The path form also checks models over 2 GB (external data).
        onnx.checker.check_model(path if path is not None else model)
    except Exception as e:
        checker_msg = " ".join(f"{type(e).__name__}: {e}".split())  # one line
    if checker_msg is not None and (model.ir_version == 0 or len(model.graph.node) == 0):
        # A protobuf parse of random bytes "succeeds" with an empty model; only the checker
        # notices, so a checker failure on an empty model is fatal.
        raise ModelLoadError(f"malformed ONNX model {src}: {checker_msg}")
    checked = _check_onnx_graph(model, src)
    if checked is not model and checker_msg and "topologically sorted" in checker_msg:
        checker_msg = None  # sorted now
    model = checked
    _check_onnx_ops(model, src)
    _check_onnx_nodes(model, src)
    _check_onnx_types(model, src)
    _check_onnx_inputs(model, input_shapes, src, dtype)
    shape_dict = {k: [int(d) for d in v] for k, v in (input_shapes or {}).items()}
    dtype_dict = dict(dtype) if isinstance(dtype, Mapping) else dtype
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            # from_onnx re-runs the checker and warns (we report the checker ourselves), and
            # prints the inputs of an op it fails on (we name the node instead).
            warnings.simplefilter("ignore")
            mod = from_onnx(model, shape_dict=shape_dict or None, dtype_dict=dtype_dict)
    except tvm.error.OpNotImplemented as e:
        raise UnsupportedGraphError(f"ONNX model {src}: {error_text(e)}") from e
    except Exception as e:  # TVM's importer raises anything from AssertionError to TVM errors
        node = _failing_onnx_node(e)
        where = f" at {node}" if node else ""
        extra = f" (onnx.checker also failed: {checker_msg})" if checker_msg else ""
        # NotImplementedError: a valid model that TVM cannot import (e.g. a 4-D conv).
        error = UnsupportedGraphError if isinstance(e, NotImplementedError) else ModelLoadError
        raise error(f"TVM's ONNX importer failed on {src}{where}: {error_text(e)}{extra}") from e
    if checker_msg is not None:
        warnings.warn(f"onnx.checker rejected {src} ({checker_msg}) but TVM imported it",
                      stacklevel=3)
    init_names = {t.name for t in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in init_names]
    mod = mod.with_attr(INPUT_NAMES_ATTR, json.dumps(inputs))
    return mod.with_attr(OUTPUT_NAMES_ATTR, json.dumps([o.name for o in model.graph.output]))


def _read_onnx_file(path: Path) -> Any:
    import onnx
    from google.protobuf.message import DecodeError

    if not path.exists():
        raise ModelLoadError(f"model file {str(path)!r} does not exist")
    if path.is_dir():
        raise ModelLoadError(f"model path {str(path)!r} is a directory, not an ONNX file")
    try:
        return onnx.load(str(path))
    except (DecodeError, ValueError, RuntimeError, OSError) as e:
        raise ModelLoadError(
            f"malformed ONNX file {str(path)!r}: the protobuf parser failed: "
            f"{type(e).__name__}: {e}") from e


# --------------------------------------------------------------------------------------------
# Relax IRModule
# --------------------------------------------------------------------------------------------
def _entry_function(mod: tvm.IRModule, func_name: str | None = None) -> str:
    """Name of the entry function: ``func_name``, else "main", else the only public one."""
    funcs = {gv.name_hint: f for gv, f in mod.functions.items() if isinstance(f, relax.Function)}
    if func_name is not None:
        if func_name not in funcs:
            raise UnsupportedGraphError(
                f"the module has no Relax function {func_name!r} (it has {sorted(funcs)})")
        return func_name
    if "main" in funcs:
        return "main"
    public = [n for n, f in funcs.items()
              if not (f.attrs and "Primitive" in f.attrs) and n != "_initialize_effect"]
    if len(public) == 1:
        return public[0]
    raise UnsupportedGraphError(
        f"cannot tell which Relax function is the model (candidates {sorted(public)}); "
        "pass func_name")


def _num_inputs(func: relax.Function) -> int:
    if func.attrs is not None and "num_input" in func.attrs:
        return int(func.attrs["num_input"])
    return len(func.params)


def _to_tensor(name: str, value: Any) -> tvm.runtime.Tensor:
    if isinstance(value, tvm.runtime.Tensor):
        return value
    try:
        return tvm.runtime.tensor(np.ascontiguousarray(np.asarray(value)))
    except Exception as e:
        raise ModelLoadError(f"parameter {name!r}: cannot convert {type(value).__name__} "
                             "to a TVM tensor") from e


def _bind_relax_params(mod: tvm.IRModule, fname: str,
                       params: Mapping[str, Any] | None) -> tvm.IRModule:
    """Bind weights: the function's own "params" attr (keep_params_in_input) and ``params``."""
    func = mod[fname]
    if func.attrs is not None and "params" in func.attrs:
        mod, detached = relax.frontend.detach_params(mod)
        func = mod[fname]
        values = detached.get(fname, [])
        names = [p.name for p in func.params[_num_inputs(func):]]
        mod = relax.transform.BindParams(fname, dict(zip(names, values, strict=False)))(mod)
    if params:
        names = [p.name for p in mod[fname].params]
        unknown = [k for k in params if k not in names]
        if unknown:
            raise ModelLoadError(f"params names {unknown} that are not parameters of "
                                 f"{fname!r} (parameters: {names})")
        mod = relax.transform.BindParams(
            fname, {k: _to_tensor(k, v) for k, v in params.items()})(mod)
    return mod


def _specialise_relax(mod: tvm.IRModule, fname: str,
                      input_shapes: ShapeDict | None) -> tvm.IRModule:
    """Bind symbolic dims of the entry function's parameters to the sizes in input_shapes."""
    func = mod[fname]
    names = [p.name for p in func.params]
    _check_shapes_arg(input_shapes, names, f"function {fname!r}")
    if not input_shapes:
        return mod
    binding: dict[Any, int] = {}
    for p in func.params:
        if p.name not in input_shapes:
            continue
        given = tuple(int(d) for d in input_shapes[p.name])
        ty = p.ty
        if not isinstance(ty, relax.TensorType) or ty.shape is None:
            raise ModelLoadError(f"parameter {p.name!r} of {fname!r} is not a tensor of known "
                                 f"rank ({ty}); cannot apply input_shapes")
        dims = list(ty.shape.values)
        if len(dims) != len(given):
            raise ModelLoadError(f"input_shapes[{p.name!r}] = {given} has rank {len(given)} but "
                                 f"parameter {p.name!r} has shape {ty.shape}")
        for axis, (d, g) in enumerate(zip(dims, given, strict=True)):
            if isinstance(d, tvm.tirx.IntImm):
                if int(d.value) != g:
                    raise ModelLoadError(
                        f"input_shapes[{p.name!r}] = {given} disagrees with the static dim "
                        f"{int(d.value)} (axis {axis}) of parameter {p.name!r}")
            elif isinstance(d, tvm.tirx.Var):
                prev = binding.get(d)
                if prev is not None and prev != g:
                    raise ModelLoadError(f"symbolic dim {d.name!r} is given two sizes: "
                                         f"{prev} and {g}")
                binding[d] = g
            else:
                raise ModelLoadError(f"parameter {p.name!r} has dim {d} (axis {axis}), an "
                                     "expression that input_shapes cannot bind")
    if binding:
        mod = relax.transform.BindSymbolicVars(binding, fname)(mod)
    return mod


# --------------------------------------------------------------------------------------------
# relax.frontend.nn
# --------------------------------------------------------------------------------------------
def _random_value(name: str, shape: Sequence[int], dtype: str,
                  rng: np.random.Generator) -> np.ndarray:
    if dtype.startswith("float"):
        # Small values keep activations finite through deep stacks of layers.
        return rng.uniform(-0.1, 0.1, size=tuple(shape)).astype(dtype)
    if dtype.startswith(("int", "uint", "bool")):
        return np.zeros(tuple(shape), dtype=dtype)
    raise ModelLoadError(f"parameter {name!r} has dtype {dtype}, for which no random values can "
                         "be made here; pass its value in params")


def _load_nn_module(module: Any, input_shapes: ShapeDict | None, dtype: str | Mapping[str, str],
                    params: Mapping[str, Any] | None, seed: int) -> tvm.IRModule:
    from tvm.relax.frontend import nn

    arg_names = [n for n in inspect.signature(module.forward).parameters if n != "self"]
    if not input_shapes:
        raise ModelLoadError(
            f"a relax.frontend.nn.Module needs input_shapes for forward({', '.join(arg_names)}),"
            f" e.g. input_shapes={{{arg_names[0] if arg_names else 'x'!r}: (1, 3, 224, 224)}}")
    _check_shapes_arg(input_shapes, arg_names, f"{type(module).__name__}.forward")
    missing = [n for n in arg_names if n not in input_shapes]
    if missing:
        raise ModelLoadError(f"input_shapes lacks {missing} (forward takes {arg_names})")
    spec = {n: nn.spec.Tensor(tuple(int(d) for d in input_shapes[n]),
                              dtype[n] if isinstance(dtype, Mapping) else dtype)
            for n in arg_names}
    try:
        mod, named_params = module.export_tvm(spec={"forward": spec})[:2]
    except Exception as e:
        raise ModelLoadError(f"export_tvm of {type(module).__name__} failed: "
                             f"{type(e).__name__}: {e}") from e
    func = mod["forward"]
    ninp = _num_inputs(func)
    pvars = list(func.params[ninp:])
    if len(pvars) != len(named_params):
        raise ModelLoadError(f"export_tvm returned {len(named_params)} parameters but forward "
                             f"has {len(pvars)} weight parameters")
    given = dict(params or {})
    unknown = [k for k in given if k not in {n for n, _ in named_params}]
    if unknown:
        raise ModelLoadError(f"params names {unknown}; the module's parameters are "
                             f"{[n for n, _ in named_params]}")
    rng = np.random.default_rng(seed)
    binding: dict[Any, tvm.runtime.Tensor] = {}
    for var, (name, p) in zip(pvars, named_params, strict=True):
        if name in given:
            value = _to_tensor(name, given[name])
        elif getattr(p, "data", None) is not None:
            value = p.data
        else:
            shape = [int(s) for s in p.shape]
            value = tvm.runtime.tensor(_random_value(name, shape, str(p.dtype), rng))
        binding[var] = value  # bind by Var: names with dots are printed sanitised
    return relax.transform.BindParams("forward", binding)(mod)


# --------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------
def load_model(model: Any, input_shapes: ShapeDict | None = None,
               dtype: str | Mapping[str, str] = "float32", *,
               params: Mapping[str, Any] | None = None, seed: int = 0) -> tvm.IRModule:
    """Load a model as a Relax IRModule with static input shapes and weights as constants.

    Parameters
    ----------
    model
        An ONNX file path (``str`` or ``Path``), the name of a built-in model
        (:func:`ios_tvm.models.resolve_model`; batch 1), an ``onnx.ModelProto``, a Relax
        ``tvm.IRModule``, or a ``relax.frontend.nn.Module`` (then ``input_shapes`` must give
        every argument of ``forward``).
    input_shapes
        Sizes for the model inputs, ``{"x": (1, 3, 224, 224)}``. Required for every input
        with a dynamic dimension; for an IRModule it binds the symbolic dims of the entry
        function's parameters.
    dtype
        Dtype of the nn.Module arguments (or ``{name: dtype}``). For ONNX only a dict has an
        effect (it overrides the declared type of the named inputs), as in ``from_onnx``.
    params
        Weight values by parameter name: for an nn.Module (names as in ``named_parameters``;
        parameters not given get deterministic random values from ``seed``), or for an
        IRModule whose entry function takes weights as parameters.
    seed
        Seed for the random weights of an nn.Module.

    Returns
    -------
    tvm.IRModule
        For ONNX and IRModule input the entry function is ``main``; for an nn.Module it is
        ``forward``.

    Raises
    ------
    ModelLoadError
        Missing or malformed file, a failing importer, inconsistent ``input_shapes``.
    UnsupportedGraphError
        An operator TVM cannot import, or a dynamic input dim without a size.
    """
    from .models import resolve_model

    model = resolve_model(model)
    src = describe_model(model)
    if isinstance(model, str | os.PathLike):
        path = Path(model)
        proto = _read_onnx_file(path)
        mod, fname = _load_onnx(proto, input_shapes, dtype, src, str(path)), "main"
    elif _is_onnx(model):
        mod, fname = _load_onnx(model, input_shapes, dtype, src, None), "main"
    elif isinstance(model, tvm.IRModule):
        fname = _entry_function(model)
        with tvm_errors(f"loading {src} failed in TVM"):
            mod = _bind_relax_params(model, fname, params)
            mod = _specialise_relax(mod, fname, input_shapes)
    elif _is_nn_module(model):
        mod, fname = _load_nn_module(model, input_shapes, dtype, params, seed), "forward"
    else:
        raise ModelLoadError(
            f"cannot load a {type(model).__name__}: expected an ONNX path or ModelProto, a "
            "built-in model name, a Relax IRModule, or a relax.frontend.nn.Module")
    _check_relax_sizes(mod, fname, src)
    return mod


def _is_onnx(model: Any) -> bool:
    try:
        import onnx
    except ImportError:  # onnx is optional when the model is not ONNX
        return False
    return isinstance(model, onnx.ModelProto)


def _is_nn_module(model: Any) -> bool:
    from tvm.relax.frontend import nn

    return isinstance(model, nn.Module)


def describe_model(model: Any) -> str:
    """How error messages name ``model``: its file, or what it is."""
    if isinstance(model, str | os.PathLike):
        return repr(os.fspath(model))
    if _is_onnx(model):
        return f"(ModelProto {model.graph.name or '<in-memory model>'!r})"
    if isinstance(model, tvm.IRModule):
        return "the Relax IRModule"
    return f"the {type(model).__name__} module"


@contextlib.contextmanager
def tvm_errors(what: str, error: type[IosTvmError] = ModelLoadError) -> Any:
    """Turn an exception from TVM into one ``error(f"{what}: {the exception}")``, chained.

    IosTvmErrors pass as they are; the chained exception keeps TVM's whole message (and
    backtrace) for ``-v``.
    """
    try:
        yield
    except IosTvmError:
        raise
    except Exception as e:  # TVM raises InternalError, ValueError, TypeError, ...
        raise error(f"{what}: {error_text(e)}") from e
