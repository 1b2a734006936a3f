"""Small compiled models shared by the runtime robustness tests (built once per session).

:func:`small` lowers a tiny ONNX model once (one kernel library, one set of weights) and makes
its plans under the sequential, greedy and IOS schedules; the greedy and IOS plans of the
inception block have concurrent stages, the flatten/gemm model has views.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import onnx_models as om

from ios_tvm.cost import AnalyticCost, DeviceSpec
from ios_tvm.ir.plan import Plan
from ios_tvm.runtime.artifact import Artifact
from ios_tvm.scheduler.config import SearchConfig
from ios_tvm.scheduler.search import greedy_schedule, search, sequential_schedule

#: One kernel fills half the machine and launches are free: IOS picks concurrent stages.
TWO_LANES = DeviceSpec("two-lanes", peak_flops=50e9, bandwidth=10e9, launch_s=1e-8,
                       sync_s=1e-9, saturation_s=1.0, min_utilisation=0.5)
MODELS = {"inception": om.inception_block, "flatten_gemm": om.flatten_gemm_model,
          "two_output": om.two_output_model}


@dataclass
class Small:
    """A lowered model: its ONNX proto, plans by schedule kind, library, weights, inputs."""

    model: Any
    plans: dict[str, Plan]
    lib: Any
    params: dict[str, Any]
    inputs: list[np.ndarray]

    def artifact(self, kind: str) -> Artifact:
        return Artifact(self.plans[kind], self.lib, self.params)

    @functools.cached_property
    def outputs(self) -> list[np.ndarray]:
        """Outputs of the sequential plan for :attr:`inputs`."""
        return self.artifact("sequential").executor()(*self.inputs)


@functools.cache
def small(name: str = "inception") -> Small:
    from ios_tvm.compiler.extract import graph_from_model
    from ios_tvm.compiler.plan_lowering import lower_schedule as lower
    from ios_tvm.compiler.plan_lowering import make_plan

    model = MODELS[name]()
    ex = graph_from_model(model, target="llvm")
    art = lower(ex, sequential_schedule(ex.graph))
    g = ex.graph
    schedules = {"sequential": sequential_schedule(g), "greedy": greedy_schedule(g),
                 "ios": search(g, AnalyticCost(g, TWO_LANES),
                               SearchConfig(strategy="concurrent")).schedule}
    plans = {k: make_plan(g, s, target=art.plan.target, device_type="cpu")
             for k, s in schedules.items()}
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal(g.tensors[t].shape).astype(g.tensors[t].dtype)
              for t in g.inputs if g.tensors[t].kind == "input"]
    return Small(model, plans, art.lib, art.params, inputs)
