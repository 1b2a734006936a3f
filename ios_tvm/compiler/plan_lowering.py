"""Lowering a schedule to an executable artifact: kernel library + plan + weights.

:func:`make_plan` is a pure function of the graph and the schedule (no TVM): every node one
kernel call, activation storages from the concurrency-safe planner
(:mod:`ios_tvm.compiler.memory`). :func:`lower_schedule` puts the plan together with the
kernel library (:mod:`ios_tvm.compiler.library`) and the weights into an
:class:`~ios_tvm.runtime.artifact.Artifact`. Merge stages (IOS-Merge) become one call of a
merged kernel each (:mod:`ios_tvm.compiler.merge`): its weights are merged here, at build
time, and its kernel is compiled into a module that imports the model's kernel library.

CUDA kernels that allocate workspace (global scratch memory the host function takes from
TVM's workspace pool around the launch, ``TVMBackendAllocWorkspace``) never run concurrently
with other kernels: TVM's pool is per host thread, not per stream, and the executor launches
every stream's kernels from one thread, so two such kernels on two streams would be handed
the same scratch while both run. :func:`workspace_kernels` finds them in the built library
and :func:`serialize_kernels` moves their groups into stages of their own.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any

from ios_tvm.compiler.library import build_kernel_library, weights_of
from ios_tvm.compiler.memory import plan_storage
from ios_tvm.compiler.merge import MergeCompiler, MergedKernel, rewrite_merges
from ios_tvm.compiler.target import target_device_type
from ios_tvm.errors import ConfigError, InternalError, UnsupportedGraphError
from ios_tvm.ir.graph import OpGraph
from ios_tvm.ir.plan import Plan, PlanCall, PlanStage, PlanTensor
from ios_tvm.ir.schedule import Schedule, Stage, validate_schedule
from ios_tvm.runtime.artifact import Artifact

_DEFINE = re.compile(r"^define\b[^@\n]*@\"?([\w.$]+)\"?\(", re.M)
_CALLEE = re.compile(r"@\"?([\w.$]+)\"?\(")
_WORKSPACE = re.compile(r"@_*TVMBackendAllocWorkspace\b")
#: Prefix of the host entry point of kernel K in a library's LLVM IR (tvm-ffi calling
#: convention): ``__tvm_ffi_K``.
_ENTRY_PREFIX = "__tvm_ffi_"


def workspace_kernels_of_ir(host_ir: str) -> frozenset[str]:
    """Kernels whose host code takes workspace from TVM's pool, from a library's LLVM IR.

    A kernel counts when its entry function ``__tvm_ffi_<kernel>``, or any function of the
    module it calls (directly or not), refers to ``TVMBackendAllocWorkspace``.
    """
    bodies: dict[str, str] = {}
    matches = list(_DEFINE.finditer(host_ir))
    for m, nxt in zip(matches, [*matches[1:], None], strict=True):
        bodies[m.group(1)] = host_ir[m.end():nxt.start() if nxt else len(host_ir)]
    memo: dict[str, bool] = {}

    def uses(name: str, seen: frozenset[str] = frozenset()) -> bool:
        if name not in memo:
            body = bodies.get(name, "")
            memo[name] = bool(_WORKSPACE.search(body)) or any(
                uses(c, seen | {name}) for c in set(_CALLEE.findall(body))
                if c in bodies and c not in seen and c != name)
        return memo[name]

    return frozenset(name[len(_ENTRY_PREFIX):] for name in bodies
                     if name.startswith(_ENTRY_PREFIX) and uses(name))


def workspace_kernels(lib: Any) -> frozenset[str] | None:
    """Kernels of a freshly built kernel library that allocate workspace.

    See the module docstring. None when the library holds no host IR to read (e.g. one
    loaded from a file).
    """
    try:
        host_ir = str(lib.inspect_source("ll"))
    except Exception:  # a loaded library keeps no source; the check needs the built one
        return None
    return workspace_kernels_of_ir(host_ir)


def serialize_kernels(graph: OpGraph, schedule: Schedule, kernels: Collection[str]) -> Schedule:
    """``schedule`` with the groups calling ``kernels`` in single-group stages.

    Every group of a multi-group stage that calls one of ``kernels`` is taken out into a
    single-group stage of its own, right after the rest of that stage (the groups of a stage
    are independent, so any order of them is valid).
    """
    if not kernels:
        return schedule
    stages: list[Stage] = []
    for stage in schedule.stages:
        if len(stage.groups) < 2 or stage.strategy != "concurrent":
            stages.append(stage)
            continue
        alone = [g for g in stage.groups if any(graph.nodes[i].kernel in kernels for i in g)]
        rest = tuple(g for g in stage.groups if g not in alone)
        if rest:
            stages.append(Stage(rest, stage.strategy))
        stages.extend(Stage((g,), stage.strategy) for g in alone)
    if len(stages) == len(schedule.stages):
        return schedule
    return Schedule(tuple(stages), schedule.cost, schedule.meta)


def make_plan(graph: OpGraph, schedule: Schedule, *, target: str = "llvm",
              device_type: str = "cpu", reuse_memory: bool = True, min_streams: int = 1,
              meta: Mapping[str, Any] | None = None,
              merges: Mapping[tuple[int, ...], MergedKernel] | None = None,
              workspace: Collection[str] | None = None) -> Plan:
    """Build the execution plan of ``graph`` run by ``schedule``.

    Every node becomes one kernel call (its inputs then its outputs, the order TVM's
    destination-passing kernels take), activation tensors get storages from the
    concurrency-safe planner, graph inputs their own buffers, constants and params become
    weights loaded by name, and views point at their base tensor (at a byte offset for the
    slices of a merged output).

    The ops of a merge stage become one call of their merged kernel (``merges[ops]``, see
    :func:`ios_tvm.compiler.merge.rewrite_merges`); the plan's stage keeps the strategy ``"merge"``.

    On CUDA, the groups calling a kernel of ``workspace`` (kernels that allocate workspace,
    :func:`workspace_kernels`) run in single-group stages of their own
    (:func:`serialize_kernels`); the plan's meta lists them under ``"serialized_kernels"``.
    """
    validate_schedule(graph, schedule)
    serialized: list[str] = []
    if device_type == "cuda" and workspace:
        serialized = sorted({graph.nodes[i].kernel for s in schedule.stages
                             if len(s.groups) > 1 for g in s.groups for i in g} & set(workspace))
        schedule = serialize_kernels(graph, schedule, set(workspace))
    summary = schedule.summary()
    strategies = tuple(s.strategy for s in schedule.stages)
    if "merge" in strategies:
        if merges is None:
            raise ConfigError("the schedule has merge stages: pass their merged kernels "
                              "(merges=...; lower_schedule builds them)")
        rewritten = rewrite_merges(graph, schedule, merges)
        graph, schedule = rewritten.graph, rewritten.schedule
        validate_schedule(graph, schedule)
    storage = plan_storage(graph, schedule, reuse=reuse_memory)
    # Bases before views, so the executor can build views in one pass.
    order: list[str] = []
    placed: set[str] = set()

    def place(name: str) -> None:
        if name in placed:
            return
        alias = graph.tensors[name].alias_of
        if alias is not None:
            place(alias)
        placed.add(name)
        order.append(name)

    for name in graph.inputs:
        place(name)
    for node in graph.nodes:
        for name in (*node.inputs, *node.outputs):
            place(name)
    for name in graph.outputs:
        place(name)
    index = {name: i for i, name in enumerate(order)}
    tensors = []
    for name in order:
        info = graph.tensors[name]
        if info.alias_of is not None:
            tensors.append(PlanTensor(name, info.shape, info.dtype, "view", index[info.alias_of],
                                      info.offset))
        elif info.kind == "input":
            tensors.append(PlanTensor(name, info.shape, info.dtype, "input"))
        elif info.kind in ("const", "param"):
            tensors.append(PlanTensor(name, info.shape, info.dtype, "param"))
        elif name in storage.storage_of:
            tensors.append(PlanTensor(name, info.shape, info.dtype, "storage",
                                      storage.storage_of[name]))
        else:
            raise InternalError(f"tensor {name!r} is read but nothing writes it")
    calls = tuple(PlanCall(node.kernel, tuple(index[t] for t in (*node.inputs, *node.outputs)),
                           len(node.outputs), node.name) for node in graph.nodes)
    stages = tuple(PlanStage(s.groups, strategy)
                   for s, strategy in zip(schedule.stages, strategies, strict=True))
    plan_meta: dict[str, Any] = {"schedule": summary, "num_kernels": len(graph.nodes)}
    if serialized:
        plan_meta["serialized_kernels"] = serialized  # allocate workspace: not concurrent
    merged = {str(i): list(n.attrs["members"]) for i, n in enumerate(graph.nodes)
              if n.attrs.get("op") == "merge" and "members" in n.attrs}
    if merged:
        plan_meta["merged_calls"] = merged  # call id -> the kernels merged into it
    plan_meta.update(meta or {})
    inputs = tuple(index[t] for t in graph.inputs if graph.tensors[t].kind == "input")
    plan = Plan(target, device_type, tuple(tensors), storage.storage_nbytes, calls, stages,
                inputs, tuple(index[t] for t in graph.outputs), plan_meta, min_streams)
    plan.validate()
    return plan


def lower_schedule(extraction: Any, schedule: Schedule, *, params: Mapping[str, Any] | None = None,
          lib: Any | None = None, reuse_memory: bool = True, min_streams: int = 1,
          meta: Mapping[str, Any] | None = None, merges: Any = None) -> Any:
    """Compile a model's kernels and a schedule into an :class:`~ios_tvm.runtime.artifact.Artifact`.

    ``extraction`` comes from :func:`ios_tvm.compiler.extract.graph_from_model`.

    Parameters
    ----------
    extraction
        The graph and the lowered module it came from (with its target).
    schedule
        A valid schedule of ``extraction.graph``.
    params
        Values of weight *parameters* of the function (constants are taken from the module).
    lib
        An already built kernel library of ``extraction`` (built here when None).
    reuse_memory
        Share activation storage between tensors whose stage lifetimes do not overlap.
    min_streams
        Create at least this many streams / worker threads (for profiling any stage).
    meta
        Extra provenance stored in the plan.
    merges
        A :class:`~ios_tvm.compiler.merge.MergeCompiler` of ``extraction`` for the merge stages
        (created here when None and the schedule has any). Each merged kernel is checked
        against the original kernels when the device is present.
    """
    if extraction.inplace:
        raise UnsupportedGraphError(f"in-place kernel calls ({sorted(extraction.inplace)[:3]}) "
                                    "are not supported by the ios-tvm executor yet")
    target = extraction.target
    merge_ops = [s.ops for s in schedule.stages if s.strategy == "merge"]
    kernels: dict[tuple[int, ...], MergedKernel] = {}
    if merge_ops:
        if merges is None:
            merges = MergeCompiler(extraction, lib=lib, params=params)
        kernels = {ops: merges.kernel(ops) for ops in merge_ops}
    if lib is None:
        lib = merges.base_library() if merge_ops else build_kernel_library(extraction.mod,
                                                                           target)
    device_type = target_device_type(target)
    # CUDA: kernels taking scratch from TVM's per-thread workspace pool must not share a stage
    # (module docstring). A library passed in without its source cannot be read: unchecked.
    workspace = workspace_kernels(lib) if device_type == "cuda" else frozenset()
    plan_meta = dict(meta or {})
    if workspace is None:
        plan_meta["workspace_check"] = "not done (the kernel library holds no host IR)"
    plan = make_plan(extraction.graph, schedule, target=str(target), device_type=device_type,
                     reuse_memory=reuse_memory, min_streams=min_streams, meta=plan_meta,
                     merges=kernels, workspace=workspace)
    weights = weights_of(extraction, params)
    if merge_ops:
        if merges.lib is None:
            merges.lib = lib
        for ops, kernel in kernels.items():
            merges.check(ops)
            weights.update(merges.weights(kernel))
        lib = merges.module(list(kernels.values()), base=lib)
        used = {t.name for t in plan.tensors if t.place == "param"}
        weights = {k: v for k, v in weights.items() if k in used}
    return Artifact(plan, lib, weights)
