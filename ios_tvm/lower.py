"""Lowering a scheduled graph to an executable artifact: kernel library + plan + weights.

Compiler side. :func:`make_plan` is a pure function of the graph and the schedule (no TVM);
:func:`build_kernel_library` compiles every fused PrimFunc of the lowered module for the
target; :func:`lower` puts both together with the weights into an
:class:`~ios_tvm.executor.Artifact`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import IosTvmError
from .graph import OpGraph
from .memory import plan_storage
from .plan import Plan, PlanCall, PlanStage, PlanTensor
from .schedule import Schedule, validate_schedule


def make_plan(graph: OpGraph, schedule: Schedule, *, target: str = "llvm",
              device_type: str = "cpu", reuse_memory: bool = True, min_streams: int = 1,
              meta: Mapping[str, Any] | None = None) -> Plan:
    """Build the execution plan of ``graph`` run by ``schedule``.

    Every node becomes one kernel call (its inputs then its outputs, the order TVM's
    destination-passing kernels take), activation tensors get storages from the
    concurrency-safe planner, graph inputs their own buffers, constants and params become
    weights loaded by name, and views point at their base tensor.
    """
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
            tensors.append(PlanTensor(name, info.shape, info.dtype, "view", index[info.alias_of]))
        elif info.kind == "input":
            tensors.append(PlanTensor(name, info.shape, info.dtype, "input"))
        elif info.kind in ("const", "param"):
            tensors.append(PlanTensor(name, info.shape, info.dtype, "param"))
        elif name in storage.storage_of:
            tensors.append(PlanTensor(name, info.shape, info.dtype, "storage",
                                      storage.storage_of[name]))
        else:
            raise IosTvmError(f"tensor {name!r} is read but nothing writes it")
    calls = tuple(PlanCall(node.kernel, tuple(index[t] for t in (*node.inputs, *node.outputs)),
                           len(node.outputs), node.name) for node in graph.nodes)
    stages = tuple(PlanStage(s.groups, s.strategy) for s in schedule.stages)
    plan_meta = {"schedule": schedule.summary(), "num_kernels": len(graph.nodes),
                 **(dict(meta) if meta else {})}
    inputs = tuple(index[t] for t in graph.inputs if graph.tensors[t].kind == "input")
    plan = Plan(target, device_type, tuple(tensors), storage.storage_nbytes, calls, stages,
                inputs, tuple(index[t] for t in graph.outputs), plan_meta, min_streams)
    plan.validate()
    return plan


def build_kernel_library(mod: Any, target: Any) -> Any:
    """Compile every PrimFunc of the lowered ``mod`` for ``target`` into one runtime module.

    Fused PrimFuncs are private; each gets its GlobalVar's name as global symbol, which is
    the kernel name the plan calls.
    """
    import tvm

    funcs = {}
    for gv, func in mod.functions.items():
        if isinstance(func, tvm.tirx.PrimFunc):
            funcs[gv] = func.with_attr("global_symbol", gv.name_hint)
    if not funcs:
        raise IosTvmError("the lowered module has no kernels to build")
    return tvm.tirx.build(tvm.IRModule(funcs), target=target)


def target_device_type(target: Any) -> str:
    """``"cuda"`` for CUDA targets, ``"cpu"`` for llvm ones."""
    kind = target.kind.name
    if kind == "cuda":
        return "cuda"
    if kind in ("llvm", "c"):
        return "cpu"
    raise IosTvmError(f"target kind {kind!r} is not supported (use llvm or cuda)")


def weights_of(extraction: Any, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Values of every weight the plan loads: the module's constants plus the given params."""
    weights: dict[str, Any] = {name: c.value for name, c in extraction.constants.items()}
    for info in extraction.graph.tensors.values():
        if info.kind == "param" and info.alias_of is None:
            if params is None or info.name not in params:
                raise IosTvmError(f"no value for weight parameter {info.name!r}; pass "
                                  "params={name: array}")
            weights[info.name] = params[info.name]
    return weights


def lower(extraction: Any, schedule: Schedule, *, params: Mapping[str, Any] | None = None,
          lib: Any | None = None, reuse_memory: bool = True, min_streams: int = 1,
          meta: Mapping[str, Any] | None = None) -> Any:
    """Compile a model's kernels and a schedule into an :class:`~ios_tvm.executor.Artifact`.

    ``extraction`` comes from :func:`ios_tvm.extract.graph_from_model`.

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
    """
    from .executor import Artifact

    if extraction.inplace:
        raise IosTvmError(f"in-place kernel calls ({sorted(extraction.inplace)[:3]}) are not "
                          "supported by the ios-tvm executor yet")
    target = extraction.target
    plan = make_plan(extraction.graph, schedule, target=str(target),
                     device_type=target_device_type(target), reuse_memory=reuse_memory,
                     min_streams=min_streams, meta=meta)
    if lib is None:
        lib = build_kernel_library(extraction.mod, target)
    return Artifact(plan, lib, weights_of(extraction, params))
