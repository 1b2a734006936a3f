"""IOS-Merge on TVM's side: merged kernels generated, checked and compiled, merged weights.

:mod:`ios_tvm.scheduler.merge` decides which convolutions (or matmuls) merge and what the
merged op computes. Here:

* :class:`MergeCompiler` generates each merged kernel on demand (a Relax function ->
  :func:`~ios_tvm.compiler.kernels.lower_to_kernels`, i.e. legalize + fuse + TIR, exactly like
  the model's own kernels), compiles it, checks it numerically against the original kernels
  and caches it; it also builds the one-call artifact a merge stage is measured with;
* :func:`merged_weights` prepares the merged weights at build time (NumPy);
* :func:`rewrite_merges` turns a graph and a schedule with merge stages into an equivalent
  graph with one node per merged kernel and views at byte offsets for the original outputs
  (used by :func:`ios_tvm.compiler.plan_lowering.make_plan`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ios_tvm.compiler.cuda_binary import build_cuda_library
from ios_tvm.compiler.kernel_schedules import schedule_report
from ios_tvm.compiler.kernels import KERNEL_INFO_ATTR, lower_to_kernels
from ios_tvm.compiler.library import build_kernel_library, weights_of
from ios_tvm.compiler.target import target_device_type
from ios_tvm.errors import MergeError
from ios_tvm.ir.graph import OpGraph, OpNode, TensorInfo
from ios_tvm.ir.plan import Plan, PlanCall, PlanStage, PlanTensor
from ios_tvm.ir.schedule import Schedule, Stage
from ios_tvm.runtime.artifact import Artifact
from ios_tvm.scheduler.merge import MERGED_KERNEL_PREFIX, MergeSpec, merge_spec

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# graph rewriting (pure Python)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MergedKernel:
    """A compiled merged kernel: its spec, name and argument order.

    ``arg_roles`` names the kernel's inputs in call order (``"data"``, ``"weight"``,
    ``"bias"``); the output comes last. ``flops`` is its logical FLOP count.
    """

    spec: MergeSpec
    name: str
    arg_roles: tuple[str, ...]
    flops: float = 0.0


def merge_tensor_names(ops: Sequence[int]) -> dict[str, str]:
    """Names of the tensors a merge of ``ops`` adds: ``weight``, ``bias`` and ``out``."""
    tag = f"{MERGED_KERNEL_PREFIX}.{'_'.join(str(o) for o in sorted(ops))}"
    return {"weight": f"{tag}.weight", "bias": f"{tag}.bias", "out": f"{tag}.out"}


@dataclass(frozen=True)
class MergeRewrite:
    """A graph and schedule with every merge stage turned into one kernel call.

    ``schedule`` runs ``graph``; its stage ``i`` corresponds to stage ``i`` of the original
    schedule, and ``strategies[i]`` is the original stage's strategy (a merge stage became a
    one-op stage). ``node_of[op]`` is the new node id of original op ``op``.
    """

    graph: OpGraph
    schedule: Schedule
    strategies: tuple[str, ...]
    node_of: tuple[int, ...]
    kernels: Mapping[tuple[int, ...], MergedKernel] = field(default_factory=dict)


def rewrite_merges(graph: OpGraph, schedule: Schedule,
                   kernels: Mapping[tuple[int, ...], MergedKernel]) -> MergeRewrite:
    """Replace the ops of every merge stage of ``schedule`` by one merged kernel call.

    The merged node takes the place of the first op (so ids stay a topological order), reads
    the shared tensor and the merged weights (new ``const`` tensors named by
    :func:`merge_tensor_names`) and writes the merged output; each original output becomes a
    view of its slice (``alias_of`` the merged output, ``offset`` bytes in). Everything else
    is unchanged.

    Parameters
    ----------
    graph, schedule
        A graph and a valid schedule of it.
    kernels
        The merged kernel of every merge stage, by its ops (ascending).
    """
    strategies = tuple(s.strategy for s in schedule.stages)
    merges = [s.ops for s in schedule.stages if s.strategy == "merge"]
    if not merges:
        return MergeRewrite(graph, schedule, strategies, tuple(range(len(graph.nodes))), {})
    tensors = dict(graph.tensors)
    head: dict[int, OpNode] = {}
    dropped: set[int] = set()
    for ops in merges:
        mk = kernels.get(ops)
        if mk is None:
            raise MergeError(f"no merged kernel for the merge stage of ops {list(ops)}")
        spec = mk.spec
        if spec.ops != ops:
            raise MergeError(f"the merged kernel of ops {list(ops)} merges ops {list(spec.ops)}")
        names = merge_tensor_names(ops)
        for key in ("weight", "bias", "out"):
            if names[key] in tensors:
                raise MergeError(f"tensor name {names[key]!r} is already taken")
        tensors[names["weight"]] = TensorInfo(names["weight"], spec.weight_shape, spec.dtype,
                                              "const")
        if spec.has_bias:
            tensors[names["bias"]] = TensorInfo(names["bias"], spec.bias_shape, spec.dtype,
                                                "const")
        tensors[names["out"]] = TensorInfo(names["out"], spec.out_shape, spec.dtype)
        for m, off in zip(spec.members, spec.offsets, strict=True):
            tensors[m.output] = replace(tensors[m.output], alias_of=names["out"], offset=off)
        role = {"data": spec.data, "weight": names["weight"], "bias": names["bias"]}
        inputs = tuple(role[r] for r in mk.arg_roles)
        nbytes = sum(tensors[t].nbytes for t in (*inputs, names["out"]))
        members = [graph.nodes[o].name for o in ops]
        head[ops[0]] = OpNode(f"{mk.name}@{names['out']}", mk.name, inputs, (names["out"],),
                              mk.flops or sum(graph.nodes[o].flops for o in ops), nbytes,
                              {"op": "merge", "kind": spec.kind, "kernel": mk.name,
                               "members": members, "ops": list(ops)})
        dropped.update(ops[1:])
    nodes: list[OpNode] = []
    node_of = [-1] * len(graph.nodes)
    for i, node in enumerate(graph.nodes):
        if i in dropped:
            continue
        node_of[i] = len(nodes)
        nodes.append(head.get(i, node))
    for ops in merges:
        for o in ops[1:]:
            node_of[o] = node_of[ops[0]]
    new_graph = OpGraph(nodes, tensors, graph.inputs, graph.outputs)
    stages = []
    for s in schedule.stages:
        if s.strategy == "merge":
            stages.append(Stage(((node_of[s.ops[0]],),), "concurrent"))
        else:
            stages.append(Stage(tuple(tuple(node_of[o] for o in g) for g in s.groups),
                                s.strategy))
    new_schedule = Schedule(tuple(stages), schedule.cost, dict(schedule.meta))
    return MergeRewrite(new_graph, new_schedule, strategies, tuple(node_of), dict(kernels))


# --------------------------------------------------------------------------------------------
# weights (NumPy)
# --------------------------------------------------------------------------------------------
def _numpy(value: Any) -> np.ndarray:
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)


def merged_weights(spec: MergeSpec, values: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The merged weight (and bias) of ``spec``, built from the members' weight values.

    Conv: a zero ``(C, Cin, Kh, Kw)`` tensor with member ``i``'s kernel in output channels
    ``[start_i, start_i + C_i)``, centred at ``((Kh - kh_i) / 2, (Kw - kw_i) / 2)``. Matmul:
    the ``(K, N_i)`` weights side by side. Biases are concatenated per channel (zeros for a
    member without one; a broadcast bias is expanded).

    Parameters
    ----------
    spec
        The merge.
    values
        Weight values by tensor name (numpy arrays or TVM tensors).

    Returns
    -------
    dict
        ``{"weight": W}`` plus ``{"bias": B}`` when ``spec.has_bias``.
    """
    w = np.zeros(spec.weight_shape, dtype=spec.dtype)
    b = np.zeros(spec.channels, dtype=spec.dtype)
    kh, kw = spec.kernel
    for m, c0 in zip(spec.members, spec.channel_starts, strict=True):
        wi = _numpy(values[m.weight])
        if spec.kind == "conv2d":
            dh, dw = (kh - m.kernel[0]) // 2, (kw - m.kernel[1]) // 2
            w[c0:c0 + m.channels, :, dh:dh + m.kernel[0], dw:dw + m.kernel[1]] = wi
        else:
            w[:, c0:c0 + m.channels] = wi
        if m.bias is not None:
            b[c0:c0 + m.channels] = np.broadcast_to(_numpy(values[m.bias]).reshape(-1),
                                                    (m.channels,))
    out = {"weight": w}
    if spec.has_bias:
        out["bias"] = b.reshape(spec.bias_shape)
    return out


# --------------------------------------------------------------------------------------------
# generating, compiling and checking merged kernels (TVM)
# --------------------------------------------------------------------------------------------
def merged_relax_module(spec: MergeSpec) -> Any:
    """A Relax module whose ``main(data, weight[, bias])`` computes the merged kernel."""
    from tvm import relax

    dtype = spec.dtype
    data = relax.Var("data", relax.TensorType(list(spec.data_shape), dtype))
    weight = relax.Var("weight", relax.TensorType(list(spec.weight_shape), dtype))
    params = [data, weight]
    bias = None
    if spec.has_bias:
        bias = relax.Var("bias", relax.TensorType(list(spec.bias_shape), dtype))
        params.append(bias)
    acts = {"relu": relax.op.nn.relu, "sigmoid": relax.op.sigmoid, "tanh": relax.op.tanh}
    bb = relax.BlockBuilder()
    with bb.function("main", params):
        with bb.dataflow():
            if spec.kind == "conv2d":
                y = bb.emit(relax.op.nn.conv2d(data, weight, strides=spec.strides,
                                               padding=spec.padding, dilation=spec.dilation,
                                               groups=1, data_layout="NCHW",
                                               kernel_layout="OIHW"))
            else:
                y = bb.emit(relax.op.matmul(data, weight))
            if bias is not None:
                y = bb.emit(relax.op.add(y, bias))
            if spec.act is not None:
                y = bb.emit(acts[spec.act](y))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


class MergeCompiler:
    """Generates, compiles, checks and caches the merged kernels of one model.

    Each merged kernel is a Relax function (:func:`merged_relax_module`) lowered by the same
    function that lowered the model (:func:`ios_tvm.compiler.kernels.lower_to_kernels`, so legalize
    +
    fuse + TIR, and dlight on GPU) into one fused PrimFunc, on demand and once per distinct
    :attr:`MergeSpec.signature`.

    Parameters
    ----------
    extraction
        The model (:func:`ios_tvm.compiler.extract.graph_from_model`), with its target.
    lib
        The model's compiled kernel library; needed to check merged kernels against the
        original ones (built on first use when None).
    params
        Values of weight *parameters* (constants come from the module).
    lower_kwargs
        Extra keyword arguments for ``lower_to_kernels`` (use the model's own lowering
        options, so merged and original kernels are scheduled alike).
    verify
        Check every merge numerically against its original kernels (when the target's
        device is on this machine) before it is measured or lowered.
    """

    def __init__(self, extraction: Any, *, lib: Any = None,
                 params: Mapping[str, Any] | None = None,
                 lower_kwargs: Mapping[str, Any] | None = None, verify: bool = True) -> None:
        self.extraction = extraction
        self.graph: OpGraph = extraction.graph
        self.lib = lib
        self.params = dict(params) if params is not None else None
        self.lower_kwargs = dict(lower_kwargs or {})
        self.verify_merges = verify
        self._specs: dict[tuple[int, ...], MergeSpec] = {}
        self._funcs: dict[str, tuple[Any, tuple[str, ...], float]] = {}
        self._modules: dict[str, Any] = {}
        self._checked: dict[tuple[int, ...], float] = {}
        self._values: dict[str, Any] | None = None

    # -- specs and kernels -----------------------------------------------------------------
    def spec(self, ops: Sequence[int]) -> MergeSpec:
        """The spec of merging ``ops`` (cached); raises :class:`MergeError` if illegal."""
        key = tuple(sorted(ops))
        spec = self._specs.get(key)
        if spec is None:
            spec = self._specs[key] = merge_spec(self.graph, key)
        return spec

    def kernel(self, ops: Sequence[int]) -> MergedKernel:
        """The merged kernel of ``ops``, generated and lowered on first use."""
        spec = self.spec(ops)
        name = spec.kernel_name
        if name not in self._funcs:
            self._funcs[name] = self._lower(spec)
        _, roles, flops = self._funcs[name]
        return MergedKernel(spec, name, roles, flops)

    def _lowering_options(self) -> dict[str, Any]:
        """``lower_to_kernels`` options: the given ones, else those the model was lowered with.

        If the model's kernels were left unscheduled on purpose (``cpu_schedule=False``: its
        :mod:`ios_tvm.compiler.kernel_schedules` report has unscheduled kernels and none scheduled
        by a
        rule), merged kernels are too, so merged and original kernels compete on equal terms.
        """
        options = dict(self.lower_kwargs)
        # Merged convs are built NCHW (their consumers read channel slices of the output).
        options.setdefault("cpu_layout", None)
        if "cpu_schedule" in options:
            return options

        report = schedule_report(self.extraction.mod)
        if report is not None:
            ruled = [h for h in report.kernels.values()
                     if h not in ("unscheduled", "tuned", "prescheduled")]
            if report.num_unscheduled and not ruled:
                options["cpu_schedule"] = False
        return options

    def _lower(self, spec: MergeSpec) -> tuple[Any, tuple[str, ...], float]:
        import tvm
        from tvm import relax


        target = self.extraction.target
        lowered = lower_to_kernels(merged_relax_module(spec), target, **self._lowering_options())
        calls = []
        for block in lowered["main"].body.blocks:
            for b in block.bindings:
                v = b.value
                if isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.Op) and \
                        v.op.name == "relax.call_tir":
                    calls.append(v)
                elif isinstance(v, relax.Call):
                    raise MergeError(f"the merged {spec.kind} lowered to a {v.op} call besides "
                                     "its kernel")
        if len(calls) != 1:
            raise MergeError(f"the merged {spec.kind} lowered to {len(calls)} kernels, not one")
        call = calls[0]
        roles = []
        for arg in call.args[1].fields:
            if not isinstance(arg, relax.Var) or arg.name not in ("data", "weight", "bias"):
                raise MergeError(f"the merged kernel takes an unexpected argument {arg}")
            roles.append(str(arg.name))
        gv = call.args[0]
        func = lowered[gv].with_attr("global_symbol", spec.kernel_name)
        info = json.loads(str(lowered.get_attr(KERNEL_INFO_ATTR)))
        flops = float(info.get("kernels", {}).get(gv.name_hint, {}).get("flops", 0.0))
        return func, tuple(roles), flops

    def module(self, kernels: Sequence[MergedKernel], base: Any = None) -> Any:
        """A runtime module with ``kernels`` (compiled together), importing ``base`` if given.

        Without ``base`` a single kernel's module is cached (for measuring); with ``base``
        (the model's kernel library) a fresh module is built, so the result finds every
        kernel of a plan and ``export_library`` links them into one file.
        """
        distinct = {k.name: k for k in kernels}
        if base is None and len(distinct) == 1:
            (name,) = distinct
            if name not in self._modules:
                self._modules[name] = self._build(list(distinct))
            return self._modules[name]
        mod = self._build(list(distinct))
        if base is not None:
            mod.import_module(base)
        return mod

    def _build(self, names: Sequence[str]) -> Any:
        import tvm

        for n in names:
            if n not in self._funcs:
                raise MergeError(f"merged kernel {n!r} was not generated by this compiler")
        funcs = {tvm.ir.GlobalVar(n): self._funcs[n][0] for n in names}
        return build_cuda_library(tvm.IRModule(funcs), self.extraction.target)

    # -- weights ---------------------------------------------------------------------------
    def values(self) -> dict[str, Any]:
        """Every weight of the model by tensor name (constants and given params)."""
        if self._values is None:
            self._values = weights_of(self.extraction, self.params)
        return self._values

    def weights(self, kernel: MergedKernel) -> dict[str, np.ndarray]:
        """The merged weights of ``kernel`` under the tensor names the plan uses."""
        names = merge_tensor_names(kernel.spec.ops)
        return {names[role]: value
                for role, value in merged_weights(kernel.spec, self.values()).items()}

    # -- checking --------------------------------------------------------------------------
    def base_library(self) -> Any:
        """The model's kernel library (built on first use)."""
        if self.lib is None:
            self.lib = build_kernel_library(self.extraction.mod, self.extraction.target)
        return self.lib

    def device(self) -> Any | None:
        """The target's device 0 if present on this machine, else None."""
        import tvm


        if target_device_type(self.extraction.target) == "cpu":
            return tvm.cpu(0)
        try:
            dev = tvm.cuda(0)
            return dev if dev.exist else None
        except Exception:  # no CUDA runtime at all
            return None

    def check(self, ops: Sequence[int], *, seed: int = 0) -> float:
        """Run the merged kernel and the original kernels on random data and compare.

        Returns the largest absolute difference relative to the largest reference value;
        raises :class:`MergeError` if it exceeds 1e-3. Returns NaN (unchecked) when the
        target's device is not on this machine or checking is off. Cached per op set.
        """
        key = tuple(sorted(ops))
        if key in self._checked:
            return self._checked[key]
        dev = self.device() if self.verify_merges else None
        if dev is None:
            self._checked[key] = float("nan")
            return float("nan")
        import tvm

        mk = self.kernel(key)
        spec = mk.spec
        rng = np.random.default_rng(seed)
        values = self.values()
        x = rng.standard_normal(spec.data_shape).astype(spec.dtype)
        tx = tvm.runtime.tensor(x, dev)
        base = self.base_library()
        refs = []
        for m in spec.members:
            node = self.graph.nodes[m.node]
            args = [tx if t == spec.data else tvm.runtime.tensor(_numpy(values[t]), dev)
                    for t in node.inputs]
            out = self.graph.tensors[m.output]
            res = tvm.runtime.empty(out.shape, out.dtype, dev)
            base.get_function(node.kernel, query_imports=True)(*args, res)
            refs.append(res.numpy())
        weights = merged_weights(spec, values)
        role = {"data": tx, **{r: tvm.runtime.tensor(v, dev) for r, v in weights.items()}}
        out = tvm.runtime.empty(spec.out_shape, spec.dtype, dev)
        self.module([mk])[mk.name](*(role[r] for r in mk.arg_roles), out)
        merged = out.numpy()
        axis = 1 if spec.kind == "conv2d" else len(spec.out_shape) - 1
        scale = max(max(float(np.abs(r).max()) for r in refs), 1e-6)
        err = 0.0
        for m, c0, ref in zip(spec.members, spec.channel_starts, refs, strict=True):
            got = np.take(merged, range(c0, c0 + m.channels), axis=axis)
            err = max(err, float(np.abs(got - ref).max()) / scale)
        self._checked[key] = err
        if not err <= 1e-3:
            raise MergeError(f"the merged kernel of ops {list(key)} differs from the original "
                             f"kernels by {err:.2e} (relative); not merging them")
        return err

    # -- measuring -------------------------------------------------------------------------
    def artifact(self, ops: Sequence[int]) -> Any:
        """A one-call artifact running the merged kernel of ``ops`` (for timing it).

        Its plan has the shared input (``input``), the merged weights (``param``) and the
        merged output (``storage``), one call and one stage.
        """
        mk = self.kernel(ops)
        spec = mk.spec
        names = merge_tensor_names(spec.ops)
        index = {"data": 0, "weight": 1, "bias": 2}
        tensors = [PlanTensor(spec.data, spec.data_shape, spec.dtype, "input"),
                   PlanTensor(names["weight"], spec.weight_shape, spec.dtype, "param")]
        if spec.has_bias:
            tensors.append(PlanTensor(names["bias"], spec.bias_shape, spec.dtype, "param"))
        out_index = len(tensors)
        tensors.append(PlanTensor(names["out"], spec.out_shape, spec.dtype, "storage", 0))
        out_bytes = tensors[-1].nbytes
        call = PlanCall(mk.name, (*(index[r] for r in mk.arg_roles), out_index), 1,
                        f"{mk.name}@{names['out']}")
        target = self.extraction.target
        plan = Plan(str(target), target_device_type(target), tuple(tensors), (out_bytes,),
                    (call,), (PlanStage(((0,),), "merge"),), (0,), (out_index,),
                    {"merge_of": [self.graph.nodes[o].name for o in spec.ops]})
        plan.validate()
        return Artifact(plan, self.module([mk]), self.weights(mk))
