"""The benchmark harness: ios_tvm.bench.harness, ``ios-tvm bench`` and scripts/bench.py."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ios_tvm.bench.harness import BenchReport, bench
from ios_tvm.bench.timing import time_rounds
from ios_tvm.bench.torch_onnx import available as torch_available
from ios_tvm.cli import main
from ios_tvm.compiler.choose import median_interval
from ios_tvm.errors import IosTvmError
from ios_tvm.ir.schedule import Schedule

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def sample_report() -> BenchReport:
    # NCHW convs: IOS-Merge merges NCHW convs only.
    return bench("sample", "llvm", strategies=("concurrent", "merge"), cost="analytic",
                 cache=False, rounds=2, min_ms=1.0, cpu_layout="NCHW", pytorch=("eager",))


def test_report_times_every_variant_on_the_same_outputs(sample_report: BenchReport) -> None:
    r = sample_report
    want = {"sequential", "greedy", "ios/concurrent", "ios/merge", "relax_vm", "onnxruntime"}
    assert set(r.median_ms) == want | ({"torch"} if torch_available() else set())
    assert all(len(v) == 2 for v in r.samples_ms.values())
    assert r.reference == "onnxruntime"
    assert r.max_abs_err["onnxruntime"] == 0.0
    assert max(r.max_abs_err.values()) < 1e-3
    assert r.speedup_vs_sequential["sequential"] == 1.0
    for k, ms in r.median_ms.items():
        assert r.speedup_vs_sequential[k] == pytest.approx(r.median_ms["sequential"] / ms)
    assert r.kernels == 5 and r.input_shapes == {"x": [1, 64, 28, 28]}
    json.dumps(r.to_json())  # plain data only


def test_report_describes_each_schedule(sample_report: BenchReport) -> None:
    r = sample_report
    for plan in ("sequential", "greedy", "ios/concurrent", "ios/merge"):
        info = r.search[plan]
        schedule = Schedule.from_json(info["schedule_json"])
        assert len(schedule.stages) == info["stages"] == len(info["stage_ms"])
        assert info["estimated_ms"] == pytest.approx(sum(info["stage_ms"]))
        assert r.peak_activation_bytes[plan] > 0
    # The sample block's three convs on the input are ready together: greedy runs them at once.
    assert r.search["greedy"]["max_groups"] == 3
    assert r.search["sequential"]["stages"] == 5
    assert any(s.strategy == "merge" for s in
               Schedule.from_json(r.search["ios/merge"]["schedule_json"]).stages)
    # The DP never estimates worse than the baselines under the same cost model.
    assert r.search["ios/concurrent"]["estimated_ms"] <= r.search["greedy"]["estimated_ms"] + 1e-9
    assert r.search["ios/concurrent"]["estimated_ms"] <= (
        r.search["sequential"]["estimated_ms"] + 1e-9)
    assert r.search["ios/concurrent"]["search_seconds"] > 0


def test_shipped_follows_the_never_slower_rule(sample_report: BenchReport) -> None:
    """The build's paired rule: IOS ships iff the upper end of the interval of the median
    paired ratio IOS/sequential over the rounds is at most 1 - margin."""
    r = sample_report
    seq = r.median_ms["sequential"]
    for strategy in ("concurrent", "merge"):
        ios = r.median_ms[f"ios/{strategy}"]
        ratios = [a / b for a, b in zip(r.samples_ms[f"ios/{strategy}"],
                                        r.samples_ms["sequential"], strict=True)]
        _, high, _ = median_interval(ratios)
        expect = "ios" if high <= 1 - 0.03 else "sequential"
        assert r.shipped[strategy] == expect
        assert r.shipped_ms[strategy] == (ios if expect == "ios" else seq)
        evidence = r.decisions[strategy]["evidence"]
        assert evidence["rounds"] == 2 and evidence["interval"][1] == pytest.approx(high)
        assert evidence["ratios"] == pytest.approx(ratios)
    assert "onnxruntime" in r.table() and "shipped by build" in r.table()


def test_fidelity_of_every_timed_plan(sample_report: BenchReport) -> None:
    r = sample_report
    assert set(r.fidelity) == {"sequential", "greedy", "ios/concurrent", "ios/merge"}
    for plan, f in r.fidelity.items():
        assert f["predicted_ms"] == pytest.approx(sum(r.search[plan]["stage_ms"]))
        assert f["measured_ms"] == pytest.approx(r.median_ms[plan])
        assert f["rel_error"] == pytest.approx((f["predicted_ms"] - f["measured_ms"])
                                               / f["measured_ms"])
    assert "fidelity ios/concurrent: predicted" in r.table()


def test_time_rounds_interleaves_and_pauses() -> None:
    calls: list[str] = []
    runners = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    t0 = time.perf_counter()
    samples = time_rounds(runners, rounds=3, min_ms=0.0, warmup=1, pause_ms=20.0,
                          turn_warmup=1)
    elapsed = time.perf_counter() - t0
    # Warm-up, then per round each runner's turn (the order rotated every round): one
    # untimed run, one timed run.
    assert calls == ["a", "b"] + ["a", "a", "b", "b", "b", "b", "a", "a", "a", "a", "b", "b"]
    assert {k: len(v) for k, v in samples.items()} == {"a": 3, "b": 3}
    assert elapsed >= 6 * 0.02  # a pause before every turn


@pytest.mark.parametrize("kwargs, match", [
    ({"strategies": ("parallel",)}, "unknown IOS strategy 'parallel'"),
    ({"rounds": 0}, "rounds must be at least 1"),
    ({"cost": "guessed"}, "unknown cost 'guessed'"),  # 'learned' is a cost model now
    ({"pytorch": ("jit",)}, "unknown PyTorch baseline 'jit'"),
])
def test_bad_arguments_fail_before_any_work(kwargs: dict, match: str) -> None:
    with pytest.raises(IosTvmError, match=match):
        bench("sample", "llvm", **kwargs)


def test_unknown_model_is_named() -> None:
    with pytest.raises(IosTvmError, match="'nope.onnx' is neither a file nor a built-in"):
        bench("nope.onnx")


def test_cli_bench_writes_json_and_chart(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out, chart = tmp_path / "r" / "bench.json", tmp_path / "speedups.png"
    rc = main(["bench", "sample", "--target", "llvm", "--cost", "analytic", "--no-cache",
               "--rounds", "1", "--min-ms", "1", "--no-greedy", "--torch", "-q", "-o", str(out),
               "--plot", str(chart)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "ios/concurrent" in printed and "relax_vm" in printed
    doc = json.loads(out.read_text())
    rep = doc["models"]["sample"]
    assert "greedy" not in rep["median_ms"] and "ios/concurrent" in rep["median_ms"]
    assert not {"torch", "torch.compile"} & set(rep["median_ms"])  # --torch alone: none
    assert chart.stat().st_size > 1000
    assert not list(out.parent.glob("*.tmp"))


def test_cli_bench_errors(capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "no_such_model"]) == 1
    assert "no_such_model" in capsys.readouterr().err
    assert main(["bench", "sample", "--strategies", "sequential"]) == 2  # not an IOS strategy


def test_bench_script_quick_run(tmp_path: Path) -> None:
    out = tmp_path / "zoo.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--models", "sample",
         "--target", "llvm", "--cost", "analytic", "--rounds", "1", "--min-ms", "1", "-q",
         "--torch", "eager",
         "--cache", str(tmp_path / "cache.sqlite"), "-o", str(out)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert doc["set"] == "quick" and list(doc["results"]) == ["sample"]
    assert doc["machine"]["tvm"] and doc["command"]
    row = doc["summary"][0]
    assert row["model"] == "sample" and row["cost"] == "analytic"
    assert row["max_err"] < 1e-3 and row["peak_ios_vs_seq"] > 0
    assert row["shipped_vs_ort_paired"] > 0  # ORT ran in the same rounds
    assert (row["torch"] is not None) == torch_available() and row["torch_compile"] is None
    assert out.with_suffix(".png").exists()
    assert "IOS/seq" in proc.stdout

    # --resume keeps what OUT holds and runs only the models it lacks (here: none) ...
    args = proc.args[2:]
    again = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), *args,
                            "--resume", "--no-plot"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "1 results kept" in again.stdout and "== sample" not in again.stdout
    resumed = json.loads(out.read_text())
    assert resumed["results"] == doc["results"] and len(resumed["commands"]) == 2
    # ... and refuses a run made with other settings, leaving it as it was.
    other = [a if a != "1" or i != args.index("--rounds") + 1 else "2"
             for i, a in enumerate(args)]
    refused = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), *other,
                              "--resume"], capture_output=True, text=True, timeout=600)
    assert refused.returncode != 0 and "other settings (rounds)" in refused.stderr
    assert json.loads(out.read_text()) == resumed


def test_bench_kernels_script_runs_one_shape(tmp_path: Path) -> None:
    """scripts/bench_kernels.py end to end on the hottest shape of the sample block."""
    pytest.importorskip("onnxruntime")
    out = tmp_path / "k.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_kernels.py"), "--models", "sample",
         "--top", "1", "--rounds", "2", "--min-ms", "1", "--pause-ms", "1", "--no-peak",
         "-o", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    row = doc["results"][0]
    assert "error" not in row, row.get("error")
    assert len(row["tvm_samples_us"]) == len(row["ort_samples_us"]) == 2
    assert row["ratio_tvm_over_ort"] > 0 and doc["settings"]["pause_ms"] == 1
    assert doc["summary"]["geomean_onednn_ratio"] is None  # no --onednn
