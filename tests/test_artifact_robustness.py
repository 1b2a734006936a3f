"""Bad artifacts give one clear PlanFormatError naming the file, never a crash or a hang, and
exports never collide or leave temporary files behind.

Loads that crashed the process before (a truncated kernels.so dies of SIGBUS in dlopen) run in
a subprocess, so a crash fails the test instead of killing pytest.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tvm")

from ios_tvm import _native

if not _native.native_available():
    pytest.skip("native library not built (bash scripts/setup.sh)", allow_module_level=True)

from ios_tvm.errors import PlanFormatError
from ios_tvm.runtime.artifact import ARTIFACT_VERSION, check_shared_library, load, load_artifact

sys.path.insert(0, str(Path(__file__).parent))
from runtime_fixtures import small  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FILES = ("plan.json", "kernels.so", "params.bin")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small().artifact("greedy").export(tmp_path_factory.mktemp("robust") / "greedy")


@pytest.fixture
def art(exported: Path, tmp_path: Path) -> Path:
    """A private copy of the exported artifact, free to damage."""
    return Path(shutil.copytree(exported, tmp_path / "art"))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def edit_json(path: Path, change) -> None:  # noqa: ANN001
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc, indent=1))


def reseal(directory: Path) -> None:
    """Make the plan's kernels_sha256 and the manifest agree with the files now there."""
    edit_json(directory / "plan.json",
              lambda d: d.__setitem__("kernels_sha256", sha(directory / "kernels.so")))
    edit_json(directory / "manifest.json", lambda m: m.__setitem__("files", {
        n: {"size": (directory / n).stat().st_size, "sha256": sha(directory / n)}
        for n in FILES}))


LOAD_SCRIPT = textwrap.dedent("""
    import sys
    from ios_tvm.errors import IosTvmError
    from ios_tvm.runtime.artifact import load
    for d in sys.argv[1:]:
        try:
            load(d)
            print(d, "LOADED", flush=True)
        except IosTvmError as e:
            print(d, "ERROR", type(e).__name__, str(e).replace("\\n", " ")[:300], flush=True)
""")


def load_in_subprocess(dirs: list[Path], timeout: float = 240) -> dict[str, str]:
    """Load each artifact in one child process; returns directory -> outcome line. A crash or
    a hang fails the test naming the artifact being loaded."""
    proc = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, *map(str, dirs)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    done = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    crashed = next((d for d in map(str, dirs) if d not in done), None)
    assert proc.returncode == 0, (f"loading {crashed} killed the process (return code "
                                  f"{proc.returncode}): {proc.stderr[-2000:]}")
    return done


# -- kernels.so ------------------------------------------------------------------------------
def test_truncated_library_with_a_consistent_manifest(art: Path, tmp_path: Path) -> None:
    """kernels.so cut anywhere, manifest and plan made to match: a clear error, no SIGBUS."""
    data = (art / "kernels.so").read_bytes()
    dirs = []
    for frac in (0.02, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99):
        d = Path(shutil.copytree(art, tmp_path / f"cut{frac}"))
        (d / "kernels.so").write_bytes(data[:int(len(data) * frac)])
        reseal(d)
        dirs.append(d)
    for d, outcome in load_in_subprocess(dirs).items():
        assert outcome.startswith("ERROR PlanFormatError") and \
            "kernels.so: cannot load the kernel library" in outcome, (d, outcome)


def test_truncated_weights_with_a_consistent_manifest(art: Path) -> None:
    """TVM's reader fills a cut tensor with stale memory and no error; the loader refuses."""
    data = (art / "params.bin").read_bytes()
    for cut in (*range(0, 64, 8), len(data) // 3, len(data) // 2, len(data) - 4,
                len(data) - 1):
        (art / "params.bin").write_bytes(data[:cut])
        reseal(art)
        with pytest.raises(PlanFormatError, match=r"params.bin: cannot read the weights"):
            load_artifact(art)
    (art / "params.bin").write_bytes(data + b"\0" * 8)
    reseal(art)
    with pytest.raises(PlanFormatError, match=r"params.bin: cannot read the weights: 8 bytes "
                                              r"after the last tensor"):
        load_artifact(art)


def test_elf_check_accepts_real_libraries(exported: Path) -> None:
    check_shared_library(exported / "kernels.so")
    check_shared_library(Path(_native.library_path()))


def test_library_of_another_build_is_refused(art: Path, tmp_path: Path) -> None:
    """The same model built for another CPU: same kernel names, other code."""
    from ios_tvm.compiler.extract import graph_from_model
    from ios_tvm.compiler.plan_lowering import lower_schedule as lower
    from ios_tvm.runtime.artifact import Artifact
    from ios_tvm.scheduler.search import sequential_schedule

    ex = graph_from_model(small().model, target="llvm -mcpu=core2")
    other = lower(ex, sequential_schedule(ex.graph))
    o = Artifact(other.plan, other.lib, other.params).export(tmp_path / "other")
    assert sha(o / "kernels.so") != sha(art / "kernels.so")
    assert {c.kernel for c in other.plan.calls} == {c.kernel for c in small().plans["greedy"].calls}
    own_manifest = (art / "manifest.json").read_text()
    shutil.copy(o / "kernels.so", art / "kernels.so")
    with pytest.raises(PlanFormatError, match=r"kernels.so: .*bytes, the manifest says|"
                                              r"kernels.so: its sha256 differs"):
        load(art)
    shutil.copy(o / "manifest.json", art / "manifest.json")   # the other build's manifest
    with pytest.raises(PlanFormatError, match=r"plan.json: .*(bytes, the manifest says|its "
                                              r"sha256 differs)"):
        load(art)
    (art / "manifest.json").write_text(own_manifest)   # own manifest, hashes made to match
    edit_json(art / "manifest.json", lambda m: m.__setitem__("files", {
        n: {"size": (art / n).stat().st_size, "sha256": sha(art / n)} for n in FILES}))
    with pytest.raises(PlanFormatError, match=r"kernels.so: not the kernel library this plan "
                                              r"was built with"):
        load(art)


# -- manifest --------------------------------------------------------------------------------
def test_manifest_names_only_the_artifacts_files(art: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("x" * 1234)
    for files in ({"../secret": {"size": 1, "sha256": "0" * 64}},
                  {str(secret): {"size": 1, "sha256": "0" * 64}},
                  {"plan.json": 5, "kernels.so": 5, "params.bin": 5}):
        path = art / "manifest.json"
        original = path.read_text()

        def change(m: dict, files: dict = files) -> None:
            m["files"] = {**m["files"], **files} if "plan.json" not in files else files

        edit_json(path, change)
        with pytest.raises(PlanFormatError, match=r"manifest.json: corrupt manifest \(it must "
                                                  r"list exactly plan.json, kernels.so, "
                                                  r"params.bin") as info:
            load(art)
        assert "1234" not in str(info.value) and "secret" not in str(info.value)
        path.write_text(original)
    load_artifact(art)


@pytest.mark.parametrize(("change", "match"), [
    (lambda m: m.__setitem__("version", 1), r"artifact version 1, this ios-tvm reads version 2"),
    (lambda m: m.__setitem__("version", True), r"artifact version True"),
    (lambda m: m["files"]["plan.json"].__setitem__("size", "5"), r"corrupt manifest"),
    (lambda m: m["files"]["plan.json"].__setitem__("sha256", "abc"), r"corrupt manifest"),
    (lambda m: m.__setitem__("files", []), r"corrupt manifest"),
    (lambda m: m.__setitem__("device_type", "cuda"),
     r"plan.json: the plan is for cpu target .* the manifest says cuda"),
    (lambda m: m.__setitem__("target", 5), r"corrupt manifest \(no 'target'\)"),
])
def test_bad_manifests(art: Path, change, match: str) -> None:  # noqa: ANN001
    edit_json(art / "manifest.json", change)
    with pytest.raises(PlanFormatError, match=match):
        load(art)


def test_deeply_nested_manifest(art: Path) -> None:
    (art / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(PlanFormatError, match=r"manifest.json: corrupt manifest: the manifest "
                                              r"is nested too deeply"):
        load(art)


# -- the plan inside an artifact ---------------------------------------------------------------
@pytest.mark.parametrize(("change", "match"), [
    (lambda d: d.__setitem__("min_streams", 1_000_000), r"min_streams 1000000 is not in 1\.\.64"),
    (lambda d: d.__setitem__("device_type", "cuda"), r"target kind 'llvm' runs on 'cpu' devices"),
    (lambda d: d["storages"].__setitem__(0, 2**60), r"storage 0: size 1152921504606846976"),
    (lambda d: d["calls"][0].__setitem__("kernel", "runtime.config_threadpool"),
     r"kernels.so: kernel\(s\) \['runtime.config_threadpool'\] named by the plan are missing"),
    (lambda d: d["stages"].reverse(), r"stage order breaks a dependency"),
])
def test_tampered_plans_in_an_artifact(art: Path, change, match: str) -> None:  # noqa: ANN001
    edit_json(art / "plan.json", change)
    reseal(art)
    t0 = time.monotonic()
    with pytest.raises(PlanFormatError, match=match):
        load(art)
    assert time.monotonic() - t0 < 60, "the loader took a minute to refuse it"


def test_cpu_artifact_relabelled_cuda(art: Path) -> None:
    """Plan and manifest consistently say CUDA, the library is for the CPU: refused (its CPU
    code would get device pointers)."""
    def relabel(doc: dict) -> None:
        doc["device_type"] = "cuda"
        doc["target"] = json.dumps({"kind": "cuda", "arch": "sm_90"})

    edit_json(art / "plan.json", relabel)
    edit_json(art / "manifest.json", relabel)
    reseal(art)
    with pytest.raises(PlanFormatError, match=r"kernels.so: the library lacks CUDA kernels, "
                                              r"but the plan runs on 'cuda'"):
        load(art)


# -- export ----------------------------------------------------------------------------------
EXPORT_SCRIPT = textwrap.dedent("""
    import shutil
    import sys
    from pathlib import Path
    from ios_tvm.runtime.artifact import Artifact, load_artifact
    src, kind, out, times = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    art = load_artifact(src)

    class Lib:  # a loaded library cannot be exported again; copy its file instead
        def export_library(self, path):
            shutil.copyfile(src / "kernels.so", path)

    for _ in range(times):
        Artifact(art.plan, Lib(), art.params).export(out)
    print("exported", kind)
""")


def test_concurrent_exports_to_one_directory(tmp_path: Path) -> None:
    """Three processes export different plans to one directory, repeatedly: the directory
    ends up holding one of them whole, and no temporary file is left. (With fixed temporary
    names and no lock, runs of this ended with a plan of one and a manifest of another.)"""
    s = small()
    srcs = {k: s.artifact(k).export(tmp_path / f"src-{k}") for k in s.plans}
    out = tmp_path / "shared"
    procs = [subprocess.Popen([sys.executable, "-c", EXPORT_SCRIPT, str(src), k, str(out), "20"],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for k, src in srcs.items()]
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == sorted((*FILES, "manifest.json"))
    e = load(out)
    assert e.plan in s.plans.values()
    assert all(np.array_equal(a, b) for a, b in zip(e(*s.inputs), s.outputs, strict=True))


SIGTERM_SCRIPT = textwrap.dedent("""
    import sys
    import time
    from pathlib import Path
    from ios_tvm.runtime.artifact import Artifact, load_artifact
    src, out, ready = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    art = load_artifact(src)

    class SlowLib:
        def export_library(self, path):
            Path(path).write_bytes(b"half a library")
            ready.write_text("writing")
            time.sleep(120)

    Artifact(art.plan, SlowLib(), art.params).export(out)
""")


def test_sigterm_during_export_leaves_no_temporary_files(exported: Path, tmp_path: Path) -> None:
    out = Path(shutil.copytree(exported, tmp_path / "out"))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    ready = tmp_path / "ready"
    p = subprocess.Popen([sys.executable, "-c", SIGTERM_SCRIPT, str(exported), str(out),
                          str(ready)], cwd=REPO, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not ready.exists() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ready.exists(), p.communicate(timeout=10)[1]
    p.send_signal(signal.SIGTERM)
    p.communicate(timeout=60)
    assert p.returncode == -signal.SIGTERM   # ended by the signal, as without the cleanup
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before   # no .tmp, intact
    load_artifact(out)


def test_manifest_records_sizes_and_hashes(exported: Path) -> None:
    manifest = json.loads((exported / "manifest.json").read_text())
    assert manifest["version"] == ARTIFACT_VERSION == 2
    for name in FILES:
        assert manifest["files"][name] == {"size": (exported / name).stat().st_size,
                                           "sha256": sha(exported / name)}
    plan = json.loads((exported / "plan.json").read_text())
    assert plan["kernels_sha256"] == sha(exported / "kernels.so")
    umask = os.umask(0)
    os.umask(umask)
    for name in (*FILES, "manifest.json"):  # as any file written here, not private
        mode = os.stat(exported / name).st_mode & 0o666
        assert mode == 0o666 & ~umask, (name, oct(mode))
