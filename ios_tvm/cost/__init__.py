"""Cost models for the schedule search (analytic here; measured ones build on the executor)."""

from __future__ import annotations

from .analytic import DEVICES, AnalyticCost, DeviceSpec
from .base import CostCounters, CostFn, StageCostCache

__all__ = ["DEVICES", "AnalyticCost", "CostCounters", "CostFn", "DeviceSpec", "StageCostCache"]
