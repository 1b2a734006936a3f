"""Model loading: ONNX files/protos, ``relax.frontend.nn`` modules and Relax IRModules.

First step of the data flow::

    ONNX / nn.Module / IRModule --load_model--> Relax IRModule (static shapes, weights bound)
        --kernels.lower_to_kernels--> fused kernels --extract.extract_graph--> OpGraph

What a model must satisfy is checked first (:mod:`ios_tvm.compiler.model_checks`).

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

from ios_tvm.compiler.model_checks import (
    ShapeDict,
    _check_onnx_graph,
    _check_onnx_inputs,
    _check_onnx_nodes,
    _check_onnx_ops,
    _check_onnx_types,
    _check_relax_sizes,
    _check_shapes_arg,
    _failing_onnx_node,
)
from ios_tvm.errors import IosTvmError, ModelLoadError, UnsupportedGraphError
from ios_tvm.models import resolve_model

#: IRModule attributes (JSON lists of str) with the model's input and output names, in
#: order; :func:`load_model` sets them for ONNX models (TVM's importer renames inputs such as
#: ``input.1`` to ``input_1`` and calls outputs ``gv``), and extraction names the graph's
#: inputs and outputs so.
INPUT_NAMES_ATTR = "ios_tvm.input_names"
OUTPUT_NAMES_ATTR = "ios_tvm.output_names"


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
def entry_function(mod: tvm.IRModule, func_name: str | None = None) -> str:
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


def num_inputs(func: relax.Function) -> int:
    """How many of ``func``'s parameters are model inputs (the rest are weights)."""
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
        names = [p.name for p in func.params[num_inputs(func):]]
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
    ninp = num_inputs(func)
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
    model = resolve_model(model)
    src = describe_model(model)
    if isinstance(model, str | os.PathLike):
        path = Path(model)
        proto = _read_onnx_file(path)
        mod, fname = _load_onnx(proto, input_shapes, dtype, src, str(path)), "main"
    elif _is_onnx(model):
        mod, fname = _load_onnx(model, input_shapes, dtype, src, None), "main"
    elif isinstance(model, tvm.IRModule):
        fname = entry_function(model)
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
