"""Default CPU schedules (ios_tvm.compiler.kernel_schedules) and the executor's per-group kernel
threads.

Scheduled kernels must compute what TVM's unscheduled ones do (same outputs through the Relax
VM and through the ios-tvm executor, with concurrent groups), every heavy kernel (conv2d,
matmul) must get a schedule, and a kernel no rule can handle must be left alone, not crash
the lowering.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
onnx = pytest.importorskip("onnx")

from tvm import relax  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import onnx_models as om  # noqa: E402

from ios_tvm import _native  # noqa: E402
from ios_tvm.compiler import kernel_schedules  # noqa: E402
from ios_tvm.compiler.extract import graph_from_model  # noqa: E402
from ios_tvm.compiler.frontend import load_model  # noqa: E402
from ios_tvm.compiler.kernel_schedules import (  # noqa: E402
    CPU_SCHEDULE_ATTR,
    ScheduleReport,
    apply_default_schedules,
    default_schedule,
    is_scheduled,
    schedule_report,
    vector_lanes,
)
from ios_tvm.compiler.kernels import KERNEL_INFO_ATTR, lower_to_kernels  # noqa: E402
from ios_tvm.models import sample_block  # noqa: E402

TARGET = "llvm"
AVX2 = {"kind": "llvm", "mcpu": "haswell"}

MODELS = {
    "sample": lambda: sample_block(),
    "residual_block": om.residual_block,
    "transformer_layer": om.transformer_layer,
    "inception_block": om.inception_block,
}


def _inputs(mod: tvm.IRModule, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal([int(d) for d in p.ty.shape.values]).astype(str(p.ty.dtype))
            for p in mod["main"].params]


def _vm_outputs(lowered: tvm.IRModule, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Run a lower_to_kernels module through the rest of TVM's CPU pipeline and its VM."""
    tgt = tvm.target.Target(json.loads(json.loads(str(lowered.attrs[KERNEL_INFO_ATTR]))["target"]))
    backend = relax.backend.cpu_generic.pipeline
    rest = tvm.transform.Sequential([*backend.dataflow_lower_passes(tgt),
                                     *backend.finalize_passes(tgt)])
    exe = tvm.compile(lowered, target=tgt, relax_pipeline=rest)
    vm = relax.VirtualMachine(exe, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(x) for x in inputs])
    if isinstance(out, tvm.runtime.Tensor):
        return [out.numpy()]
    return [o.numpy() for o in out]


def _kernel_ops(lowered: tvm.IRModule) -> dict[str, dict[str, Any]]:
    return json.loads(str(lowered.attrs[KERNEL_INFO_ATTR]))["kernels"]


@pytest.fixture(scope="module", params=sorted(MODELS))
def lowered_pair(request: pytest.FixtureRequest) -> tuple[str, Any, Any]:
    mod = load_model(MODELS[request.param]())
    return (request.param, lower_to_kernels(mod, TARGET, cpu_schedule=False),
            lower_to_kernels(mod, TARGET))


def test_scheduled_kernels_give_the_same_outputs(lowered_pair: tuple[str, Any, Any]) -> None:
    name, plain, scheduled = lowered_pair
    inputs = _inputs(plain)
    want = _vm_outputs(plain, inputs)
    got = _vm_outputs(scheduled, inputs)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4, err_msg=name)


def test_heavy_kernels_are_scheduled(lowered_pair: tuple[str, Any, Any]) -> None:
    """Every conv2d / matmul kernel gets the contraction rule; nothing is left unscheduled
    without a reason."""
    name, plain, scheduled = lowered_pair
    report = schedule_report(scheduled)
    assert report is not None
    info = _kernel_ops(scheduled)
    heavy = [k for k, v in info.items() if (v.get("anchor") or {}).get("op") in
             ("conv2d", "matmul", "dense") or any(op in ("conv2d", "matmul")
                                                   for op in v.get("ops", []))]
    assert heavy, f"{name}: no conv2d/matmul kernels found"
    for kernel in heavy:
        assert report.kernels[kernel] == "contraction", (name, kernel, report.reasons)
        assert is_scheduled(scheduled[kernel])
        assert info[kernel]["schedule"] == "contraction"
    assert report.counts.get("contraction", 0) == len(heavy)
    for kernel, how in report.kernels.items():
        if how == "unscheduled":
            assert report.reasons.get(kernel), kernel
    # Without default schedules nothing is scheduled, and the report says why.
    plain_report = schedule_report(plain)
    assert plain_report is not None and plain_report.num_scheduled == 0
    assert all(not is_scheduled(f) for f in plain.functions.values()
               if isinstance(f, tvm.tirx.PrimFunc))


def test_contraction_schedule_shape() -> None:
    """The sample block's conv: parallel outer loop, vectorised lanes along the output width,
    a local accumulator tile, the bias+ReLU folded into the write-back."""
    lowered = lower_to_kernels(load_model(sample_block()), AVX2)
    text = lowered["fused_conv2d_add_relu"].script()
    assert "T.parallel(" in text
    assert "T.vectorized(T.int64(7))" in text  # 28 = 4 x 7 lanes (8-lane AVX2 registers)
    assert 'scope="local"' in text
    assert "T.max(" in text and "T_add" not in text


def test_vector_lanes() -> None:
    assert vector_lanes(tvm.target.Target(AVX2)) == 8
    assert vector_lanes(tvm.target.Target(AVX2), 64) == 4
    assert vector_lanes(tvm.target.Target("llvm")) == 4  # generic x86-64: SSE2
    assert vector_lanes(tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512"})) == 16


def test_schedule_report_roundtrip() -> None:
    report = ScheduleReport("llvm", {"a": "contraction", "b": "unscheduled", "c": "tuned"},
                            {"b": "why"})
    again = ScheduleReport.from_json(json.loads(json.dumps(report.to_json())))
    assert again == report
    assert report.counts == {"contraction": 1, "unscheduled": 1, "tuned": 1}
    assert (report.num_scheduled, report.num_tuned, report.num_unscheduled) == (2, 1, 1)
    assert "3 kernels" in report.summary()


def test_non_llvm_and_prescheduled_kernels_are_left_alone() -> None:
    lowered = lower_to_kernels(load_model(om.residual_block()), TARGET, cpu_schedule=False)
    gv = next(g for g, f in lowered.functions.items() if isinstance(f, tvm.tirx.PrimFunc))
    func = lowered[gv]
    out, why = default_schedule(func, {"kind": "cuda", "arch": "sm_90"})
    assert out is None and "not llvm" in why
    done = func.with_attr("tirx.is_scheduled", True)
    out, why = default_schedule(done, TARGET)
    assert out is None and "already scheduled" in why
    mod = lowered.clone()
    mod[gv] = done
    report = schedule_report(apply_default_schedules(mod, TARGET))
    assert report.kernels[gv.name_hint] == "prescheduled"
    cuda_report = schedule_report(apply_default_schedules(lowered, {"kind": "cuda",
                                                                    "arch": "sm_90"}))
    assert cuda_report.num_scheduled == 0


def test_a_failing_rule_leaves_the_kernel_unscheduled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any error inside the rules: the kernel stays as TVM made it, the lowering goes on."""

    def boom(func: Any, target: Any) -> Any:
        raise RuntimeError("ScheduleError: simulated failure")

    monkeypatch.setattr(kernel_schedules, "_apply_rules", boom)
    plain = lower_to_kernels(load_model(om.residual_block()), TARGET, cpu_schedule=False)
    lowered = lower_to_kernels(load_model(om.residual_block()), TARGET)
    report = schedule_report(lowered)
    assert report.num_scheduled == 0 and report.num_unscheduled == len(report.kernels)
    assert all("simulated failure" in r for r in report.reasons.values())
    inputs = _inputs(plain)
    np.testing.assert_allclose(_vm_outputs(lowered, inputs)[0], _vm_outputs(plain, inputs)[0],
                               rtol=1e-5)


def test_report_is_a_module_attribute() -> None:
    lowered = lower_to_kernels(load_model(om.residual_block()), TARGET)
    assert CPU_SCHEDULE_ATTR in lowered.attrs
    assert schedule_report(tvm.IRModule({})) is None


def test_ios_pipeline_schedules_cpu_kernels() -> None:
    """``relax_pipeline="ios_tvm"`` runs the same default schedules as lower_to_kernels."""
    from ios_tvm.compiler.transform import pipeline

    mod = load_model(om.residual_block())
    plain = lower_to_kernels(mod, TARGET, cpu_schedule=False)
    exe = tvm.compile(mod, target=TARGET, relax_pipeline=pipeline(TARGET))
    vm = relax.VirtualMachine(exe, tvm.cpu())
    inputs = _inputs(plain)
    got = vm["main"](*[tvm.runtime.tensor(x) for x in inputs]).numpy()
    np.testing.assert_allclose(got, _vm_outputs(plain, inputs)[0], rtol=1e-4, atol=1e-4)


# -- the executor: concurrent groups, each kernel with its share of the cores -----------------
needs_native = pytest.mark.skipif(not _native.native_available(),
                                  reason="native library not built (bash scripts/setup.sh)")


@needs_native
@pytest.mark.parametrize("share", ["1", "0"])
def test_concurrent_plan_with_parallel_kernels(share: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """An IOS plan of parallel kernels on concurrent groups computes what TVM computes, with
    the per-group thread share on (default) and off (IOS_TVM_THREAD_SHARE=0)."""
    from ios_tvm.compiler.plan_lowering import lower_schedule as lower
    from ios_tvm.ir.schedule import Schedule, Stage
    from ios_tvm.scheduler.search import sequential_schedule

    monkeypatch.setenv("IOS_TVM_THREAD_SHARE", share)
    model = sample_block()
    ex = graph_from_model(model, TARGET)
    plain = lower_to_kernels(load_model(model), TARGET, cpu_schedule=False)
    graph = ex.graph
    # conv_a | conv_b | conv_c, then conv_d, then the concat.
    by_input = [i for i, n in enumerate(graph.nodes) if graph.inputs[0] in n.inputs]
    assert len(by_input) == 3
    rest = [i for i in range(len(graph.nodes)) if i not in by_input]
    stages = [Stage(tuple((i,) for i in by_input), "concurrent")]
    stages += [Stage(((i,),), "concurrent") for i in rest]
    ios = Schedule(tuple(stages))
    inputs = _inputs(plain)
    want = _vm_outputs(plain, inputs)[0]
    for schedule in (ios, sequential_schedule(graph)):
        art = lower(ex, schedule, min_streams=3)
        executor = art.executor()
        for _ in range(3):  # repeated runs: pools are configured once per thread, then reused
            got = executor(*inputs)[0]
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        samples = executor.profile_stage([[by_input[0]], [by_input[1]]], warmup=1, number=2,
                                         repeat=2)
        assert len(samples) == 2 and all(s > 0 for s in samples)


def test_default_cpu_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    from ios_tvm.runtime.executor import default_cpu_threads

    monkeypatch.setenv("TVM_NUM_THREADS", "3")
    assert default_cpu_threads() == 3
    monkeypatch.delenv("TVM_NUM_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("IOS_TVM_THREAD_SHARE", "0")
    n = default_cpu_threads()
    assert n >= 1 and "TVM_NUM_THREADS" not in __import__("os").environ
    monkeypatch.delenv("IOS_TVM_THREAD_SHARE")
    assert default_cpu_threads() == n
    assert __import__("os").environ["TVM_NUM_THREADS"] == str(n)
