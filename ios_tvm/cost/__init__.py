"""Stage cost models: analytic (no device), measured (handed a profiler), their cache, RPC."""

from __future__ import annotations

from ios_tvm.cost.analytic import DEVICES, AnalyticCost, DeviceSpec

__all__ = ["DEVICES", "AnalyticCost", "DeviceSpec"]
