"""Fidelity (ios_tvm/compiler/fidelity.py) and the executor's in-plan stage timing entries
(profile_run, profile_stages)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("tvm")
sys.path.insert(0, str(Path(__file__).parent))
import onnx_models as om  # noqa: E402

from ios_tvm import _native  # noqa: E402
from ios_tvm.compiler.build import build  # noqa: E402
from ios_tvm.compiler.fidelity import fidelity, stages_in_plan  # noqa: E402
from ios_tvm.errors import ExecutorArgumentError  # noqa: E402
from ios_tvm.scheduler.config import SearchConfig  # noqa: E402

pytestmark = pytest.mark.skipif(not _native.native_available(),
                                reason="native library not built (bash scripts/setup.sh)")


def test_fidelity_fields() -> None:
    f = fidelity({"a": [1e-3, 2e-3], "b": [1e-3], "c": [1e-3]}, {"a": 2e-3, "b": 1e-3})
    assert set(f) == {"a", "b"}  # c was not measured
    assert f["a"] == {"predicted_ms": pytest.approx(3.0), "measured_ms": pytest.approx(2.0),
                      "rel_error": pytest.approx(0.5)}
    assert f["b"]["rel_error"] == pytest.approx(0.0)


@pytest.fixture(scope="module")
def executor():  # noqa: ANN201
    r = build(om.inception_block(), "llvm", cost="analytic", measure=False,
              config=SearchConfig(strategy="greedy"))
    assert any(len(s.groups) > 1 for s in r.artifact.plan.stages)
    return r.artifact.executor()


def test_profile_run_times_every_stage_inside_a_run(executor) -> None:  # noqa: ANN001
    stages = len(executor.plan.stages)
    rows = executor.profile_run(warmup=1, repeat=4)
    assert len(rows) == 4 and all(len(r) == stages + 1 for r in rows)
    for r in rows:
        assert all(x > 0 for x in r)
        # The run's time is the stages' plus the clock reads between them.
        assert sum(r[:-1]) == pytest.approx(r[-1], rel=1e-6)
    s = stages_in_plan(executor, warmup=1, repeat=3)
    assert len(s["stage_seconds"]) == stages and s["run_seconds"] > 0


def test_profile_stages_runs_a_given_sequence(executor) -> None:  # noqa: ANN001
    plan = executor.plan
    seq = [plan.stages[0].groups, plan.stages[-1].groups]
    rows = executor.profile_stages(seq, warmup=0, repeat=2)
    assert len(rows) == 2 and all(len(r) == 3 for r in rows)
    with pytest.raises(ValueError, match="missing call"):
        executor.profile_stages([[[len(plan.calls)]]], repeat=1)
    with pytest.raises(ValueError, match="groups"):
        executor.profile_stages([[]], repeat=1)
    with pytest.raises(ExecutorArgumentError):
        executor.profile_run(repeat=0)


def test_bench_fidelity_script_writes_every_plan(tmp_path: Path) -> None:
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location(
        "bench_fidelity", Path(__file__).resolve().parent.parent / "scripts" / "bench_fidelity.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "f.json"
    assert mod.main(["--models", "sample", "--rounds", "2", "--min-ms", "1",
                     "--profile-repeat", "3", "--warmup", "1", "--number", "1", "--repeat", "2",
                     "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    (m,) = doc["models"]
    assert m["model"] == "sample" and m["search_seconds"] > 0
    assert m["warm_stages_measured"] == 0 and m["warm_search_seconds"] >= 0
    assert {"sequential", "greedy"} <= set(m["plans"])
    for p in m["plans"].values():
        assert len(p["samples_ms"]) == 2
        assert len(p["predicted_stage_ms"]) == len(p["in_plan_stage_ms"]) == p["stages"]
        assert p["predicted_ms"] == pytest.approx(sum(p["predicted_stage_ms"]))
        assert p["rel_error"] == pytest.approx((p["predicted_ms"] - p["measured_ms"])
                                               / p["measured_ms"])
        assert len(p["paired_method_errors"]) == 2


def _script(name: str):  # noqa: ANN202
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        name, Path(__file__).resolve().parent.parent / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_fidelity_analytic_search_still_measures_every_plan(tmp_path: Path) -> None:
    """--search-cost analytic (the default for RandWire and NASNet): no measured search,
    no warm search, every plan's stages measured all the same; cold weights forced on."""
    import json

    from ios_tvm.compiler import profiling

    mod = _script("bench_fidelity")
    out = tmp_path / "f.json"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(profiling, "cpu_cache_bytes", lambda: 1)  # every model outgrows it
        assert mod.main(["--models", "sample", "--rounds", "2", "--min-ms", "1",
                         "--profile-repeat", "3", "--warmup", "1", "--number", "1",
                         "--repeat", "2", "--search-cost", "analytic",
                         "--out", str(out)]) == 0
    (m,) = json.loads(out.read_text())["models"]
    assert m["search_cost"] == "analytic" and m["cold_weights"] is True
    assert m["warm_search_seconds"] is None and m["warm_stages_measured"] is None
    seq = m["plans"]["sequential"]
    assert seq["stages"] == m["kernels"] and m["stages_measured"] > 0  # twins: measured once
    assert all(x > 0 for x in seq["predicted_stage_ms"])


def test_bench_cold_weights_script_compares_every_way(tmp_path: Path) -> None:
    import json

    out = tmp_path / "c.json"
    assert _script("bench_cold_weights").main(
        ["--models", "sample", "--rounds", "1", "--flush-mib", "1", "--out", str(out)]) == 0
    (m,) = json.loads(out.read_text())["models"]
    assert set(m["ways"]) == {"inplan", "warm", "cold", "flush1"}
    for way in m["ways"].values():
        assert len(way["stage_ms"]) == m["stages"] and way["sum_ms"] > 0
    assert m["ways"]["inplan"]["median_stage_error"] == 0


def test_bench_bound_script_times_both_plans(tmp_path: Path) -> None:
    import json

    out = tmp_path / "b.json"
    assert _script("bench_bound").main(["--model", "sample", "--rounds", "2",
                                        "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert set(doc["searches"]) == {"exact", "calibrated"}
    assert set(doc["median_ms"]) == {"sequential", "exact", "calibrated"}
    assert all(len(v) == 2 for v in doc["runs_ms"].values())
    assert doc["searches"]["exact"]["stats"]["bound_ratio"] is None
    assert doc["calibrated_over_exact_paired"] > 0
