"""Weights packed at build time and register tiles per target (issue 16).

Every convolution the default CPU schedules handle must compute what TVM's unscheduled kernel
does, on shapes that do not fill a vector block (odd channel counts), with strides, asymmetric
padding, dilation and groups, for an AVX2 target and (where this CPU has it) an AVX-512 one.
Where the weights are packed, the packing must have run at build time (the Relax graph passes
a packed constant, no packing kernel is left) and survive export and load of the artifact.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from tvm import relax  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from test_kernel_schedules import _vm_outputs  # noqa: E402

from ios_tvm.compiler import kernel_schedules  # noqa: E402
from ios_tvm.compiler.frontend import load_model  # noqa: E402
from ios_tvm.compiler.kernel_schedules import (  # noqa: E402
    ACCUMULATOR_REGISTERS,
    ACCUMULATOR_REGISTERS_AVX512,
    accumulator_registers,
    schedule_report,
)
from ios_tvm.compiler.kernels import KERNEL_INFO_ATTR, lower_to_kernels  # noqa: E402
from ios_tvm.compiler.relax_util import CALL_TIR, bindings, is_op  # noqa: E402

AVX2 = {"kind": "llvm", "mcpu": "haswell"}
AVX512 = {"kind": "llvm", "mcpu": "skylake-avx512"}


def _host_has_avx512() -> bool:
    try:
        return " avx512f" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


TARGETS = [pytest.param(AVX2, id="avx2"),
           pytest.param(AVX512, id="avx512", marks=pytest.mark.skipif(
               not _host_has_avx512(), reason="this CPU has no AVX-512"))]


def conv_model(c: int, h: int, w: int, o: int, k: tuple[int, int], *, stride: int = 1,
               pads: tuple[int, int, int, int] = (0, 0, 0, 0), dilation: int = 1,
               group: int = 1, relu: bool = True, seed: int = 0,
               normalise: bool = False) -> onnx.ModelProto:
    """One Conv (+ bias, + ReLU) as an ONNX model, NCHW, random weights.

    ``normalise``: weights scaled by 1/sqrt(fan-in), so that outputs stay near 1 however long
    the reduction (float32 rounding then stays well inside the tests' tolerance).
    """
    rng = np.random.default_rng(seed)
    wshape = [o, c // group, *k]
    weight = rng.standard_normal(wshape)
    if normalise:
        weight /= np.sqrt(np.prod(wshape[1:]))
    inits = [numpy_helper.from_array(weight.astype("float32"), "w"),
             numpy_helper.from_array(rng.standard_normal(o).astype("float32"), "b")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], strides=[stride, stride],
                              pads=list(pads), dilations=[dilation, dilation], group=group,
                              kernel_shape=list(k))]
    nodes.append(helper.make_node("Relu" if relu else "Identity", ["c"], ["y"]))
    oh = (h + pads[0] + pads[2] - dilation * (k[0] - 1) - 1) // stride + 1
    ow = (w + pads[1] + pads[3] - dilation * (k[1] - 1) - 1) // stride + 1
    graph = helper.make_graph(
        nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, h, w])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, o, oh, ow])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _x(model: onnx.ModelProto, seed: int = 1) -> np.ndarray:
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def _kernels(lowered: tvm.IRModule) -> dict[str, Any]:
    return json.loads(str(lowered.attrs[KERNEL_INFO_ATTR]))["kernels"]


def _main_calls(lowered: tvm.IRModule) -> list[tuple[str, list[Any]]]:
    """``(kernel, args)`` of each call_tir of ``main``, in order."""
    out = []
    for b in bindings(lowered["main"]):
        if is_op(b.value, CALL_TIR):
            args = b.value.args[1]
            out.append((b.value.args[0].name_hint,
                        list(args.fields) if isinstance(args, relax.Tuple) else [args]))
    return out


# (c, h, w, o, kernel, stride, pads, dilation, group): odd channel counts that fill no vector
# block, non-square images, strides, asymmetric padding, dilation, groups and depthwise.
CASES = {
    "3x3_odd_channels": (5, 9, 11, 20, (3, 3), 1, (1, 1, 1, 1), 1, 1),
    "3x3_packed": (16, 10, 10, 64, (3, 3), 1, (1, 1, 1, 1), 1, 1),
    "3x3_packed_odd_width": (7, 13, 17, 48, (3, 3), 1, (1, 1, 1, 1), 1, 1),
    "3x3_stride2_asym_pad": (12, 15, 14, 40, (3, 3), 2, (0, 1, 1, 0), 1, 1),
    "3x3_dilation2": (8, 12, 12, 32, (3, 3), 1, (2, 2, 2, 2), 2, 1),
    "1x1_odd": (33, 7, 7, 72, (1, 1), 1, (0, 0, 0, 0), 1, 1),
    "1x7_rect": (16, 9, 9, 24, (1, 7), 1, (0, 3, 0, 3), 1, 1),
    "7x7_stride2": (3, 23, 23, 32, (7, 7), 2, (3, 3, 3, 3), 1, 1),
    "3x3_prime_width": (8, 31, 31, 32, (3, 3), 1, (0, 0, 0, 0), 1, 1),  # 29x29: ragged rows
    "3x3_prime_width_stride2": (6, 61, 59, 48, (3, 3), 2, (0, 0, 1, 1), 1, 1),  # 30x29
    "grouped": (16, 8, 8, 32, (3, 3), 1, (1, 1, 1, 1), 1, 4),
    "depthwise": (24, 10, 10, 24, (3, 3), 2, (1, 1, 1, 1), 1, 24),
    # Depthwise convs get row tiles along the width and the padding per tile (rules v5).
    "depthwise_odd_channels": (77, 13, 11, 77, (3, 3), 1, (1, 1, 1, 1), 1, 77),
    "depthwise_stride2_odd": (21, 15, 17, 21, (3, 3), 2, (1, 1, 1, 1), 1, 21),
    "depthwise_asym_pad": (32, 9, 12, 32, (3, 3), 1, (0, 1, 2, 0), 1, 32),
    "depthwise_dilation2": (48, 14, 14, 48, (3, 3), 1, (2, 2, 2, 2), 2, 48),
    "depthwise_5x5_prime_width": (16, 23, 23, 16, (5, 5), 1, (2, 2, 2, 2), 1, 16),
    "depthwise_multiplier2": (12, 8, 8, 24, (3, 3), 1, (1, 1, 1, 1), 1, 12),
    "depthwise_unpadded": (40, 7, 7, 40, (3, 3), 1, (0, 0, 0, 0), 1, 40),
    # Input rows 4 KiB apart (1024 / 512 x stride 2 channels): at most 7 rows, wider vectors.
    "1x1_aliased_rows": (1024, 14, 14, 64, (1, 1), 1, (0, 0, 0, 0), 1, 1),
    "1x1_aliased_rows_stride2": (512, 13, 13, 48, (1, 1), 2, (0, 0, 0, 0), 1, 1),
    "3x3_aliased_rows_padded": (1024, 5, 16, 32, (3, 3), 1, (1, 1, 1, 1), 1, 1),
}
#: Cases with reductions over thousands of terms: weights scaled by 1/sqrt(fan-in).
NORMALISED = {"1x1_aliased_rows", "1x1_aliased_rows_stride2", "3x3_aliased_rows_padded"}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_scheduled_conv_equals_unscheduled(case: str, target: dict[str, Any]) -> None:
    c, h, w, o, k, s, pads, d, g = CASES[case]
    model = conv_model(c, h, w, o, k, stride=s, pads=pads, dilation=d, group=g,
                       normalise=case in NORMALISED)
    mod = load_model(model)
    x = _x(model)
    want = _vm_outputs(lower_to_kernels(mod, target, cpu_schedule=False), [x])
    lowered = lower_to_kernels(mod, target, cpu_layout="NHWC")
    report = schedule_report(lowered)
    conv = [k for k, v in _kernels(lowered).items() if "conv2d" in v.get("ops", [])]
    assert conv and all(report.kernels[k] != "unscheduled" for k in conv), report.reasons
    got = _vm_outputs(lowered, [x])
    np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("target", TARGETS)
def test_weights_are_packed_at_build_time(target: dict[str, Any]) -> None:
    model = conv_model(16, 10, 10, 64, (3, 3), pads=(1, 1, 1, 1))
    lowered = lower_to_kernels(load_model(model), target, cpu_layout="NHWC")
    kernels = _kernels(lowered)
    packed = [k for k in kernels if k.endswith("_prepacked")]
    assert len(packed) == 1, sorted(kernels)
    # The record follows the new name: ops, FLOPs and schedule are all there.
    info = kernels[packed[0]]
    assert "conv2d" in info["ops"] and info["flops"] > 0 and info["schedule"] == "contraction"
    calls = _main_calls(lowered)
    # No packing kernel runs per inference: the conv gets the packed weight as a constant,
    # [O / V, KH, KW, I, V] with V the tile's vector width.
    assert [name for name, _ in calls if "prepack" in name] == packed, calls
    weight = next(args for name, args in calls if name == packed[0])[1]
    assert isinstance(weight, tvm.ir.GenericConst)
    shape = [int(v) for v in weight.value.shape]
    assert len(shape) == 5 and shape[1:4] == [3, 3, 16] and shape[0] * shape[4] == 64
    assert shape[4] % (16 if target is AVX512 else 8) == 0
    # The packed values are the weights, moved.
    w = numpy_helper.to_array(model.graph.initializer[0])  # OIHW
    hwio = w.transpose(2, 3, 1, 0)
    v = shape[4]
    np.testing.assert_array_equal(
        weight.value.numpy(), hwio.reshape(3, 3, 16, 64 // v, v).transpose(3, 0, 1, 2, 4))
    # Unscheduled lowering (what MetaSchedule tunes) packs nothing.
    plain = lower_to_kernels(load_model(model), target, cpu_layout="NHWC", cpu_schedule=False)
    assert not any(k.endswith("_prepacked") for k in _kernels(plain))


def test_no_packing_when_weights_are_not_constants() -> None:
    """A weight passed at run time stays as it is (no per-run packing kernel appears)."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 8, 8, 16), "float32"))
    wt = relax.Var("w", relax.TensorType((3, 3, 16, 64), "float32"))
    with bb.function("main", [x, wt]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, wt, padding=1, data_layout="NHWC",
                                           kernel_layout="HWIO"))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    lowered = lower_to_kernels(bb.get(), AVX2)
    assert not any("prepack" in k for k in _kernels(lowered))
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((1, 8, 8, 16)).astype("float32"),
          rng.standard_normal((3, 3, 16, 64)).astype("float32")]
    want = _vm_outputs(lower_to_kernels(bb.get(), AVX2, cpu_schedule=False), xs)
    np.testing.assert_allclose(_vm_outputs(lowered, xs)[0], want[0], rtol=1e-4, atol=1e-4)


def test_prepacking_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    model = conv_model(16, 10, 10, 64, (3, 3), pads=(1, 1, 1, 1))
    monkeypatch.setattr(kernel_schedules, "PREPACK_WEIGHTS", False)
    lowered = lower_to_kernels(load_model(model), AVX2, cpu_layout="NHWC")
    assert not any("prepack" in k for k in _kernels(lowered))


def test_accumulator_budget_follows_the_target() -> None:
    assert accumulator_registers(tvm.target.Target(AVX2)) == ACCUMULATOR_REGISTERS
    assert accumulator_registers(tvm.target.Target(AVX512)) == ACCUMULATOR_REGISTERS_AVX512
    assert ACCUMULATOR_REGISTERS_AVX512 > ACCUMULATOR_REGISTERS


def test_packed_weights_round_trip_through_export_and_load(tmp_path: Path) -> None:
    from ios_tvm.compiler.build import build
    from ios_tvm.runtime.artifact import load

    model = conv_model(16, 12, 12, 64, (3, 3), pads=(1, 1, 1, 1))
    r = build(model, AVX2, cost="analytic", measure=False)
    shapes = [list(v.shape) for v in r.artifact.params.values()]
    assert any(len(s) == 5 for s in shapes), shapes  # the packed weight is what is stored
    x = _x(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess.run(None, {"x": x})[0]
    np.testing.assert_allclose(r(x)[0], want, rtol=1e-4, atol=1e-4)
    r.export(tmp_path / "art")
    np.testing.assert_allclose(load(tmp_path / "art")(x)[0], want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("target", TARGETS)
def test_prime_widths_get_ragged_row_tiles(target: dict[str, Any]) -> None:
    """A 29-wide output has no row tile of 4..24 rows: 8-row tiles and a partial last one."""
    model = conv_model(8, 31, 31, 32, (3, 3))
    lowered = lower_to_kernels(load_model(model), target, cpu_layout="NHWC")
    conv = [k for k, v in _kernels(lowered).items() if "conv2d" in v.get("ops", [])]
    text = lowered[conv[0]].script()
    assert "pragma_loop_partition_hint" in text
    assert "T.unroll(T.int64(8))" in text  # the 8 rows of a tile, unrolled


def test_unpadded_conv_reads_its_input_in_place() -> None:
    """TVM pads into a buffer even with no padding: that copy of the input is inlined."""
    model = conv_model(64, 14, 14, 32, (1, 1))
    lowered = lower_to_kernels(load_model(model), AVX2, cpu_layout="NHWC")
    conv = [k for k, v in _kernels(lowered).items() if "conv2d" in v.get("ops", [])]
    assert 'T.sblock("pad_temp")' not in lowered[conv[0]].script()
    padded = lower_to_kernels(load_model(conv_model(64, 14, 14, 32, (3, 3), pads=(1, 1, 1, 1))),
                              AVX2, cpu_layout="NHWC")
    conv = [k for k, v in _kernels(padded).items() if "conv2d" in v.get("ops", [])]
    assert 'T.sblock("pad_temp")' in padded[conv[0]].script()  # real padding stays


def _depthwise_kernel_text(target: dict[str, Any]) -> str:
    model = conv_model(48, 28, 28, 48, (3, 3), pads=(1, 1, 1, 1), group=48)
    lowered = lower_to_kernels(load_model(model), target, cpu_layout="NHWC")
    conv = [k for k, v in _kernels(lowered).items() if "conv2d" in v.get("ops", [])]
    assert schedule_report(lowered).kernels[conv[0]] == "contraction"
    return lowered[conv[0]].script()


def test_depthwise_conv_gets_row_tiles_and_padding_per_tile() -> None:
    """Depthwise: the input is read along the channel (vector) axis too, so the rows of a tile
    run along the width (one weight vector per tap feeds 7 outputs); the padding is computed
    per tile under the parallel loop, vectorised over the channels."""
    text = _depthwise_kernel_text(AVX2)
    assert "T.unroll(T.int64(7))" in text  # 28 = 4 tiles of 7 rows, 8 lanes x 7 <= 8 regs
    lines = text.splitlines()
    pad = next(i for i, ln in enumerate(lines) if 'T.sblock("pad_temp")' in ln)
    assert "T.vectorized(" in lines[pad - 1]
    first_parallel = next(i for i, ln in enumerate(lines) if "T.parallel(" in ln)
    assert first_parallel < pad  # inside the tile loop, not a pass of its own
    assert sum("T.parallel(" in ln for ln in lines) == 1


def test_depthwise_rows_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """DEPTHWISE_ROWS=False restores rules v4 (bench_kernels.py --baseline times it)."""
    monkeypatch.setattr(kernel_schedules, "DEPTHWISE_ROWS", False)
    text = _depthwise_kernel_text(AVX2)
    assert "T.unroll(T.int64(7))" not in text
    lines = text.splitlines()
    pad = next(i for i, ln in enumerate(lines) if 'T.sblock("pad_temp")' in ln)
    assert pad < next(i for i, ln in enumerate(lines) if "T.parallel(" in ln)  # its own pass


def test_rows_4k_apart_get_fewer_rows_and_wider_vectors() -> None:
    """A 1x1 conv over 1024 channels (NHWC): each row's input is 4 KiB after the last, so all
    rows share one L1 set; AVX-512's 14 rows x 1 register became 7 rows x 2 registers (AVX2's
    8-register budget gives 7 rows already). Lowering only: runs on any host."""
    target, lanes = AVX512, 16
    model = conv_model(1024, 14, 14, 256, (1, 1))
    lowered = lower_to_kernels(load_model(model), target, cpu_layout="NHWC")
    conv = [k for k, v in _kernels(lowered).items() if "conv2d" in v.get("ops", [])]
    text = lowered[conv[0]].script()
    assert "T.unroll(T.int64(7))" in text and "T.unroll(T.int64(14))" not in text
    assert f"T.vectorized(T.int64({2 * lanes}))" in text
    control = conv_model(1000, 14, 14, 256, (1, 1))  # 4000 bytes apart: no aliasing
    lowered = lower_to_kernels(load_model(control), target, cpu_layout="NHWC")
    conv = [k for k, v in _kernels(lowered).items() if "conv2d" in v.get("ops", [])]
    text = lowered[conv[0]].script()
    assert f"T.vectorized(T.int64({lanes}))" in text
