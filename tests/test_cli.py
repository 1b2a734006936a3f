"""The ``ios-tvm`` command line's error paths: one line on stderr and the promised exit code.

README: exit 0 success, 1 failure (one line ``ios-tvm CMD: error: ...``; ``-v`` for the
traceback), 2 bad usage (argparse's usage error); Ctrl-C exits 130 and SIGTERM 143, both with
one line. Nothing half-written or temporary is left behind. Most cases run in-process
(``ios_tvm.cli.main``); a few run ``python -m ios_tvm`` for real exit codes and signals.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ios_tvm import cli
from ios_tvm.cli import main
from ios_tvm.errors import IosTvmError

sys.path.insert(0, str(Path(__file__).parent))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_failure(code: int, err: str, command: str, *named: str) -> str:
    """Exit 1 and exactly one line on stderr, ``ios-tvm CMD: error: ...`` naming ``named``."""
    lines = err.splitlines()
    assert code == 1, err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"ios-tvm {command}: error: "), err
    for name in named:
        assert name in lines[0], (name, err)
    return lines[0]


def assert_usage(code: int, err: str, command: str, flag: str) -> None:
    """Exit 2 and argparse's usage error: usage lines, then one ``error: argument FLAG``."""
    lines = err.splitlines()
    assert code == 2, err
    assert lines[0].startswith(f"usage: ios-tvm {command}"), err
    assert lines[-1].startswith(f"ios-tvm {command}: error: argument {flag}"), err
    assert sum("error:" in line for line in lines) == 1, err


def no_temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".tmp" in p.name)


# ---------------------------------------------------------------------------------------------
# bad usage: exit 2, before any work
# ---------------------------------------------------------------------------------------------
BAD_FLAGS = [
    ("schedule", ["--max-groups", "0"]), ("schedule", ["--max-groups", "two"]),
    ("schedule", ["--max-group-size", "0"]), ("schedule", ["--max-part-size", "0"]),
    ("schedule", ["--batch-size", "0"]), ("schedule", ["--device", "nonsense"]),
    ("schedule", ["--input-shapes", "x"]), ("schedule", ["--input-shapes", "x:1,a"]),
    ("schedule", ["--target", "{bad json"]), ("compile", ["--target", '{"kind": "llvm"']),
    ("compile", ["--number", "-5"]), ("compile", ["--number", "0"]),
    ("compile", ["--repeat", "0"]), ("compile", ["--warmup", "-1"]),
    ("compile", ["--rpc-servers", "0"]), ("compile", ["--max-groups", "-3"]),
    ("compile", ["--max-groups", "3000"]), ("schedule", ["--max-groups", "65"]),
    ("compile", ["--strategy", "fastest"]), ("compile", ["--cpu-layout", "NCWH"]),
    ("compile", ["--bound", "loose"]),
    ("tune", ["--trials", "0"]), ("tune", ["--trials-per-iter", "0"]),
    ("tune", ["--seed", "-1"]), ("tune", ["--batch-size", "-1"]),
    ("bench", ["--rounds", "0"]), ("bench", ["--min-ms", "-1"]), ("bench", ["--min-ms", "nan"]),
    ("bench", ["--number", "0"]), ("bench", ["--strategies", "sequential"]),
    ("bench", ["--plot", "chart.txt"]), ("show", ["--format", "gif"]),
]
REQUIRED = {"compile": ["-o", "out"], "tune": ["--database", "db"]}
MODEL = {"show": "art"}  # what stands in the first argument


@pytest.mark.parametrize(("command", "flags"), BAD_FLAGS, ids=lambda v: " ".join(v)
                         if isinstance(v, list) else v)
def test_bad_flag_values_are_usage_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch, command: str,
                                          flags: list[str]) -> None:
    monkeypatch.chdir(tmp_path)  # nothing may be created, wherever it would go
    code, out, err = run(capsys, command, MODEL.get(command, "sample"), *REQUIRED.get(command, []),
                         *flags)
    assert_usage(code, err, command, flags[0])
    assert out == "" and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv", [["compile", "sample"], ["run", "art"], ["tune", "sample"],
                                  ["show"], ["frobnicate"]])
def test_missing_arguments_are_usage_errors(capsys: pytest.CaptureFixture[str],
                                            argv: list[str]) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2 and err.splitlines()[-1].startswith("ios-tvm")
    assert sum("error:" in line for line in err.splitlines()) == 1


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys)
    assert code == 2 and "COMMAND" in out


# ---------------------------------------------------------------------------------------------
# failures: exit 1, one line naming what is at fault
# ---------------------------------------------------------------------------------------------
MODEL_COMMANDS = [("schedule", []), ("compile", ["-o", "out"]), ("tune", ["--database", "db"]),
                  ("bench", [])]


@pytest.mark.parametrize(("command", "extra"), MODEL_COMMANDS)
def test_missing_model_file(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                            monkeypatch: pytest.MonkeyPatch, command: str,
                            extra: list[str]) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, command, "no_such_model.onnx", *extra)
    assert_failure(code, err, command, "no_such_model.onnx", "sample")  # and the built-ins
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("command", "extra"), MODEL_COMMANDS)
def test_unknown_built_in_model(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch, command: str,
                                extra: list[str]) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, command, "resnet5O", *extra)
    assert_failure(code, err, command, "'resnet5O'", "resnet50")


@pytest.mark.parametrize(("command", "extra"), [("schedule", []), ("compile", ["-o", "out"])])
@pytest.mark.parametrize("content", [b"", b"not an onnx model \x00\xff" * 50])
def test_malformed_onnx(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                        monkeypatch: pytest.MonkeyPatch, command: str, extra: list[str],
                        content: bytes) -> None:
    pytest.importorskip("tvm")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.onnx").write_bytes(content)
    code, _, err = run(capsys, command, "bad.onnx", *extra)
    assert_failure(code, err, command, "bad.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx"]


@pytest.mark.parametrize("target", ["nonsense", '{"kind": "nonsense"}'])
def test_unknown_target(capsys: pytest.CaptureFixture[str], target: str) -> None:
    pytest.importorskip("tvm")
    code, _, err = run(capsys, "schedule", "sample", "--target", target)
    assert_failure(code, err, "schedule", "nonsense")


def test_schedule_output_that_is_a_directory(capsys: pytest.CaptureFixture[str],
                                             tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    code, out, err = run(capsys, "schedule", "sample", "-o", tmp_path / "out")
    assert_failure(code, err, "schedule", str(tmp_path / "out"), "is a directory")
    assert out == ""  # refused before lowering and searching
    assert no_temporaries(tmp_path) == [] and list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize(("command", "flag", "what"), [
    ("bench", "-o", "is a directory"), ("bench", "--plot", "is a directory"),
    ("compile", "-o", "is a file")])
def test_outputs_that_cannot_be_written_are_refused_first(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, command: str, flag: str,
        what: str) -> None:
    """Before any work: not after minutes of compiling and measuring."""
    target = tmp_path / ("out.png" if flag == "--plot" else "out")
    target.mkdir() if what == "is a directory" else target.write_text("keep")
    extra = [] if flag == "-o" or command != "bench" else ["-o", str(tmp_path / "r.json")]
    code, out, err = run(capsys, command, "sample", flag, target, *extra)
    assert_failure(code, err, command, str(target), what)
    assert out == "" and no_temporaries(tmp_path) == []


def test_compile_with_a_corrupt_cache(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pytest.importorskip("tvm")
    import onnx
    import onnx_models as om

    onnx.save(om.residual_block(channels=4, size=4), tmp_path / "m.onnx")
    (tmp_path / "cache.sqlite").write_bytes(b"garbage" * 1000)
    code, _, err = run(capsys, "compile", tmp_path / "m.onnx", "-o", tmp_path / "out", "-q",
                       "--cache", tmp_path / "cache.sqlite")
    assert_failure(code, err, "compile", "cache.sqlite", "not a valid ios-tvm measurement cache")
    assert not (tmp_path / "out").exists() and no_temporaries(tmp_path) == []


def test_compile_counts_from_cache_only_what_was_cached(capsys: pytest.CaptureFixture[str],
                                                       tmp_path: Path) -> None:
    """Issue 17 #11: on a fresh cache, stages reused within the run are not "from cache"."""
    pytest.importorskip("tvm")
    import re

    import onnx

    from ios_tvm.models import sample_block

    onnx.save(sample_block(channels=4, size=4), tmp_path / "m.onnx")  # has twin convs
    argv = ["compile", tmp_path / "m.onnx", "-q", "--cache", tmp_path / "c.sqlite",
            "--warmup", "0", "--number", "1", "--repeat", "1"]
    counts = []
    for run_dir in ("a", "b"):
        code, out, err = run(capsys, *argv, "-o", tmp_path / run_dir)
        assert code == 0, err
        line = next(line for line in out.splitlines() if line.startswith("search:"))
        counts.append(re.match(r"search: (\d+) stages costed, (\d+) measured, (\d+) from cache"
                               r"(?:, (\d+) reused from twins)?", line).groups(default="0"))
    (costed, measured, cached, twins), again = ([int(c) for c in cs] for cs in counts)
    assert cached == 0 and measured > 0 and twins > 0 and measured + twins == costed
    # The second run measures nothing: every stage it costs comes from the cache. (It may cost
    # more stages than the first: the pruned search prices a stage the cache already knows at
    # its cached cost rather than at a bound, e.g. a twin of one measured in the first run.)
    assert again[1] == 0 and again[3] == 0 and again[0] == again[2] >= costed


# -- artifacts ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small compiled artifact (analytic cost, not measured) and an inputs file for it."""
    pytest.importorskip("tvm")
    import ios_tvm
    from ios_tvm.models import sample_block

    root = tmp_path_factory.mktemp("artifact")
    result = ios_tvm.build(sample_block(channels=4, size=4), "llvm", cost="analytic",
                           measure=False, compare_vm=False)
    result.export(str(root / "art"))
    plan = result.artifact.plan
    inputs = {plan.tensors[i].name: np.ones(plan.tensors[i].shape, plan.tensors[i].dtype)
              for i in plan.inputs}
    np.savez(root / "in.npz", **inputs)
    # The same artifact with no schedule recorded in its plan (older or hand-made plans).
    result.artifact.plan.meta.pop("schedule_json")
    result.export(str(root / "no_schedule"))
    return root


def test_run_and_show_work(capsys: pytest.CaptureFixture[str], artifact: Path,
                           tmp_path: Path) -> None:
    """The baseline of the error cases below: the same commands succeed."""
    code, out, err = run(capsys, "run", artifact / "art", "--inputs", artifact / "in.npz",
                         "--outputs", tmp_path / "o.npz")
    assert code == 0, err
    assert "outputs written" in out and len(np.load(tmp_path / "o.npz").files) >= 1
    assert no_temporaries(tmp_path) == []
    code, out, err = run(capsys, "show", artifact / "art", "--no-pictures")
    assert code == 0 and "stage" in out, err


def test_show_without_a_schedule_shows_the_plan(capsys: pytest.CaptureFixture[str],
                                                artifact: Path) -> None:
    code, out, err = run(capsys, "show", artifact / "no_schedule", "--no-pictures")
    assert code == 0, err
    assert "the plan records no schedule" in out
    assert "stage   0" in out
    code, out, err = run(capsys, "show", artifact / "art", "--no-pictures")
    assert "records no schedule" not in out


@pytest.mark.parametrize("command", ["run", "show"])
def test_artifact_missing(capsys: pytest.CaptureFixture[str], tmp_path: Path, artifact: Path,
                          command: str) -> None:
    extra = ["--inputs", str(artifact / "in.npz")] if command == "run" else []
    code, _, err = run(capsys, command, tmp_path / "nowhere", *extra)
    assert_failure(code, err, command, str(tmp_path / "nowhere"))


@pytest.mark.parametrize("command", ["run", "show"])
@pytest.mark.parametrize("damage", ["manifest", "plan", "truncated_plan"])
def test_artifact_corrupt(capsys: pytest.CaptureFixture[str], tmp_path: Path, artifact: Path,
                          command: str, damage: str) -> None:
    import shutil

    art = tmp_path / "art"
    shutil.copytree(artifact / "art", art)
    if damage == "manifest":
        (art / "manifest.json").write_text("{not json")
    elif damage == "plan":
        size = (art / "plan.json").stat().st_size
        (art / "plan.json").write_text("x" * size)  # same size, garbage
    else:
        (art / "plan.json").write_text((art / "plan.json").read_text()[:50])
    extra = ["--inputs", str(artifact / "in.npz")] if command == "run" else []
    code, _, err = run(capsys, command, art, *extra)
    assert_failure(code, err, command, str(art))


def test_run_inputs_file_missing(capsys: pytest.CaptureFixture[str], artifact: Path,
                                 tmp_path: Path) -> None:
    code, _, err = run(capsys, "run", artifact / "art", "--inputs", tmp_path / "none.npz")
    assert_failure(code, err, "run", str(tmp_path / "none.npz"))


def test_run_inputs_file_not_npz(capsys: pytest.CaptureFixture[str], artifact: Path,
                                 tmp_path: Path) -> None:
    (tmp_path / "in.npz").write_text("hello")
    code, _, err = run(capsys, "run", artifact / "art", "--inputs", tmp_path / "in.npz")
    assert_failure(code, err, "run", str(tmp_path / "in.npz"))


def test_run_inputs_file_lacking_an_input(capsys: pytest.CaptureFixture[str], artifact: Path,
                                          tmp_path: Path) -> None:
    np.savez(tmp_path / "in.npz", not_x=np.ones(3, "float32"))
    code, _, err = run(capsys, "run", artifact / "art", "--inputs", tmp_path / "in.npz")
    assert_failure(code, err, "run", str(tmp_path / "in.npz"), "lacks input")


def test_run_outputs_that_is_a_directory(capsys: pytest.CaptureFixture[str], artifact: Path,
                                         tmp_path: Path) -> None:
    (tmp_path / "o").mkdir()
    code, _, err = run(capsys, "run", artifact / "art", "--inputs", artifact / "in.npz",
                       "--outputs", tmp_path / "o")
    assert_failure(code, err, "run", str(tmp_path / "o"), "is a directory")
    assert no_temporaries(tmp_path) == [] and list((tmp_path / "o").iterdir()) == []


# ---------------------------------------------------------------------------------------------
# anything else that goes wrong inside a command
# ---------------------------------------------------------------------------------------------
def _raising(error: BaseException) -> Any:
    def command(args: Any) -> int:
        raise error

    return command


def test_unexpected_error_is_one_line(capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """TVM's errors are RuntimeErrors with multi-line messages (a C++ traceback, a report)."""
    monkeypatch.setattr(cli, "_cmd_show", _raising(
        RuntimeError("Check failed: Invalid SLayout\nStack trace:\n  0: foo\n  1: bar")))
    code, _, err = run(capsys, "show", "anything")
    line = assert_failure(code, err, "show", "RuntimeError", "Invalid SLayout", "-v")
    assert "Stack trace" not in line


def test_unexpected_error_with_tvm_traceback_keeps_the_error_line(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "_cmd_show", _raising(RuntimeError(
        "Traceback (most recent call last):\n  1: f\n  0: g\nInternalError: boom")))
    code, _, err = run(capsys, "show", "anything")
    assert_failure(code, err, "show", "InternalError: boom")


def test_tvm_error_is_one_line(capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    tvm = pytest.importorskip("tvm")

    def command(args: Any) -> int:
        tvm.ir.load_json("{}")  # a real TVM error from C++
        return 0

    monkeypatch.setattr(cli, "_cmd_show", command)
    code, _, err = run(capsys, "show", "anything")
    assert_failure(code, err, "show")


def test_verbose_adds_the_traceback(capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "_cmd_show", _raising(IosTvmError("bad artifact")))
    code, _, err = run(capsys, "-v", "show", "anything")
    assert code == 1
    assert "Traceback (most recent call last)" in err
    assert err.splitlines()[-1] == "ios-tvm show: error: bad artifact"


def test_our_multi_line_message_is_joined(capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "_cmd_show", _raising(IosTvmError("input 'x' is dynamic;\n"
                                                               "  pass --input-shapes x:1,3")))
    code, _, err = run(capsys, "show", "anything")
    assert_failure(code, err, "show", "input 'x' is dynamic; pass --input-shapes x:1,3")


def test_keyboard_interrupt(capsys: pytest.CaptureFixture[str],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "_cmd_show", _raising(KeyboardInterrupt()))
    code, out, err = run(capsys, "show", "anything")
    assert code == 130 and err == "ios-tvm show: interrupted\n"


def test_sigterm_unwinds_the_command(capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM raises in the command, so its ``finally`` blocks run; the handler goes after."""
    cleaned: list[bool] = []

    def command(args: Any) -> int:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)  # interrupted by the handler's exception
            return 0
        finally:
            cleaned.append(True)

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(cli, "_cmd_show", command)
    code, _, err = run(capsys, "show", "anything")
    assert code == 143 and err == "ios-tvm show: terminated\n" and cleaned == [True]
    assert signal.getsignal(signal.SIGTERM) == before


def test_atomic_output_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "r.json"
    with pytest.raises(KeyboardInterrupt), cli._atomic_output(target) as f:
        f.write(b"half")
        raise KeyboardInterrupt
    assert list((tmp_path / "sub").iterdir()) == []
    cli._write_text(target, "whole")
    target2 = tmp_path / "sub" / "r2.json"
    with pytest.raises(OSError), cli._atomic_output(target2) as f:
        f.write(b"x")
        raise OSError("disk full")
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["r.json"]
    assert target.read_text() == "whole"


def test_atomic_outputs_of_two_writers_do_not_collide(tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    with cli._atomic_output(target) as a, cli._atomic_output(target) as b:
        assert a.name != b.name
        a.write(b"a")
        b.write(b"b")
    assert target.read_text() in ("a", "b") and no_temporaries(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# the real program: exit codes, Ctrl-C and SIGTERM
# ---------------------------------------------------------------------------------------------
def _ios_tvm(*argv: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "ios_tvm", *argv], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.parametrize(("argv", "code"), [
    (["compile", "no_such.onnx", "-o", "out"], 1),
    (["schedule", "sample", "--max-groups", "0"], 2),
    (["run", "nowhere", "--inputs", "in.npz"], 1),
    ([], 2),
])
def test_exit_codes_of_the_program(tmp_path: Path, argv: list[str], code: int) -> None:
    proc = _ios_tvm(*argv, cwd=tmp_path)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == code, err
    if argv:
        assert err.splitlines()[-1].startswith(f"ios-tvm {argv[0]}: error: "), err
        assert sum("error" in line for line in err.splitlines()) == 1, err
    assert "Traceback" not in err


def _wait_until_compiling(proc: subprocess.Popen[str], timeout: float = 120.0) -> None:
    """Until the process has loaded TVM's compiler (inside the command, past start-up)."""
    maps = Path(f"/proc/{proc.pid}/maps")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            if "libtvm_compiler" in maps.read_text():
                time.sleep(1.0)
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("the compile never started")


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc")
@pytest.mark.parametrize(("sig", "code", "word"), [(signal.SIGINT, 130, "interrupted"),
                                                   (signal.SIGTERM, 143, "terminated")])
def test_signal_during_compile(tmp_path: Path, sig: int, code: int, word: str) -> None:
    pytest.importorskip("tvm")
    proc = _ios_tvm("compile", "sample", "-o", "out", "--cost", "analytic", "-q", cwd=tmp_path)
    _wait_until_compiling(proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == code, err
    assert err == f"ios-tvm compile: {word}\n"
    assert list(tmp_path.iterdir()) == []  # no artifact, no temporary file


@pytest.mark.parametrize("command", ["compile", "bench", "schedule"])
def test_bound_flag_reaches_the_search_config(command: str) -> None:
    from ios_tvm.cli import _search_config, build_parser

    base = [command, "sample", *(["-o", "out"] if command == "compile" else [])]
    args = build_parser().parse_args([*base, "--bound", "calibrated"])
    assert _search_config(args).bound == "calibrated"
    assert _search_config(build_parser().parse_args(base)).bound == "exact"
