"""Fuzzing the plan loader: mutated plans, manifests and artifact files.

Valid plans of small real models (the inception block under greedy and IOS schedules, with
concurrent stages; a flatten/gemm model under the greedy schedule, with views) are mutated at
random: fields deleted, retyped, set to out-of-range or huge integers, calls duplicated,
dropped or moved, stages swapped or merged (more concurrency), storages aliased or shrunk,
kernels renamed (other kernels, registered globals), arguments changed, values nested
deeply, the JSON text cut or corrupted; manifests and the files of whole artifacts are
damaged too (cut, corrupted, swapped, with the manifest made consistent or not). Each case is
loaded and run in a child process (tests/plan_fuzz_worker.py), which answers one outcome per
case; every outcome must be a clear IosTvmError (the case is refused, or its run fails), the
unmutated plan's outputs, or a valid plan's own outputs (equal to running it safely: calls in
order, no storage shared). A crash or hang of the child fails the test naming the case.

Budgets: ``FUZZ_SECONDS`` of cases in CI (plus about 15 s to build the models and start the
child), ``SLOW_FUZZ_SECONDS`` with ``--runslow``; ``IOS_TVM_FUZZ_SECONDS`` overrides both and
``IOS_TVM_FUZZ_SEED`` picks the seed (default fixed, so a red run reproduces).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import queue
import random
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("tvm")
pytest.importorskip("onnx")

from ios_tvm import _native

if not _native.native_available():
    pytest.skip("native library not built (bash scripts/setup.sh)", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).parent))
from runtime_fixtures import small  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).parent / "plan_fuzz_worker.py"
FILES = ("plan.json", "kernels.so", "params.bin")
FUZZ_SECONDS = 25.0
SLOW_FUZZ_SECONDS = 600.0
CASE_TIMEOUT = 90.0   # one load and run of these tiny models takes milliseconds
#: Where artifact cases are made (one base per kind of plan).
BASES = (("inception", "greedy"), ("inception", "ios"), ("flatten_gemm", "greedy"))
#: Values a field is retyped to.
ODD_VALUES = [None, True, False, 0, 1, -1, 3, 63, 64, 65, 2**31, 2**40, 2**60, 2**63 - 1,
              2**63, 2**64, -(2**63) - 1, 10**30, 1.5, -0.0, 1e308, "", "x", "float32",
              "storage", "view", [], [0], [[0]], {}, {"a": 1}]
KERNELS = ["runtime.config_threadpool", "tvm.contrib.sort.sort", "tvm.contrib.random.uniform",
           "ios_tvm.runtime.create_executor", "ffi.String", "no_such_kernel", "_library_bin",
           "_library_ctx", "_main__", ""]


# -- mutations -------------------------------------------------------------------------------
def _paths(value: Any) -> Iterator[tuple]:
    """Paths of every value inside ``value`` (not deeper than 12: nest makes deep ones)."""
    stack: list[tuple[tuple, Any]] = [((), value)]
    while stack:
        prefix, v = stack.pop()
        items = v.items() if isinstance(v, dict) else enumerate(v) if isinstance(v, list) \
            else ()
        for k, x in items:
            yield (*prefix, k)
            if len(prefix) < 12:
                stack.append(((*prefix, k), x))


def _parent(doc: Any, path: tuple) -> Any:
    for key in path[:-1]:
        doc = doc[key]
    return doc


class Mutator:
    """Random mutations of a plan document (a dict as in plan.json)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def pick_path(self, doc: dict, want: Callable[[Any], bool] = lambda v: True) -> tuple | None:
        paths = [p for p in _paths(doc) if want(_parent(doc, p)[p[-1]])]
        return self.rng.choice(paths) if paths else None

    def delete(self, doc: dict) -> str:
        path = self.pick_path(doc)
        parent = _parent(doc, path)
        del parent[path[-1]]
        return f"delete {path}"

    def retype(self, doc: dict) -> str:
        path = self.pick_path(doc)
        value = copy.deepcopy(self.rng.choice(ODD_VALUES))
        _parent(doc, path)[path[-1]] = value
        return f"set {path} = {value!r}"

    def tweak_int(self, doc: dict) -> str:
        path = self.pick_path(doc, lambda v: type(v) is int)
        if path is None:
            return "no int"
        old = _parent(doc, path)[path[-1]]
        new = self.rng.choice([old + 1, old - 1, -old, 0, -1, old * 2 + 1, old + 64,
                               self.rng.randint(-3, 40), 2**62, -(2**62)])
        _parent(doc, path)[path[-1]] = new
        return f"set {path} = {new} (was {old})"

    def duplicate_call(self, doc: dict) -> str:
        if not doc["calls"] or not doc["stages"]:
            return "no call"
        ci = self.rng.randrange(len(doc["calls"]))
        doc["calls"].append(copy.deepcopy(doc["calls"][ci]))
        group = self.rng.choice(self.rng.choice(doc["stages"])["groups"])
        group.insert(self.rng.randint(0, len(group)), len(doc["calls"]) - 1)
        return f"duplicate call {ci}"

    def _locate(self, doc: dict) -> tuple[list, int] | None:
        groups = [g for s in doc["stages"] for g in s["groups"] if g]
        if not groups:
            return None
        g = self.rng.choice(groups)
        return g, self.rng.randrange(len(g))

    def drop_call(self, doc: dict) -> str:
        found = self._locate(doc)
        if found is None:
            return "no call"
        g, i = found
        return f"drop call {g.pop(i)} from its group"

    def move_call(self, doc: dict) -> str:
        found = self._locate(doc)
        if found is None:
            return "no call"
        g, i = found
        c = g.pop(i)
        stage = self.rng.choice(doc["stages"])
        if self.rng.random() < 0.3:
            stage["groups"].append([c])
            return f"move call {c} to a new group"
        target = self.rng.choice(stage["groups"])
        target.insert(self.rng.randint(0, len(target)), c)
        return f"move call {c}"

    def swap_stages(self, doc: dict) -> str:
        s = doc["stages"]
        if len(s) < 2:
            return "one stage"
        i, j = self.rng.sample(range(len(s)), 2)
        s[i], s[j] = s[j], s[i]
        return f"swap stages {i} and {j}"

    def merge_stages(self, doc: dict) -> str:
        s = doc["stages"]
        if len(s) < 2:
            return "one stage"
        i = self.rng.randrange(len(s) - 1)
        s[i]["groups"] += s.pop(i + 1)["groups"]
        return f"merge stages {i} and {i + 1} (their groups run concurrently)"

    def split_group(self, doc: dict) -> str:
        found = self._locate(doc)
        if found is None:
            return "no call"
        g, i = found
        stage = next(s for s in doc["stages"] if any(x is g for x in s["groups"]))
        tail = g[i:]
        del g[i:]
        stage["groups"].append(tail)
        return f"split a group at {i} (the tail runs concurrently)"

    def alias_storage(self, doc: dict) -> str:
        storage = [t for t in doc["tensors"] if t.get("place") == "storage"]
        if len(doc["storages"]) < 2 or not storage:
            return "no storages"
        t = self.rng.choice(storage)
        old, new = t["ref"], self.rng.randrange(len(doc["storages"]))
        t["ref"] = new
        if self.rng.random() < 0.8:  # keep it fitting, so only the lifetimes are wrong
            doc["storages"][new] = max(doc["storages"][new], doc["storages"][old])
        return f"move tensor {t['name']} from storage {old} to {new}"

    def shrink_storage(self, doc: dict) -> str:
        if not doc["storages"]:
            return "no storages"
        i = self.rng.randrange(len(doc["storages"]))
        doc["storages"][i] = self.rng.choice([0, 1, doc["storages"][i] // 2,
                                              doc["storages"][i] - 4])
        return f"shrink storage {i}"

    def change_tensor(self, doc: dict) -> str:
        t = self.rng.choice(doc["tensors"])
        what = self.rng.choice(["dtype", "shape", "place", "ref", "offset", "name"])
        if what == "dtype":
            t["dtype"] = self.rng.choice(["float16", "int32", "int8", "bool", "float64",
                                          "float32x4", "float33", "int1", "handle", ""])
        elif what == "shape":
            shape = list(t["shape"])
            if shape and self.rng.random() < 0.5:
                shape[self.rng.randrange(len(shape))] = self.rng.choice(
                    [0, 1, 2, -1, 2**31, 2**62])
            else:
                shape = shape[::-1] if self.rng.random() < 0.5 else shape + [1]
            t["shape"] = shape
        elif what == "place":
            t["place"] = self.rng.choice(["input", "param", "storage", "view", "heap"])
        elif what == "ref":
            t["ref"] = self.rng.randint(-2, len(doc["tensors"]) + 1)
        elif what == "offset":
            t["offset"] = self.rng.choice([64, 128, 192, 1 << 20, 32, -64, 2**62])
        else:
            t["name"] = self.rng.choice(doc["tensors"])["name"]
        return f"tensor {t.get('name')}: change {what}"

    def change_kernel(self, doc: dict) -> str:
        if not doc["calls"]:
            return "no call"
        c = self.rng.choice(doc["calls"])
        c["kernel"] = self.rng.choice([*KERNELS, self.rng.choice(doc["calls"])["kernel"]])
        return f"kernel -> {c['kernel']}"

    def change_args(self, doc: dict) -> str:
        if not doc["calls"]:
            return "no call"
        c = self.rng.choice(doc["calls"])
        args = c["args"]
        how = self.rng.choice(["drop", "add", "swap", "replace", "num_outputs"])
        if how == "drop" and args:
            args.pop(self.rng.randrange(len(args)))
        elif how == "add":
            args.insert(self.rng.randint(0, len(args)), self.rng.randrange(len(doc["tensors"])))
        elif how == "swap" and len(args) > 1:
            i, j = self.rng.sample(range(len(args)), 2)
            args[i], args[j] = args[j], args[i]
        elif how == "replace" and args:
            args[self.rng.randrange(len(args))] = self.rng.randrange(len(doc["tensors"]))
        else:
            c["num_outputs"] = self.rng.randint(0, len(args) + 1)
        return f"call {c.get('node')}: {how} args"

    def nest(self, doc: dict) -> str:
        path = self.pick_path(doc)
        depth = self.rng.choice([10, 60, 70, 1000, 50_000])
        value: Any = _parent(doc, path)[path[-1]]
        for _ in range(depth):
            value = [value]
        _parent(doc, path)[path[-1]] = value
        return f"nest {path} {depth} deep"

    def top_level(self, doc: dict) -> str:
        key, value = self.rng.choice([
            ("min_streams", 1_000_000), ("min_streams", 65), ("min_streams", 64),
            ("min_streams", 0), ("device_type", "cuda"), ("device_type", "tpu"),
            ("version", 3), ("version", 1), ("format", "ios_tvm.Artifact"),
            ("target", "cuda"), ("target", '{"kind": "cuda"}'), ("meta", [1]),
            ("inputs", []), ("outputs", []), ("stages", []), ("storages", [2**60] * 3)])
        doc[key] = value
        return f"set {key} = {value!r:.40}"

    OPS = ("delete", "retype", "tweak_int", "duplicate_call", "drop_call", "move_call",
           "swap_stages", "merge_stages", "split_group", "alias_storage", "alias_storage",
           "shrink_storage", "change_tensor", "change_kernel", "change_args", "nest",
           "top_level")

    def mutate(self, doc: dict) -> tuple[str, list[str]]:
        """Returns the mutated JSON text and what was done."""
        doc = copy.deepcopy(doc)
        done = []
        ops = [self.rng.choice(self.OPS) for _ in range(self.rng.choice([1, 1, 1, 2, 3]))]
        for op in sorted(ops, key=lambda op: op == "nest"):  # nest last: others recurse
            try:
                done.append(getattr(self, op)(doc))
            except (TypeError, KeyError, IndexError, AttributeError, ValueError):
                done.append(f"{op} (not applicable after the mutations before)")
        text = json.dumps(doc) if "nest" not in " ".join(done) else _dumps_deep(doc)
        if self.rng.random() < 0.08:  # damage the text itself
            i = self.rng.randrange(len(text))
            how = self.rng.choice(["cut", "byte", "digit"])
            if how == "cut":
                text = text[:i]
            elif how == "byte":
                text = text[:i] + self.rng.choice('{}[]",:0a\\\x00\u00e9') + text[i + 1:]
            else:
                text = text.replace("16", self.rng.choice(["1e999", "NaN", "-16", "16.0"]), 1)
            done.append(f"text {how} at {i}")
        return text, done


def _dumps_deep(doc: Any) -> str:
    """json.dumps without its recursion limit (for deeply nested values)."""
    parts: list[str] = []
    stack: list[Any] = [doc]
    while stack:
        v = stack.pop()
        if isinstance(v, _Raw):
            parts.append(v.text)
        elif isinstance(v, dict):
            items: list[Any] = [_Raw("{")]
            for i, (k, x) in enumerate(v.items()):
                items += [_Raw(("," if i else "") + json.dumps(k) + ":"), x]
            stack.extend(reversed([*items, _Raw("}")]))
        elif isinstance(v, list):
            items = [_Raw("[")]
            for i, x in enumerate(v):
                items += ([_Raw(",")] if i else []) + [x]
            stack.extend(reversed([*items, _Raw("]")]))
        else:
            parts.append(json.dumps(v))
    return "".join(parts)


class _Raw:
    def __init__(self, text: str) -> None:
        self.text = text


# -- artifact cases --------------------------------------------------------------------------
def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def reseal(d: Path) -> None:
    """Make the plan's kernels_sha256 and the manifest agree with the files now there."""
    try:
        doc = json.loads((d / "plan.json").read_text())
        doc["kernels_sha256"] = sha(d / "kernels.so")
        (d / "plan.json").write_text(json.dumps(doc))
    except (ValueError, TypeError, RecursionError, UnicodeDecodeError):
        pass
    m = json.loads((d / "manifest.json").read_text())
    m["files"] = {n: {"size": (d / n).stat().st_size, "sha256": sha(d / n)} for n in FILES}
    (d / "manifest.json").write_text(json.dumps(m))


def artifact_case(rng: random.Random, mutator: Mutator, src: Path, other_lib: Path,
                  d: Path) -> list[str]:
    """Damage a copy of the artifact ``src`` in ``d``; returns what was done."""
    shutil.copytree(src, d)
    how = rng.choice(["manifest", "cut", "cut", "flip", "swap", "plan"])
    if how == "manifest":
        m = json.loads((d / "manifest.json").read_text())
        done = [getattr(mutator, rng.choice(["delete", "retype", "tweak_int", "nest"]))(m)]
        if rng.random() < 0.3:
            m.setdefault("files", {})
            if isinstance(m["files"], dict):
                m["files"][rng.choice(["../x", "/etc/passwd", "plan.json/../../y"])] = {
                    "size": 1, "sha256": "0" * 64}
                done.append("a path outside")
        (d / "manifest.json").write_text(_dumps_deep(m))
        return ["manifest: " + ", ".join(done)]
    name = rng.choice(FILES)
    path = d / name
    data = path.read_bytes()
    consistent = rng.random() < 0.7
    if how == "cut":
        path.write_bytes(data[:rng.randrange(len(data))])
    elif how == "flip":
        if name != "plan.json":
            consistent = False   # other code or weights, consistent, would be a valid artifact
        i = rng.randrange(len(data))
        path.write_bytes(data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1:])
    elif how == "swap":
        name = "kernels.so"
        shutil.copy(other_lib, d / name)
        consistent = rng.random() < 0.5
    else:
        text, done = mutator.mutate(json.loads((d / "plan.json").read_text()))
        (d / "plan.json").write_text(text)
        name = f"plan.json ({'; '.join(done)})"
    if consistent:
        reseal(d)
    return [f"{how} {name}" + (" (manifest made consistent)" if consistent else "")]


# -- the driver ------------------------------------------------------------------------------
class Worker:
    """The child process; a crash or hang is reported with the case at fault."""

    def __init__(self, bases: list[Path]) -> None:
        self.bases = bases
        self.start()

    def start(self) -> None:
        # Without spinning, TVM's pool threads exit at once: an executor with worker threads
        # is then destroyed in milliseconds instead of about a second (2 busy cores).
        env = {**os.environ, "TVM_THREAD_POOL_SPIN_COUNT": "0"}
        self.proc = subprocess.Popen([sys.executable, str(WORKER), *map(str, self.bases)],
                                     cwd=REPO, env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     bufsize=1)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.errors: list[str] = []
        threading.Thread(target=self._read, args=(self.proc.stdout, self.lines),
                         daemon=True).start()
        threading.Thread(target=self._drain, args=(self.proc.stderr, self.errors),
                         daemon=True).start()
        ready = self.lines.get(timeout=300)
        assert ready is not None and json.loads(ready).get("ready"), self.stderr()

    @staticmethod
    def _read(stream: Any, lines: queue.Queue) -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    @staticmethod
    def _drain(stream: Any, errors: list[str]) -> None:
        for line in stream:
            errors.append(line)
            del errors[:-40]

    def stderr(self) -> str:
        return "".join(self.errors)[-3000:]

    def ask(self, case: dict) -> dict:
        """The worker's answer, or a BAD outcome when it died or hung (then restarted)."""
        try:
            self.proc.stdin.write(json.dumps(case) + "\n")
            self.proc.stdin.flush()
            line = self.lines.get(timeout=CASE_TIMEOUT)
        except (BrokenPipeError, queue.Empty):
            line = None
        if line is not None:
            return json.loads(line)
        hung = self.proc.poll() is None
        self.proc.kill()
        self.proc.wait()
        answer = {"outcome": "BAD", "detail": ("hang: no answer in "
                                               f"{CASE_TIMEOUT:.0f} s" if hung else
                                               f"crash: exit code {self.proc.returncode}") +
                  f"; stderr: {self.stderr()}"}
        self.start()
        return answer

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def fuzz(tmp_path: Path, seconds: float, seed: int) -> tuple[Counter, list[str]]:
    rng = random.Random(seed)
    mutator = Mutator(rng)
    bases = [small(model).artifact(kind).export(tmp_path / f"base-{model}-{kind}")
             for model, kind in BASES]
    docs = [json.loads((b / "plan.json").read_text()) for b in bases]
    other_lib = _other_build(tmp_path)
    worker = Worker(bases)
    counts: Counter = Counter()
    findings: list[str] = []
    deadline = time.monotonic() + seconds
    n = 0
    try:
        while time.monotonic() < deadline:
            b = rng.randrange(len(bases))
            if rng.random() < 0.12:
                d = tmp_path / f"case{n}"
                done = artifact_case(rng, mutator, bases[b], other_lib, d)
                case = {"id": n, "base": b, "artifact": str(d)}
            else:
                text, done = mutator.mutate(docs[b])
                case = {"id": n, "base": b, "plan": text}
            answer = worker.ask(case)
            kind = "artifact" if "artifact" in case else "plan"
            counts[f"{kind}:{answer['outcome']}"] += 1
            if answer["outcome"] == "BAD":
                findings.append(f"case {n} ({BASES[b]}, {kind}: {'; '.join(done)}): "
                                f"{answer['detail']}")
            if "artifact" in case:
                shutil.rmtree(case["artifact"], ignore_errors=True)
            n += 1
    finally:
        worker.close()
    return counts, findings


def _other_build(tmp_path: Path) -> Path:
    """kernels.so of the inception block built for another CPU (same kernel names)."""
    from ios_tvm.compiler.extract import graph_from_model
    from ios_tvm.compiler.library import build_kernel_library

    ex = graph_from_model(small().model, target="llvm -mcpu=core2")
    path = tmp_path / "other-kernels.so"
    build_kernel_library(ex.mod, ex.target).export_library(str(path))
    return path


def _budget(default: float) -> float:
    return float(os.environ.get("IOS_TVM_FUZZ_SECONDS", default))


def _check(counts: Counter, findings: list[str], seed: int) -> None:
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    summary = f"seed {seed}, {sum(counts.values())} cases: {summary}"
    print(f"\nplan fuzzer: {summary}")
    assert not findings, f"{len(findings)} finding(s) ({summary}):\n" + "\n".join(findings[:10])
    # The fuzzer is not vacuous: cases were refused, ran unchanged, and ran changed.
    assert counts["plan:rejected"] and counts["plan:same"], summary


def test_fuzz_plan_loader(tmp_path: Path) -> None:
    seed = int(os.environ.get("IOS_TVM_FUZZ_SEED", "17"))
    _check(*fuzz(tmp_path, _budget(FUZZ_SECONDS), seed), seed)


@pytest.mark.slow
def test_fuzz_plan_loader_long(tmp_path: Path) -> None:
    seed = int(os.environ.get("IOS_TVM_FUZZ_SEED", str(random.randrange(1 << 30))))
    _check(*fuzz(tmp_path, _budget(SLOW_FUZZ_SECONDS), seed), seed)
