"""An analytic (roofline-style) stage cost model, for tests and for planning without a device.

The model, per op ``i`` with ``F`` FLOPs and ``B`` bytes moved on a device with peak
``P`` FLOP/s and bandwidth ``W`` B/s:

* ``w_i = max(F / P, B / W)``: the op's run time if it kept the whole device busy.
* A small kernel cannot fill the device. Its utilisation is
  ``u_i = clamp(w_i / saturation_s, min_utilisation, 1)``, and alone it takes
  ``t_i = launch_s + w_i / u_i``. So every kernel takes at least about ``saturation_s``:
  a wave of a small grid still costs a full kernel latency, the waste that concurrency
  recovers.
* A concurrent stage with groups ``G`` (ops of a group in order, groups side by side) takes

  ``max( max_g sum_{i in g} t_i,  sum_i w_i,  n_ops * launch_s ) + sync_s * [|G| > 1]``

  i.e. no faster than its longest group, than the total work packed perfectly onto the
  device, or than issuing every launch from one host thread; plus one barrier when more
  than one stream must join. A one-op stage costs exactly ``t_i``.
* On a CPU (``cores > 0``) kernels already run on every core, and the ios-tvm executor gives
  each of ``k`` concurrent groups ``cores / k`` of them, so a group's ops take ``min(k,
  cores)`` times longer than alone; and every kernel still pays its own dispatch in whichever
  worker runs it, so the packed bound is the sum of the ops' times alone, launches included.
  Concurrency gains nothing on compute or launches and loses on imbalance and the barrier,
  which is what a CPU measures.
* A merged stage is one kernel with the summed FLOPs, and bytes summed once per distinct
  tensor (the shared input is read once).

The numbers in :data:`DEVICES` are order-of-magnitude presets, not measurements; the measured
cost model replaces them on a real target.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ios_tvm.errors import ConfigError
from ios_tvm.ir.graph import OpGraph
from ios_tvm.ir.schedule import Stage


@dataclass(frozen=True)
class DeviceSpec:
    """Roofline parameters of a device (see the module docstring)."""

    name: str
    peak_flops: float
    bandwidth: float
    launch_s: float
    sync_s: float
    saturation_s: float
    min_utilisation: float = 1.0 / 32
    #: Cores that every kernel already uses (CPU); 0 for a GPU, whose small kernels leave
    #: room for others.
    cores: int = 0


DEVICES: dict[str, DeviceSpec] = {
    "v100": DeviceSpec("v100", 14e12, 0.8e12, 4e-6, 8e-6, 30e-6),
    "h100": DeviceSpec("h100", 50e12, 3.0e12, 3e-6, 6e-6, 20e-6),
    # This machine's CPU: kernels run parallel on every core; a concurrent stage's barrier
    # (worker-thread handoff) measured 7-27 us on the 2-core CI machine.
    "cpu": DeviceSpec("cpu", 100e9, 20e9, 1e-6, 15e-6, 0.0, 1.0, cores=os.cpu_count() or 1),
}


class AnalyticCost:
    """Analytic stage latency (seconds) for the ops of ``graph`` on ``device``.

    Parameters
    ----------
    graph
        The graph whose node ids the stages name.
    device
        A :class:`DeviceSpec` or the name of a preset in :data:`DEVICES`.
    """

    def __init__(self, graph: OpGraph, device: DeviceSpec | str = "v100") -> None:
        self.graph = graph
        if isinstance(device, str) and device not in DEVICES:
            raise ConfigError(f"unknown analytic device {device!r}; the presets are "
                              f"{', '.join(sorted(DEVICES))}")
        self.device = DEVICES[device] if isinstance(device, str) else device
        self.work = [self._work(n.flops, n.nbytes) for n in graph.nodes]
        self.alone = [self._alone(w) for w in self.work]

    def _work(self, flops: float, nbytes: float) -> float:
        d = self.device
        return max(flops / d.peak_flops, nbytes / d.bandwidth)

    def _alone(self, work: float) -> float:
        d = self.device
        if d.saturation_s > 0.0:
            util = min(1.0, max(work / d.saturation_s, d.min_utilisation))
        else:
            util = 1.0
        return d.launch_s + work / util

    def __call__(self, stage: Stage) -> float:
        """Latency of ``stage`` in seconds."""
        d = self.device
        if stage.strategy == "merge":
            ops = stage.ops
            flops = sum(self.graph.nodes[i].flops for i in ops)
            seen: set[str] = set()
            nbytes = 0
            for i in ops:
                node = self.graph.nodes[i]
                for t in (*node.inputs, *node.outputs):
                    if t not in seen:
                        seen.add(t)
                        nbytes += self.graph.tensors[t].nbytes
            return self._alone(self._work(flops, nbytes))
        longest = max(sum(self.alone[i] for i in g) for g in stage.groups)
        if len(stage.groups) == 1:
            return longest
        if d.cores:
            longest *= min(len(stage.groups), d.cores)
        n_ops = sum(len(g) for g in stage.groups)
        # A GPU overlaps the launch latencies of concurrent kernels; a CPU worker does not.
        per_op = self.alone if d.cores else self.work
        packed = sum(per_op[i] for g in stage.groups for i in g)
        return max(longest, packed, n_ops * d.launch_s) + d.sync_s
