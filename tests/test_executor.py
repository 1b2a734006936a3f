"""Acceptance tests of the stage executor (ios_tvm.runtime.executor, runtime/executor.cc) and
lowering.

Every model is compiled once per session (kernel library + weights) and run under several
plans made from that one library: the sequential schedule, the greedy (wavefront) baseline and
an IOS (concurrent) schedule. References are TVM's own sequential build of the same ONNX model
(Relax VM, default pipeline) and ONNX Runtime. CPU tests run everywhere; CUDA kernels are
compiled (not run) for sm_90 in CI, and the ``gpu``-marked tests run the same checks on
``tvm.cuda(0)`` when a GPU is present.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

tvm = pytest.importorskip("tvm")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

sys.path.insert(0, str(Path(__file__).parent))
from hardware import has_compiler, has_cuda  # noqa: E402

if not has_compiler():
    # Every test here compiles (runtime-only TVM, e.g. the GPU machine's kit, has no compiler);
    # tests/test_gpu_runtime.py runs the GPU checks there on artifacts compiled beforehand.
    pytest.skip("needs TVM's compiler (runtime-only TVM here)", allow_module_level=True)

import onnx_models as om  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402
from tvm import relax  # noqa: E402

from ios_tvm import _native  # noqa: E402
from ios_tvm.compiler.extract import Extraction, graph_from_model  # noqa: E402
from ios_tvm.compiler.frontend import load_model  # noqa: E402
from ios_tvm.compiler.memory import StoragePlan, check_storage  # noqa: E402
from ios_tvm.compiler.plan_lowering import lower_schedule as lower  # noqa: E402
from ios_tvm.compiler.plan_lowering import make_plan  # noqa: E402
from ios_tvm.cost import AnalyticCost, DeviceSpec  # noqa: E402
from ios_tvm.errors import PlanFormatError  # noqa: E402
from ios_tvm.ir.graph import OpGraph  # noqa: E402
from ios_tvm.ir.plan import Plan  # noqa: E402
from ios_tvm.ir.schedule import Schedule  # noqa: E402
from ios_tvm.runtime.artifact import Artifact, load, load_artifact, target_matches  # noqa: E402
from ios_tvm.runtime.executor import Executor  # noqa: E402
from ios_tvm.scheduler.config import SearchConfig  # noqa: E402
from ios_tvm.scheduler.search import greedy_schedule, search, sequential_schedule  # noqa: E402

pytestmark = pytest.mark.skipif(not _native.native_available(),
                                reason="native library not built (bash scripts/setup.sh)")

REPO = Path(__file__).resolve().parent.parent

#: A device on which one kernel fills half the machine (2 cores, single-threaded kernels) and
#: launches and joins are nearly free: the analytic model then rewards running independent
#: branches side by side, so the IOS search returns concurrent stages wherever a graph has
#: parallel branches (the inception block, the transformer's Q/K/V, the two-output heads).
TWO_LANES = DeviceSpec("two-lanes", peak_flops=50e9, bandwidth=10e9, launch_s=1e-8,
                       sync_s=1e-9, saturation_s=1.0, min_utilisation=0.5)

def two_input_model(channels: int = 4, size: int = 6) -> Any:
    """``relu(conv3x3(x) + conv1x1(z))`` with inputs ``x`` and ``z`` (z gets 2x channels)."""
    b = om._Builder(seed=11)
    hx = b.conv("x", channels, channels, 3, relu=False)
    hz = b.conv("z", 2 * channels, channels, 1, relu=False)
    (s,) = b.op("Add", [hx, hz])
    b.op("Relu", [s], out="y")
    return b.model([om._input("x", (1, channels, size, size)),
                    om._input("z", (1, 2 * channels, size, size))], ["y"], "two_input_model")


MODELS: dict[str, Callable[[], Any]] = {
    "inception": om.inception_block,
    "residual": om.residual_block,
    "transformer": om.transformer_layer,
    "two_output": om.two_output_model,
    "flatten_gemm": om.flatten_gemm_model,
    "flatten_gemm_flatten": functools.partial(om.flatten_gemm_model, use_flatten=True),
    "split": om.split_model,
    "two_input": two_input_model,
}
SCHEDULES = ("sequential", "greedy", "ios")
CUDA_TARGET = {"kind": "cuda", "arch": "sm_90"}

RTOL = ATOL = 1e-5      # executor vs the Relax VM / ONNX Runtime on CPU
GPU_TOL = 1e-4          # on GPU (and GPU vs the CPU references)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def make_schedule(graph: OpGraph, kind: str) -> Schedule:
    if kind == "sequential":
        return sequential_schedule(graph)
    if kind == "greedy":
        return greedy_schedule(graph)
    if kind == "ios":
        return search(graph, AnalyticCost(graph, TWO_LANES),
                      SearchConfig(strategy="concurrent")).schedule
    raise ValueError(kind)


def flatten_outputs(value: Any) -> list[np.ndarray]:
    if isinstance(value, tvm.runtime.Tensor):
        return [value.numpy()]
    return [a for v in value for a in flatten_outputs(v)]


def vm_build(model: Any, target: Any = "llvm", device: Any = None) -> Callable[..., Any]:
    """TVM's own sequential build of the model (Relax VM, default pipeline) as a function
    from numpy inputs to numpy outputs."""
    device = device if device is not None else tvm.cpu()
    mod = load_model(model)
    exe = tvm.compile(mod, target=tvm.target.Target(target))
    main = relax.VirtualMachine(exe, device)["main"]

    def run(*inputs: np.ndarray) -> list[np.ndarray]:
        return flatten_outputs(main(*[tvm.runtime.tensor(x, device) for x in inputs]))

    return run


def vm_reference(model: Any, inputs: Sequence[np.ndarray], target: Any = "llvm",
                 device: Any = None) -> list[np.ndarray]:
    return vm_build(model, target, device)(*inputs)


def ort_reference(model: Any, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {i.name: x for i, x in zip(sess.get_inputs(), inputs, strict=True)}
    return list(sess.run(None, feed))


def random_inputs(graph: OpGraph, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(graph.tensors[t].shape).astype(graph.tensors[t].dtype)
            for t in graph.inputs if graph.tensors[t].kind == "input"]


def assert_outputs_close(got: Sequence[np.ndarray], want: Sequence[np.ndarray], what: str,
                         tol: float = RTOL) -> None:
    assert len(got) == len(want), f"{what}: {len(got)} outputs, expected {len(want)}"
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.shape == w.shape and g.dtype == w.dtype, (what, i, g.shape, w.shape)
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol, err_msg=f"{what}: output {i}")


def check_plan_storage(graph: OpGraph, schedule: Schedule, plan: Plan) -> None:
    """The plan's activation storages are safe for its schedule.

    1. ``memory.check_storage`` on the plan's own assignment: tensors sharing a storage are
       never live in the same stage, and every tensor fits its storage.
    2. Derived from the plan's tensors and calls alone: within one stage, a storage that
       holds several tensors is touched by one group only (whose ops run in order), and a
       storage a group writes is touched by no other group of that stage.
    """
    storage_of = {t.name: t.ref for t in plan.tensors if t.place == "storage"}
    check_storage(graph, schedule, StoragePlan(storage_of, plan.storages, {}))

    def root(i: int) -> int:
        while plan.tensors[i].place == "view":
            i = plan.tensors[i].ref
        return i

    for si, stage in enumerate(plan.stages):
        tensors: dict[int, set[int]] = {}   # storage -> root tensors touched in this stage
        touch: dict[int, set[int]] = {}     # storage -> groups touching it
        write: dict[int, set[int]] = {}     # storage -> groups writing it
        for gi, group in enumerate(stage.groups):
            for ci in group:
                call = plan.calls[ci]
                first_out = len(call.args) - call.num_outputs
                for pos, a in enumerate(call.args):
                    r = root(a)
                    t = plan.tensors[r]
                    if t.place != "storage":
                        continue
                    tensors.setdefault(t.ref, set()).add(r)
                    touch.setdefault(t.ref, set()).add(gi)
                    if pos >= first_out:
                        write.setdefault(t.ref, set()).add(gi)
        for sid, roots in tensors.items():
            names = sorted(plan.tensors[r].name for r in roots)
            assert len(roots) == 1 or len(touch[sid]) == 1, (
                f"stage {si}: tensors {names} share storage {sid} across groups "
                f"{sorted(touch[sid])}")
            writers = write.get(sid, set())
            if writers:
                assert touch[sid] == writers and len(writers) == 1, (
                    f"stage {si}: storage {sid} ({names[0]}) is written by group(s) "
                    f"{sorted(writers)} and touched by group(s) {sorted(touch[sid])}")


# ---------------------------------------------------------------------------------------------
# compiled models (each compiled once per session)
# ---------------------------------------------------------------------------------------------
@dataclass
class Compiled:
    """A model lowered and compiled once; plans for any schedule share its library."""

    name: str
    model: Any
    ex: Extraction
    art: Artifact                    # the sequential plan + the kernel library + weights
    inputs: list[np.ndarray]

    def plan(self, schedule: Schedule, **kw: Any) -> Plan:
        return make_plan(self.ex.graph, schedule, target=self.art.plan.target,
                         device_type=self.art.plan.device_type, **kw)

    def executor(self, schedule: Schedule, device: Any = None) -> tuple[Plan, Executor]:
        plan = self.plan(schedule)
        return plan, Executor(plan, self.art.lib, self.art.params, device)


def compile_model(name: str, model: Any, target: Any = "llvm") -> Compiled:
    ex = graph_from_model(model, target=target)
    art = lower(ex, sequential_schedule(ex.graph))
    return Compiled(name, model, ex, art, random_inputs(ex.graph))


@functools.cache
def compiled(name: str) -> Compiled:
    return compile_model(name, MODELS[name]())


@functools.cache
def compiled_cuda(name: str) -> Compiled:
    return compile_model(name, MODELS[name](), target=CUDA_TARGET)


@functools.cache
def vm_of(name: str) -> Callable[..., list[np.ndarray]]:
    return vm_build(compiled(name).model)


@functools.cache
def references(name: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(Relax VM outputs, ONNX Runtime outputs) for ``compiled(name).inputs``."""
    c = compiled(name)
    return vm_of(name)(*c.inputs), ort_reference(c.model, c.inputs)


@functools.cache
def sequential_outputs(name: str) -> list[np.ndarray]:
    c = compiled(name)
    _, e = c.executor(sequential_schedule(c.ex.graph))
    return e(*c.inputs)


# ---------------------------------------------------------------------------------------------
# outputs: executor == Relax VM == ONNX Runtime, under every schedule
# ---------------------------------------------------------------------------------------------
def test_references_agree() -> None:
    """Sanity of the references themselves: TVM's VM and ONNX Runtime agree."""
    for name in MODELS:
        vm_out, ort_out = references(name)
        assert_outputs_close(vm_out, ort_out, f"{name}: VM vs ONNX Runtime", tol=1e-4)


@pytest.mark.parametrize("kind", SCHEDULES)
@pytest.mark.parametrize("name", MODELS)
def test_outputs_match_vm_and_onnxruntime(name: str, kind: str) -> None:
    c = compiled(name)
    schedule = make_schedule(c.ex.graph, kind)
    plan, e = c.executor(schedule)
    vm_out, ort_out = references(name)
    out = e(*c.inputs)
    assert_outputs_close(out, vm_out, f"{name}/{kind} vs Relax VM")
    assert_outputs_close(out, ort_out, f"{name}/{kind} vs ONNX Runtime", tol=1e-4)
    assert e.output_names == [plan.tensors[i].name for i in plan.outputs]
    assert e._module["num_streams"]() == plan.num_streams == max(schedule.max_groups, 1)
    check_plan_storage(c.ex.graph, schedule, plan)
    # A second run with other inputs: nothing stale from the first run.
    other = random_inputs(c.ex.graph, seed=1)
    assert_outputs_close(e(*other), vm_of(name)(*other), f"{name}/{kind} 2nd run")
    if name == "inception" and kind != "sequential":
        assert plan.num_streams > 1, f"{kind} plan of the inception block is not concurrent"
        assert any(len(s.groups) > 1 for s in plan.stages)


@pytest.mark.parametrize("name", MODELS)
def test_plans_without_memory_reuse_agree(name: str) -> None:
    """reuse_memory=False gives every tensor its own storage and the same outputs."""
    c = compiled(name)
    schedule = make_schedule(c.ex.graph, "ios")
    plan = c.plan(schedule, reuse_memory=False)
    e = Executor(plan, c.art.lib, c.art.params)
    assert_outputs_close(e(*c.inputs), sequential_outputs(name), f"{name} without reuse", 0.0)
    reused = c.plan(schedule)
    assert reused.activation_nbytes <= plan.activation_nbytes


def test_views_are_not_copied() -> None:
    """flatten+gemm: the Reshape/Flatten is a view of the conv output, not a kernel."""
    for name in ("flatten_gemm", "flatten_gemm_flatten"):
        plan = compiled(name).art.plan
        views = [t for t in plan.tensors if t.place == "view"]
        assert views, f"{name}: no view in the plan"
        for v in views:
            base = plan.tensors[v.ref]
            assert math.prod(v.shape) == math.prod(base.shape) and v.shape != base.shape


def test_named_inputs_and_layouts() -> None:
    c = compiled("inception")
    _, e = c.executor(make_schedule(c.ex.graph, "ios"))
    want = sequential_outputs("inception")
    (x,) = c.inputs
    assert e.input_names == ["x"]
    assert np.array_equal(e(x=x)[0], want[0])
    assert np.array_equal(e(np.asfortranarray(x))[0], want[0])   # non C-contiguous input
    assert np.array_equal(e(tvm.runtime.tensor(x))[0], want[0])  # a TVM tensor
    e.set_input("x", x)
    e.run()
    assert np.array_equal(e.get_output(0).numpy(), want[0])


def test_several_inputs_by_position_and_name() -> None:
    c = compiled("two_input")
    _, e = c.executor(make_schedule(c.ex.graph, "greedy"))
    assert e.input_names == ["x", "z"]
    x, z = c.inputs
    want = references("two_input")[0]
    assert_outputs_close(e(x, z), want, "positional")
    assert_outputs_close(e(z=z, x=x), want, "by name")
    with pytest.raises(ValueError, match=r"input 'x' has shape \(1, 8, 6, 6\), expected "
                                         r"\(1, 4, 6, 6\)"):
        e(z, x)


def _edge_model(kind: str) -> Any:
    """Outputs that alias: the input itself, a view of the input, a view read twice."""
    b = om._Builder(seed=12)
    shape = b.const_i64("shape", [1, 144])
    if kind == "identity_output":          # y1 is the graph input
        b.op("Identity", ["x"], out="y1")
        b.conv("x", 4, 4, 1, out="y2")
    elif kind == "input_view":             # a kernel reads a view of the input
        (r,) = b.op("Reshape", ["x", shape])
        b.op("Sigmoid", [b.op("Relu", [r])[0]], out="y1")
        b.conv("x", 4, 4, 1, out="y2")
    else:                                  # a view of an activation, read by two groups
        (r,) = b.op("Reshape", [b.conv("x", 4, 4, 3), shape])
        b.op("Relu", [r], out="y1")
        b.op("Sigmoid", [r], out="y2")
    return b.model([om._input("x", (1, 4, 6, 6))], ["y1", "y2"], kind)


@pytest.mark.parametrize("kind", ["identity_output", "input_view", "shared_view"])
def test_aliasing_outputs_and_views(kind: str) -> None:
    model = _edge_model(kind)
    c = compile_model(kind, model)
    want = ort_reference(model, c.inputs)
    for sched in ("sequential", "greedy"):
        schedule = make_schedule(c.ex.graph, sched)
        plan, e = c.executor(schedule)
        check_plan_storage(c.ex.graph, schedule, plan)
        assert_outputs_close(e(*c.inputs), want, f"{kind}/{sched}", tol=1e-4)


# ---------------------------------------------------------------------------------------------
# property test: random DAGs x random valid schedules == Relax VM
# ---------------------------------------------------------------------------------------------
def random_dag_model(preds: Sequence[Sequence[int]], seed: int, channels: int = 4,
                     size: int = 6) -> Any:
    """Node i: Sum(outputs of preds[i], or x if none) -> Conv 3x3 + bias -> Tanh.

    Graph outputs are the sinks (nodes nothing reads), in node order.
    """
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    used = {p for ps in preds for p in ps}
    outputs = []
    for i, ps in enumerate(preds):
        srcs = [f"h{p}" for p in ps] or ["x"]
        nodes.append(helper.make_node("Sum", srcs, [f"s{i}"], name=f"sum{i}"))
        w = (rng.standard_normal((channels, channels, 3, 3)) * 0.3).astype(np.float32)
        b = (rng.standard_normal(channels) * 0.1).astype(np.float32)
        inits += [onnx.numpy_helper.from_array(w, f"w{i}"),
                  onnx.numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("Conv", [f"s{i}", f"w{i}", f"b{i}"], [f"c{i}"],
                                      name=f"conv{i}", kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Tanh", [f"c{i}"], [f"h{i}"], name=f"tanh{i}"))
        if i not in used:
            outputs.append(f"h{i}")
    shape = [1, channels, size, size]
    graph = helper.make_graph(
        nodes, "random_dag", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, shape) for o in outputs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", om.OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@st.composite
def dag_specs(draw: st.DrawFn) -> tuple[list[list[int]], int]:
    n = draw(st.integers(2, 7))
    preds: list[list[int]] = [[]]
    for i in range(1, n):
        preds.append(sorted(draw(st.sets(st.integers(0, i - 1), max_size=3))))
    return preds, draw(st.integers(0, 2**16))


def random_schedule(graph: OpGraph, data: st.DataObject) -> Schedule:
    if data.draw(st.integers(0, 4), label="greedy?") == 0:
        return greedy_schedule(graph, data.draw(st.integers(1, 4), label="greedy streams"))
    seed = data.draw(st.integers(0, 2**32 - 1), label="cost seed")
    config = SearchConfig(strategy="concurrent",
                          max_group_size=data.draw(st.integers(1, 4), label="r"),
                          max_groups=data.draw(st.integers(1, 4), label="s"),
                          max_part_size=data.draw(st.integers(2, 12), label="part size"))

    def cost(stage: Any) -> float:
        return random.Random(hash((seed, stage.mask))).random()

    return search(graph, cost, config).schedule


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=dag_specs(), data=st.data())
def test_random_dags_under_random_schedules(spec: tuple[list[list[int]], int],
                                            data: st.DataObject) -> None:
    preds, seed = spec
    model = random_dag_model(preds, seed)
    c = compile_model("random_dag", model)   # one kernel library per model ...
    vm_out = vm_reference(model, c.inputs)
    for _ in range(8):                        # ... reused by every schedule's plan
        schedule = random_schedule(c.ex.graph, data)
        plan, e = c.executor(schedule)
        check_plan_storage(c.ex.graph, schedule, plan)
        assert_outputs_close(e(*c.inputs), vm_out, f"{preds} / {schedule.summary()}")


# ---------------------------------------------------------------------------------------------
# races: concurrent plans are bit-for-bit deterministic
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "kind"), [("inception", "ios"), ("inception", "greedy"),
                                            ("transformer", "greedy"),
                                            ("transformer", "ios"),
                                            ("two_output", "greedy")])
def test_concurrent_plans_are_deterministic(name: str, kind: str) -> None:
    """200 runs, alternating two inputs, each bit-identical to the sequential plan."""
    c = compiled(name)
    schedule = make_schedule(c.ex.graph, kind)
    plan, e = c.executor(schedule)
    assert plan.num_streams > 1
    check_plan_storage(c.ex.graph, schedule, plan)
    inputs = [c.inputs, random_inputs(c.ex.graph, seed=7)]
    _, seq = c.executor(sequential_schedule(c.ex.graph))
    want = [seq(*x) for x in inputs]
    for run in range(200):
        got = e(*inputs[run % 2])
        for i, (g, w) in enumerate(zip(got, want[run % 2], strict=True)):
            assert np.array_equal(g, w), f"run {run}: output {i} differs from sequential"


def test_storage_check_catches_sharing_across_groups() -> None:
    """The checker is not vacuous: two outputs of different groups of one stage put in the
    same storage are flagged, by memory.check_storage and by the plan-level check."""
    import dataclasses

    from ios_tvm.errors import IosTvmError

    c = compiled("inception")
    schedule = make_schedule(c.ex.graph, "ios")
    plan = c.plan(schedule)
    stage = max(plan.stages, key=lambda s: len(s.groups))
    outs = [plan.calls[g[-1]].args[-1] for g in stage.groups[:2]]
    a, b = (plan.tensors[i] for i in outs)
    assert a.place == b.place == "storage" and a.ref != b.ref
    tensors = list(plan.tensors)
    tensors[outs[1]] = dataclasses.replace(b, ref=a.ref)
    storages = list(plan.storages)
    storages[a.ref] = max(storages[a.ref], storages[b.ref])
    bad = dataclasses.replace(plan, tensors=tuple(tensors), storages=tuple(storages))
    with pytest.raises((AssertionError, IosTvmError), match="share storage"):
        check_plan_storage(c.ex.graph, schedule, bad)


def test_executors_in_parallel_threads() -> None:
    """Two executors of one library, run from two Python threads at once (the GIL is
    released in kernels), stay bit-identical to the sequential plan."""
    c = compiled("inception")
    schedule = make_schedule(c.ex.graph, "ios")
    executors = [c.executor(schedule)[1] for _ in range(2)]
    want = sequential_outputs("inception")
    errors: list[str] = []

    def work(e: Executor) -> None:
        for run in range(100):
            if not np.array_equal(e(*c.inputs)[0], want[0]):
                errors.append(f"run {run} differs")
                return

    threads = [threading.Thread(target=work, args=(e,)) for e in executors]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


# ---------------------------------------------------------------------------------------------
# packed functions as kernels: errors in worker groups, plans with library calls
# ---------------------------------------------------------------------------------------------
def _add_one(src: Any, dst: Any) -> None:
    np.from_dlpack(dst)[...] = np.from_dlpack(src) + 1


def _explode(src: Any, dst: Any) -> None:
    raise RuntimeError("kernel exploded")


def _register_test_kernels() -> None:
    """Register the test kernels and let plans call them (library dispatch, allowed)."""
    import tvm_ffi

    from ios_tvm.runtime.executor import allow_packed_function

    tvm_ffi.register_global_func("ios_tvm_test.add_one", _add_one, override=True)
    tvm_ffi.register_global_func("ios_tvm_test.explode", _explode, override=True)
    allow_packed_function("ios_tvm_test.")


def packed_plan(kernels: Sequence[str]) -> Plan:
    """One concurrent stage; group i calls ``kernels[i](x, out_i)`` (call_dps_packed style)."""
    from ios_tvm.ir.plan import PlanCall, PlanStage, PlanTensor

    n = len(kernels)
    tensors = (PlanTensor("x", (4,), "float32", "input"),
               *(PlanTensor(f"out{i}", (4,), "float32", "storage", i) for i in range(n)))
    calls = tuple(PlanCall(k, (0, i + 1)) for i, k in enumerate(kernels))
    return Plan("llvm", "cpu", tensors, (16,) * n, calls,
                (PlanStage(tuple((i,) for i in range(n))),), (0,), tuple(range(1, n + 1)))


@pytest.mark.parametrize("failing", [0, 1, 2])
def test_errors_in_any_group_propagate(failing: int) -> None:
    """A kernel failing in the caller's group or a worker's group raises in Python, and the
    executor (and its worker pool) keeps working."""
    _register_test_kernels()
    kernels = ["ios_tvm_test.add_one"] * 3
    kernels[failing] = "ios_tvm_test.explode"
    lib = compiled("residual").art.lib
    e = Executor(packed_plan(kernels), lib, {})
    x = np.arange(4, dtype=np.float32)
    for _ in range(3):
        with pytest.raises(RuntimeError, match="kernel exploded"):
            e(x)
    good = Executor(packed_plan(["ios_tvm_test.add_one"] * 3), lib, {})
    for _ in range(3):
        assert all(np.array_equal(o, x + 1) for o in good(x))


def test_artifact_with_packed_calls(tmp_path: Path) -> None:
    """Plans may call global (library-dispatch) functions, not only library kernels."""
    _register_test_kernels()
    art = Artifact(packed_plan(["ios_tvm_test.add_one"] * 2), compiled("residual").art.lib, {})
    e = load(art.export(tmp_path / "packed"))
    x = np.arange(4, dtype=np.float32)
    assert all(np.array_equal(o, x + 1) for o in e(x))


def test_unknown_kernel_is_named() -> None:
    with pytest.raises(ValueError, match="kernel 'ios_tvm_test.nothing' is not in the kernel"):
        Executor(packed_plan(["ios_tvm_test.nothing"]), compiled("residual").art.lib, {})


# ---------------------------------------------------------------------------------------------
# input checking
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def inception_executor() -> Executor:
    c = compiled("inception")
    return c.executor(make_schedule(c.ex.graph, "ios"))[1]


def test_wrong_input_shape(inception_executor: Executor) -> None:
    e = inception_executor
    with pytest.raises(ValueError, match=r"input 'x' has shape \(1, 8, 8, 9\), expected "
                                         r"\(1, 8, 8, 8\)"):
        e.set_input(0, np.zeros((1, 8, 8, 9), np.float32))
    with pytest.raises(ValueError, match=r"input 'x' has shape \(8, 8, 8\)"):
        e(np.zeros((8, 8, 8), np.float32))


def test_wrong_input_dtype(inception_executor: Executor) -> None:
    with pytest.raises(ValueError, match="input 'x' has dtype float64, expected float32"):
        inception_executor.set_input("x", np.zeros((1, 8, 8, 8), np.float64))
    with pytest.raises(ValueError, match="input 'x' has dtype int32, expected float32"):
        inception_executor(x=np.zeros((1, 8, 8, 8), np.int32))


def test_wrong_input_name_or_index(inception_executor: Executor) -> None:
    e = inception_executor
    x = np.zeros((1, 8, 8, 8), np.float32)
    with pytest.raises(KeyError, match=r"no input named 'y'; inputs are \['x'\]"):
        e.set_input("y", x)
    with pytest.raises(KeyError, match="no input named 'input'"):
        e(input=x)
    for index in (1, -1, 5):
        with pytest.raises(IndexError, match=rf"input index {index} out of range.*1 input"):
            e.set_input(index, x)
    with pytest.raises(IndexError, match="input index 1 out of range"):
        e(x, x)
    with pytest.raises(IndexError, match="output index 3 out of range"):
        e.get_output(3)


def test_native_checks_back_up_python_ones(inception_executor: Executor) -> None:
    """The C++ side checks too (for callers of the raw module functions)."""
    e = inception_executor
    with pytest.raises(ValueError, match=r"input 'x' has shape \(1, 8, 8, 9\)"):
        e._set_input(0, tvm.runtime.tensor(np.zeros((1, 8, 8, 9), np.float32)))
    with pytest.raises(ValueError, match="input 'x' has dtype float64"):
        e._set_input(0, tvm.runtime.tensor(np.zeros((1, 8, 8, 8), np.float64)))
    with pytest.raises(IndexError, match="input index 2 out of range"):
        e._set_input(2, tvm.runtime.tensor(np.zeros((1, 8, 8, 8), np.float32)))


def test_bad_inputs_do_not_break_the_executor(inception_executor: Executor) -> None:
    e = inception_executor
    c = compiled("inception")
    with pytest.raises(ValueError):
        e(np.zeros((1, 8, 8, 9), np.float32))
    assert np.array_equal(e(*c.inputs)[0], sequential_outputs("inception")[0])


def test_plan_for_another_device_is_rejected() -> None:
    import tvm_ffi

    c = compiled("inception")
    with pytest.raises(ValueError, match="runs on 'cpu' devices.*not on cuda:0"):
        Executor(c.art.plan, c.art.lib, c.art.params, tvm_ffi.device("cuda", 0))


def test_missing_weight_is_named() -> None:
    c = compiled("residual")
    params = dict(c.art.params)
    name = sorted(params)[0]
    del params[name]
    with pytest.raises(ValueError, match=f"no value for weight '{name}'"):
        Executor(c.art.plan, c.art.lib, params)


# ---------------------------------------------------------------------------------------------
# robustness of one executor: threads, unset inputs, 0-d inputs, kernel errors, benchmark
# ---------------------------------------------------------------------------------------------
THREADS_SCRIPT = textwrap.dedent("""
    import sys
    import threading
    import numpy as np
    from ios_tvm.runtime.artifact import load
    failures = []
    for art in sys.argv[1:]:
        e = load(art)
        rng = np.random.default_rng(0)
        xs = [rng.standard_normal(e.plan.tensors[e.plan.inputs[0]].shape).astype("float32")
              for _ in range(4)]
        want = [e(x) for x in xs]

        barrier = threading.Barrier(4)

        def work(i):
            for run in range(40):
                got = e(xs[i])
                if not all(np.array_equal(g, w) for g, w in zip(got, want[i])):
                    failures.append(f"{art}: thread {i} run {run} got another input's outputs")
            # Then the raw module functions from several threads: serialised natively (no
            # hang, no crash); as documented, a raw sequence is not one step, so its
            # outputs are not checked.
            barrier.wait()
            for _ in range(5):
                e._set_input(0, __import__("tvm").runtime.tensor(xs[i]))
                e._run()
                e.profile_stage([[0]], warmup=0, number=1, repeat=1)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(np.array_equal(g, w) for g, w in zip(e(xs[0]), want[0]))
    print("\\n".join(failures[:5]) if failures else "threads OK")
""")


def test_one_executor_shared_by_threads(tmp_path: Path) -> None:
    """Four threads call one executor (a plan with concurrent stages and a sequential one):
    every call returns its own input's outputs, and nothing hangs (subprocess, timeout)."""
    c = compiled("inception")
    arts = []
    for kind in ("greedy", "sequential"):
        plan = c.plan(make_schedule(c.ex.graph, kind))
        assert (plan.num_streams > 1) == (kind == "greedy")
        arts.append(str(Artifact(plan, c.art.lib, c.art.params).export(tmp_path / kind)))
    proc = subprocess.run([sys.executable, "-c", THREADS_SCRIPT, *arts], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "threads OK" in proc.stdout, proc.stdout + proc.stderr


def test_a_manual_sequence_under_the_lock() -> None:
    """set_input/run/get_output from several threads is one step under Executor.lock."""
    c = compiled("two_output")
    _, e = c.executor(make_schedule(c.ex.graph, "greedy"))
    xs = [random_inputs(c.ex.graph, seed=s)[0] for s in range(3)]
    want = [e(x) for x in xs]
    errors: list[str] = []

    def work(i: int) -> None:
        try:
            for _ in range(30):
                with e.lock:
                    e.set_input(0, xs[i])
                    e.run()
                    got = [e.get_output(k).numpy() for k in range(len(want[i]))]
                if not all(np.array_equal(g, w) for g, w in zip(got, want[i], strict=True)):
                    errors.append(f"thread {i}: another thread's outputs")
        except Exception as err:
            errors.append(f"thread {i}: {err!r}")

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "threads hang"
    assert not errors, errors


def test_inputs_never_set_are_refused() -> None:
    from ios_tvm.errors import ExecutorArgumentError

    c = compiled("two_input")
    _, e = c.executor(make_schedule(c.ex.graph, "sequential"))
    with pytest.raises(ExecutorArgumentError, match=r"input\(s\) \['x', 'z'\] were never set"):
        e.run()
    with pytest.raises(ValueError, match=r"input\(s\) 'x', 'z' were never set"):
        e._run()   # the native check, for callers of the raw module
    e.set_input("z", c.inputs[1])
    with pytest.raises(ExecutorArgumentError, match=r"input\(s\) \['x'\] were never set"):
        e.benchmark(warmup=0, number=1, repeat=1)
    e.set_input("x", c.inputs[0])
    e.run()
    assert_outputs_close([e.get_output(0).numpy()], references("two_input")[0], "after setting")


def scalar_input_model() -> Any:
    """``y = relu(x * s) + s`` with a 0-d input ``s``."""
    nodes = [helper.make_node("Mul", ["x", "s"], ["m"]), helper.make_node("Relu", ["m"], ["r"]),
             helper.make_node("Add", ["r", "s"], ["y"])]
    graph = helper.make_graph(
        nodes, "scalar_input",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", om.OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_scalar_input() -> None:
    """A 0-d input is fed as a 0-d array, a numpy scalar or a Python float's array."""
    model = scalar_input_model()
    c = compile_model("scalar_input", model)
    e = Artifact(c.art.plan, c.art.lib, c.art.params).executor()
    spec = c.art.plan.tensors[c.art.plan.inputs[1]]
    assert spec.name == "s" and spec.shape == ()
    x = np.linspace(-2, 2, 6, dtype=np.float32).reshape(2, 3)
    for s in (np.asarray(1.5, np.float32), np.float32(-0.5), np.array(2.0, np.float32)):
        want = ort_reference(model, [x, np.asarray(s)])
        assert_outputs_close(e(x, s), want, f"s={s}", tol=1e-6)
        assert_outputs_close(e(x=x, s=s), want, f"s={s} by name", tol=1e-6)
    with pytest.raises(ValueError, match=r"input 's' has shape \(1,\), expected \(\)"):
        e(x, np.ones(1, np.float32))


def test_kernel_errors_name_the_call() -> None:
    """A plan calling a kernel with the wrong arguments (it validates: only the kernel knows
    its arity) fails at run time with an IosTvmError naming the call, kernel and node."""
    from ios_tvm.errors import ExecutionError, IosTvmError

    c = compiled("residual")
    plan = c.art.plan
    call = plan.calls[0]
    calls = (dataclasses.replace(call, args=call.args[1:]), *plan.calls[1:])
    e = Executor(dataclasses.replace(plan, calls=calls), c.art.lib, c.art.params)
    with pytest.raises(ExecutionError, match=rf"kernel '{call.kernel}' \(call 0, node "
                                             rf"'{re.escape(call.node)}'\) failed: .*Expected "
                                             rf"{len(call.args)} arguments") as info:
        e(*c.inputs)
    assert isinstance(info.value, IosTvmError) and isinstance(info.value, RuntimeError)


def test_benchmark_arguments_are_checked() -> None:
    from ios_tvm.errors import ExecutorArgumentError

    c = compiled("residual")
    e = c.art.executor()
    e.set_input(0, c.inputs[0])
    for kw, match in (({"number": 0}, "number >= 1, got 0"), ({"repeat": 0}, "repeat >= 1"),
                      ({"warmup": -1}, "warmup >= 0"), ({"number": 2.5}, "an integer number"),
                      ({"number": True}, "an integer number"),
                      ({"min_repeat_ms": float("nan")}, "finite min_repeat_ms"),
                      ({"min_repeat_ms": -1}, "finite min_repeat_ms")):
        done: list[BaseException] = []

        def bench(kw: dict = kw, done: list = done) -> None:
            try:
                e.benchmark(**{"min_repeat_ms": 100, **kw})
            except BaseException as err:  # reported below
                done.append(err)

        t = threading.Thread(target=bench, daemon=True)   # number=0 used to spin forever
        t.start()
        t.join(timeout=60)
        assert not t.is_alive(), f"benchmark({kw}) hangs"
        assert len(done) == 1 and isinstance(done[0], ExecutorArgumentError), (kw, done)
        assert re.search(match, str(done[0])), (kw, str(done[0]))
    stats = e.benchmark(warmup=0, number=1, repeat=2, min_repeat_ms=1)
    assert len(stats["results"]) == 2 and all(t > 0 for t in stats["results"])


NATIVE_SCRIPT = textwrap.dedent("""
    import json
    import sys
    import tvm_ffi
    import ios_tvm._native as ffi
    ffi.load()
    import tvm.runtime
    create = tvm_ffi.get_global_func("ios_tvm.runtime.create_executor")
    lib = tvm.runtime.load_module(sys.argv[1])
    good = json.loads(open(sys.argv[2]).read())
    params = dict(tvm.runtime.load_param_dict_from_file(sys.argv[3]))
    cpu = tvm_ffi.device("cpu", 0)
    for line in sys.stdin:
        name, text = line.rstrip("\\n").split("\\t", 1)
        try:
            e = create(text, lib, params, cpu)
            for i in range(e["num_inputs"]()):
                pass
            e["run"]() if e["num_inputs"]() == 0 else None
            print(name, "ACCEPTED", flush=True)
        except Exception as err:
            print(name, type(err).__name__, str(err).splitlines()[0][:200], flush=True)
""")


def _mutated_native_plans(doc: dict) -> dict[str, tuple[str, str]]:
    """name -> (plan JSON text, the start of the error expected from create_executor)."""
    def variant(**changes: Any) -> dict:
        d = json.loads(json.dumps(doc))
        for path, value in changes.items():
            keys = path.split("__")
            node = d
            for k in keys[:-1]:
                node = node[int(k) if k.isdigit() else k]
            node[int(keys[-1]) if keys[-1].isdigit() else keys[-1]] = value
        return d

    storage = next(i for i, t in enumerate(doc["tensors"]) if t["place"] == "storage")
    cases = {
        "deep": ("[" * 200_000 + "]" * 200_000, "plan is nested too deeply"),
        "streams": (variant(min_streams=1_000_000), "plan: min_streams 1000000 is not in 1..64"),
        "storage": (variant(storages__0=2**60), "storage 0: size 1152921504606846976 is "
                                                "negative or the storages exceed"),
        "negative": (variant(**{f"tensors__{storage}__shape": [-1, 4]}),
                     f"tensor {storage} ('{doc['tensors'][storage]['name']}') has a negative"),
        "dtype": (variant(**{f"tensors__{storage}__dtype": "float32x4"}), "tensor"),
        "ndim": (variant(**{f"tensors__{storage}__shape": [1] * 40}), "tensor"),
        "huge": (variant(**{f"tensors__{storage}__shape": [2**40, 2**40]}),
                 "tensor"),
        "float": (variant(version=2.0), "plan: 'version' must be an integer"),
        "device": (variant(device_type="cuda"), "the plan's device type is 'cuda'"),
        "groups": (variant(stages=[{"groups": []}, *doc["stages"]]), "stage 0 has 0 groups"),
        "wide": (variant(stages=[{"groups": [[0]] * 65}]), "stage 0 has 65 groups"),
        "empty": (variant(stages=[{"groups": [[]]}]), "stage 0 has an empty group"),
        "global": (variant(calls__0__kernel="runtime.config_threadpool"),
                   "kernel 'runtime.config_threadpool' is not in the kernel library, nor a "
                   "global function allowed"),
        "missing": (variant(tensors__0__name="not_a_weight_or_input", inputs=[]),
                    "tensor 0 ('not_a_weight_or_input') is an input buffer missing"),
        "offset": (variant(**{f"tensors__{storage}__offset": 64}), "tensor"),
        "noformat": (variant(format=3), "not an ios_tvm.Plan document"),
    }
    return {k: (v if isinstance(v, str) else json.dumps(v), m) for k, (v, m) in cases.items()}


def test_native_executor_trusts_no_plan(tmp_path: Path) -> None:
    """create_executor, called directly (no Python validation), refuses bad plans with an
    error instead of crashing, hanging or allocating 2^60 bytes (in a subprocess: before these
    checks some of them crashed it)."""
    c = compiled("residual")
    art = c.art.export(tmp_path / "art")
    doc = json.loads((art / "plan.json").read_text())
    cases = _mutated_native_plans(doc)
    stdin = "".join(f"{name}\t{text}\n" for name, (text, _) in cases.items())
    proc = subprocess.run([sys.executable, "-c", NATIVE_SCRIPT, str(art / "kernels.so"),
                           str(art / "plan.json"), str(art / "params.bin")], input=stdin,
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    got = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
    assert set(got) == set(cases), proc.stdout
    for name, (_, match) in cases.items():
        kind, _, message = got[name].partition(" ")
        assert kind == "ValueError" and message.startswith(match), (name, got[name])


def test_plan_calls_only_allowed_globals(tmp_path: Path) -> None:
    """A plan naming a registered global that is not library dispatch is refused, by load
    and by the executor, unless the application allowed it."""
    from ios_tvm.runtime.executor import allow_packed_function, packed_function_allowed

    c = compiled("residual")
    plan = c.art.plan
    evil = dataclasses.replace(plan, calls=(dataclasses.replace(
        plan.calls[0], kernel="runtime.config_threadpool"), *plan.calls[1:]))
    with pytest.raises(PlanFormatError, match="kernel 'runtime.config_threadpool' is not in "
                                              "the kernel library, nor a global function"):
        Executor(evil, c.art.lib, c.art.params)
    out = Artifact(evil, c.art.lib, c.art.params).export(tmp_path / "evil")
    with pytest.raises(PlanFormatError, match=r"kernels.so: kernel\(s\) "
                                              r"\['runtime.config_threadpool'\] named by the "
                                              r"plan are missing"):
        load(out)
    # Library dispatch functions read their arguments unchecked (the plan fuzzer crashed the
    # executor through tvm.contrib.sort.sort): none is allowed unless the application says so.
    assert not packed_function_allowed("tvm.contrib.sort.sort")
    assert not packed_function_allowed("runtime.config_threadpool")
    # (a namespace no other test allows: the list is process-wide)
    allow_packed_function("ios_tvm_allow_check.exact_name")
    assert packed_function_allowed("ios_tvm_allow_check.exact_name")
    assert not packed_function_allowed("ios_tvm_allow_check.exact_name2")
    assert not packed_function_allowed("ios_tvm_allow_check.other")
    for bad in ("", ".", " "):
        with pytest.raises(ValueError, match="a function name or a prefix"):
            allow_packed_function(bad)


RESERVED_SCRIPT = textwrap.dedent("""
    import json
    import sys
    import numpy as np
    import tvm
    import tvm_ffi
    import ios_tvm._native as ffi
    from ios_tvm.runtime.executor import Executor
    from ios_tvm.ir.plan import Plan
    from ios_tvm.errors import PlanFormatError
    ffi.load()
    lib = tvm.runtime.load_module(sys.argv[1])
    doc = json.loads(open(sys.argv[2]).read())
    params = dict(tvm.runtime.load_param_dict_from_file(sys.argv[3]))
    assert lib.implements_function("_library_bin", True)  # tvm-ffi's data, not a function
    doc["calls"][0]["kernel"] = "_library_bin"
    try:
        Plan.from_json(doc)
    except PlanFormatError as e:
        print("python:", e)
    create = tvm_ffi.get_global_func("ios_tvm.runtime.create_executor")
    try:
        e = create(json.dumps(doc), lib, params, tvm_ffi.device("cpu", 0))
        e["set_input"](0, tvm.runtime.tensor(np.zeros([int(d) for d in doc["tensors"][
            doc["inputs"][0]]["shape"]], "float32")))
        e["run"]()
        print("native: ran")
    except ValueError as e:
        print("native:", e)
""")


def test_reserved_kernel_names(tmp_path: Path) -> None:
    """A library with imports exports tvm-ffi's data symbol __tvm_ffi__library_bin, which
    GetFunction("_library_bin") wraps as a function: a plan calling it crashed the process
    (in a subprocess here). Names starting with '_' are refused."""
    c, t = compiled("residual"), compiled("transformer")
    lib = compile_model("residual", MODELS["residual"]()).art.lib  # a private copy to import into
    lib.import_module(t.art.lib)
    lib.export_library(str(tmp_path / "kernels.so"))
    art = c.art.export(tmp_path / "art")
    proc = subprocess.run([sys.executable, "-c", RESERVED_SCRIPT, str(tmp_path / "kernels.so"),
                           str(art / "plan.json"), str(art / "params.bin")], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert "python: call 0: kernel name '_library_bin' is reserved" in proc.stdout, proc.stdout
    assert "native: kernel name '_library_bin' is reserved" in proc.stdout, proc.stdout


# ---------------------------------------------------------------------------------------------
# artifacts
# ---------------------------------------------------------------------------------------------
ARTIFACT_FILES = {"plan.json", "kernels.so", "params.bin", "manifest.json"}


@functools.cache
def inception_ios_artifact() -> Artifact:
    c = compiled("inception")
    return Artifact(c.plan(make_schedule(c.ex.graph, "ios")), c.art.lib, c.art.params)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return inception_ios_artifact().export(tmp_path_factory.mktemp("artifact") / "inception")


@pytest.fixture
def artifact_dir(exported: Path, tmp_path: Path) -> Path:
    """A private copy of the exported artifact, free to damage."""
    return Path(shutil.copytree(exported, tmp_path / "artifact"))


def reseal(directory: Path) -> None:
    """Make an altered artifact consistent again, as a careful forger would: the plan's
    kernels_sha256 and the manifest's sizes and hashes match the files now there. Isolates the
    checks behind the manifest's (the plan's own, the library's, the weights')."""
    import hashlib

    def sha(name: str) -> str:
        return hashlib.sha256((directory / name).read_bytes()).hexdigest()

    plan_path = directory / "plan.json"
    try:
        doc = json.loads(plan_path.read_text())
    except (ValueError, UnicodeDecodeError):
        doc = None
    if isinstance(doc, dict) and doc.get("kernels_sha256") != sha("kernels.so"):
        doc["kernels_sha256"] = sha("kernels.so")
        plan_path.write_text(json.dumps(doc, indent=1))
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["files"] = {n: {"size": (directory / n).stat().st_size, "sha256": sha(n)}
                         for n in ("plan.json", "kernels.so", "params.bin")}
    path.write_text(json.dumps(manifest))


def test_export_load_round_trip(exported: Path) -> None:
    assert {p.name for p in exported.iterdir()} == ARTIFACT_FILES  # no .tmp leftovers
    art = inception_ios_artifact()
    loaded = load_artifact(exported)
    assert loaded.plan == art.plan and loaded.plan.meta == art.plan.meta
    assert set(loaded.params) == set(art.params)
    c = compiled("inception")
    e = load(exported, expect_target="llvm")
    assert e.plan.num_streams > 1
    assert np.array_equal(e(*c.inputs)[0], art.executor()(*c.inputs)[0])
    assert np.array_equal(e(*c.inputs)[0], sequential_outputs("inception")[0])


def test_export_replaces_an_existing_artifact(artifact_dir: Path) -> None:
    c = compiled("residual")
    c.art.export(artifact_dir)
    assert {p.name for p in artifact_dir.iterdir()} == ARTIFACT_FILES
    e = load(artifact_dir)
    assert_outputs_close(e(*c.inputs), references("residual")[0], "re-exported")


class _FailingLib:
    """A kernel library whose export writes half a file and then fails."""

    def export_library(self, path: str) -> None:
        Path(path).write_bytes(b"\x7fELF half written")
        raise RuntimeError("disk full")


def test_failed_export_leaves_nothing_half_written(tmp_path: Path, artifact_dir: Path) -> None:
    art = inception_ios_artifact()
    bad = Artifact(art.plan, _FailingLib(), art.params)
    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError, match="disk full"):
        bad.export(fresh)
    assert list(fresh.iterdir()) == []
    before = {p.name: p.read_bytes() for p in artifact_dir.iterdir()}
    with pytest.raises(RuntimeError, match="disk full"):
        bad.export(artifact_dir)   # over an existing artifact: it stays intact
    assert {p.name: p.read_bytes() for p in artifact_dir.iterdir()} == before
    load_artifact(artifact_dir)


def test_missing_manifest(artifact_dir: Path) -> None:
    (artifact_dir / "manifest.json").unlink()
    with pytest.raises(PlanFormatError, match=r"not an ios-tvm artifact \(no manifest.json\)"):
        load(artifact_dir)


def test_corrupt_manifest(artifact_dir: Path) -> None:
    path = artifact_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["files"]
    path.write_text(json.dumps(manifest))
    with pytest.raises(PlanFormatError, match=r"manifest.json: corrupt manifest"):
        load(artifact_dir)
    path.write_text("{")
    with pytest.raises(PlanFormatError, match=r"manifest.json: corrupt manifest"):
        load(artifact_dir)


def test_wrong_artifact_version(artifact_dir: Path) -> None:
    path = artifact_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["version"] = 99
    path.write_text(json.dumps(manifest))
    with pytest.raises(PlanFormatError, match=r"manifest.json: artifact version 99"):
        load(artifact_dir)


def test_truncated_plan_size_mismatch(artifact_dir: Path) -> None:
    path = artifact_dir / "plan.json"
    text = path.read_bytes()
    path.write_bytes(text[: len(text) // 2])
    with pytest.raises(PlanFormatError,
                       match=rf"plan.json: {len(text) // 2} bytes, the manifest says "
                             rf"{len(text)} \(truncated"):
        load(artifact_dir)


def assert_hash_mismatch(directory: Path, name: str) -> None:
    with pytest.raises(PlanFormatError, match=rf"{name}: its sha256 differs from the "
                                              r"manifest's \(corrupt or replaced\)"):
        load(directory)


def test_truncated_plan_same_size(artifact_dir: Path) -> None:
    """Corrupt but the size the manifest expects: its hash differs; with the manifest made to
    match, the JSON parser catches it."""
    path = artifact_dir / "plan.json"
    text = path.read_bytes()
    half = text[: len(text) // 2]
    path.write_bytes(half + b" " * (len(text) - len(half)))
    assert_hash_mismatch(artifact_dir, "plan.json")
    reseal(artifact_dir)
    with pytest.raises(PlanFormatError, match=r"plan.json: plan is not valid JSON \(truncated"):
        load(artifact_dir)


def test_wrong_plan_version(artifact_dir: Path) -> None:
    path = artifact_dir / "plan.json"
    text = path.read_text()
    changed = re.sub(r'"version": \d,', '"version": 9,', text, count=1)   # same size
    assert changed != text and len(changed) == len(text)
    path.write_text(changed)
    assert_hash_mismatch(artifact_dir, "plan.json")
    reseal(artifact_dir)
    with pytest.raises(PlanFormatError, match=r"plan.json: plan version 9 is not supported"):
        load(artifact_dir)


def test_missing_kernel_library(artifact_dir: Path) -> None:
    (artifact_dir / "kernels.so").unlink()
    with pytest.raises(PlanFormatError, match=r"kernels.so: missing from the artifact"):
        load(artifact_dir)


def test_corrupt_kernel_library(artifact_dir: Path) -> None:
    path = artifact_dir / "kernels.so"
    path.write_bytes(b"\0" * path.stat().st_size)
    assert_hash_mismatch(artifact_dir, "kernels.so")
    reseal(artifact_dir)
    with pytest.raises(PlanFormatError, match=r"kernels.so: cannot load the kernel library"):
        load(artifact_dir)


def test_plan_names_a_kernel_the_library_lacks(artifact_dir: Path) -> None:
    path = artifact_dir / "plan.json"
    doc = json.loads(path.read_text())
    doc["calls"][1]["kernel"] = "no_such_kernel"
    path.write_text(json.dumps(doc, indent=1))
    reseal(artifact_dir)   # isolate the kernel check
    with pytest.raises(PlanFormatError,
                       match=r"kernels.so: kernel\(s\) \['no_such_kernel'\] named by the plan "
                             r"are missing"):
        load(artifact_dir)


def test_corrupt_params(artifact_dir: Path) -> None:
    path = artifact_dir / "params.bin"
    path.write_bytes(b"\0" * path.stat().st_size)
    assert_hash_mismatch(artifact_dir, "params.bin")
    reseal(artifact_dir)
    with pytest.raises(PlanFormatError, match=r"params.bin: cannot read the weights"):
        load(artifact_dir)


def test_wrong_expected_target(artifact_dir: Path) -> None:
    for wrong in ("cuda", {"kind": "cuda", "arch": "sm_90"}, {"kind": "llvm", "mtriple": "x"}):
        with pytest.raises(PlanFormatError, match=r"plan.json: built for target .*llvm"):
            load(artifact_dir, expect_target=wrong)
    for right in ("llvm", {"kind": "llvm"}, inception_ios_artifact().plan.target,
                  tvm.target.Target(inception_ios_artifact().plan.target)):
        load_artifact(artifact_dir, expect_target=right)


def test_target_matches() -> None:
    built = json.dumps({"kind": "cuda", "arch": "sm_90", "host": {"kind": "llvm"}})
    assert target_matches(built, "cuda")
    assert target_matches(built, {"kind": "cuda", "arch": "sm_90"})
    assert target_matches(built, {"host": {"kind": "llvm"}})
    assert not target_matches(built, {"kind": "cuda", "arch": "sm_80"})
    assert not target_matches(built, "llvm")
    assert target_matches("llvm", "llvm") and not target_matches("llvm", "cuda")


# ---------------------------------------------------------------------------------------------
# runtime-only mode: a fresh process without the TVM compiler runs an exported artifact
# ---------------------------------------------------------------------------------------------
RUNTIME_ONLY_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import ios_tvm
    assert "tvm" not in sys.modules, "importing ios_tvm imported tvm"
    import tvm
    assert tvm.base._RUNTIME_ONLY is True, "TVM is not in runtime-only mode"
    assert "tvm_compiler" not in tvm.base._LOADED_LIBS, tvm.base._LOADED_LIBS
    art, ref = sys.argv[1], sys.argv[2]
    e = ios_tvm.load(art, expect_target="llvm")
    outs = e(np.load(ref + "/x.npy"))
    for i, out in enumerate(outs):
        assert np.array_equal(out, np.load(f"{ref}/y{i}.npy")), f"output {i} differs"
    compiler = sorted(m for m in sys.modules if m.startswith(("tvm.relax", "ios_tvm.compiler",
                                                              "ios_tvm.cost", "onnx")))
    assert not compiler, f"the runtime imported the compiler: {compiler}"
    print("runtime-only OK", len(outs))
""")


def test_runtime_only_process(tmp_path: Path) -> None:
    c = compiled("two_output")
    schedule = make_schedule(c.ex.graph, "greedy")
    art = Artifact(c.plan(schedule), c.art.lib, c.art.params)
    art.export(tmp_path / "art")
    ref = tmp_path / "ref"
    ref.mkdir()
    np.save(ref / "x.npy", c.inputs[0])
    outs = art.executor()(*c.inputs)
    for i, out in enumerate(outs):
        np.save(ref / f"y{i}.npy", out)
    env = {**os.environ, "TVM_USE_RUNTIME_LIB": "1"}
    proc = subprocess.run([sys.executable, "-c", RUNTIME_ONLY_SCRIPT, str(tmp_path / "art"),
                           str(ref)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"runtime-only OK {len(outs)}" in proc.stdout


# ---------------------------------------------------------------------------------------------
# profile_stage
# ---------------------------------------------------------------------------------------------
def _heavy_independent_calls(plan: Plan, graph: OpGraph) -> tuple[int, int]:
    """The two costliest calls of the plan's widest stage that sit in different groups."""
    stage = max(plan.stages, key=lambda s: len(s.groups))
    best = [max(g, key=lambda ci: graph.nodes[ci].flops) for g in stage.groups]
    best.sort(key=lambda ci: graph.nodes[ci].flops, reverse=True)
    return best[0], best[1]


def test_profile_stage(inception_executor: Executor) -> None:
    e = inception_executor
    graph = compiled("inception").ex.graph
    a, b = _heavy_independent_calls(e.plan, graph)
    assert not (graph.ancestor_masks[a] >> b & 1 or graph.ancestor_masks[b] >> a & 1)
    for groups in ([[a], [b]], [[a, b]], [[a]]):
        times = e.profile_stage(groups, warmup=1, number=3, repeat=4)
        assert len(times) == 4
        assert all(math.isfinite(t) and t > 0 for t in times), times
    every = [[i] for i in range(e.plan.num_streams)]
    assert len(e.profile_stage(every, warmup=0, number=1, repeat=1)) == 1
    # profiling leaves the executor usable
    assert np.array_equal(e(*compiled("inception").inputs)[0],
                          sequential_outputs("inception")[0])


def test_profile_stage_cold_times_each_run_and_keeps_the_weights(
        inception_executor: Executor) -> None:
    """Evicting weights writes them back first: the outputs after it are unchanged."""
    e = inception_executor
    graph = compiled("inception").ex.graph
    a, b = _heavy_independent_calls(e.plan, graph)
    for groups in ([[a], [b]], [[a]]):
        times = e.profile_stage_cold(groups, warmup=1, repeat=5)
        assert len(times) == 5
        assert all(math.isfinite(t) and t > 0 for t in times), times
    assert np.array_equal(e(*compiled("inception").inputs)[0],
                          sequential_outputs("inception")[0])
    from ios_tvm.errors import ExecutorArgumentError

    with pytest.raises(ExecutorArgumentError, match="repeat >= 1"):
        e.profile_stage_cold([[a]], repeat=0)
    with pytest.raises(ValueError, match="missing call 99"):
        e.profile_stage_cold([[99]])


def test_profile_stage_errors(inception_executor: Executor) -> None:
    e = inception_executor
    n = e.plan.num_streams
    with pytest.raises(ValueError, match=rf"needs 1..{n} groups, got {n + 1}"):
        e.profile_stage([[0]] * (n + 1))
    with pytest.raises(ValueError, match=r"needs 1..\d+ groups, got 0"):
        e.profile_stage([])
    with pytest.raises(ValueError, match="missing call 99"):
        e.profile_stage([[99]])
    with pytest.raises(ValueError, match="number >= 1"):
        e.profile_stage([[0]], number=0)


# ---------------------------------------------------------------------------------------------
# CUDA: every model compiles and exports for sm_90 here; GPU tests run it when one is present
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_cuda_build_and_export(name: str, tmp_path: Path) -> None:
    c = compiled_cuda(name)
    assert c.art.plan.device_type == "cuda"
    assert target_matches(c.art.plan.target, CUDA_TARGET)
    assert [m.kind for m in c.art.lib.imports] == ["cuda"]
    if not has_cuda():   # the cubin module keeps its source in memory (not in the file)
        assert "__global__" in c.art.lib.imports[0].inspect_source("cuda")
    for kind in SCHEDULES:
        schedule = make_schedule(c.ex.graph, kind)
        plan = c.plan(schedule)
        check_plan_storage(c.ex.graph, schedule, plan)
        assert all(c.art.lib.implements_function(call.kernel, True) for call in plan.calls)
    art = Artifact(c.plan(make_schedule(c.ex.graph, "ios")), c.art.lib, c.art.params)
    out = art.export(tmp_path / name)
    assert {p.name for p in out.iterdir()} == ARTIFACT_FILES
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["device_type"] == "cuda"
    with pytest.raises(PlanFormatError, match="plan.json: built for target"):
        load_artifact(out, expect_target="llvm")
    if not has_cuda():
        # No CUDA loader on this machine: a clear error, naming the file.
        with pytest.raises(PlanFormatError, match="kernels.so: cannot load the kernel library"):
            load_artifact(out, expect_target="cuda")


@functools.cache
def gpu_references(name: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(CUDA Relax VM outputs, CPU Relax VM outputs) for ``compiled_cuda(name).inputs``."""
    c = compiled_cuda(name)
    target = tvm.target.Target(CUDA_TARGET, tvm.target.Target({"kind": "llvm"}))
    return (vm_reference(c.model, c.inputs, target, tvm.cuda(0)),
            vm_reference(c.model, c.inputs))


@pytest.mark.gpu
@pytest.mark.parametrize("kind", SCHEDULES)
@pytest.mark.parametrize("name", MODELS)
def test_gpu_outputs_match(name: str, kind: str) -> None:
    c = compiled_cuda(name)
    schedule = make_schedule(c.ex.graph, kind)
    plan, e = c.executor(schedule)
    assert e.device.dlpack_device_type() == 2
    out = e(*c.inputs)
    vm_gpu, vm_cpu = gpu_references(name)
    assert_outputs_close(out, vm_gpu, f"{name}/{kind} vs CUDA Relax VM", GPU_TOL)
    assert_outputs_close(out, vm_cpu, f"{name}/{kind} vs CPU Relax VM", GPU_TOL)
    assert_outputs_close(out, ort_reference(c.model, c.inputs), f"{name}/{kind} vs ORT",
                         GPU_TOL)
    if name == "inception" and kind != "sequential":
        assert plan.num_streams > 1 and e._module["num_streams"]() == plan.num_streams


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["ios", "greedy"])
def test_gpu_concurrent_plans_are_deterministic(kind: str) -> None:
    c = compiled_cuda("inception")
    plan, e = c.executor(make_schedule(c.ex.graph, kind))
    assert plan.num_streams > 1
    inputs = [c.inputs, random_inputs(c.ex.graph, seed=7)]
    _, seq = c.executor(sequential_schedule(c.ex.graph))
    want = [seq(*x) for x in inputs]
    for run in range(200):
        got = e(*inputs[run % 2])
        for i, (g, w) in enumerate(zip(got, want[run % 2], strict=True)):
            assert np.array_equal(g, w), f"run {run}: output {i} differs from sequential"


@pytest.mark.gpu
def test_gpu_artifact_round_trip(tmp_path: Path) -> None:
    c = compiled_cuda("inception")
    art = Artifact(c.plan(make_schedule(c.ex.graph, "ios")), c.art.lib, c.art.params)
    art.export(tmp_path / "art")
    e = load(tmp_path / "art", expect_target={"kind": "cuda", "arch": "sm_90"})
    assert np.array_equal(e(*c.inputs)[0], art.executor()(*c.inputs)[0])


@pytest.mark.gpu
def test_gpu_profile_stage() -> None:
    c = compiled_cuda("inception")
    plan, e = c.executor(make_schedule(c.ex.graph, "ios"))
    a, b = _heavy_independent_calls(plan, c.ex.graph)
    for groups in ([[a], [b]], [[a, b]]):
        times = e.profile_stage(groups, warmup=2, number=5, repeat=3)
        assert len(times) == 3 and all(math.isfinite(t) and t > 0 for t in times), times
    assert np.array_equal(e(*c.inputs)[0], c.executor(sequential_schedule(c.ex.graph))[1](
        *c.inputs)[0])
