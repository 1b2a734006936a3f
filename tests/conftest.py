"""Shared pytest setup: ``--runslow``, the ``gpu``/``slow`` markers, hypothesis profiles.

``gpu``-marked tests skip without a usable CUDA GPU, unless ``IOS_TVM_REQUIRE_GPU=1`` (set by
``scripts/gpu_first_light.sh``): then each fails with one line saying why no GPU is usable
(``hardware.gpu_problem``), and the report header says it first.
"""

from __future__ import annotations

import os

import pytest
from hardware import gpu_problem, gpu_required
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
    parser.addoption("--gpu-artifacts", default=None,
                     help="cases compiled by scripts/gpu_first_light.sh prepare, for "
                          "tests/test_gpu_runtime.py (same as IOS_TVM_GPU_ARTIFACTS=DIR)")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--gpu-artifacts"):
        os.environ["IOS_TVM_GPU_ARTIFACTS"] = str(config.getoption("--gpu-artifacts"))


def pytest_report_header(config: pytest.Config) -> str | None:
    if not gpu_required():
        return None
    problem = gpu_problem()
    return ("ios-tvm GPU: required (IOS_TVM_REQUIRE_GPU=1) and usable" if not problem else
            f"ios-tvm GPU: REQUIRED (IOS_TVM_REQUIRE_GPU=1) BUT UNUSABLE: {problem}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run_slow = config.getoption("--runslow")
    skip_slow = pytest.mark.skip(reason="slow; run with --runslow")
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)
        if "slow" in item.keywords and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT_S))
        if "gpu" in item.keywords and not gpu_required() and gpu_problem():
            item.add_marker(pytest.mark.skip(reason=f"needs a CUDA GPU ({gpu_problem()})"))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    if "gpu" in item.keywords and gpu_required() and gpu_problem():
        pytest.fail(f"IOS_TVM_REQUIRE_GPU=1 but no GPU is usable: {gpu_problem()}",
                    pytrace=False)
