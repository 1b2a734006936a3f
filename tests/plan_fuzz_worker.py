"""The child process of tests/test_fuzz_plan.py: loads and runs mutated plans and artifacts.

Run as ``python plan_fuzz_worker.py BASE_DIR...`` (artifact directories). Reads one JSON case
per line on stdin, ``{"id", "base", "plan"}`` (plan JSON text, run with the base artifact's
library and weights) or ``{"id", "base", "artifact"}`` (a directory to load), and answers one
JSON line per case on stdout: ``{"id", "outcome", "detail"}``, where outcome is

- ``rejected``: one IosTvmError while loading (the plan or artifact is refused);
- ``run-error``: loaded, and the run raised one IosTvmError;
- ``same``: ran, outputs bit-identical to the unmutated plan's;
- ``other``: ran, outputs differ from the unmutated plan's but equal those of the same plan
  run safely (every call in order, one group, every tensor in its own storage): a valid plan
  of another computation (say, two kernels swapped);
- ``BAD``: anything else: another exception type, or outputs that differ from the safe run
  (the validator let a race or an aliasing through).

A crash or hang of this process is detected by the parent.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from ios_tvm.errors import IosTvmError
from ios_tvm.ir.plan import Plan, PlanStage
from ios_tvm.runtime.artifact import load_artifact
from ios_tvm.runtime.executor import Executor


def sequentialised(plan: Plan) -> Plan:
    """``plan`` run safely: one stage of one group (calls in stage, group, position order),
    every storage tensor in a storage of its own."""
    calls = tuple(c for s in plan.stages for g in s.groups for c in g)
    ids: dict[int, int] = {}
    tensors = []
    for i, t in enumerate(plan.tensors):
        if t.place == "storage":
            ids[i] = len(ids)
            t = dataclasses.replace(t, ref=ids[i])
        tensors.append(t)
    sizes = tuple(max(plan.tensors[i].nbytes, 1) for i in ids)
    return dataclasses.replace(plan, tensors=tuple(tensors), storages=sizes,
                               stages=(PlanStage((calls,)),) if calls else (), min_streams=1)


def run(executor: Executor, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Set the inputs the plan names (by name; the others stay unset) and run."""
    for i, name in enumerate(executor.input_names):
        if name in inputs:
            executor.set_input(i, inputs[name])
    executor.run()
    return [executor.get_output(i).numpy() for i in range(len(executor.output_names))]


def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(
        x.shape == y.shape and x.dtype == y.dtype and
        np.array_equal(x, y, equal_nan=x.dtype.kind in "fc") for x, y in zip(a, b, strict=True))


class Base:
    """An unmutated artifact: library, weights, inputs and outputs."""

    def __init__(self, directory: str) -> None:
        art = load_artifact(directory)
        self.lib, self.params = art.lib, art.params
        e = art.executor()
        rng = np.random.default_rng(0)
        self.inputs = {name: rng.standard_normal(art.plan.tensors[i].shape)
                       .astype(art.plan.tensors[i].dtype)
                       for name, i in zip(e.input_names, art.plan.inputs, strict=True)}
        self.outputs = run(e, self.inputs)


def judge(base: Base, load_it: Any) -> tuple[str, str]:
    """The outcome of one case; ``load_it`` returns an executor and the weights it holds."""
    try:
        executor, params = load_it()
    except IosTvmError as e:
        return "rejected", f"{type(e).__name__}: {e}"
    try:
        got = run(executor, base.inputs)
    except IosTvmError as e:
        return "run-error", f"{type(e).__name__}: {e}"
    if same(got, base.outputs):
        return "same", ""
    try:
        safe = run(Executor(sequentialised(executor.plan), executor.lib, params),
                   base.inputs)
    except Exception as e:  # a plan that ran must also run safely
        return "BAD", f"ran, but not when sequentialised: {type(e).__name__}: {e}"
    if same(got, safe):
        return "other", ""
    return "BAD", "outputs differ from the same plan run sequentially (a race or aliasing)"


def main() -> None:
    bases = {str(i): Base(d) for i, d in enumerate(sys.argv[1:])}
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        case = json.loads(line)
        base = bases[str(case["base"])]
        if "plan" in case:
            def load_it(text: str = case["plan"], base: Base = base) -> tuple[Executor, Any]:
                return Executor(Plan.loads(text), base.lib, base.params), base.params
        else:
            def load_it(directory: str = case["artifact"]) -> tuple[Executor, Any]:
                art = load_artifact(Path(directory))
                return art.executor(), art.params
        try:
            outcome, detail = judge(base, load_it)
        except Exception as e:  # another exception type: a finding
            outcome = "BAD"
            detail = f"{type(e).__name__}: {e}\n{traceback.format_exc()[-1500:]}"
        print(json.dumps({"id": case["id"], "outcome": outcome, "detail": detail[:2000]}),
              flush=True)


if __name__ == "__main__":
    main()
