"""Shared pytest setup: ``--runslow``, the ``gpu``/``slow`` markers, hypothesis profiles."""

from __future__ import annotations

import os

import pytest
from hardware import has_cuda
from hypothesis import HealthCheck, settings

# Default: no per-example deadline (the first example pays for imports and JIT caches).
settings.register_profile("default", deadline=None)
# CI: the same examples on every run, so a red build reproduces.
settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI", "").lower() in ("1", "true") else "default")


#: The per-test limit of tests marked slow (the others: ``timeout`` in pyproject.toml).
SLOW_TIMEOUT_S = 3600


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False,
                     help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run_slow = config.getoption("--runslow")
    skip_slow = pytest.mark.skip(reason="slow; run with --runslow")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)
        if "slow" in item.keywords and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT_S))
        if "gpu" in item.keywords and not has_cuda():
            item.add_marker(skip_gpu)
