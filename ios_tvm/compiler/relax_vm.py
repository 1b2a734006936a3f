"""TVM's Relax VM on the same fused kernels: the baseline every plan is compared with.

The lowered module (after :func:`~ios_tvm.compiler.kernels.lower_to_kernels`) goes through the
rest of TVM's own pipeline for the target (``dataflow_lower_passes``, ``finalize_passes``), so
the VM runs exactly the kernels the ios-tvm plans run, one at a time. ``cuda_graph`` compiles
with the PassContext option ``relax.backend.use_cuda_graph``: ``RewriteCUDAGraph`` lifts the
static part of the function into one graph that the VM captures on its first call (on a single
stream) and replays afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import tvm
from tvm import relax

from ios_tvm.compiler.cuda_binary import compile_cuda_kernels, cuda_build_scope
from ios_tvm.compiler.target import target_device_type
from ios_tvm.errors import ModelLoadError


class RelaxVM:
    """A Relax VM build of a model's fused kernels with its arguments bound.

    Parameters
    ----------
    extraction
        The lowered model (:func:`ios_tvm.compiler.extract.graph_from_model`).
    inputs
        The model inputs, in order.
    params
        Values of weight parameters (the module's constants need none).
    cuda_graph
        Compile with ``relax.backend.use_cuda_graph`` (CUDA targets).
    """

    def __init__(self, extraction: Any, inputs: Sequence[np.ndarray],
                 params: dict[str, Any] | None = None, *, cuda_graph: bool = False) -> None:
        target = extraction.target
        cuda = target_device_type(target) == "cuda"
        backend = relax.backend.cuda.pipeline if cuda else relax.backend.cpu_generic.pipeline
        rest = tvm.transform.Sequential([*backend.dataflow_lower_passes(target),
                                         *backend.finalize_passes(target)])
        with tvm.transform.PassContext(config={"relax.backend.use_cuda_graph":
                                               bool(cuda_graph)}), cuda_build_scope(target):
            exe = tvm.compile(extraction.mod, target=target, relax_pipeline=rest)
        if cuda:  # cubins for the target's arch, as in the artifacts it is compared with
            exe = compile_cuda_kernels(exe, target)
        self.device = tvm.cuda(0) if cuda else tvm.cpu(0)
        self.vm = relax.VirtualMachine(exe, self.device)
        self.func_name = extraction.func_name
        self.args = [tvm.runtime.tensor(x, self.device) for x in inputs]
        for name in extraction.params[len(inputs):]:
            if params is None or name not in params:
                raise ModelLoadError(f"no value for weight parameter {name!r}; pass "
                                     "params={name: array}")
            self.args.append(tvm.runtime.tensor(np.asarray(params[name]), self.device))
        self._func = self.vm[self.func_name]

    def run(self) -> Any:
        """Run once and wait for the device; returns the VM's output object."""
        out = self._func(*self.args)
        self.device.sync()
        return out

    def outputs(self) -> list[np.ndarray]:
        """Run once and return every output as a numpy array."""
        out = self.run()
        return [o.numpy() for o in ([out] if isinstance(out, tvm.runtime.Tensor) else out)]

    def latency(self, number: int, repeat: int, min_repeat_ms: int = 50) -> float:
        """Median seconds per run (TVM's ``time_evaluator``)."""
        timer = self.vm.time_evaluator(self.func_name, self.device, number=number,
                                       repeat=repeat, min_repeat_ms=min_repeat_ms)
        return float(np.median(timer(*self.args).results))
