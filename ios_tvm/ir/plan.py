"""The execution plan: the JSON contract between the lowering and the C++ executor.

Runtime side: imports neither the TVM compiler nor the scheduler. A plan lists tensors
(shape, dtype, where their bytes live), activation storages, kernel calls (function name
and argument tensors, outputs last, as TVM's destination-passing kernels take them) and
stages of groups of calls. Groups of a stage run concurrently (one CUDA stream or worker
thread each); stages are separated by a join.

:meth:`Plan.validate` checks a plan completely before anything runs it: types and ranges of
every field, limits (:data:`MAX_STREAMS`, :data:`MAX_NBYTES`, :data:`MAX_JSON_DEPTH`), and its
happens-before: every tensor a call reads is written earlier (in an earlier stage, or earlier
in the same group), nothing is written twice or by a concurrent group of the reader's stage,
and no two tensors that may be live at the same time share storage (the rule of
:mod:`ios_tvm.compiler.memory`, re-derived from the plan alone). A plan that passes runs the same,
bit for bit, as its calls one after another with every tensor in its own buffer.
"""

from __future__ import annotations

import bisect
import json
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ios_tvm.errors import PlanFormatError, UnsupportedGraphError
from ios_tvm.ir.graph import dtype_bytes

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
#: Device types a plan may run on.
DEVICE_TYPES = ("cpu", "cuda")
#: Most streams (CUDA) or threads (CPU) a plan may ask for: the groups of its widest stage
#: and ``min_streams``. IOS schedules use at most a handful; the cap turns a corrupt count
#: into an error instead of thousands of threads. runtime/executor.cc enforces it too.
MAX_STREAMS = 64
#: Most bytes one tensor, one storage or all storages together may take (1 TiB): far above
#: any model, far below the 2^63 at which sizes overflow. runtime/executor.cc enforces it too.
MAX_NBYTES = 1 << 40
#: Most dimensions of a tensor.
MAX_NDIM = 32
#: Deepest nesting of arrays and objects in plan.json (plans need 4; C++ parsers recurse).
MAX_JSON_DEPTH = 64
_INT64 = (-(1 << 63), (1 << 63) - 1)


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


def _nbytes(shape: tuple[int, ...], dtype: str) -> int:
    """Bytes of a dense tensor of ``shape`` and ``dtype`` (``float32``, ``int8``, ...)."""
    try:
        n = dtype_bytes(dtype)
    except UnsupportedGraphError:
        raise PlanFormatError(f"unknown dtype {dtype!r}") from None
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
        """Parse and validate a plan dict; raises :class:`PlanFormatError` naming the fault.

        Every field must have its JSON type (integers are integers, not ``3.0``, ``"3"`` or
        ``true``); optional ones (``ref``, ``offset``, ``num_outputs``, ``node``, ``strategy``,
        ``meta``, ``min_streams``) take their defaults.
        """
        if not isinstance(d, Mapping) or d.get("format") != PLAN_FORMAT:
            raise PlanFormatError(f"not an {PLAN_FORMAT} document")
        version = d.get("version")
        if not (_is_int(version) and MIN_PLAN_VERSION <= version <= PLAN_VERSION):
            raise PlanFormatError(f"plan version {version!r} is not supported by this "
                                  f"ios-tvm (it reads versions {MIN_PLAN_VERSION} to "
                                  f"{PLAN_VERSION}); rebuild the artifact")
        _check_depth(d, "plan")
        r = _Reader(d, "plan")
        tensors = tuple(_tensor_from_json(_Reader(t, f"tensor {i}"))
                        for i, t in enumerate(r.list("tensors")))
        calls = tuple(_call_from_json(_Reader(c, f"call {i}"))
                      for i, c in enumerate(r.list("calls")))
        stages = tuple(_stage_from_json(_Reader(s, f"stage {i}"))
                       for i, s in enumerate(r.list("stages")))
        meta = r.get("meta", {})
        if not isinstance(meta, Mapping):
            raise PlanFormatError(f"plan: 'meta' must be an object, got {_short(meta)}")
        plan = cls(r.str("target"), r.str("device_type"), tensors,
                   r.ints("storages"), calls, stages, r.ints("inputs"), r.ints("outputs"),
                   dict(meta), r.int("min_streams", 1))
        if plan.version > version:
            raise PlanFormatError(f"plan version {version} has view offsets, which need "
                                  f"version {plan.version}")
        plan.validate()
        return plan

    @classmethod
    def loads(cls, text: str | bytes) -> Plan:
        """Parse JSON text written by :meth:`dumps`."""
        return cls.from_json(parse_json(text, "plan", check_depth=False))  # from_json checks

    def validate(self) -> None:
        """Check the plan completely (see the module docstring).

        Raises :class:`PlanFormatError` naming the tensor, call or stage at fault.
        """
        self._check_fields()
        self._check_tensors()
        self._check_calls_and_stages()
        _Dataflow(self).check()

    # -- validation ------------------------------------------------------------------------
    def _check_fields(self) -> None:
        for what, value in (("target", self.target), ("device_type", self.device_type)):
            if not isinstance(value, str):
                raise PlanFormatError(f"plan: {what!r} must be a string, got {_short(value)}")
        if self.device_type not in DEVICE_TYPES:
            raise PlanFormatError(f"plan: unknown device type {self.device_type!r} (expected "
                                  f"one of {', '.join(DEVICE_TYPES)})")
        kind = target_kind(self.target)
        if kind in _KIND_DEVICE and _KIND_DEVICE[kind] != self.device_type:
            raise PlanFormatError(f"plan: target kind {kind!r} runs on "
                                  f"{_KIND_DEVICE[kind]!r} devices, but the plan says "
                                  f"device type {self.device_type!r}")
        if not isinstance(self.meta, Mapping):
            raise PlanFormatError(f"plan: 'meta' must be a mapping, got {_short(self.meta)}")
        if not (_is_int(self.min_streams) and 1 <= self.min_streams <= MAX_STREAMS):
            raise PlanFormatError(f"plan: min_streams {_short(self.min_streams)} is not in "
                                  f"1..{MAX_STREAMS}")
        for i, n in enumerate(self.storages):
            if not (_is_int(n) and 0 <= n <= MAX_NBYTES):
                raise PlanFormatError(f"storage {i}: size {_short(n)} is not in "
                                      f"0..{MAX_NBYTES} bytes")
        if sum(self.storages) > MAX_NBYTES:
            raise PlanFormatError(f"plan: the storages take {sum(self.storages)} bytes, more "
                                  f"than the limit of {MAX_NBYTES}")

    def _check_tensors(self) -> None:
        names: dict[str, int] = {}
        for i, t in enumerate(self.tensors):
            what = f"tensor {i} ({_short(t.name)})"
            if not isinstance(t.name, str) or not t.name:
                raise PlanFormatError(f"{what}: the name must be a non-empty string")
            if t.name in names:
                raise PlanFormatError(f"{what}: the name is also tensor {names[t.name]}'s")
            names[t.name] = i
            if not isinstance(t.shape, tuple | list) or len(t.shape) > MAX_NDIM or \
                    not all(_is_int(d) and d >= 0 for d in t.shape):
                raise PlanFormatError(f"{what}: shape {_short(t.shape)} is not a list of at "
                                      f"most {MAX_NDIM} non-negative integers")
            if not isinstance(t.dtype, str):
                raise PlanFormatError(f"{what}: dtype {_short(t.dtype)} is not a string")
            try:
                nbytes = t.nbytes
            except PlanFormatError as e:
                raise PlanFormatError(f"{what}: {e}") from None
            if nbytes > MAX_NBYTES:
                raise PlanFormatError(f"{what}: {nbytes} bytes, more than the limit of "
                                      f"{MAX_NBYTES}")
            if t.place not in TENSOR_PLACES:
                raise PlanFormatError(f"{what}: unknown place {_short(t.place)}")
            if not _is_int(t.ref) or not _is_int(t.offset):
                raise PlanFormatError(f"{what}: ref and offset must be integers")
            if t.place == "storage":
                if not 0 <= t.ref < len(self.storages):
                    raise PlanFormatError(f"{what}: storage {t.ref} does not exist")
                if nbytes > self.storages[t.ref]:
                    raise PlanFormatError(f"{what}: {nbytes} bytes do not fit storage "
                                          f"{t.ref} ({self.storages[t.ref]} bytes)")
            if t.place == "view":
                if not 0 <= t.ref < i:  # the executor builds views in one pass
                    raise PlanFormatError(f"{what}: view of tensor {t.ref}, which is not an "
                                          "earlier tensor of the plan")
                if t.offset < 0 or t.offset % VIEW_ALIGNMENT:
                    raise PlanFormatError(f"{what}: view offset {t.offset} is not a "
                                          f"non-negative multiple of {VIEW_ALIGNMENT} bytes")
                base = self.tensors[t.ref]
                if t.offset + nbytes > base.nbytes:
                    raise PlanFormatError(
                        f"{what}: {nbytes} bytes at offset {t.offset} do not fit its base "
                        f"{base.name!r} ({base.nbytes} bytes)")
            elif t.offset:
                raise PlanFormatError(f"{what}: only views have an offset")
        nt = len(self.tensors)
        for what, ids in (("input", self.inputs), ("output", self.outputs)):
            for i in ids:
                if not (_is_int(i) and 0 <= i < nt):
                    raise PlanFormatError(f"graph {what} tensor {_short(i)} does not exist")
        if len(set(self.inputs)) != len(self.inputs):
            raise PlanFormatError(f"plan: inputs {list(self.inputs)} name a tensor twice")
        listed = set(self.inputs)
        for i, t in enumerate(self.tensors):
            if (t.place == "input") != (i in listed):
                raise PlanFormatError(
                    f"tensor {i} ({t.name}): " + ("an input buffer missing from the plan's "
                                                   "inputs (it could never be set)"
                                                   if t.place == "input" else
                                                   f"listed as an input, but its place is "
                                                   f"{t.place!r}"))

    def _check_calls_and_stages(self) -> None:
        nt = len(self.tensors)
        for ci, c in enumerate(self.calls):
            what = f"call {ci}"
            if not isinstance(c.kernel, str) or not c.kernel:
                raise PlanFormatError(f"{what}: the kernel name must be a non-empty string")
            if c.kernel.startswith("_"):
                # A library's function "f" is its symbol __tvm_ffi_f; __tvm_ffi__* symbols are
                # tvm-ffi's data (e.g. __tvm_ffi__library_bin): calling one runs data as code.
                raise PlanFormatError(f"{what}: kernel name {c.kernel!r} is reserved (names "
                                      "starting with '_' are tvm-ffi's library data)")
            if not isinstance(c.node, str):
                raise PlanFormatError(f"{what} ({c.kernel}): node {_short(c.node)} is not a "
                                      "string")
            if not isinstance(c.args, tuple | list):
                raise PlanFormatError(f"{what} ({c.kernel}): args must be a list")
            bad = [a for a in c.args if not (_is_int(a) and 0 <= a < nt)]
            if bad:
                raise PlanFormatError(f"{what} ({c.kernel}): argument tensor {_short(bad[0])} "
                                      "does not exist")
            if not (_is_int(c.num_outputs) and 0 <= c.num_outputs <= len(c.args)):
                raise PlanFormatError(f"{what} ({c.kernel}): num_outputs "
                                      f"{_short(c.num_outputs)} is not in 0..{len(c.args)}")
        seen: dict[int, int] = {}
        for si, s in enumerate(self.stages):
            if not isinstance(s.strategy, str):
                raise PlanFormatError(f"stage {si}: strategy {_short(s.strategy)} is not a "
                                      "string")
            if not s.groups:
                raise PlanFormatError(f"stage {si} has no groups")
            if len(s.groups) > MAX_STREAMS:
                raise PlanFormatError(f"stage {si} has {len(s.groups)} concurrent groups; at "
                                      f"most {MAX_STREAMS} are supported")
            for gi, g in enumerate(s.groups):
                if not g:
                    raise PlanFormatError(f"stage {si}: group {gi} is empty")
                for c in g:
                    if not (_is_int(c) and 0 <= c < len(self.calls)):
                        raise PlanFormatError(f"stage {si}: call {_short(c)} does not exist")
                    if c in seen:
                        raise PlanFormatError(f"call {c} appears in stages {seen[c]} and {si}")
                    seen[c] = si
        if len(seen) != len(self.calls):
            missing = sorted(set(range(len(self.calls))) - set(seen))
            raise PlanFormatError(f"{len(missing)} call(s) are in no stage (e.g. call "
                                  f"{missing[0]})")


# -- dataflow ------------------------------------------------------------------------------
#: Where a call runs: (stage, group, position in the group).
_Where = tuple[int, int, int]


class _Dataflow:
    """The happens-before and storage-lifetime checks of :meth:`Plan.validate`."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.root = [self._root(i) for i in range(len(plan.tensors))]
        self.where: dict[int, _Where] = {}
        for si, s in enumerate(plan.stages):
            for gi, g in enumerate(s.groups):
                for pos, ci in enumerate(g):
                    self.where[ci] = (si, gi, pos)

    def _root(self, i: int) -> int:
        while self.plan.tensors[i].place == "view":
            i = self.plan.tensors[i].ref
        return i

    def name(self, t: int) -> str:
        return repr(self.plan.tensors[t].name)

    def call(self, ci: int) -> str:
        c = self.plan.calls[ci]
        s, g, _ = self.where[ci]
        return f"call {ci} ({c.node or c.kernel}; stage {s}, group {g})"

    def check(self) -> None:
        writer = self._writers()
        reads = self._check_reads(writer)
        self._check_storages(writer, reads)

    def _writers(self) -> dict[int, int]:
        """The call writing each tensor.

        Every output argument must be an activation (storage) tensor, written once.
        """
        plan = self.plan
        writer: dict[int, int] = {}
        for ci, c in enumerate(plan.calls):
            for a in c.args[len(c.args) - c.num_outputs:]:
                t = plan.tensors[a]
                if t.place != "storage":
                    raise PlanFormatError(
                        f"{self.call(ci)} writes tensor {self.name(a)}, a {t.place}; kernels "
                        "may write activation (storage) tensors only")
                if a in writer:
                    raise PlanFormatError(f"tensor {self.name(a)} is written by "
                                          f"{self.call(writer[a])} and by {self.call(ci)}")
                writer[a] = ci
        return writer

    def _check_reads(self, writer: dict[int, int]) -> dict[int, list[_Where]]:
        """Every read happens after the write it reads; returns where each tensor is read."""
        plan = self.plan
        reads: dict[int, list[_Where]] = {}
        for ci, c in enumerate(plan.calls):
            here = self.where[ci]
            for a in c.args[:len(c.args) - c.num_outputs]:
                r = self.root[a]
                if plan.tensors[r].place != "storage":
                    continue  # inputs and weights are there before the run
                if r not in writer:
                    raise PlanFormatError(f"{self.call(ci)} reads tensor {self.name(a)}, which "
                                          "no call writes")
                w = self.where[writer[r]]
                if w[0] == here[0] and w[1] != here[1]:
                    raise PlanFormatError(
                        f"{self.call(ci)} reads tensor {self.name(a)}, which "
                        f"{self.call(writer[r])} writes concurrently in the same stage")
                if w >= here:
                    raise PlanFormatError(
                        f"{self.call(ci)} reads tensor {self.name(a)} before "
                        f"{self.call(writer[r])} writes it: the stage order breaks a dependency")
                reads.setdefault(r, []).append(here)
        for o in plan.outputs:
            r = self.root[o]
            if plan.tensors[r].place == "storage" and r not in writer:
                raise PlanFormatError(f"graph output {self.name(o)} is never written")
        return reads

    def _check_storages(self, writer: dict[int, int], reads: dict[int, list[_Where]]) -> None:
        """No two tensors that may be live at the same time share a storage.

        A tensor is live from its write to its last read (graph outputs to the end of the
        run). One written and last read inside one group is *local*: the group's calls run in
        order, so it conflicts only with tensors of another group of its stage, with tensors
        whose stage interval covers its stage, and with locals of its group whose position
        intervals overlap. Any other tensor is live for its whole stage interval.
        """
        plan = self.plan
        last = len(plan.stages) - 1
        outputs = {self.root[o] for o in plan.outputs}
        spans: dict[int, list[tuple[int, int, int]]] = {}   # storage -> (start, end, tensor)
        local: dict[int, list[tuple[_Where, int, int]]] = {}  # storage -> (where, last, tensor)
        for t, ci in writer.items():
            if plan.tensors[t].nbytes == 0:
                continue
            sid = plan.tensors[t].ref
            w = self.where[ci]
            rs = reads.get(t, [])
            if t not in outputs and all(r[:2] == w[:2] for r in rs):
                local.setdefault(sid, []).append((w, max((r[2] for r in rs), default=w[2]), t))
            else:
                end = last if t in outputs else max((r[0] for r in rs), default=w[0])
                spans.setdefault(sid, []).append((w[0], end, t))
        for sid in sorted(set(spans) | set(local)):
            self._check_storage(sid, sorted(spans.get(sid, [])), local.get(sid, []))

    def _check_storage(self, sid: int, spans: list[tuple[int, int, int]],
                       local: list[tuple[_Where, int, int]]) -> None:
        for (a0, a1, a), (b0, b1, b) in zip(spans, spans[1:], strict=False):
            if b0 <= a1:  # sorted by start: overlapping neighbours, or none overlap
                self._conflict(sid, a, f"stages {a0}-{a1}", b, f"stages {b0}-{b1}")
        starts = [s[0] for s in spans]
        by_group: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
        for (s, g, first), end, t in local:
            k = bisect.bisect_right(starts, s) - 1
            if k >= 0 and spans[k][1] >= s:
                self._conflict(sid, t, f"stage {s} group {g}", spans[k][2],
                               f"stages {spans[k][0]}-{spans[k][1]}")
            by_group.setdefault((s, g), []).append((first, end, t))
        by_stage: dict[int, tuple[int, int]] = {}
        for (s, g), members in sorted(by_group.items()):
            if s in by_stage:
                other_g, other_t = by_stage[s]
                self._conflict(sid, other_t, f"stage {s} group {other_g}", members[0][2],
                               f"stage {s} group {g}, concurrent")
            by_stage[s] = (g, members[0][2])
            members.sort()
            for (a0, a1, a), (b0, b1, b) in zip(members, members[1:], strict=False):
                if b0 <= a1:
                    self._conflict(sid, a, f"stage {s} group {g} positions {a0}-{a1}", b,
                                   f"positions {b0}-{b1}")

    def _conflict(self, sid: int, a: int, when_a: str, b: int, when_b: str) -> None:
        raise PlanFormatError(f"tensors {self.name(a)} ({when_a}) and {self.name(b)} "
                              f"({when_b}) share storage {sid} while both may be live")


# -- JSON ----------------------------------------------------------------------------------
def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_json(text: str | bytes, what: str, *, check_depth: bool = True) -> Any:
    """``json.loads`` for plan.json and manifest.json, strict and bounded.

    No NaN or Infinity, at most :data:`MAX_JSON_DEPTH` levels deep; any fault is a
    :class:`PlanFormatError` naming ``what``.
    """
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise PlanFormatError(f"{what} is nested too deeply (more than {MAX_JSON_DEPTH} "
                              "levels)") from None
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError, a 5000-digit integer
        raise PlanFormatError(f"{what} is not valid JSON (truncated?): {e}") from e
    if check_depth:
        _check_depth(value, what)
    return value


def _check_depth(value: Any, what: str) -> None:
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict | list | tuple):  # what JSON nests (and to_json writes)
            if depth > MAX_JSON_DEPTH:
                raise PlanFormatError(f"{what} is nested too deeply (more than "
                                      f"{MAX_JSON_DEPTH} levels)")
            stack.extend((x, depth + 1) for x in (v.values() if isinstance(v, dict) else v))


def _is_int(v: Any) -> bool:
    if type(v) is not int:  # the fast path; numpy integers are Integral too
        if not isinstance(v, numbers.Integral) or isinstance(v, bool):
            return False
    return _INT64[0] <= v <= _INT64[1]


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


class _Reader:
    """Typed access to one JSON object of the plan, with errors naming ``what`` and the key."""

    _MISSING = object()

    def __init__(self, d: Any, what: str) -> None:
        if not isinstance(d, Mapping):
            raise PlanFormatError(f"{what} must be an object, got {_short(d)}")
        self.d, self.what = d, what

    def get(self, key: str, default: Any = _MISSING) -> Any:
        if key in self.d:
            return self.d[key]
        if default is self._MISSING:
            raise PlanFormatError(f"{self.what} lacks {key!r}")
        return default

    def int(self, key: str, default: Any = _MISSING) -> int:
        v = self.get(key, default)
        if not _is_int(v):
            raise PlanFormatError(f"{self.what}: {key!r} must be an integer, got {_short(v)}")
        return int(v)

    def str(self, key: str, default: Any = _MISSING) -> str:
        v = self.get(key, default)
        if not isinstance(v, str):
            raise PlanFormatError(f"{self.what}: {key!r} must be a string, got {_short(v)}")
        return v

    def list(self, key: str) -> list[Any]:
        v = self.get(key)
        if not isinstance(v, list):
            raise PlanFormatError(f"{self.what}: {key!r} must be a list, got {_short(v)}")
        return v

    def ints(self, key: str) -> tuple[int, ...]:
        return _ints(self.list(key), f"{self.what}: {key!r}")


def _ints(v: list[Any], what: str) -> tuple[int, ...]:
    if not isinstance(v, list) or not all(_is_int(x) for x in v):
        raise PlanFormatError(f"{what} must be a list of integers, got {_short(v)}")
    return tuple(int(x) for x in v)


def _tensor_from_json(r: _Reader) -> PlanTensor:
    return PlanTensor(r.str("name"), r.ints("shape"), r.str("dtype"), r.str("place"),
                      r.int("ref", -1), r.int("offset", 0))


def _call_from_json(r: _Reader) -> PlanCall:
    return PlanCall(r.str("kernel"), r.ints("args"), r.int("num_outputs", 1),
                    r.str("node", ""))


def _stage_from_json(r: _Reader) -> PlanStage:
    return PlanStage(tuple(_ints(g, f"{r.what}: group {i}")
                           for i, g in enumerate(r.list("groups"))),
                     r.str("strategy", "concurrent"))


# -- targets -------------------------------------------------------------------------------
#: Device type of the target kinds ios-tvm builds for.
_KIND_DEVICE = {"llvm": "cpu", "c": "cpu", "cuda": "cuda"}


def target_dict(target: Any) -> dict[str, Any] | None:
    """A target as a dict, or None.

    ``target`` is a mapping, JSON text (``str(tvm.target.Target)``) or a bare kind.
    """
    if isinstance(target, Mapping):
        return dict(target)
    text = str(target).strip()
    if text.startswith("{"):
        try:
            d = json.loads(text)
        except (ValueError, RecursionError):
            return None
        return d if isinstance(d, dict) else None
    return {"kind": text} if text and " " not in text else None


def target_kind(target: Any) -> str | None:
    """The kind (``"llvm"``, ``"cuda"``, ...) of a target as :func:`target_dict` reads it."""
    d = target_dict(target)
    kind = d.get("kind") if d is not None else None
    return kind if isinstance(kind, str) else None
