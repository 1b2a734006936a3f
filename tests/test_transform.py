"""The InterOperatorSchedule pass and the "ios_tvm" Relax pipeline (ios_tvm.transform).

The pass must compose with other passes: it records a schedule (a function attribute) and
leaves the computation alone, so TVM's own build of the scheduled module computes what ONNX
Runtime computes.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from tvm import relax  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import onnx_models as om  # noqa: E402

from ios_tvm.compiler.extract import extract_graph  # noqa: E402
from ios_tvm.compiler.frontend import load_model  # noqa: E402
from ios_tvm.compiler.kernels import lower_to_kernels  # noqa: E402
from ios_tvm.compiler.transform import (  # noqa: E402
    SCHEDULE_ATTR,
    STATS_ATTR,
    InterOperatorSchedule,
    pipeline,
    schedule_of,
)
from ios_tvm.cost import AnalyticCost, DeviceSpec  # noqa: E402
from ios_tvm.errors import IosTvmError, UnsupportedGraphError  # noqa: E402
from ios_tvm.ir.schedule import Schedule, Stage, validate_schedule  # noqa: E402
from ios_tvm.scheduler.config import SearchConfig  # noqa: E402

#: One kernel fills half of a 2-core machine: the analytic model rewards concurrency.
TWO_LANES = DeviceSpec("two-lanes", peak_flops=50e9, bandwidth=10e9, launch_s=1e-6,
                       sync_s=2e-6, saturation_s=1.0, min_utilisation=0.5)
MODELS: dict[str, Callable[[], Any]] = {
    "inception": om.inception_block,
    "residual": om.residual_block,
    "transformer": om.transformer_layer,
}


def two_lanes(extraction: Any) -> AnalyticCost:
    return AnalyticCost(extraction.graph, TWO_LANES)


def ort_run(model: Any, inputs: list[np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return list(sess.run(None, {i.name: x for i, x in zip(sess.get_inputs(), inputs,
                                                            strict=True)}))


def vm_run(exe: Any, inputs: list[np.ndarray]) -> list[np.ndarray]:
    out = relax.VirtualMachine(exe, tvm.cpu())["main"](*[tvm.runtime.tensor(x) for x in inputs])
    return [out.numpy()] if isinstance(out, tvm.runtime.Tensor) else [o.numpy() for o in out]


def inputs_of(mod: Any, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    f = mod["main"]
    n = int(f.attrs["num_input"]) if f.attrs is not None and "num_input" in f.attrs else len(
        f.params)
    return [rng.standard_normal([int(d) for d in p.ty.shape.values]).astype(str(p.ty.dtype))
            for p in f.params[:n]]


def without_ios_attrs(func: Any) -> Any:
    return func.without_attr(SCHEDULE_ATTR).without_attr(STATS_ATTR)


class GrabScheduled:
    """A pass instrument that keeps the module right after InterOperatorSchedule."""

    def __init__(self) -> None:
        self.mods: list[Any] = []

    def run_after_pass(self, mod: Any, info: Any) -> None:
        if info.name == "InterOperatorSchedule":
            self.mods.append(mod)


def grab() -> Any:
    return tvm.instrument.pass_instrument(GrabScheduled)()


@pytest.fixture(scope="module")
def lowered() -> Any:
    return lower_to_kernels(load_model(om.inception_block()), "llvm")


# ---------------------------------------------------------------------------------------------
# composition
# ---------------------------------------------------------------------------------------------
def test_pass_in_a_sequential_records_a_valid_schedule(lowered: Any) -> None:
    seq = tvm.transform.Sequential([
        relax.transform.DeadCodeElimination(),
        InterOperatorSchedule(cost_factory=two_lanes),
        relax.transform.DeadCodeElimination(),
    ])
    out = seq(lowered)
    sched = schedule_of(out)
    assert isinstance(sched, Schedule)
    graph = extract_graph(out).graph
    validate_schedule(graph, sched)
    assert sched.num_ops == len(graph.nodes) == 8
    assert any(len(s.groups) > 1 for s in sched.stages), "two-lanes should run branches together"
    # The computation is unchanged: same body, same attributes apart from ours.
    tvm.ir.assert_structural_equal(lowered["main"].body, out["main"].body)
    tvm.ir.assert_structural_equal(without_ios_attrs(out["main"]), lowered["main"])
    assert schedule_of(lowered) is None  # the input module was not modified


def test_stats_are_recorded(lowered: Any) -> None:
    out = InterOperatorSchedule()(lowered)
    stats = str(out["main"].attrs[STATS_ATTR])
    assert "stages_costed" in stats


def test_schedule_survives_later_passes(lowered: Any) -> None:
    out = tvm.transform.Sequential([
        InterOperatorSchedule(SearchConfig(strategy="greedy")),
        relax.transform.DeadCodeElimination(),
        relax.transform.CanonicalizeBindings(),
    ])(lowered)
    sched = schedule_of(out)
    assert sched is not None and sched.meta["strategy"] == "greedy"
    validate_schedule(extract_graph(out).graph, sched)


def test_pass_after_tvms_own_fusion_passes() -> None:
    """No ios-tvm lowering: TVM's passes fuse, the pass picks the target from the context."""
    mod = load_model(om.inception_block())
    target = tvm.target.Target("llvm")
    with target:
        out = tvm.transform.Sequential([
            relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
            relax.transform.FoldConstant(), relax.transform.FuseOps(),
            relax.transform.FuseTIR(), InterOperatorSchedule(cost_factory=two_lanes)])(mod)
    sched = schedule_of(out)
    assert sched is not None
    validate_schedule(extract_graph(out).graph, sched)


def test_disabled_pass_is_skipped(lowered: Any) -> None:
    seq = tvm.transform.Sequential([InterOperatorSchedule()])
    with tvm.transform.PassContext(disabled_pass=["InterOperatorSchedule"]):
        out = seq(lowered)
    assert schedule_of(out) is None


def test_scheduled_module_still_computes_the_same(lowered: Any) -> None:
    model = om.inception_block()
    out = InterOperatorSchedule(cost_factory=two_lanes)(lowered)
    backend = relax.backend.cpu_generic.pipeline
    target = tvm.target.Target("llvm")
    with target:
        rest = tvm.transform.Sequential([*backend.dataflow_lower_passes(target),
                                         *backend.finalize_passes(target)])
    exe = tvm.compile(out, target=target, relax_pipeline=rest)
    x = inputs_of(lowered)
    np.testing.assert_allclose(vm_run(exe, x)[0], ort_run(model, x)[0], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# cost models
# ---------------------------------------------------------------------------------------------
def test_stage_cost_callable(lowered: Any) -> None:
    """A plain ``stage -> seconds`` callable (not a factory) works as the cost."""
    calls: list[Stage] = []

    def favour_concurrency(stage: Stage) -> float:
        calls.append(stage)
        return 1e-6 if len(stage.groups) > 1 else 1e-3

    sched = schedule_of(InterOperatorSchedule(cost=favour_concurrency)(lowered))
    assert calls and sched is not None
    assert len(sched.stages) < 8


def test_unknown_cost_name(lowered: Any) -> None:
    with pytest.raises(IosTvmError, match="unknown cost model 'fastest'"):
        InterOperatorSchedule(cost="fastest")(lowered)


def test_unlowered_module_is_rejected() -> None:
    with pytest.raises(UnsupportedGraphError):
        InterOperatorSchedule()(load_model(om.inception_block()))


def test_schedule_of_unscheduled_module(lowered: Any) -> None:
    assert schedule_of(lowered) is None
    assert schedule_of(lowered, "no_such_function") is None


# ---------------------------------------------------------------------------------------------
# pipelines and tvm.compile
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(MODELS))
def test_compile_with_registered_pipeline_matches_onnxruntime(name: str) -> None:
    model = MODELS[name]()
    mod = load_model(model)
    instrument = grab()
    with tvm.transform.PassContext(instruments=[instrument]):
        exe = tvm.compile(mod, target="llvm", relax_pipeline="ios_tvm")
    assert len(instrument.mods) == 1
    scheduled = instrument.mods[0]
    sched = schedule_of(scheduled)
    assert sched is not None
    validate_schedule(extract_graph(scheduled).graph, sched)
    x = inputs_of(mod)
    for got, want in zip(vm_run(exe, x), ort_run(model, x), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_pipeline_function_matches_onnxruntime() -> None:
    model = om.inception_block()
    mod = load_model(model)
    target = tvm.target.Target("llvm")
    instrument = grab()
    with tvm.transform.PassContext(instruments=[instrument]):
        exe = tvm.compile(mod, target=target,
                          relax_pipeline=pipeline(target, SearchConfig(max_groups=2),
                                                  cost_factory=two_lanes))
    sched = schedule_of(instrument.mods[0])
    assert sched is not None and max(len(s.groups) for s in sched.stages) == 2
    x = inputs_of(mod)
    np.testing.assert_allclose(vm_run(exe, x)[0], ort_run(model, x)[0], rtol=1e-5, atol=1e-5)


def test_get_pipeline_passes_options() -> None:
    mod = load_model(om.residual_block())
    instrument = grab()
    p = relax.get_pipeline("ios_tvm", target="llvm", config=SearchConfig(strategy="sequential"))
    with tvm.transform.PassContext(instruments=[instrument]):
        tvm.compile(mod, target="llvm", relax_pipeline=p)
    sched = schedule_of(instrument.mods[0])
    assert sched is not None and sched.meta["strategy"] == "sequential"
    assert all(len(s.groups) == 1 for s in sched.stages)


def test_pipeline_for_cuda_compiles_without_a_gpu() -> None:
    """Compile only: the CUDA pipeline (dlight schedules) runs the pass too."""
    mod = load_model(om.inception_block())
    instrument = grab()
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_90", "host": {"kind": "llvm"}})
    with tvm.transform.PassContext(instruments=[instrument]):
        exe = tvm.compile(mod, target=target, relax_pipeline="ios_tvm")
    assert exe is not None
    sched = schedule_of(instrument.mods[0])
    assert sched is not None
    validate_schedule(extract_graph(instrument.mods[0]).graph, sched)
