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

from ios_tvm import _native  # noqa: E402
from ios_tvm.compiler.extract import graph_from_model  # noqa: E402
from ios_tvm.compiler.frontend import load_model  # noqa: E402
from ios_tvm.compiler.layout import LAYOUT_SAFE_OPS, convert_conv_layout  # noqa: E402
from ios_tvm.errors import IosTvmError, UnsupportedGraphError  # noqa: E402

needs_native = pytest.mark.skipif(not _native.native_available(),
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
    from ios_tvm.compiler.build import build

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
    with caplog.at_level(logging.WARNING, logger="ios_tvm.compiler.layout"):
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


# ---------------------------------------------------------------------------------------------
# item 9: outputs carry the model's names
# ---------------------------------------------------------------------------------------------
@needs_native
@pytest.mark.parametrize("builder", ["two_output_model", "aliased_outputs_model",
                                     "residual_block"])
def test_outputs_are_named_as_in_the_model(builder: str, tmp_path: Path) -> None:
    from ios_tvm.runtime.artifact import load

    model = getattr(om, builder)()
    feeds = float_feeds(model)
    want = ort_run(model, feeds)
    result = analytic_build(model)
    assert result.executor.output_names == [o.name for o in model.graph.output] == list(want)
    for name, got in zip(result.executor.output_names, result(**feeds), strict=True):
        np.testing.assert_allclose(got, want[name], rtol=1e-4, atol=1e-4, err_msg=name)
    result.export(str(tmp_path / "art"))
    assert load(str(tmp_path / "art")).output_names == list(want)


@needs_native
def test_inputs_keep_the_model_names() -> None:
    """TVM's importer renames ``input.1`` to ``input_1``; the executor takes the model's name."""
    def rename(m: Any) -> None:
        m.graph.input[0].name = "input.1"
        for n in m.graph.node:
            n.input[:] = ["input.1" if t == "x" else t for t in n.input]

    model = mutated(om.residual_block(), rename)
    feeds = float_feeds(model)
    result = analytic_build(model)
    assert result.executor.input_names == ["input.1"]
    np.testing.assert_allclose(result(**feeds)[0], ort_run(model, feeds)["y"], rtol=1e-4,
                               atol=1e-4)


def test_outputs_of_modules_without_names_are_numbered() -> None:
    from tvm.relax.frontend import nn

    class TwoHeads(nn.Module):
        def forward(self, x: nn.Tensor) -> Any:
            return nn.relu(x), x * x

    ex = graph_from_model(TwoHeads(), input_shapes={"x": (2, 3)})
    assert list(ex.graph.outputs) == ["output0", "output1"]
    assert ex.graph.inputs == ("x",)


# ---------------------------------------------------------------------------------------------
# item 10: what ONNX Runtime refuses is refused, naming the node or tensor
# ---------------------------------------------------------------------------------------------
def mutated(model: Any, change: Any) -> Any:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    change(copy)
    return copy


def _set_opset(m: Any) -> None:
    m.opset_import[0].version = 99


def _dup_node_name(m: Any) -> None:
    m.graph.node[1].name = m.graph.node[0].name


def _two_producers(m: Any) -> None:
    m.graph.node[1].output[0] = m.graph.node[0].output[0]


def _node_writes_initializer(m: Any) -> None:
    m.graph.node[0].output[0] = m.graph.initializer[0].name


def _node_writes_input(m: Any) -> None:
    m.graph.node[1].output[0] = "x"


@pytest.mark.parametrize("change, match", [
    (_set_opset, r"imports opset 99 of the default domain; the installed onnx .* knows "
                 r"opsets 1 to \d+"),
    (_dup_node_name, r"two nodes named 'conv_0': #0 \(Conv\) and #1 \(Relu\)"),
    (_two_producers, r"defines tensor 'conv_0_out' twice: by node 'conv_0' \(Conv\) and by "
                     r"node 'relu_0' \(Relu\)"),
    (_node_writes_initializer, r"defines tensor 'w0' twice: by an initializer and by node "
                               r"'conv_0' \(Conv\)"),
    (_node_writes_input, r"defines tensor 'x' twice: by a graph input and by node 'relu_0'"),
])
def test_models_onnxruntime_refuses_are_refused(change: Any, match: str) -> None:
    from ios_tvm.errors import ModelLoadError

    model = mutated(om.residual_block(), change)
    with pytest.raises(Exception, match="ONNXRuntimeError"):
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    with pytest.raises(ModelLoadError, match=match):
        load_model(model)


def _unknown_attribute(m: Any) -> None:
    m.graph.node[1].attribute.add().CopyFrom(onnx.helper.make_attribute("perm", 1))


def _too_few_inputs(m: Any) -> None:
    m.graph.node[3].input.pop()


def _output_twice(m: Any) -> None:
    m.graph.output.add().CopyFrom(m.graph.output[0])


def _kernel_shape_unlike_weights(m: Any) -> None:
    m.graph.node[0].attribute[0].ints[:] = [1, 3]


@pytest.mark.parametrize("change, match", [
    (_kernel_shape_unlike_weights, r"node 'conv_0' \(Conv\) of .* has kernel_shape \[1, 3\], "
                                   r"but its weight 'w0' has kernel size \[3, 3\]"),
    (_unknown_attribute, r"node 'relu_0' \(Relu\) of .* is invalid: Unrecognized attribute: "
                         r"perm for operator Relu$"),
    (_too_few_inputs, r"node 'add_0' \(Add\) of .* is invalid: .*input size 1 not in range"),
    (_output_twice, r"lists output 'y' twice"),
])
def test_nodes_are_checked_against_their_schema(change: Any, match: str) -> None:
    """What ONNX Runtime checks when it loads (TVM ignored the attribute, and failed with an
    AttributeError deep in its importer on the missing input)."""
    from ios_tvm.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match=match) as info:
        load_model(mutated(om.residual_block(), change))
    assert "\n" not in str(info.value)


def test_undefined_tensor_is_named() -> None:
    from ios_tvm.errors import ModelLoadError

    model = mutated(om.residual_block(), lambda m: m.graph.node[1].input.__setitem__(0, "nope"))
    with pytest.raises(ModelLoadError, match=r"node 'relu_0' \(Relu\) of .* reads tensor "
                                             r"'nope', which no node"):
        load_model(model)


@needs_native
def test_nodes_out_of_topological_order_are_sorted() -> None:
    """ONNX Runtime runs such a model; so does ios-tvm (the user's proto is not changed)."""
    def reverse(m: Any) -> None:
        nodes = list(m.graph.node)
        del m.graph.node[:]
        m.graph.node.extend(nodes[::-1])

    model = mutated(om.residual_block(), reverse)
    feeds = float_feeds(model)
    want = ort_run(model, feeds)["y"]
    np.testing.assert_allclose(analytic_build(model)(**feeds)[0], want, rtol=1e-4, atol=1e-4)
    assert model.graph.node[0].op_type == "Relu"


def test_zero_size_input_is_reported_as_such() -> None:
    model = mutated(om.residual_block(),
                    lambda m: setattr(m.graph.input[0].type.tensor_type.shape.dim[0],
                                      "dim_value", 0))
    with pytest.raises(UnsupportedGraphError,
                       match=r"input 'x' of .* has a zero-size dimension \(axis 0, shape "
                             r"\(0, 8, 8, 8\)\)"):
        load_model(model)


# ---------------------------------------------------------------------------------------------
# item 8: sizes checked before lowering; TVM's errors become one IosTvmError naming the model
# ---------------------------------------------------------------------------------------------
def test_an_input_too_large_for_memory_is_refused_before_lowering(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import ios_tvm.compiler.extract as extract
    from ios_tvm.errors import ModelLoadError

    def no_lowering(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("lowered a model with a 2^48-element input")

    monkeypatch.setattr(extract, "lower_to_kernels", no_lowering)
    model = mutated(om.residual_block(), lambda m: [
        setattr(d, "dim_value", v) for d, v in zip(m.graph.input[0].type.tensor_type.shape.dim,
                                                   (1, 8, 1 << 22, 1 << 23), strict=True)])
    with pytest.raises(ModelLoadError, match=r"input 'x' of .* has shape \(1, 8, 4194304, "
                                             r"8388608\): 1,125,899,906,842,624 bytes, more "
                                             r"than"):
        graph_from_model(model, "llvm")  # 2^48 elements


def test_an_intermediate_tensor_too_large_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from onnx import TensorProto, helper

    from ios_tvm.errors import ModelLoadError

    shape = onnx.numpy_helper.from_array(np.array([1 << 20, 1 << 20, 4], np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Expand", ["x", "shape"], ["y"], name="blow_up")], "expand",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ModelLoadError, match=r"tensor '\w+' \(relax.broadcast_to\) of .* has "
                                             r"shape \(1048576, 1048576, 4\)"):
        load_model(model)
    # The limit can be set; the residual block's 2 KiB input is over 1000 bytes.
    monkeypatch.setenv("IOS_TVM_MAX_TENSOR_BYTES", "1000")
    with pytest.raises(ModelLoadError, match=r"input 'x' .*2,048 bytes.*\(1,000 bytes"):
        load_model(om.residual_block())


def test_importer_failure_names_the_node(capsys: pytest.CaptureFixture) -> None:
    """A valid model (ONNX Runtime runs it) that TVM's importer cannot convert: a 4-D conv."""
    from onnx import TensorProto, helper

    w = onnx.numpy_helper.from_array(np.ones((2, 2, 1, 1, 1, 1), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv4d")], "conv4d",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 3, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3, 3, 3, 3])],
        initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    ort_run(model, {"x": np.ones((1, 2, 3, 3, 3, 3), np.float32)})
    with pytest.raises(UnsupportedGraphError, match=r"TVM's ONNX importer failed on .* at node "
                                                    r"'conv4d' \(Conv\): "
                                                    r"NotImplementedError") as info:
        load_model(model)
    assert "\n" not in str(info.value) and info.value.__cause__ is not None
    assert capsys.readouterr().out == ""  # TVM's own print of the failing op is swallowed


def test_lowering_failure_is_one_error_naming_the_model(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ios_tvm.compiler.kernels as kernels

    real = kernels._run_pass

    def flaky(p: Any, mod: Any) -> Any:
        if p.info.name == "LegalizeOps":
            raise tvm.error.InternalError("Check failed: simulated\nlegalize bug")
        return real(p, mod)

    monkeypatch.setattr(kernels, "_run_pass", flaky)
    path = tmp_path / "res.onnx"
    onnx.save(om.residual_block(), str(path))
    with pytest.raises(IosTvmError, match=r"res\.onnx'?: TVM's LegalizeOps pass failed: "
                                          r"InternalError: Check failed: simulated legalize "
                                          r"bug") as info:
        graph_from_model(str(path), "llvm")
    assert isinstance(info.value.__cause__, IosTvmError)
    assert isinstance(info.value.__cause__.__cause__, tvm.error.InternalError)


# ---------------------------------------------------------------------------------------------
# item 14: integer index inputs: valid profiling inputs, out-of-range ids raise
# ---------------------------------------------------------------------------------------------
def run_isolated(code: str, timeout: float = 600) -> Any:
    """Run ``code`` in a fresh Python (a crash there fails the test instead of killing pytest)."""
    import subprocess

    prelude = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
               "import numpy as np, onnxruntime as ort, onnx_models as om\n")
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True,
                          text=True, timeout=timeout)


TOWER_FEEDS = ("rng = np.random.default_rng(0)\n"
               "feeds = {'features': rng.standard_normal((1, 8)).astype(np.float32),\n"
               "         'ids': np.array([[3, -1, 49, -50]], np.int64)}\n"
               "model = om.two_tower_model()\n"
               "want = ort.InferenceSession(model.SerializeToString()).run(None, feeds)[0]\n")


@needs_native
def test_two_tower_model_builds_measured_and_equals_onnxruntime() -> None:
    """Stage profiling ran on uninitialised buffers: the ids read by Gather crashed the build."""
    proc = run_isolated(TOWER_FEEDS + (
        "from ios_tvm.compiler.build import build\n"
        "from ios_tvm.cost.base import ProfileSettings\n"
        "result = build(model, cache=False, settings=ProfileSettings(1, 2, 2))\n"
        "np.testing.assert_allclose(result(**feeds)[0], want, rtol=1e-5, atol=1e-5)\n"
        "print('EQUAL', result.stages_measured)\n"
        # The stages re-timed inside whole runs (for show) ran on the real inputs too.
        "meta = result.artifact.plan.meta\n"
        "n = len(result.artifact.plan.stages)\n"
        "print('IN PLAN', len(meta['stage_seconds_in_plan']) == n)\n"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "EQUAL" in proc.stdout and "IN PLAN True" in proc.stdout


@needs_native
def test_out_of_range_ids_raise_a_clear_error() -> None:
    proc = run_isolated(TOWER_FEEDS + (
        "from ios_tvm.compiler.build import build\n"
        "result = build(model, cost='analytic', measure=False)\n"
        "for bad in (50, -51, 1 << 40):\n"
        "    try:\n"
        "        result(features=feeds['features'], ids=np.array([[3, bad, 0, 0]], np.int64))\n"
        "        print('NO ERROR', bad)\n"
        "    except Exception as e:\n"
        "        print('ERROR', type(e).__name__, e)\n"
        "np.testing.assert_allclose(result(**feeds)[0], want, rtol=1e-5, atol=1e-5)\n"
        "print('STILL EQUAL')\n"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    errors = [ln for ln in lines if ln.startswith("ERROR")]
    assert len(errors) == 3, proc.stdout
    for line in errors:
        assert ("index out of range in take (ONNX Gather/Scatter): indices from model input "
                "'ids' must lie in [-50, 50)") in line
    assert "STILL EQUAL" in lines


def test_profiling_inputs_are_valid_for_the_model() -> None:
    from ios_tvm.compiler.index_guard import INDEX_BOUNDS_ATTR
    from ios_tvm.compiler.inputs import profiling_inputs
    from ios_tvm.errors import SampleInputError

    ex = graph_from_model(om.two_tower_model(), "llvm")
    assert ex.mod.attrs[INDEX_BOUNDS_ATTR] == '{"ids": 50}'
    features, ids = profiling_inputs(ex, seed=3)
    assert features.dtype == np.float32 and features.shape == (1, 8)
    assert ids.dtype == np.int64 and ids.shape == (1, 4)
    assert ids.min() >= 0 and ids.max() < 50 and len(set(ids.ravel())) > 1
    given = {"ids": [[1, 2, 3, 4]], "features": np.zeros((1, 8))}
    got = profiling_inputs(ex, given)
    assert got[0].dtype == np.float32 and got[1].tolist() == [[1, 2, 3, 4]]
    assert [x.tolist() for x in profiling_inputs(ex, list(got))] == [x.tolist() for x in got]
    with pytest.raises(SampleInputError, match=r"lack \['features'\]"):
        profiling_inputs(ex, {"ids": [[1, 2, 3, 4]]})
    with pytest.raises(SampleInputError, match=r"'ids' has shape \(4,\); the model takes "
                                               r"\(1, 4\)"):
        profiling_inputs(ex, {"ids": [1, 2, 3, 4], "features": np.zeros((1, 8))})
    with pytest.raises(SampleInputError, match=r"'ids' has dtype float64"):
        profiling_inputs(ex, [np.zeros((1, 8)), np.zeros((1, 4))])


@needs_native
def test_build_profiles_on_the_given_sample_inputs() -> None:
    """The fill run uses the user's inputs: ids out of range there fail the build clearly."""
    from ios_tvm.compiler.build import build
    from ios_tvm.cost.base import ProfileSettings
    from ios_tvm.errors import SampleInputError

    model = om.two_tower_model()
    feats = np.zeros((1, 8), np.float32)
    with pytest.raises(SampleInputError, match="'features' has shape"):
        build(model, cache=False, sample_inputs={"features": feats[0], "ids": [[0] * 4]})
    with pytest.raises(RuntimeError, match="index out of range in take"):
        build(model, cache=False, settings=ProfileSettings(1, 1, 1),
              sample_inputs={"features": feats, "ids": [[0, 0, 0, 77]]})


@needs_native
def test_plan_records_the_index_bounds() -> None:
    """For runtimes that check ids on the host (CUDA kernels cannot raise)."""
    plan = analytic_build(om.two_tower_model()).artifact.plan
    assert plan.meta["specialised_for"]["index_bounds"] == {"ids": 50}


def test_gathers_on_gpu_targets_clip_instead() -> None:
    """A CUDA kernel cannot raise: there take is given TVM's memory-safe clip mode."""
    from ios_tvm.compiler.index_guard import guard_indices

    mod = guard_indices(load_model(om.two_tower_model()), "cuda")
    takes = [b.value for blk in mod["main"].body.blocks for b in blk.bindings
             if isinstance(b.value, relax.Call) and isinstance(b.value.op, tvm.ir.Op)
             and b.value.op.name == "relax.take"]
    modes = [str(t.attrs.mode) for t in takes]
    assert "clip" in modes and "fast" not in modes
    assert not any("check_indices" in gv.name_hint for gv in mod.get_global_vars())


def test_constant_indices_out_of_range_are_refused() -> None:
    from onnx import TensorProto, helper

    ids = onnx.numpy_helper.from_array(np.array([1, 9], np.int64), "ids")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["x", "ids"], ["y"], name="g", axis=1)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])], initializer=[ids])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedGraphError, match=r"constant index 9 outside \[-n, n\) for "
                                                    r"n = 5"):
        graph_from_model(model, "llvm")


@needs_native
def test_bench_of_the_two_tower_model_measures_and_agrees() -> None:
    proc = run_isolated(TOWER_FEEDS + (
        "from ios_tvm.bench.harness import bench\n"
        "from ios_tvm.cost.base import ProfileSettings\n"
        "r = bench(model, cache=False, settings=ProfileSettings(1, 1, 1), rounds=1, min_ms=1,\n"
        "          pytorch=(), relax_vm=True)\n"
        "print('REFERENCE', r.reference, max(r.max_abs_err.values()))\n"
        "r = bench(model, cost='analytic', rounds=1, min_ms=1, pytorch=(), sample_inputs=feeds)\n"
        "print('GIVEN', r.input_shapes)\n"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref = next(ln for ln in proc.stdout.splitlines() if ln.startswith("REFERENCE")).split()
    assert ref[1] == "onnxruntime" and float(ref[2]) < 1e-4


@needs_native
def test_other_gathers_and_scatters_check_their_indices() -> None:
    """GatherElements, GatherND, ScatterElements, ScatterND: equal to ONNX Runtime in range
    (negative indices included), a clear error out of range (it read or wrote outside)."""
    proc = run_isolated(
        "from ios_tvm.compiler.build import build\n"
        "rng = np.random.default_rng(0)\n"
        "for op, idx in om.INDEXING_CASES.items():\n"
        "    model = om.indexing_model(op)\n"
        "    feeds = {'x': rng.standard_normal((5, 3)).astype(np.float32),\n"
        "             'i': np.array(idx, np.int64)}\n"
        "    if op.startswith('Scatter'):\n"
        "        feeds['u'] = rng.standard_normal((2, 3)).astype(np.float32)\n"
        "    want = ort.InferenceSession(model.SerializeToString()).run(None, feeds)[0]\n"
        "    result = build(model, cost='analytic', measure=False)\n"
        "    np.testing.assert_allclose(result(**feeds)[0], want, rtol=1e-6, atol=1e-6)\n"
        "    for bad in (5, -6, 1 << 33):\n"
        "        i = feeds['i'].copy()\n"
        "        i.flat[0] = bad\n"
        "        try:\n"
        "            result(**{**feeds, 'i': i})\n"
        "            print('NO ERROR', op, bad)\n"
        "        except RuntimeError as e:\n"
        "            print('ERROR', op, e)\n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    errors = [ln for ln in proc.stdout.splitlines() if ln.startswith("ERROR")]
    assert len(errors) == 12, proc.stdout
    assert all("index out of range in" in e and "from model input 'i'" in e for e in errors)


def test_a_model_that_computes_nothing_is_named() -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"], name="id")], "noop",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedGraphError, match=r"'noop'\) computes nothing: its outputs "
                                                    r"are its inputs or constants"):
        analytic_build(model)


def _bool_input(m: Any) -> None:
    m.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.BOOL


def _bad_kernel_shape(m: Any) -> None:
    m.graph.node[0].attribute[0].ints[:] = [3, 0]


def _add_mismatch(m: Any) -> None:
    m.graph.initializer.append(onnx.numpy_helper.from_array(np.ones(3, np.float32), "three"))
    m.graph.node[3].input[1] = "three"


def _unknown_dtype(m: Any) -> None:
    m.graph.input[0].type.tensor_type.elem_type = 1000


@pytest.mark.parametrize("change, match", [
    (_bool_input, r"fails ONNX's type and shape inference: .*node name: conv_0.*tensor\(bool\)"),
    (_unknown_dtype, r"fails ONNX's type and shape inference: Invalid tensor data type 1000"),
    (_bad_kernel_shape, r"node 'conv_0' \(Conv\) of .* has kernel_shape \[3, 0\]"),
    (_add_mismatch, r"node name: add_0\): \[ShapeInferenceError\] Incompatible dimensions"),
])
def test_type_and_shape_errors_are_refused_like_onnxruntime(change: Any, match: str) -> None:
    """Found by the fuzzer: TVM ignored kernel_shape, and compiled a conv on bools into a
    kernel that failed in LLVM; ONNX Runtime refuses both on load."""
    from ios_tvm.errors import ModelLoadError

    model = mutated(om.residual_block(), change)
    with pytest.raises(Exception, match="ONNXRuntimeError"):
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    with pytest.raises(ModelLoadError, match=match):
        load_model(model)
