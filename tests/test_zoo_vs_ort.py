"""End-to-end numerics of the model zoo: ios-tvm's plan versus ONNX Runtime.

Each model goes through :func:`ios_tvm.compiler.build.build` on the CPU with the analytic cost model
(no stage timing) and without plan timing (``measure=False``, so the searched IOS plan is the
one that ships and runs); its output must match ONNX Runtime's on the same input within
``rtol=1e-3`` and an absolute tolerance of ``1e-4`` times the largest output magnitude.
The large networks take from a minute (ResNet-50, Inception V3) to many minutes (NASNet) to
compile with TVM's untuned CPU kernels, so they are marked slow; they also search with a
pruned configuration (the default one takes minutes on RandWire with the analytic cost).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tvm")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from ios_tvm.compiler.build import build  # noqa: E402
from ios_tvm.models import BUILTIN_MODELS, MODEL_INFO  # noqa: E402
from ios_tvm.scheduler.config import SearchConfig  # noqa: E402

#: Search pruning for the large networks: enough for concurrent stages, fast to search.
PRUNED = SearchConfig(max_groups=4, max_group_size=2, max_part_size=20)

#: The greedy (wavefront) baseline: multi-group stages whatever the cost model says, so the
#: concurrent executor paths are exercised (on a CPU the analytic cost rarely picks them).
GREEDY = SearchConfig(strategy="greedy")

CASES = [
    pytest.param("sample", 1, None, id="sample"),
    pytest.param("sample", 2, GREEDY, id="sample-b2-greedy"),
    pytest.param("squeezenet", 1, None, id="squeezenet"),
    pytest.param("squeezenet", 2, GREEDY, id="squeezenet-b2-greedy"),
    pytest.param("resnet50", 1, PRUNED, id="resnet50", marks=pytest.mark.slow),
    pytest.param("inception_v3", 1, PRUNED, id="inception_v3", marks=pytest.mark.slow),
    pytest.param("randwire", 1, PRUNED, id="randwire", marks=pytest.mark.slow),
    pytest.param("nasnet", 1, PRUNED, id="nasnet", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("name", "batch", "config"), CASES)
def test_ios_plan_matches_onnxruntime(name: str, batch: int, config: SearchConfig | None) -> None:
    model = BUILTIN_MODELS[name](batch=batch)
    x = np.random.default_rng(7).standard_normal(
        (batch, *MODEL_INFO[name].input_shape)).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (ref,) = sess.run(None, {"x": x})

    result = build(model, "llvm", config=config, cost="analytic", compare_vm=False,
                   measure=False, cache=False)
    assert result.chosen == "ios"
    if config is GREEDY:
        assert any(len(stage.groups) > 1 for stage in result.schedule.stages)
    (out,) = result(x)

    assert out.shape == ref.shape == (batch, *MODEL_INFO[name].output_shape)
    assert np.isfinite(ref).all() and np.isfinite(out).all()
    scale = float(np.abs(ref).max())
    assert 1e-3 < scale < 1e3  # the weight scaling keeps the output O(1)
    np.testing.assert_allclose(out, ref, rtol=1e-3, atol=1e-4 * scale)
