"""MetaSchedule tuning (ios_tvm.compiler.tune, ``ios-tvm tune``) and tuned compiles (``database=``).

One small conv is tuned once per session with a handful of trials (well under a minute on
two cores); the other tests reuse that database: a second compile applies it (kernels taken
from it are counted), re-running the tuning resumes without new trials, and a database is
never applied for another target. Corrupt databases are made by hand.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
onnx = pytest.importorskip("onnx")
pytest.importorskip("xgboost")

from onnx import TensorProto, helper  # noqa: E402
from tvm import relax  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from onnx_models import _Builder  # noqa: E402

from ios_tvm import cli  # noqa: E402
from ios_tvm.compiler.frontend import load_model  # noqa: E402
from ios_tvm.compiler.kernel_schedules import schedule_report  # noqa: E402
from ios_tvm.compiler.kernels import lower_to_kernels  # noqa: E402
from ios_tvm.compiler.tune import _allocate, tune  # noqa: E402
from ios_tvm.compiler.tuning_db import (  # noqa: E402
    DATABASE_FILES,
    open_database,
    tuning_target,
    validate_database,
)
from ios_tvm.errors import IosTvmError  # noqa: E402

TARGET = {"kind": "llvm", "mcpu": "haswell"}  # AVX2: runs on any x86-64 CI machine of today
TRIALS = 4
# The model's own layout, as lower_to_kernels keeps it: one fused conv kernel, one task.
LAYOUT = "NCHW"


def tiny_conv() -> onnx.ModelProto:
    """One 3x3 conv + bias + ReLU, 8 -> 16 channels on 16x16: a single fused kernel."""
    b = _Builder(0)
    b.conv("x", 8, 16, 3, out="y")
    return b.model([helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
                   ["y"], "tiny_conv")


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    database = tmp_path_factory.mktemp("tuning") / "db"
    result = tune(tiny_conv(), TARGET, trials=TRIALS, database_dir=database,
                  trials_per_iter=TRIALS, progress=False, seed=0, cpu_layout=LAYOUT)
    assert result.trials_run == TRIALS
    assert len(result.tasks) == 1
    task = result.tasks[0]
    assert task.trials_before == 0 and task.trials_after >= 1
    assert task.best_seconds is not None and task.best_seconds > 0
    return database


def _vm(lowered: tvm.IRModule, target: dict, x: np.ndarray) -> np.ndarray:
    tgt = tvm.target.Target(target)
    backend = relax.backend.cpu_generic.pipeline
    rest = tvm.transform.Sequential([*backend.dataflow_lower_passes(tgt),
                                     *backend.finalize_passes(tgt)])
    vm = relax.VirtualMachine(tvm.compile(lowered, target=tgt, relax_pipeline=rest), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


def test_tuning_writes_a_database_a_second_compile_applies(tuned: Path) -> None:
    info = validate_database(tuned)
    assert info.workloads >= 1 and info.records >= 1
    assert info.meta["target_key"]["mcpu"] == "haswell"
    mod = load_model(tiny_conv())
    untuned = lower_to_kernels(mod, TARGET)
    applied = lower_to_kernels(mod, TARGET, database=tuned)
    before, after = schedule_report(untuned), schedule_report(applied)
    assert before.num_tuned == 0 and before.num_unscheduled == 0
    assert after.num_tuned > 0
    assert after.num_tuned + after.counts.get("contraction", 0) == len(after.kernels)
    x = np.random.default_rng(0).standard_normal((1, 8, 16, 16)).astype("float32")
    plain = lower_to_kernels(mod, TARGET, cpu_schedule=False)
    np.testing.assert_allclose(_vm(applied, TARGET, x), _vm(plain, TARGET, x),
                               rtol=1e-4, atol=1e-4)


def test_default_schedule_is_a_measured_candidate(tuned: Path) -> None:
    """The database holds the default rule's schedule as a record: tuning never ends worse."""
    import tvm_ffi
    from tvm import s_tir

    from ios_tvm.compiler.kernel_schedules import default_schedule

    plain = lower_to_kernels(load_model(tiny_conv()), TARGET, cpu_schedule=False)
    kernel = next(f for f in plain.functions.values() if isinstance(f, tvm.tirx.PrimFunc))
    want, rule = default_schedule(kernel, TARGET)
    assert rule == "contraction"
    replayed = []
    for record in open_database(tuned).get_all_tuning_records():
        sch = s_tir.Schedule(record.workload.mod)
        record.trace.apply_to_schedule(sch, remove_postproc=False)
        replayed.append(sch.mod["main"])
    assert any(tvm_ffi.structural_equal(f.without_attr("global_symbol"),
                                        want.without_attr("tirx.is_scheduled"))
               or tvm_ffi.structural_equal(f, want.without_attr("tirx.is_scheduled"))
               for f in replayed)


def test_tuning_resumes(tuned: Path) -> None:
    records = validate_database(tuned).records
    again = tune(tiny_conv(), TARGET, trials=TRIALS, database_dir=tuned, progress=False,
                 cpu_layout=LAYOUT)
    assert again.trials_run == 0
    assert again.tasks[0].trials_before == again.tasks[0].trials_after
    assert validate_database(tuned).records == records


def test_changed_default_rules_are_measured_again(tuned: Path, tmp_path: Path) -> None:
    """A database seeded by older default rules gets the current default schedule too."""
    copy = tmp_path / "db"
    shutil.copytree(tuned, copy)
    meta_path = copy / "ios_tvm_tune.json"
    meta = json.loads(meta_path.read_text())
    meta["default_rules"] = 0
    meta_path.write_text(json.dumps(meta))
    records = validate_database(copy).records
    again = tune(tiny_conv(), TARGET, trials=TRIALS, database_dir=copy, progress=False,
                 cpu_layout=LAYOUT)
    assert again.trials_run == 0
    assert validate_database(copy).records == records + 1
    assert validate_database(copy).meta["default_rules"] != 0


def test_database_for_another_target_is_refused(tuned: Path) -> None:
    with pytest.raises(IosTvmError, match="tuned for target"):
        lower_to_kernels(load_model(tiny_conv()), "llvm", database=tuned)


def test_build_uses_the_database_for_both_plans(tuned: Path) -> None:
    from ios_tvm.compiler.build import build

    result = build(tiny_conv(), TARGET, database=tuned, cost="analytic", cache=False,
                   measure=False, cpu_layout=LAYOUT)
    assert result.kernel_schedules.get("tuned", 0) > 0
    x = np.random.default_rng(1).standard_normal((1, 8, 16, 16)).astype("float32")
    plain = lower_to_kernels(load_model(tiny_conv()), TARGET, cpu_schedule=False)
    np.testing.assert_allclose(result(x)[0], _vm(plain, TARGET, x), rtol=1e-4, atol=1e-4)


def test_cli_tune_resumes_and_compile_takes_database(tuned: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "tiny.onnx"
    onnx.save(tiny_conv(), model)
    target = json.dumps(TARGET)
    assert cli.main(["tune", str(model), "--target", target, "--trials", str(TRIALS),
                     "--database", str(tuned), "-q", "--cpu-layout", LAYOUT]) == 0
    out = capsys.readouterr().out
    assert "0 run now" in out
    assert cli.main(["compile", str(model), "--target", target, "--database", str(tuned),
                     "--cost", "analytic", "--no-cache", "-q", "--cpu-layout", LAYOUT, "-o",
                     str(tmp_path / "art")]) == 0
    out = capsys.readouterr().out
    assert "tuned" in out
    summary = json.loads((tmp_path / "art" / "build.json").read_text())
    assert summary["kernel_schedules"].get("tuned", 0) > 0


# -- corrupt databases ------------------------------------------------------------------------
def test_truncated_record_file_is_reported(tuned: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tuned, broken)
    records = broken / DATABASE_FILES[1]
    text = records.read_text()
    records.write_text(text[: len(text) - 40])  # cut the last record mid-line
    with pytest.raises(IosTvmError, match=r"database_tuning_record\.json:\d+: corrupt"):
        validate_database(broken)
    with pytest.raises(IosTvmError, match="database_tuning_record.json"):
        lower_to_kernels(load_model(tiny_conv()), TARGET, database=broken)
    with pytest.raises(IosTvmError, match="database_tuning_record.json"):
        tune(tiny_conv(), TARGET, trials=TRIALS, database_dir=broken, progress=False,
             cpu_layout=LAYOUT)
    assert cli.main(["compile", "sample", "--target", json.dumps(TARGET), "--database",
                     str(broken), "--cost", "analytic", "--no-cache", "-q", "-o",
                     str(tmp_path / "art")]) == 1


@pytest.mark.parametrize("workloads, records, pattern", [
    ('["1", "abc"]\n{"not": "a list"}\n', "", r"database_workload\.json:2: corrupt"),
    ('["1", "abc"]\n', "[5, []]\n", r"names workload 5"),
    ('["1", "abc"]\n', "[0, [1, 2]\n", r"database_tuning_record\.json:1: corrupt"),
    ("\x00\x01garbage", "", r"database_workload\.json:1: corrupt"),
])
def test_corrupt_tables_are_reported(tmp_path: Path, workloads: str, records: str,
                                     pattern: str) -> None:
    (tmp_path / DATABASE_FILES[0]).write_text(workloads)
    (tmp_path / DATABASE_FILES[1]).write_text(records)
    with pytest.raises(IosTvmError, match=pattern):
        open_database(tmp_path)


def test_valid_json_but_not_ir_is_reported(tmp_path: Path) -> None:
    (tmp_path / DATABASE_FILES[0]).write_text('["1", "bm90IElS"]\n')
    with pytest.raises(IosTvmError, match="cannot read this tuning database"):
        open_database(tmp_path)


def test_missing_or_file_database(tmp_path: Path) -> None:
    with pytest.raises(IosTvmError, match="no such tuning database"):
        open_database(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(IosTvmError, match="must be a directory"):
        validate_database(tmp_path / "file")
    assert validate_database(tmp_path / "missing").empty


def test_tuning_target_and_allocation() -> None:
    tgt = tuning_target(TARGET)
    assert int(tgt.attrs["num-cores"]) >= 1 and str(tgt.attrs["mcpu"]) == "haswell"
    assert sum(_allocate(64, [100.0, 1.0, 1.0], 8)) == 64
    assert _allocate(64, [100.0, 1.0, 1.0], 8)[0] > 40
    assert min(_allocate(64, [100.0, 1.0, 1.0], 8)) == 8
    assert _allocate(2, [1.0, 5.0, 3.0], 8) == [0, 1, 1]
    assert _allocate(0, [1.0], 8) == [0]


def test_nhwc_tuning_and_build_match_by_default(tmp_path: Path) -> None:
    """`ios-tvm tune` and `compile` both lower CPU convs NHWC by default: the database fits."""
    from ios_tvm.compiler.build import build

    database = tmp_path / "db"
    result = tune(tiny_conv(), TARGET, trials=TRIALS, database_dir=database,
                  trials_per_iter=TRIALS, progress=False, seed=0)
    assert any("conv2d" in t.name for t in result.tasks)
    built = build(tiny_conv(), TARGET, database=database, cost="analytic", cache=False,
                  measure=False)
    assert built.kernel_schedules.get("tuned", 0) > 0
    x = np.random.default_rng(1).standard_normal((1, 8, 16, 16)).astype("float32")
    plain = lower_to_kernels(load_model(tiny_conv()), TARGET, cpu_schedule=False)
    np.testing.assert_allclose(built(x)[0], _vm(plain, TARGET, x), rtol=1e-4, atol=1e-4)
