"""The execution plan: the JSON contract between the lowering and the C++ executor.

Runtime side: imports neither the TVM compiler nor the scheduler. A plan lists tensors
(shape, dtype, where their bytes live), activation storages, kernel calls (function name
and argument tensors, outputs last, as TVM's destination-passing kernels take them) and
stages of groups of calls. Groups of a stage run concurrently (one CUDA stream or worker
thread each); stages are separated by a join.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import IosTvmError

PLAN_FORMAT = "ios_tvm.Plan"
#: The newest plan version this ios-tvm writes and reads. Version 2 adds view byte offsets
#: (``"offset"``); a plan without any is still written as version 1, so older executors keep
#: running it, while one with offsets is refused by them instead of silently misread.
PLAN_VERSION = 2
#: The oldest plan version this ios-tvm reads.
MIN_PLAN_VERSION = 1
#: Byte alignment TVM kernels assume for every tensor argument (``kAllocAlignment``; LLVM
#: emits aligned vector loads), so a view's offset must be a multiple of it.
VIEW_ALIGNMENT = 64
#: Where a tensor's bytes live: a graph input buffer, a weight from the params file,
#: an activation storage, or a view of another tensor (same bytes, other shape).
TENSOR_PLACES = ("input", "param", "storage", "view")


class PlanFormatError(IosTvmError, ValueError):
    """A plan (or artifact) is corrupt, truncated, of another version or target."""


@dataclass(frozen=True)
class PlanTensor:
    """A tensor of the plan.

    ``ref`` is the storage id for "storage", the base tensor id for "view" and unused (-1)
    otherwise. ``offset`` (views only) is where the view's bytes start in its base, a multiple
    of :data:`VIEW_ALIGNMENT`; e.g. one conv's channel slice of a merged conv's output.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    place: str
    ref: int = -1
    offset: int = 0

    @property
    def nbytes(self) -> int:
        """Size of the tensor in bytes."""
        return _nbytes(self.shape, self.dtype)


#: Bits per element of the dtypes whose name does not end in their width.
_ODD_DTYPE_BITS = {"bool": 8, "float8_e4m3fn": 8, "float8_e5m2": 8}


def _nbytes(shape: tuple[int, ...], dtype: str) -> int:
    """Bytes of a dense tensor of ``shape`` and ``dtype`` (``float32``, ``int8``, ...)."""
    bits = _ODD_DTYPE_BITS.get(dtype)
    if bits is None:
        digits = dtype[len(dtype.rstrip("0123456789")):]
        if not digits:
            raise PlanFormatError(f"unknown dtype {dtype!r}")
        bits = int(digits)
    n = (bits + 7) // 8
    for d in shape:
        n *= d
    return n


@dataclass(frozen=True)
class PlanCall:
    """One kernel call: ``kernel(*args)`` with the outputs last."""

    kernel: str
    args: tuple[int, ...]
    num_outputs: int = 1
    node: str = ""


@dataclass(frozen=True)
class PlanStage:
    """Groups of call ids; groups run concurrently, calls within a group in order."""

    groups: tuple[tuple[int, ...], ...]
    strategy: str = "concurrent"


@dataclass(frozen=True)
class Plan:
    """A complete execution plan (see the module docstring)."""

    target: str
    device_type: str
    tensors: tuple[PlanTensor, ...]
    storages: tuple[int, ...]
    calls: tuple[PlanCall, ...]
    stages: tuple[PlanStage, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False)
    #: Streams (worker threads) to create even if no stage needs that many (for profiling).
    min_streams: int = 1

    @property
    def num_streams(self) -> int:
        """Streams or worker threads the executor creates: the most groups in one stage."""
        return max(self.min_streams, *(len(s.groups) for s in self.stages), 1)

    @property
    def version(self) -> int:
        """The plan version this plan needs: 2 if a view has a byte offset, else 1."""
        return 2 if any(t.offset for t in self.tensors) else 1

    @property
    def activation_nbytes(self) -> int:
        """Bytes of all activation storages."""
        return sum(self.storages)

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "format": PLAN_FORMAT, "version": self.version, "target": self.target,
            "device_type": self.device_type,
            "tensors": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype,
                         "place": t.place, "ref": t.ref, **({"offset": t.offset} if t.offset
                                                            else {})}
                        for t in self.tensors],
            "storages": list(self.storages),
            "calls": [{"kernel": c.kernel, "args": list(c.args), "num_outputs": c.num_outputs,
                       "node": c.node} for c in self.calls],
            "stages": [{"strategy": s.strategy, "groups": [list(g) for g in s.groups]}
                       for s in self.stages],
            "inputs": list(self.inputs), "outputs": list(self.outputs), "meta": dict(self.meta),
            "min_streams": self.min_streams,
        }

    def dumps(self) -> str:
        """Serialise to JSON text."""
        return json.dumps(self.to_json())

    @classmethod
    def from_json(cls, d: Any) -> Plan:
        """Parse and validate a plan dict; raises :class:`PlanFormatError` naming the fault."""
        if not isinstance(d, Mapping) or d.get("format") != PLAN_FORMAT:
            raise PlanFormatError(f"not an {PLAN_FORMAT} document")
        version = d.get("version")
        if not (isinstance(version, int) and MIN_PLAN_VERSION <= version <= PLAN_VERSION):
            raise PlanFormatError(f"plan version {version!r} is not supported by this "
                                  f"ios-tvm (it reads versions {MIN_PLAN_VERSION} to "
                                  f"{PLAN_VERSION}); rebuild the artifact")
        try:
            plan = cls(
                str(d["target"]), str(d["device_type"]),
                tuple(PlanTensor(t["name"], tuple(int(x) for x in t["shape"]), t["dtype"],
                                 t["place"], int(t.get("ref", -1)), int(t.get("offset", 0)))
                      for t in d["tensors"]),
                tuple(int(x) for x in d["storages"]),
                tuple(PlanCall(c["kernel"], tuple(int(a) for a in c["args"]),
                               int(c.get("num_outputs", 1)), c.get("node", ""))
                      for c in d["calls"]),
                tuple(PlanStage(tuple(tuple(int(c) for c in g) for g in s["groups"]),
                                s.get("strategy", "concurrent")) for s in d["stages"]),
                tuple(int(x) for x in d["inputs"]), tuple(int(x) for x in d["outputs"]),
                d.get("meta", {}), int(d.get("min_streams", 1)))
        except (KeyError, TypeError, ValueError) as e:
            raise PlanFormatError(f"malformed plan: {type(e).__name__}: {e}") from e
        plan.validate()
        return plan

    @classmethod
    def loads(cls, text: str) -> Plan:
        """Parse JSON text written by :meth:`dumps`."""
        try:
            return cls.from_json(json.loads(text))
        except json.JSONDecodeError as e:
            raise PlanFormatError(f"plan is not valid JSON (truncated?): {e}") from e

    def validate(self) -> None:
        """Check internal consistency: every reference in range, every call in one stage."""
        nt = len(self.tensors)
        for i, t in enumerate(self.tensors):
            if t.place not in TENSOR_PLACES:
                raise PlanFormatError(f"tensor {i} ({t.name}): unknown place {t.place!r}")
            if t.place == "storage" and not 0 <= t.ref < len(self.storages):
                raise PlanFormatError(f"tensor {i} ({t.name}): storage {t.ref} does not exist")
            if t.place == "view" and not 0 <= t.ref < nt:
                raise PlanFormatError(f"tensor {i} ({t.name}): view of missing tensor {t.ref}")
            if t.offset:
                if t.place != "view":
                    raise PlanFormatError(f"tensor {i} ({t.name}): only views have an offset")
                if t.offset < 0 or t.offset % VIEW_ALIGNMENT:
                    raise PlanFormatError(f"tensor {i} ({t.name}): view offset {t.offset} is not "
                                          f"a non-negative multiple of {VIEW_ALIGNMENT} bytes")
                base = self.tensors[t.ref]
                if t.offset + t.nbytes > base.nbytes:
                    raise PlanFormatError(
                        f"tensor {i} ({t.name}): {t.nbytes} bytes at offset {t.offset} do not "
                        f"fit its base {base.name!r} ({base.nbytes} bytes)")
        for ci, c in enumerate(self.calls):
            bad = [a for a in c.args if not 0 <= a < nt]
            if bad:
                raise PlanFormatError(f"call {ci} ({c.kernel}): argument tensor {bad[0]} does not "
                                      "exist")
        seen: dict[int, int] = {}
        for si, s in enumerate(self.stages):
            for g in s.groups:
                for c in g:
                    if not 0 <= c < len(self.calls):
                        raise PlanFormatError(f"stage {si}: call {c} does not exist")
                    if c in seen:
                        raise PlanFormatError(f"call {c} appears in stages {seen[c]} and {si}")
                    seen[c] = si
        if len(seen) != len(self.calls):
            raise PlanFormatError(f"{len(self.calls) - len(seen)} call(s) are in no stage")
        for i in (*self.inputs, *self.outputs):
            if not 0 <= i < nt:
                raise PlanFormatError(f"graph input/output tensor {i} does not exist")
