"""Lowering a schedule to an executable artifact: kernel library + plan + weights.

:func:`make_plan` is a pure function of the graph and the schedule (no TVM): every node one
kernel call, activation storages from the concurrency-safe planner
(:mod:`ios_tvm.compiler.memory`). :func:`lower_schedule` puts the plan together with the
kernel library (:mod:`ios_tvm.compiler.library`) and the weights into an
:class:`~ios_tvm.runtime.artifact.Artifact`. Merge stages (IOS-Merge) become one call of a
merged kernel each (:mod:`ios_tvm.compiler.merge`): its weights are merged here, at build
time, and its kernel is compiled into a module that imports the model's kernel library.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ios_tvm.compiler.library import build_kernel_library, weights_of
from ios_tvm.compiler.memory import plan_storage
from ios_tvm.compiler.merge import MergeCompiler, MergedKernel, rewrite_merges
from ios_tvm.compiler.target import target_device_type
from ios_tvm.errors import ConfigError, InternalError, UnsupportedGraphError
from ios_tvm.ir.graph import OpGraph
from ios_tvm.ir.plan import Plan, PlanCall, PlanStage, PlanTensor
from ios_tvm.ir.schedule import Schedule, validate_schedule
from ios_tvm.runtime.artifact import Artifact


def make_plan(graph: OpGraph, schedule: Schedule, *, target: str = "llvm",
              device_type: str = "cpu", reuse_memory: bool = True, min_streams: int = 1,
              meta: Mapping[str, Any] | None = None,
              merges: Mapping[tuple[int, ...], MergedKernel] | None = None) -> Plan:
    """Build the execution plan of ``graph`` run by ``schedule``.

    Every node becomes one kernel call (its inputs then its outputs, the order TVM's
    destination-passing kernels take), activation tensors get storages from the
    concurrency-safe planner, graph inputs their own buffers, constants and params become
    weights loaded by name, and views point at their base tensor (at a byte offset for the
    slices of a merged output).

    The ops of a merge stage become one call of their merged kernel (``merges[ops]``, see
    :func:`ios_tvm.compiler.merge.rewrite_merges`); the plan's stage keeps the strategy ``"merge"``.
    """
    validate_schedule(graph, schedule)
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
    plan = make_plan(extraction.graph, schedule, target=str(target),
                     device_type=target_device_type(target), reuse_memory=reuse_memory,
                     min_streams=min_streams, meta=meta, merges=kernels)
    if lib is None:
        lib = merges.base_library() if merge_ops else build_kernel_library(extraction.mod,
                                                                           target)
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
