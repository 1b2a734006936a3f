"""Robustness of the model side (issue 17): valid models build, bad ones fail with one clear error.

Layout conversion that must not make a valid model fail, TVM errors wrapped, sizes checked
before lowering, outputs named as in the model, models ONNX Runtime refuses refused here too,
built-in model names everywhere, and profiling inputs that are valid for the model.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from tvm import relax  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import onnx_models as om  # noqa: E402

from ios_tvm import _ffi  # noqa: E402
from ios_tvm.errors import UnsupportedGraphError  # noqa: E402
from ios_tvm.extract import (  # noqa: E402
    LAYOUT_SAFE_OPS,
    convert_conv_layout,
    graph_from_model,
)
from ios_tvm.frontend import load_model  # noqa: E402

needs_native = pytest.mark.skipif(not _ffi.native_available(),
                                  reason="native library not built (bash scripts/setup.sh)")


def ort_run(model: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds), strict=True))


def float_feeds(model: Any, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    init = {t.name for t in model.graph.initializer}
    return {vi.name: rng.standard_normal([d.dim_value for d in vi.type.tensor_type.shape.dim])
            .astype(np.float32) for vi in model.graph.input if vi.name not in init}


def analytic_build(model: Any, **kwargs: Any) -> Any:
    from ios_tvm.build import build

    return build(model, cost="analytic", measure=False, **kwargs)


def conv_layouts(mod: tvm.IRModule) -> list[str]:
    return [str(b.value.attrs.data_layout) for blk in mod["main"].body.blocks
            for b in blk.bindings if isinstance(b.value, relax.Call)
            and isinstance(b.value.op, tvm.ir.Op) and b.value.op.name == "relax.nn.conv2d"]


# ---------------------------------------------------------------------------------------------
# item 4: the NHWC conversion never makes a valid model fail
# ---------------------------------------------------------------------------------------------
@needs_native
@pytest.mark.parametrize("builder", ["sum_conv_model", "range_model"])
def test_models_around_untrusted_ops_build_nhwc_and_match_onnxruntime(builder: str) -> None:
    model = getattr(om, builder)()
    feeds = float_feeds(model)
    want = ort_run(model, feeds)
    result = analytic_build(model)  # cpu_layout="NHWC" by default
    got = result(**feeds)
    for g, w in zip(got, want.values(), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_convs_are_still_converted_next_to_untrusted_ops() -> None:
    """Only the untrusted ops keep the model's layout: both convs of the Sum model are NHWC."""
    mod = convert_conv_layout(load_model(om.sum_conv_model()), "NHWC")
    assert conv_layouts(mod) == ["NHWC", "NHWC"]
    # The hiding functions are gone again.
    assert [gv.name_hint for gv in mod.get_global_vars()] == ["main"]


def test_data_dependent_shapes_fail_the_same_in_both_layouts() -> None:
    """NonZero crashed TVM's NHWC conversion; now both layouts give the scheduler's error."""
    model = om.nonzero_model()
    for layout in ("NHWC", "NCHW"):
        with pytest.raises(UnsupportedGraphError, match="data-dependent|dynamic"):
            graph_from_model(model, "llvm", cpu_layout=layout)


def test_layout_conversion_failure_keeps_the_model_layout(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Any failure inside TVM's pass: a warning and the model's own layout, not a traceback."""
    def broken(*args: Any, **kwargs: Any) -> Any:
        @tvm.transform.module_pass(opt_level=0, name="BrokenConvertLayout")
        def fail(mod: Any, ctx: Any) -> Any:
            raise tvm.error.InternalError("Check failed: simulated layout bug")
        return fail

    monkeypatch.setattr(relax.transform, "ConvertLayout", broken)
    mod = load_model(om.residual_block())
    with caplog.at_level(logging.WARNING, logger="ios_tvm.extract"):
        out = convert_conv_layout(mod, "NHWC")
    assert out is mod
    assert "simulated layout bug" in caplog.text and "keeping the model's layout" in caplog.text


def _layout_probe_module() -> tvm.IRModule:
    """conv -> every trusted op (several broadcasts and axes) -> outputs, one Relax function."""
    rng = np.random.default_rng(0)
    c, s = 4, 6

    def const(*shape: int) -> relax.Constant:
        return relax.const(rng.uniform(0.5, 1.5, shape).astype("float32"))

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, c, s, s), "float32"))
    op = relax.op
    with bb.function("main", [x]):
        with bb.dataflow():
            h = bb.emit(op.nn.conv2d(x, const(c, c, 3, 3), padding=1))
            h = bb.emit(op.nn.relu(h))
            outs = []
            unary = ["abs", "ceil", "cos", "erf", "exp", "floor", "negative", "round",
                     "sigmoid", "sign", "sin", "square", "tanh"]
            outs += [bb.emit(getattr(op, u)(h)) for u in unary]
            pos = bb.emit(op.add(op.abs(h), relax.const(1.0)))
            outs += [bb.emit(op.log(pos)), bb.emit(op.sqrt(pos)), bb.emit(op.rsqrt(pos)),
                     bb.emit(op.astype(h, "float16")),
                     bb.emit(op.nn.gelu(h)), bb.emit(op.nn.gelu_tanh(h)),
                     bb.emit(op.nn.silu(h))]
            for other in (const(), const(c, 1, 1), const(1, c, 1, 1), const(s), h):
                for b in ("add", "subtract", "multiply", "divide", "maximum", "minimum"):
                    outs.append(bb.emit(getattr(op, b)(h, other)))
            outs.append(bb.emit(op.power(pos, const(c, 1, 1))))
            outs.append(bb.emit(op.nn.max_pool2d(h, pool_size=3, padding=1)))
            outs.append(bb.emit(op.nn.avg_pool2d(h, pool_size=2, strides=2)))
            outs.append(bb.emit(op.nn.adaptive_avg_pool2d(h, output_size=1)))
            outs.append(bb.emit(op.concat([h, x], axis=1)))
            outs.append(bb.emit(op.concat([h, x], axis=3)))
            parts = bb.emit(op.split(h, 2, axis=1))
            outs += [bb.emit(relax.TupleGetItem(parts, 0)), bb.emit(relax.TupleGetItem(parts, 1))]
            for red in ("mean", "sum", "max", "min"):
                for axes, keep in (([1], False), ([2, 3], True), ([1, 2], False), (None, False)):
                    outs.append(bb.emit(getattr(op, red)(h, axes, keep)))
            # and into another conv, through a reduction and a concat
            m = bb.emit(op.mean(h, [1], keepdims=True))
            cat = bb.emit(op.concat([h, m], axis=1))
            outs.append(bb.emit(op.nn.conv2d(cat, const(c, c + 1, 1, 1))))
            out = bb.emit_output(relax.Tuple(outs))
        bb.emit_func_output(out)
    return bb.get()


def test_every_trusted_op_agrees_with_nchw() -> None:
    """Each op of LAYOUT_SAFE_OPS converted to NHWC computes what it computes in NCHW."""
    mod = _layout_probe_module()
    used = {b.value.op.name for blk in mod["main"].body.blocks for b in blk.bindings
            if isinstance(b.value, relax.Call) and isinstance(b.value.op, tvm.ir.Op)}
    assert LAYOUT_SAFE_OPS <= used, sorted(LAYOUT_SAFE_OPS - used)
    nhwc = convert_conv_layout(mod, "NHWC")
    assert conv_layouts(nhwc) == ["NHWC", "NHWC"]
    x = np.random.default_rng(1).standard_normal((1, 4, 6, 6)).astype("float32")
    outs = []
    for m in (mod, nhwc):
        vm = relax.VirtualMachine(tvm.compile(m, target="llvm"), tvm.cpu())
        outs.append([o.numpy() for o in vm["main"](tvm.runtime.tensor(x))])
    for i, (a, b) in enumerate(zip(*outs, strict=True)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3, err_msg=f"output {i}")


@pytest.mark.slow
def test_zoo_converts_exactly_as_before() -> None:
    """No op of the zoo is hidden: the conversion is TVM's own, every conv NHWC."""
    import tvm_ffi

    from ios_tvm.models import BUILTIN_MODELS, MODEL_INFO

    for name, builder in BUILTIN_MODELS.items():
        mod = load_model(builder())
        plain = relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "HWIO"]})(mod)
        plain = relax.transform.EliminateCommonSubexpr()(relax.transform.FoldConstant()(plain))
        ours = convert_conv_layout(mod, "NHWC")
        assert tvm_ffi.structural_equal(ours, plain), name
        layouts = conv_layouts(ours)
        assert layouts == ["NHWC"] * MODEL_INFO[name].convs, name


# ---------------------------------------------------------------------------------------------
# item 13: built-in model names work wherever a model is taken, through one resolver
# ---------------------------------------------------------------------------------------------
def test_builtin_names_load_everywhere() -> None:
    from ios_tvm.models import sample_block

    ex = graph_from_model("sample", "llvm")
    assert len(ex.graph.nodes) == len(graph_from_model(sample_block(), "llvm").graph.nodes)
    mod = load_model("sample")
    assert [int(d) for d in mod["main"].params[0].ty.shape.values] == [1, 64, 28, 28]


@needs_native
def test_build_accepts_a_builtin_name() -> None:
    from ios_tvm.models import sample_block

    result = analytic_build("sample")
    x = np.random.default_rng(0).standard_normal((1, 64, 28, 28)).astype(np.float32)
    want = ort_run(sample_block(), {"x": x})["y"]
    np.testing.assert_allclose(result(x)[0], want, rtol=1e-4, atol=1e-4)


def test_an_existing_path_wins_over_a_builtin_name(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from ios_tvm.models import resolve_model

    onnx.save(om.residual_block(), str(tmp_path / "sample"))
    monkeypatch.chdir(tmp_path)
    assert resolve_model("sample") == "sample"
    assert len(graph_from_model("sample", "llvm").graph.nodes) == 2  # the residual block's
    assert resolve_model("squeezenet", batch_size=2).graph.input[0].type.tensor_type \
        .shape.dim[0].dim_value == 2


def test_unknown_model_name_lists_the_builtins() -> None:
    from ios_tvm.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match=r"'nope' is neither a file nor a built-in model "
                                             r"\(inception_v3, nasnet, .*sample.*\)"):
        load_model("nope")
