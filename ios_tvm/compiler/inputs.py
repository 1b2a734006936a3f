"""Model inputs for profiling and timing: valid for the model, or the user's own.

Stage profiling and whole-plan timing run real kernels on inputs; an id outside its table
makes a gather fail (or read out of bounds), so inputs are drawn within what their consumers
accept (:func:`profiling_inputs`) unless the user gives sample inputs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ios_tvm.compiler.index_guard import INDEX_BOUNDS_ATTR
from ios_tvm.errors import SampleInputError


def profiling_inputs(extraction: Any, given: Any = None, seed: int = 0) -> list[np.ndarray]:
    """Values of the model inputs, in input order, for every timing run of a build or bench.

    The one place such inputs are made (stage profiling, whole-plan timing, the Relax VM and
    ONNX Runtime comparisons), so that they are valid for the model: an id fed to a gather
    must index the table.

    Parameters
    ----------
    extraction
        The model's graph and lowered module (:func:`ios_tvm.compiler.extract.graph_from_model`).
    given
        The user's sample inputs: a mapping by input name or a sequence in input order.
        Checked against the inputs' shapes and dtypes (numbers of the same kind are cast).
    seed
        Seed of the values made when ``given`` is None: floats standard normal; integer
        inputs that index a gather or scatter uniform in ``[0, n)`` for the smallest axis
        size ``n`` they index (:data:`ios_tvm.compiler.index_guard.INDEX_BOUNDS_ATTR`); other
        integers and
        booleans zeros.

    Raises
    ------
    SampleInputError
        ``given`` lacks an input, names one the model does not have, or a value has the wrong
        shape or kind of dtype.
    """
    graph = extraction.graph
    names = [n for n in graph.inputs if graph.tensors[n].kind == "input"]
    if given is not None:
        return [_sample_value(graph.tensors[n], v)
                for n, v in zip(names, _by_position(names, given), strict=True)]
    bounds = index_bounds_of(extraction.mod)
    rng = np.random.default_rng(seed)
    out = []
    for n in names:
        t = graph.tensors[n]
        kind = {"float": "f", "bfloat": "f", "int": "i", "uint": "u"}.get(
            t.dtype.rstrip("0123456789").split("_")[0], "b")
        if kind == "f":
            out.append(rng.standard_normal(t.shape).astype(t.dtype))
        elif kind in "iu" and n in bounds:
            out.append(rng.integers(0, bounds[n], size=t.shape).astype(t.dtype))
        else:
            out.append(np.zeros(t.shape, t.dtype))
    return out


def _by_position(names: Sequence[str], given: Any) -> list[Any]:
    if isinstance(given, Mapping):
        unknown = [k for k in given if k not in names]
        missing = [n for n in names if n not in given]
        if unknown or missing:
            raise SampleInputError(
                f"sample inputs {'name ' + repr(unknown) if unknown else ''}"
                f"{' and ' if unknown and missing else ''}"
                f"{'lack ' + repr(missing) if missing else ''}; the model's inputs are {names}")
        return [given[n] for n in names]
    values = list(given)
    if len(values) != len(names):
        raise SampleInputError(f"{len(values)} sample input(s) given; the model has "
                               f"{len(names)}: {names}")
    return values


def _sample_value(spec: Any, value: Any) -> np.ndarray:
    """``value`` as the input ``spec`` wants it, or a SampleInputError naming the input."""
    arr = np.asarray(value)
    want = np.dtype(spec.dtype)
    if arr.shape != tuple(spec.shape):
        raise SampleInputError(f"sample input {spec.name!r} has shape {arr.shape}; the model "
                               f"takes {tuple(spec.shape)}")
    same_kind = (arr.dtype.kind == want.kind or (arr.dtype.kind in "iu" and want.kind in "iu"))
    if not same_kind:
        raise SampleInputError(f"sample input {spec.name!r} has dtype {arr.dtype}; the model "
                               f"takes {spec.dtype}")
    return np.ascontiguousarray(arr.astype(want, copy=False))


def index_bounds_of(mod: Any) -> dict[str, int]:
    """``{input: n}``: the index inputs :func:`~ios_tvm.compiler.index_guard.guard_indices` found.

    An input ``x`` with bound ``n`` is valid in ``[-n, n)``.
    """
    attrs = getattr(mod, "attrs", None)
    if attrs is None or INDEX_BOUNDS_ATTR not in attrs:
        return {}
    try:
        bounds = json.loads(str(attrs[INDEX_BOUNDS_ATTR]))
    except ValueError:
        return {}
    return {str(k): int(v) for k, v in bounds.items() if int(v) > 0}
