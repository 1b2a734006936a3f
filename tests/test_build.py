"""``ios_tvm.build``: outputs, latencies, cost models, the never-slower guard and errors.

Everything runs on the CPU with short timing settings. References are TVM's own build of the
same model (Relax VM, default pipeline) and ONNX Runtime.
"""

from __future__ import annotations

import json
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
from hardware import has_cuda  # noqa: E402
from test_measured_cost import _expected_counts, _stored_keys  # noqa: E402

from ios_tvm import _native  # noqa: E402
from ios_tvm.compiler.build import BuildResult, build  # noqa: E402
from ios_tvm.compiler.frontend import load_model  # noqa: E402
from ios_tvm.cost.base import ProfileSettings  # noqa: E402
from ios_tvm.errors import IosTvmError  # noqa: E402
from ios_tvm.ir.schedule import Schedule, Stage  # noqa: E402
from ios_tvm.runtime.artifact import load  # noqa: E402
from ios_tvm.scheduler.config import SearchConfig  # noqa: E402

pytestmark = pytest.mark.skipif(not _native.native_available(),
                                reason="native library not built (bash scripts/setup.sh)")

FAST = ProfileSettings(warmup=1, number=3, repeat=3)
MODELS: dict[str, Callable[[], Any]] = {
    "inception": om.inception_block,
    "residual": om.residual_block,
    "transformer": om.transformer_layer,
}
TOL = 1e-5



def inputs_for(model: Any, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for vi in model.graph.input:
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        out.append(rng.standard_normal(dims).astype(np.float32))
    return out


def ort_outputs(model: Any, inputs: list[np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return list(sess.run(None, {i.name: x for i, x in zip(sess.get_inputs(), inputs,
                                                            strict=True)}))


def vm_outputs(model: Any, inputs: list[np.ndarray]) -> list[np.ndarray]:
    exe = tvm.compile(load_model(model), target="llvm")
    out = relax.VirtualMachine(exe, tvm.cpu())["main"](*[tvm.runtime.tensor(x) for x in inputs])
    return [out.numpy()] if isinstance(out, tvm.runtime.Tensor) else [o.numpy() for o in out]


def assert_close(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=TOL, atol=TOL)


def favour_concurrency(stage: Stage) -> float:
    """A rigged cost model: any stage with several groups looks nearly free."""
    return 1e-9 if len(stage.groups) > 1 else 1e-3


def is_sequential(schedule: Schedule) -> bool:
    return all(len(s.groups) == 1 and len(s.groups[0]) == 1 for s in schedule.stages)


@pytest.fixture(scope="module")
def cache_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache") / "m.sqlite"


# ---------------------------------------------------------------------------------------------
# outputs and latencies
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(MODELS))
def test_measured_build_matches_vm_and_onnxruntime(name: str, cache_file: Path) -> None:
    model = MODELS[name]()
    known = _stored_keys(cache_file) if cache_file.exists() else set()
    # Every stage the DP visits, as _expected_counts counts (pruning: test_measured_cost.py).
    r = build(model, "llvm", cache=cache_file, settings=FAST, config=SearchConfig(prune=False))
    assert isinstance(r, BuildResult)
    assert set(r.latencies) == {"ios", "sequential", "relax_vm"}
    assert all(v > 0 for v in r.latencies.values())
    assert r.chosen in ("ios", "sequential") and r.reason
    # Measured once per new stage key; from cache only what was there before this build.
    measured, cached, reused = _expected_counts(model, known)
    assert (r.stages_measured, r.stages_cached) == (measured, cached)
    assert measured + cached + reused == r.search_stats.stages_costed
    assert r.artifact.plan.meta["chosen"] == r.chosen
    json.dumps(r.summary())
    x = inputs_for(model)
    got = r(*x)
    assert_close(got, vm_outputs(model, x))
    assert_close(got, ort_outputs(model, x))


def test_analytic_cost_measures_plans_not_stages(cache_file: Path) -> None:
    model = om.inception_block()
    r = build(model, "llvm", cost="analytic", settings=FAST, compare_vm=False)
    assert r.stages_measured == 0 and r.stages_cached == 0
    assert set(r.latencies) == {"ios", "sequential"}
    x = inputs_for(model)
    assert_close(r(*x), ort_outputs(model, x))


def test_without_measuring(tmp_path: Path) -> None:
    model = om.residual_block()
    r = build(model, "llvm", cost="analytic", measure=False)
    assert r.latencies == {} and r.chosen == "ios" and "not measured" in r.reason
    assert r.artifact.plan.meta["specialised_for"]["device"] == "unmeasured"
    x = inputs_for(model)
    assert_close(r(*x), ort_outputs(model, x))
    # The artifact round-trips through export/load.
    r.export(tmp_path / "art")
    assert_close(load(tmp_path / "art")(*x), r(*x))


def test_recorded_schedule_is_used() -> None:
    from ios_tvm.compiler.kernels import lower_to_kernels
    from ios_tvm.compiler.transform import InterOperatorSchedule, schedule_of

    mod = lower_to_kernels(load_model(om.inception_block()), "llvm")
    scheduled = InterOperatorSchedule(SearchConfig(strategy="greedy"))(mod)
    r = build(scheduled, "llvm", cost="analytic", measure=False)
    assert r.schedule.stages == schedule_of(scheduled).stages
    assert any(len(s.groups) > 1 for s in r.schedule.stages)


# ---------------------------------------------------------------------------------------------
# the never-slower guard
# ---------------------------------------------------------------------------------------------
def test_guard_keeps_sequential_when_the_margin_cannot_be_met() -> None:
    """A concurrent plan never beats sequential by 99%: the sequential plan ships."""
    model = om.inception_block()
    r = build(model, "llvm", cost=favour_concurrency, margin=0.99, settings=FAST,
              compare_vm=False)
    assert r.chosen == "sequential"
    ios_ms, seq_ms = r.latencies["ios"] * 1e3, r.latencies["sequential"] * 1e3
    assert f"IOS {ios_ms:.3f} ms" in r.reason and f"sequential {seq_ms:.3f} ms" in r.reason
    assert "99%" in r.reason
    assert is_sequential(r.schedule)
    assert all(len(s.groups) == 1 for s in r.artifact.plan.stages)
    assert r.artifact.plan.meta["chosen"] == "sequential"
    x = inputs_for(model)
    assert_close(r(*x), ort_outputs(model, x))


def test_stages_are_timed_inside_runs_and_the_losing_plan_is_recorded(tmp_path: Path) -> None:
    """Issue 18: ``show`` draws the shipped plan and the searched one on the measured scale.

    Each timed plan's stages are re-timed inside whole runs (their sum is close to the run's
    median, unlike the rigged search costs), and the shipped artifact records the plan that
    lost, with its own in-run stage times.
    """
    from ios_tvm import cli

    model = om.inception_block()
    r = build(model, "llvm", cost=favour_concurrency, margin=0.99, settings=FAST,
              compare_vm=False, rounds=3, min_ms=2.0)
    assert r.chosen == "sequential"
    meta = r.artifact.plan.meta
    stages_in = meta["stage_seconds_in_plan"]
    assert len(stages_in) == len(r.artifact.plan.stages) and all(v > 0 for v in stages_in)
    # The rigged costs say 1 ms a stage; the stages timed in the plan sum to about its run.
    assert sum(stages_in) <= 1.5 * meta["run_seconds_in_plan"]
    assert sum(stages_in) != pytest.approx(sum(meta["stage_seconds"]), rel=0.05)
    other = meta["other_plan"]
    assert other["name"] == "ios"
    assert any(len(groups) > 1 for groups in other["stages"])  # the concurrent plan that lost
    assert len(other["stage_seconds_in_plan"]) == len(other["stages"])
    assert sorted(c for st in other["stages"] for g in st for c in g) == list(
        range(len(other["calls"])))
    # What show draws, after a round trip through export/load.
    r.export(str(tmp_path / "art"))
    loaded = load(str(tmp_path / "art"))
    run = Schedule(tuple(Stage(s.groups, s.strategy) for s in loaded.plan.stages))
    names = [c.node or c.kernel for c in loaded.plan.calls]
    panels = cli._timeline_panels(loaded.plan.meta, run, names,
                                  cli._stage_seconds(loaded.plan.meta, len(run.stages)),
                                  cli._stage_seconds(loaded.plan.meta, len(run.stages),
                                                     "stage_seconds_in_plan"))
    assert [p.title.split(",")[0] for p in panels] == ["shipped (sequential)", "ios (not shipped)"]
    assert all("timed in whole runs" in p.title for p in panels)
    assert list(panels[1].stage_seconds) == other["stage_seconds_in_plan"]
    # A hand-edited outline that does not fit is skipped, not drawn wrong.
    broken = dict(loaded.plan.meta, other_plan=dict(other, stages=other["stages"][:-1]))
    assert len(cli._timeline_panels(broken, run, names, None, None)) == 1


def test_guard_rejects_a_genuinely_slower_plan() -> None:
    """Tiny kernels spread over up to 8 worker threads per stage on a 2-core machine: the
    hand-offs cost far more than the kernels (measured 4-20x slower), so the rigged IOS plan
    loses to sequential and is not shipped."""
    model = om.inception_block(channels=4, size=4)
    r = build(model, "llvm", cost=favour_concurrency, config=SearchConfig(max_groups=8),
              settings=ProfileSettings(warmup=2, number=20, repeat=5), compare_vm=False)
    assert "chose the sequential" not in r.reason  # the searched plan was concurrent
    assert r.latencies["ios"] > r.latencies["sequential"]
    assert r.chosen == "sequential"
    assert "keeping sequential" in r.reason


def test_search_choosing_sequential_ships_sequential() -> None:
    r = build(om.residual_block(), "llvm", cost="analytic", settings=FAST, compare_vm=False,
              rounds=3)
    # A chain: the only schedule is sequential.
    assert r.chosen == "sequential" and "chose the sequential" in r.reason
    # One schedule, one plan, timed once: not twice under two names.
    assert set(r.samples) == {"sequential"} and len(r.samples["sequential"]) == 3
    assert r.latencies["ios"] == r.latencies["sequential"]
    assert r.decision is not None and r.decision.evidence is None
    assert set(r.fidelity) == {"sequential"}


def test_guard_decides_on_paired_rounds_and_reports_fidelity() -> None:
    model = om.inception_block()
    r = build(model, "llvm", cost="analytic", settings=FAST, rounds=5, min_ms=2.0,
              config=SearchConfig(strategy="greedy"))
    assert set(r.samples) == {"ios", "sequential", "relax_vm"}
    assert all(len(v) == 5 for v in r.samples.values())
    e = r.decision.evidence
    assert e is not None and e.rounds == 5
    ratios = [a / b for a, b in zip(r.samples["ios"], r.samples["sequential"], strict=True)]
    assert e.ratios == pytest.approx(ratios)
    assert e.interval[0] <= e.median_ratio <= e.interval[1]
    assert r.chosen == ("ios" if e.interval[1] <= 0.97 else "sequential")
    s = r.summary()
    assert s["decision"]["evidence"]["rounds"] == 5 and "rule" in s["decision"]["evidence"]
    assert set(s["fidelity"]) == {"ios", "sequential"}
    for plan in ("ios", "sequential"):
        f = r.fidelity[plan]
        assert f["measured_ms"] == pytest.approx(r.latencies[plan] * 1e3)
        assert f["rel_error"] == pytest.approx((f["predicted_ms"] - f["measured_ms"])
                                               / f["measured_ms"])
    shipped = r.fidelity[r.chosen]
    assert shipped["predicted_ms"] == pytest.approx(
        sum(r.artifact.plan.meta["stage_seconds"]) * 1e3)
    assert r.artifact.plan.meta["fidelity"] == r.fidelity
    json.dumps(s)


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------
@pytest.mark.skipif(has_cuda(), reason="a GPU is present")
def test_measured_cuda_without_gpu() -> None:
    with pytest.raises(IosTvmError, match=r"cuda device.*cost='analytic'"):
        build(om.residual_block(), "cuda", cost="measured")


def test_unknown_cost_name() -> None:
    with pytest.raises(IosTvmError, match="unknown cost 'fastest'"):
        build(om.residual_block(), "llvm", cost="fastest")


def test_corrupt_cache_is_reported(tmp_path: Path) -> None:
    from ios_tvm.errors import CacheError

    path = tmp_path / "m.sqlite"
    path.write_bytes(b"not a database" * 100)
    with pytest.raises(CacheError, match="m.sqlite"):
        build(om.residual_block(), "llvm", cache=path, settings=FAST)
