"""Fuzz test of the ONNX loader (issue 17): mutated models build right or fail with one clear error.

Valid small models (the bundled sample block and builders of ``tests/onnx_models.py``) are
mutated: nodes deleted, duplicated, reordered or retyped; inputs renamed; attributes,
dtypes, shapes (0, symbolic, huge), opsets and initializers changed; bytes truncated or
flipped. Each case is loaded and built (``cost="analytic"``, not measured) in a worker
process, so a crash or a hang fails the test and names the case instead of killing pytest.
Every outcome must be either

* a built plan whose outputs equal ONNX Runtime's, by output name, on the same inputs (when
  ONNX Runtime runs the model; it may refuse models TVM imports, which is counted, not
  failed), or a run-time error where ONNX Runtime raises too; or
* one :class:`~ios_tvm.errors.IosTvmError` with a one-line message.

Anything else (another exception type, a multi-line message, different outputs, a crash, a
hang) is a finding. Budget: :data:`CI_CASES` cases by default (well under a minute and a
half), :data:`SLOW_CASES` with ``--runslow``. Run ``python tests/test_fuzz_onnx.py N`` for N
cases with a summary of outcomes.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

onnx = pytest.importorskip("onnx") if __name__ != "__main__" else __import__("onnx")

sys.path.insert(0, str(Path(__file__).parent))
import onnx_models as om  # noqa: E402

from ios_tvm import _native  # noqa: E402

needs_native = pytest.mark.skipif(not _native.native_available(),
                                  reason="native library not built (bash scripts/setup.sh)")

#: Cases in a normal run and with ``--runslow``.
CI_CASES = 36
SLOW_CASES = 400
#: Cases per worker process, and seconds a worker may take per case before it counts as hung.
BATCH = 12
SECONDS_PER_CASE = 60
#: Tensors over this many bytes are refused in the workers (the machine is shared).
MAX_TENSOR_BYTES = 64 << 20

FLOAT_ATTRS = (0.0, -1.0, 1e-5, 0.5, 2.0, 1e30, float("nan"))
INT_ATTRS = (0, 1, 2, 3, -1, -2, 7, 1 << 31)
DTYPES = (onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.INT32,
          onnx.TensorProto.INT64, onnx.TensorProto.BOOL, onnx.TensorProto.UINT8,
          onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED, 1000)
OP_TYPES = ("Relu", "Sigmoid", "Abs", "Identity", "Conv", "ConvTranspose", "MaxPool", "Add",
            "Mul", "MatMul", "Concat", "Reshape", "Softmax", "Transpose", "Gather", "Sum",
            "NonZero", "Range", "Split", "Flatten", "LeakyRelu", "Clip", "Erf", "NoSuchOp")


def base_models() -> dict[str, Callable[[], Any]]:
    """The valid models that are mutated (small, so a case builds in about a second)."""
    from ios_tvm.models import sample_block

    return {
        "sample": lambda: sample_block(channels=8, size=8),
        "residual": om.residual_block,
        "inception": lambda: om.inception_block(channels=4, size=6),
        "two_output": om.two_output_model,
        "flatten_gemm": om.flatten_gemm_model,
        "transformer": lambda: om.transformer_layer(seq=4, dim=8),
        "split": om.split_model,
        "two_tower": om.two_tower_model,
        "sum_conv": om.sum_conv_model,
        "aliased": om.aliased_outputs_model,
        "gather_nd": lambda: om.indexing_model("GatherND"),
        "scatter_elements": lambda: om.indexing_model("ScatterElements"),
    }


# ---------------------------------------------------------------------------------------------
# mutations: each changes a copy of a model in place, using rng; returns a short description
# ---------------------------------------------------------------------------------------------
def _node(m: Any, rng: random.Random) -> Any:
    return m.graph.node[rng.randrange(len(m.graph.node))]


def m_delete_node(m: Any, rng: random.Random) -> str:
    i = rng.randrange(len(m.graph.node))
    name = m.graph.node[i].name
    del m.graph.node[i]
    return f"delete node {name}"


def m_duplicate_node(m: Any, rng: random.Random) -> str:
    n = _node(m, rng)
    copy = m.graph.node.add()
    copy.CopyFrom(n)
    if rng.random() < 0.5:  # a second producer of the same tensors, or a dangling copy
        copy.output[:] = [o + "_dup" for o in n.output]
        copy.name = n.name + "_dup"
    return f"duplicate node {n.name}"


def m_shuffle_nodes(m: Any, rng: random.Random) -> str:
    nodes = list(m.graph.node)
    rng.shuffle(nodes)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return "shuffle nodes"


def m_rename_input(m: Any, rng: random.Random) -> str:
    inp = m.graph.input[rng.randrange(len(m.graph.input))]
    old = inp.name
    new = rng.choice(["x:0", "input.1", "y", "", "0", "a b", "x" * 300, old + "_renamed"])
    inp.name = new
    if rng.random() < 0.5:  # consistently (valid unless the name clashes), or not at all
        for n in m.graph.node:
            n.input[:] = [new if t == old else t for t in n.input]
    return f"rename input {old!r} -> {new!r}"


def m_rewire(m: Any, rng: random.Random) -> str:
    n = _node(m, rng)
    if not n.input:
        return "rewire (no inputs)"
    tensors = ([i.name for i in m.graph.input] + [t.name for t in m.graph.initializer]
               + [o for k in m.graph.node for o in k.output])
    j = rng.randrange(len(n.input))
    n.input[j] = rng.choice(tensors + ["", "undefined_tensor"])
    return f"rewire {n.name} input {j} -> {n.input[j]!r}"


def m_attribute(m: Any, rng: random.Random) -> str:
    n = _node(m, rng)
    if not n.attribute or rng.random() < 0.2:
        a = n.attribute.add()
        a.name = rng.choice(["axis", "alpha", "unknown_attr", "perm", "group"])
        a.type = onnx.AttributeProto.INT
        a.i = rng.choice(INT_ATTRS)
        return f"add attribute {a.name}={a.i} to {n.name}"
    a = n.attribute[rng.randrange(len(n.attribute))]
    if a.type == onnx.AttributeProto.INT:
        a.i = rng.choice(INT_ATTRS)
        return f"{n.name}.{a.name} = {a.i}"
    if a.type == onnx.AttributeProto.FLOAT:
        a.f = rng.choice(FLOAT_ATTRS)
        return f"{n.name}.{a.name} = {a.f}"
    if a.type == onnx.AttributeProto.INTS:
        vals = list(a.ints)
        choice = rng.random()
        if vals and choice < 0.5:
            vals[rng.randrange(len(vals))] = rng.choice(INT_ATTRS)
        elif choice < 0.75:
            vals = vals[:-1]
        else:
            vals = [*vals, rng.choice(INT_ATTRS)]
        a.ints[:] = vals
        return f"{n.name}.{a.name} = {vals}"
    a.type = onnx.AttributeProto.INT  # a tensor/string attribute turned into an int
    a.i = 3
    return f"{n.name}.{a.name} retyped to int"


def m_op_type(m: Any, rng: random.Random) -> str:
    n = _node(m, rng)
    old = n.op_type
    n.op_type = rng.choice(OP_TYPES)
    return f"{n.name}: {old} -> {n.op_type}"


def _input_type(m: Any, rng: random.Random) -> Any:
    inp = m.graph.input[rng.randrange(len(m.graph.input))]
    return inp, inp.type.tensor_type


def m_dtype(m: Any, rng: random.Random) -> str:
    inp, tt = _input_type(m, rng)
    tt.elem_type = rng.choice(DTYPES)
    return f"input {inp.name} dtype {tt.elem_type}"


def m_shape(m: Any, rng: random.Random) -> str:
    inp, tt = _input_type(m, rng)
    dims = tt.shape.dim
    what = rng.choice(["zero", "negative", "one", "huge", "symbolic", "unknown", "drop", "add",
                       "no shape"])
    if what == "no shape":
        tt.ClearField("shape")
    elif what == "add":
        dims.add().dim_value = 1
    elif not dims:
        return f"input {inp.name}: rank 0, {what} skipped"
    elif what == "drop":
        del dims[rng.randrange(len(dims))]
    else:
        d = dims[rng.randrange(len(dims))]
        if what == "symbolic":
            d.dim_param = "N"
        elif what == "unknown":
            d.Clear()
        else:
            d.dim_value = {"zero": 0, "negative": -3, "one": 1, "huge": 1 << 40}[what]
    return f"input {inp.name} shape: {what}"


def m_opset(m: Any, rng: random.Random) -> str:
    default = [o for o in m.opset_import if o.domain in ("", "ai.onnx")]
    v = rng.choice([0, 1, 6, 11, 13, 17, 21, 99, -1, None])
    if v is None:
        for o in default:
            m.opset_import.remove(o)
        return "remove the default opset"
    for o in default:
        o.version = v
    return f"opset {v}"


def m_initializer(m: Any, rng: random.Random) -> str:
    if not m.graph.initializer:
        return "no initializer"
    t = m.graph.initializer[rng.randrange(len(m.graph.initializer))]
    what = rng.choice(["dims", "dtype", "truncate", "drop", "rename", "scalar"])
    if what == "dims" and t.dims:
        t.dims[rng.randrange(len(t.dims))] = rng.choice([0, 1, 2, 1 << 33])
    elif what == "dtype":
        t.data_type = rng.choice(DTYPES)
    elif what == "truncate" and t.raw_data:
        t.raw_data = t.raw_data[: rng.randrange(len(t.raw_data))]
    elif what == "drop":
        m.graph.initializer.remove(t)
    elif what == "rename":
        t.name = t.name + "_other"
    else:
        del t.dims[:]
    return f"initializer {t.name}: {what}"


def m_output(m: Any, rng: random.Random) -> str:
    out = m.graph.output[rng.randrange(len(m.graph.output))]
    what = rng.choice(["rename", "duplicate", "drop", "to input"])
    if what == "rename":
        out.name = out.name + "_nope"
    elif what == "duplicate":
        m.graph.output.add().CopyFrom(out)
    elif what == "drop" and len(m.graph.output) > 1:
        m.graph.output.remove(out)
    else:
        out.name = m.graph.input[0].name
    return f"output {what}"


MUTATIONS = [m_delete_node, m_duplicate_node, m_shuffle_nodes, m_rename_input, m_rewire,
             m_attribute, m_op_type, m_dtype, m_shape, m_opset, m_initializer, m_output]
#: Byte-level damage to the serialised model, applied instead of a proto mutation.
BYTE_DAMAGE = ("truncate", "flip")


def make_case(seed: int, models: dict[str, Any]) -> tuple[str, bytes]:
    """Case ``seed``: a description and the (possibly damaged) serialised model."""
    rng = random.Random(seed)
    name = sorted(models)[rng.randrange(len(models))]
    m = onnx.ModelProto()
    m.CopyFrom(models[name])
    if rng.random() < 0.08:
        data = m.SerializeToString()
        how = rng.choice(BYTE_DAMAGE)
        if how == "truncate":
            cut = rng.randrange(len(data))
            return f"{name}: truncate to {cut} bytes", data[:cut]
        data = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return f"{name}: flip bytes", bytes(data)
    steps = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        mutation = rng.choice(MUTATIONS)
        try:
            steps.append(mutation(m, rng))
        except (IndexError, ValueError):  # nothing left to mutate (no node, no input)
            steps.append(f"{mutation.__name__} skipped")
    return f"{name}: {'; '.join(steps)}", m.SerializeToString()


# ---------------------------------------------------------------------------------------------
# the worker: load + build + compare, one JSON line per case
# ---------------------------------------------------------------------------------------------
def _feeds(executor: Any) -> list[Any]:
    import numpy as np

    rng = np.random.default_rng(0)
    out = []
    for i in executor.plan.inputs:
        t = executor.plan.tensors[i]
        if t.dtype.startswith(("float", "bfloat")):
            out.append(rng.standard_normal(t.shape).astype(t.dtype))
        else:
            out.append(np.zeros(t.shape, t.dtype))
    return out


def _compare(model_bytes: bytes, result: Any) -> dict[str, Any]:
    """Run the built plan and ONNX Runtime on the same inputs; compare outputs by name."""
    import numpy as np
    import onnxruntime as ort

    ex = result.executor
    feeds = _feeds(ex)
    try:
        sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]
        want = dict(zip([o.name for o in sess.get_outputs()],
                        sess.run(None, dict(zip(names, feeds, strict=True))), strict=True))
    except Exception as e:  # ONNX Runtime refuses the model or fails running it
        ort_error = f"{type(e).__name__}: {e}".splitlines()[0][:200]
    else:
        ort_error = None
    try:
        got = ex(*feeds)
    except Exception as e:
        if ort_error is not None:
            return {"outcome": "both-fail-at-run", "detail": f"{type(e).__name__}: {e}"[:200]}
        return {"outcome": "FINDING", "detail": f"run failed where ONNX Runtime ran: "
                                                f"{type(e).__name__}: {e}"[:400]}
    if ort_error is not None:
        return {"outcome": "built-ort-refuses", "detail": ort_error}
    if names != ex.input_names:
        return {"outcome": "FINDING", "detail": f"input names {ex.input_names} != ONNX "
                                                f"Runtime's {names}"}
    if list(want) != ex.output_names:
        return {"outcome": "FINDING", "detail": f"output names {ex.output_names} != ONNX "
                                                f"Runtime's {list(want)}"}
    for name, g in zip(ex.output_names, got, strict=True):
        w = np.asarray(want[name])
        if g.shape != w.shape or g.dtype != w.dtype:
            return {"outcome": "FINDING", "detail": f"output {name!r}: {g.dtype}{g.shape} vs "
                                                    f"ONNX Runtime {w.dtype}{w.shape}"}
        scale = 1.0 + float(np.nanmax(np.abs(w))) if w.size and w.dtype.kind == "f" else 1.0
        if not np.allclose(g, w, rtol=1e-3, atol=1e-4 * scale, equal_nan=True):
            err = float(np.nanmax(np.abs(g.astype("float64") - w.astype("float64"))))
            return {"outcome": "FINDING", "detail": f"output {name!r} differs from ONNX "
                                                    f"Runtime by {err:.3g}"}
    return {"outcome": "equal"}


def run_case(path: str) -> dict[str, Any]:
    """Load and build one model file; classify what happened."""
    from ios_tvm.compiler.build import build
    from ios_tvm.errors import IosTvmError

    try:
        result = build(path, cost="analytic", measure=False, compare_vm=False)
    except IosTvmError as e:
        text = str(e)
        if "\n" in text or not text.strip():
            return {"outcome": "FINDING", "detail": f"{type(e).__name__} message is not one "
                                                    f"line: {text[:400]!r}"}
        return {"outcome": "error", "kind": type(e).__name__, "detail": text[:300]}
    except Exception as e:
        return {"outcome": "FINDING", "detail": f"{type(e).__name__} (not an IosTvmError): "
                                                f"{str(e)[:400]}"}
    return _compare(Path(path).read_bytes(), result)


def worker(paths: list[str]) -> None:
    """Run cases, printing ``start`` and a result line (JSON) for each, flushed."""
    import logging
    import warnings

    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    crash_on = os.environ.get("IOS_TVM_FUZZ_CRASH_ON")  # to test the driver itself
    for p in paths:
        print(json.dumps({"start": p}), flush=True)
        if crash_on and p.endswith(crash_on):
            os.abort()
        print(json.dumps({"case": p, **run_case(p)}), flush=True)


# ---------------------------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------------------------
def fuzz(count: int, first_seed: int = 0, workdir: str | None = None) -> list[dict[str, Any]]:
    """Make ``count`` cases, run them in batches of worker processes, return every outcome."""
    models = {k: f() for k, f in base_models().items()}
    tmp = tempfile.TemporaryDirectory(dir=workdir)
    cases: dict[str, str] = {}
    for seed in range(first_seed, first_seed + count):
        what, data = make_case(seed, models)
        path = os.path.join(tmp.name, f"case{seed}.onnx")
        Path(path).write_bytes(data)
        cases[path] = f"seed {seed}: {what}"
    env = {**os.environ, "IOS_TVM_MAX_TENSOR_BYTES": str(MAX_TENSOR_BYTES),
           "TVM_NUM_THREADS": os.environ.get("TVM_NUM_THREADS", "1")}
    results = []
    paths = list(cases)
    with tmp:
        while paths:
            batch, paths = paths[:BATCH], paths[BATCH:]
            proc = subprocess.Popen([sys.executable, __file__, "--worker", *batch],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    env=env)
            try:
                out, err = proc.communicate(timeout=SECONDS_PER_CASE * len(batch))
                hung = False
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
                hung = True
            done, started = set(), None
            for line in out.splitlines():
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue  # TVM's own prints
                if "start" in msg:
                    started = msg["start"]
                elif "case" in msg:
                    done.add(msg["case"])
                    results.append({**msg, "case": cases[msg["case"]]})
            if len(done) < len(batch):
                culprit = started if started not in done else None
                what = "hung" if hung else f"crashed (exit {proc.returncode})"
                detail = f"worker {what}: {err.strip().splitlines()[-1] if err.strip() else ''}"
                if culprit is not None:
                    results.append({"case": cases[culprit], "outcome": "FINDING",
                                    "detail": detail[:400]})
                    done.add(culprit)
                # The rest of the batch runs again in a fresh worker.
                paths = [p for p in batch if p not in done] + paths
    return results


def summary(results: list[dict[str, Any]]) -> str:
    counts = Counter(r["outcome"] for r in results)
    kinds = Counter(r.get("kind") for r in results if r["outcome"] == "error")
    lines = [f"{len(results)} cases: " + ", ".join(f"{k} {v}" for k, v in counts.most_common()),
             "errors: " + ", ".join(f"{k} {v}" for k, v in kinds.most_common())]
    lines += [f"FINDING {r['case']}: {r['detail']}" for r in results
              if r["outcome"] == "FINDING"]
    return "\n".join(lines)


def _check(results: list[dict[str, Any]]) -> None:
    findings = [r for r in results if r["outcome"] == "FINDING"]
    assert not findings, summary(results)
    # The fuzzer reaches both good outcomes, so it is testing something.
    outcomes = Counter(r["outcome"] for r in results)
    assert outcomes["error"] and outcomes["equal"], summary(results)


@needs_native
def test_fuzz_onnx_loader(tmp_path: Path) -> None:
    _check(fuzz(CI_CASES, workdir=str(tmp_path)))


@needs_native
def test_a_crashing_case_is_a_finding_and_the_rest_still_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IOS_TVM_FUZZ_CRASH_ON", "case1.onnx")
    results = fuzz(3, workdir=str(tmp_path))
    assert len(results) == 3
    crashed = [r for r in results if r["outcome"] == "FINDING"]
    assert len(crashed) == 1 and crashed[0]["case"].startswith("seed 1:")
    assert "worker crashed (exit -6)" in crashed[0]["detail"]


@pytest.mark.slow
@needs_native
def test_fuzz_onnx_loader_long(tmp_path: Path) -> None:
    _check(fuzz(SLOW_CASES, first_seed=CI_CASES, workdir=str(tmp_path)))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2:])
    else:
        n = int(sys.argv[1]) if len(sys.argv) > 1 else CI_CASES
        start = int(sys.argv[2]) if len(sys.argv) > 2 else 0
        res = fuzz(n, start)
        print(summary(res))
        for r in res:
            print(json.dumps(r))
