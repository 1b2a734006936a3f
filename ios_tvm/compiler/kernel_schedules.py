"""Default schedules for llvm kernels: every heavy kernel parallel across cores and vectorised.

Where this sits: :func:`ios_tvm.compiler.kernels.lower_to_kernels` runs TVM's lowering to fused
PrimFuncs (LegalizeOps ... FuseTIR), applies a MetaSchedule database when one is given (tuned
kernels are marked ``tirx.is_scheduled`` and kept as they are), then, for llvm targets, this
module's :func:`apply_default_schedules` on every kernel that is still unscheduled. The
sequential baseline, the IOS plan and the Relax VM comparison all run these same kernels.

Why: TVM 0.27 gives untuned llvm kernels no schedule at all (its CPU pipeline runs no
dlight), so every kernel is a single-threaded scalar loop nest. dlight's ``cpu`` package
has rules for GEMV and row reductions only; conv2d, matmul, pooling and elementwise kernels
get nothing. The rules here, in the order they are tried:

``contraction``
    One reduction block that contracts (a read lacks a spatial index, e.g. conv2d, matmul,
    batch matmul, dense) plus injective prologue/epilogue blocks. The output is tiled
    ``[spatial outer (fused, parallel)] [reduction loops] [T rows (unrolled)] [V lanes
    (vectorised)]``: ``V`` runs along the output's contiguous innermost axis when every read
    is contiguous (or constant) along it, ``T`` along a spatial axis the vectorised read does
    not depend on (conv2d: output channels; matmul: rows), so each loaded vector is reused
    ``T`` times and each broadcast weight ``V`` times. The ``T x V`` accumulator is a local
    cache (registers after LLVM's SROA); the epilogue (bias, ReLU, residual add, ...) is
    inlined into its write-back where TVM allows it, else computed per tile. When there are
    several row tiles, the parallel loop runs over output tiles and the row tiles run inside
    it, on an input panel packed once per tile (the conv's padding block moved there, or a
    copy of the input): contiguous loads instead of one strided row per input channel.
``reduction``
    dlight's CPU ``Reduction`` rule (softmax, layer norm, mean: row reductions with no window
    reads), which parallelises rows and vectorises the elementwise parts.
``generic``
    Everything else, block by block: fuse the outer spatial loops and ``parallel`` them when
    the block does enough work, move reduction loops (pooling windows) outside the innermost
    spatial loop and vectorise that loop when the output and the reads are contiguous along it.

Anything a rule cannot handle (opaque blocks, dynamic shapes, a schedule primitive that
refuses) leaves that kernel unscheduled, logged at DEBUG; nothing here raises for a kernel.
Scheduled kernels get ``tirx.is_scheduled``; :class:`ScheduleReport` counts what happened.

Layout: :func:`ios_tvm.build` lowers convs NHWC with HWIO weights on CPU
(:func:`ios_tvm.compiler.layout.convert_conv_layout`), so the vector axis is the output channels,
a multiple of the vector width in every common network; in NCHW the vector axis is the image
width, and widths such as 17 or 71 leave the vector units idle. When the row axis has few
divisors (a prime width), the vector tile spans up to ``MAX_VECTOR_REGISTERS`` registers.

Not handled: blocked layouts (NCHWc), cache blocking of large reductions, and threads for
kernels with too little work to share. MetaSchedule (:mod:`ios_tvm.compiler.tune`) searches those.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import tvm
from tvm import s_tir, tirx

from ios_tvm.compiler.target import resolve_target

logger = logging.getLogger(__name__)
#: PrimFunc attribute TVM (dlight, MetaSchedule) uses to mark a scheduled kernel.
SCHEDULED_ATTR = "tirx.is_scheduled"
#: PrimFunc attribute (``relax.transform.AttachAttrLayoutFreeBuffers``): indices of the params
#: the Relax graph passes as constants (weights), whose layout the kernel may choose.
LAYOUT_FREE_ATTR = "layout_free_buffers"
#: Block annotation of a weight-packing copy (TVM's layout-rewrite convention); such blocks are
#: split out of the kernel and folded at build time (:func:`fold_prepacked_weights`).
PREPROC_ATTR = "meta_schedule.layout_rewrite_preproc"
#: PrimFunc attribute of a kernel with :data:`PREPROC_ATTR` blocks (weights to pack).
PREPACKED_ATTR = "ios_tvm.prepack_weights"
#: IRModule attribute (a JSON string) where :func:`apply_default_schedules` leaves its report.
CPU_SCHEDULE_ATTR = "ios_tvm.cpu_schedule"
#: A block parallelises its outer loops only if it runs at least this many innermost
#: iterations (below that, waking the thread pool costs more than it saves): about 50 us of
#: scalar elementwise work, or 25 us of vectorised multiply-adds in a contraction.
PARALLEL_MIN_WORK = 1 << 16
PARALLEL_MIN_MACS = 1 << 18
#: Outer loops are fused for ``parallel`` until their extent reaches this many chunks.
PARALLEL_MIN_EXTENT = 64
#: Accumulator vector registers a contraction tile may use (x86 has 16 ymm registers with
#: AVX2; keep room for the loaded vector and the broadcast operand).
ACCUMULATOR_REGISTERS = 8
#: The same with AVX-512, which has 32 vector registers: a 24-register tile leaves 8 for the
#: loaded weight vectors and broadcast inputs (measured on Zen 4, bench_kernels.py: 3x3 convs
#: of 27x27 or 14x14 images ran about twice as fast as with 8).
ACCUMULATOR_REGISTERS_AVX512 = 24
#: A contraction tile with fewer rows than this widens its vector to up to
#: MAX_VECTOR_REGISTERS registers along the vector axis.
MIN_ROWS = 4
MAX_VECTOR_REGISTERS = 4
#: Pack constant weights into the contraction tile's layout at build time
#: (:func:`_prepack_weights`).
PREPACK_WEIGHTS = True
#: Rows per tile when the row axis has no divisor of at least MIN_ROWS (a prime extent); the
#: last tile is partial (0: use the widening of the vector tile instead).
RAGGED_ROWS = 8
#: Row tiles for contractions that read several operands along the vector axis (depthwise
#: convs: rows along the image width reuse the weight vector), with the padded input computed
#: per tile, vectorised (False: rules version 4, one vector accumulator per tile).
DEPTHWISE_ROWS = True
#: At most this many rows in a tile whose rows read inputs a multiple of ALIAS_BYTES apart
#: (they map to one L1 set, which has 8 ways on current x86 cores; 0: no limit).
ALIASED_ROWS = 7
ALIAS_BYTES = 4096
#: Inline pure-copy producers of a contraction (:func:`_inline_copies`).
INLINE_COPIES = True
#: Version of these rules; a tuning database seeded with older rules is seeded again.
RULES_VERSION = 5
#: Dtypes whose loops are vectorised.
_VECTOR_DTYPES = ("float16", "float32", "float64", "int32", "int64")


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------
@dataclass
class ScheduleReport:
    """What happened to each kernel of a module.

    Attributes
    ----------
    target
        The target the kernels were scheduled for (JSON text).
    kernels
        Kernel name -> how it is scheduled: ``"tuned"`` (from a MetaSchedule database),
        ``"prescheduled"`` (already marked scheduled before lowering finished, e.g. dlight),
        ``"contraction"``, ``"reduction"`` or ``"generic"`` (a rule of this module), or
        ``"unscheduled"``.
    reasons
        For unscheduled kernels: why no rule applied.
    layout_transforms
        Layout transforms (transposes) the CPU layout conversion left in the graph, at its
        edges and around ops it cannot convert (None: no conversion ran); set by
        :func:`~ios_tvm.compiler.kernels.lower_to_kernels`.
    prepacked
        Kernels whose constant weights were packed at build time (:func:`fold_prepacked_weights`).
    """

    target: str = ""
    kernels: dict[str, str] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    layout_transforms: int | None = None
    prepacked: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        """Number of kernels per outcome."""
        out: dict[str, int] = {}
        for how in self.kernels.values():
            out[how] = out.get(how, 0) + 1
        return out

    @property
    def num_scheduled(self) -> int:
        """Kernels that have a schedule (tuned, prescheduled or from a rule)."""
        return sum(1 for how in self.kernels.values() if how != "unscheduled")

    @property
    def num_tuned(self) -> int:
        """Kernels taken from a MetaSchedule database."""
        return sum(1 for how in self.kernels.values() if how == "tuned")

    @property
    def num_unscheduled(self) -> int:
        """Kernels left as TVM's naive loop nests."""
        return sum(1 for how in self.kernels.values() if how == "unscheduled")

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"target": self.target, "kernels": dict(self.kernels),
                "reasons": dict(self.reasons), "counts": self.counts,
                "layout_transforms": self.layout_transforms, "prepacked": list(self.prepacked)}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ScheduleReport:
        """Inverse of :meth:`to_json`."""
        return cls(str(doc.get("target", "")), dict(doc.get("kernels", {})),
                   dict(doc.get("reasons", {})), doc.get("layout_transforms"),
                   list(doc.get("prepacked", [])))

    def summary(self) -> str:
        """One line, e.g. ``"9 kernels: 4 contraction, 5 generic"``."""
        parts = ", ".join(f"{n} {how}" for how, n in sorted(self.counts.items()))
        text = f"{len(self.kernels)} kernels: {parts}" if parts else "no kernels"
        if self.prepacked:
            text += f"; {len(self.prepacked)} with weights packed at build time"
        if self.layout_transforms is not None:
            text += f"; {self.layout_transforms} layout transforms"
        return text


def schedule_report(mod: tvm.IRModule) -> ScheduleReport | None:
    """The report :func:`apply_default_schedules` (or ``lower_to_kernels``) left on ``mod``."""
    if mod.attrs is None or CPU_SCHEDULE_ATTR not in mod.attrs:
        return None
    return ScheduleReport.from_json(json.loads(str(mod.attrs[CPU_SCHEDULE_ATTR])))


def is_scheduled(func: Any) -> bool:
    """Whether a PrimFunc carries ``tirx.is_scheduled``."""
    attrs = getattr(func, "attrs", None)
    if attrs is None or SCHEDULED_ATTR not in attrs:
        return False
    try:
        return bool(int(attrs[SCHEDULED_ATTR]))
    except (TypeError, ValueError):
        return bool(attrs[SCHEDULED_ATTR])


# --------------------------------------------------------------------------------------------
# target facts
# --------------------------------------------------------------------------------------------
def vector_lanes(target: tvm.target.Target, dtype_bits: int = 32) -> int:
    """Elements of ``dtype_bits`` per SIMD register of an llvm target.

    Read from the target's CPU features: 512-bit with AVX-512F, 256-bit with AVX, else 128-bit
    (SSE, NEON). A bare ``"llvm"`` target means generic x86-64, i.e. SSE2: give the target an
    ``mcpu`` (e.g. ``{"kind": "llvm", "mcpu": "znver3"}``) to use the host's wider vectors.
    """
    bits = 128
    try:
        from tvm.target import codegen

        feats = {str(f) for f in codegen.llvm_get_cpu_features(target)}
        if "avx512f" in feats:
            bits = 512
        elif "avx" in feats:
            bits = 256
    except Exception:  # no LLVM feature query for this target: assume 128-bit SIMD
        bits = 128
    return max(bits // max(dtype_bits, 8), 1)


def accumulator_registers(target: tvm.target.Target) -> int:
    """Vector registers a contraction tile may accumulate in on ``target``.

    :data:`ACCUMULATOR_REGISTERS_AVX512` when the target has AVX-512 (32 registers), else
    :data:`ACCUMULATOR_REGISTERS` (16 registers: AVX2, and NEON/SSE, where it is safe).
    """
    return ACCUMULATOR_REGISTERS_AVX512 if vector_lanes(target, 32) >= 16 \
        else ACCUMULATOR_REGISTERS


def _is_llvm(target: tvm.target.Target) -> bool:
    return target.kind.name == "llvm"


# --------------------------------------------------------------------------------------------
# analysis helpers
# --------------------------------------------------------------------------------------------
class _Skip(Exception):
    """A rule does not apply to a kernel (the message says why)."""


def _int(expr: Any) -> int | None:
    if isinstance(expr, int):
        return expr
    if isinstance(expr, tirx.IntImm):
        return int(expr.value)
    return None


def _vars_in(expr: Any) -> set[Any]:
    from tvm.s_tir.dlight.analysis import collect_vars_used_in_prim_expr

    return set(collect_vars_used_in_prim_expr(expr))


def _contains(expr: Any, var: Any) -> bool:
    return any(v.same_as(var) for v in _vars_in(expr))


def _coeff(expr: Any, var: Any) -> int | None:
    """The constant coefficient of ``var`` in the affine ``expr`` (None if not affine)."""
    from tvm.sym.pattern import detect_linear_equation

    try:
        coeffs = detect_linear_equation(expr, [var])
    except Exception:
        return None
    if len(coeffs) != 2:
        return None
    return _int(coeffs[0])


def _branches(block: Any) -> list[Any]:
    """The ``if_then_else`` calls and ``Select`` nodes of ``block``'s body."""
    found = []

    def visit(node: Any) -> None:
        if isinstance(node, tirx.Select) or (
                isinstance(node, tvm.ir.Call) and "if_then_else" in getattr(node.op, "name", "")):
            found.append(node)

    import tvm_ffi

    tvm_ffi.structural_walk(block.body, ((tvm.ir.Call, tirx.Select), visit), order="post")
    return found


def _has_if_then_else(block: Any) -> bool:
    return bool(_branches(block))


def _branch_free_along(sch: s_tir.Schedule, block_rv: Any, loop_rv: Any) -> bool:
    """Whether no branch condition of the block changes along ``loop_rv``.

    A padding block's condition (``1 <= h < H + 1 and ...``) does not depend on the channel
    loop, so TVM vectorises that loop with a scalar condition choosing between two vectors.
    """
    from tvm.s_tir.dlight.analysis.common_analysis import get_sblockrealize

    block = sch.get(block_rv)
    loop_var = sch.get(loop_rv).loop_var
    realize = get_sblockrealize(sch, block_rv)
    moving = [iv.var for iv, value in zip(block.iter_vars, realize.iter_values, strict=True)
              if _contains(value, loop_var)]
    for node in _branches(block):
        cond = node.condition if isinstance(node, tirx.Select) else node.args[0]
        if any(_contains(cond, v) for v in moving):
            return False
    return True


def _index_exprs(region: Any) -> list[Any]:
    return [r.min for r in region.region]


def _contiguous_along(block: Any, var: Any, skip_buffers: Iterable[Any] = (),
                      max_stride: int = 1) -> bool:
    """Whether every read of ``block`` (but ``skip_buffers``) is contiguous along ``var``.

    Contiguous: constant along ``var``, or stepping its last axis by 1 when ``var`` steps,
    with no other axis depending on ``var``.
    """
    skip = list(skip_buffers)
    for read in block.reads:
        if any(read.source.same_as(b) for b in skip):
            continue
        idx = _index_exprs(read)
        if not idx:
            continue
        if any(_contains(e, var) for e in idx[:-1]):
            return False
        if _contains(idx[-1], var):
            coeff = _coeff(idx[-1], var)
            if coeff is None or not 1 <= coeff <= max_stride:
                return False
    return True


def _writes_last_axis(block: Any, var: Any) -> bool:
    """The block's (single) output is indexed by exactly ``var`` on its last axis."""
    if len(block.writes) != 1:
        return False
    idx = _index_exprs(block.writes[0])
    if not idx or not isinstance(idx[-1], tirx.Var) or not idx[-1].same_as(var):
        return False
    return not any(_contains(e, var) for e in idx[:-1])


def _dtype_bits(block: Any) -> tuple[str, int]:
    buf = block.writes[0].source if block.writes else None
    if buf is None:
        return "float32", 32
    return str(buf.dtype), int(buf.dtype.bits) if hasattr(buf.dtype, "bits") else 32


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _vector_factor(extent: int, lanes: int) -> tuple[int, bool]:
    """Lanes of the vectorised inner loop for a loop of ``extent``: ``(V, exact)``.

    Prefer one full register (``extent % lanes == 0``), then a whole short loop, then the
    divisor with the best lane use; a split that does not divide (``exact=False``, a tail
    predicate) only when no divisor fills half a register.
    """
    if extent % lanes == 0:
        return lanes, True
    if extent <= 2 * lanes:
        return extent, True

    def use(d: int) -> float:
        return d / (math.ceil(d / lanes) * lanes)

    cands = [d for d in _divisors(extent) if d <= 2 * lanes]
    best = max(cands, key=lambda d: (use(d), -math.ceil(d / lanes), d))
    if use(best) >= 0.5:
        return best, True
    return lanes, False


def _flat_stride(read: Any, var: Any) -> int | None:
    """Elements between consecutive values of ``var`` in the row-major buffer ``read``."""
    shape = [_int(d) for d in read.source.shape]
    if None in shape:
        return None
    stride, step = 0, 1
    for e, n in zip(reversed(_index_exprs(read)), reversed(shape), strict=True):
        if _contains(e, var):
            c = _coeff(e, var)
            if c is None:
                return None
            stride += c * step
        step *= n
    return stride


def _rows_alias(block: Any, out: Any, rvar: Any, vvar: Any) -> bool:
    """Whether a broadcast read (not along the vector axis) steps a multiple of 4 KiB per row."""
    for read in block.reads:
        idx = _index_exprs(read)
        if read.source.same_as(out) or any(_contains(e, vvar) for e in idx) \
                or not any(_contains(e, rvar) for e in idx):
            continue
        stride = _flat_stride(read, rvar)
        bits = int(read.source.dtype.bits) if hasattr(read.source.dtype, "bits") else 32
        if stride and (stride * bits // 8) % ALIAS_BYTES == 0:
            return True
    return False


def _rows_factor(extent: int, budget: int) -> int:
    """The largest divisor of ``extent`` not above ``budget``."""
    return max(d for d in _divisors(extent) if d <= max(budget, 1))


def _work(sch: s_tir.Schedule, block: Any) -> int | None:
    total = 1
    for loop in sch.get_loops(block):
        ext = _int(sch.get(loop).extent)
        if ext is None:
            return None
        total *= ext
    return total


# --------------------------------------------------------------------------------------------
# rules
# --------------------------------------------------------------------------------------------
def _is_contraction(sch: s_tir.Schedule, info: Any) -> bool:
    """A reduction block one of whose reads does not depend on some spatial iter."""
    if not info.is_reduction():
        return False
    block = sch.get(info.block_rv)
    if len(block.writes) != 1:
        return False
    out = block.writes[0].source
    spatial = [it.var for it in info.iters if it.kind == "S" and (_int(it.dom) or 0) > 1]
    reduce_ = [it.var for it in info.iters if it.kind == "R"]
    if not spatial or not reduce_:
        return False
    for read in block.reads:
        if read.source.same_as(out):
            continue
        used = set()
        for e in _index_exprs(read):
            used |= {v for v in _vars_in(e)}
        has_r = any(any(u.same_as(r) for u in used) for r in reduce_)
        lacks_s = any(not any(u.same_as(s) for u in used) for s in spatial)
        if has_r and lacks_s:
            return True
    return False


def _schedule_contraction(sch: s_tir.Schedule, info: Any, target: tvm.target.Target) -> None:
    """The ``contraction`` rule on block ``info`` (see the module docstring)."""
    block_rv = info.block_rv
    block = sch.get(block_rv)
    iters = list(info.iters)
    if any(it.kind not in ("S", "R") for it in iters):
        raise _Skip("contraction block has opaque iterators")
    if any(_int(it.dom) is None for it in iters):
        raise _Skip("dynamic shape")
    loops = list(sch.get_loops(block_rv))
    if len(loops) != len(iters):
        raise _Skip("contraction block loops do not match its iterators")
    dtype, bits = _dtype_bits(block)
    out = block.writes[0].source
    lanes = vector_lanes(target, bits)
    spatial = [i for i, it in enumerate(iters) if it.kind == "S"]
    reduce_ = [i for i, it in enumerate(iters) if it.kind == "R"]

    # The vector axis: the output's innermost axis, if every read is contiguous along it.
    vec = None
    if dtype in _VECTOR_DTYPES:
        for i in reversed(spatial):
            var = iters[i].var
            if _int(iters[i].dom) > 1 and _writes_last_axis(block, var):
                # Stride-2 reads (strided convs) still pay: LLVM loads two vectors and shuffles.
                if _contiguous_along(block, var, skip_buffers=[out], max_stride=2):
                    vec = i
                break
    # The row axis: a spatial axis some vectorised read does not depend on, so that its
    # vector is loaded once and reused by every row of the tile. In a conv or matmul only the
    # weight is read along the vector axis (the input is broadcast); in a depthwise conv the
    # input is read along it too (the channels), and the rows run along the image width,
    # which only the weight is independent of: one weight vector per tap feeds T outputs.
    rows = None
    shared = False  # several reads along the vector axis (depthwise): inputs not reused
    if vec is not None:
        vvar = iters[vec].var
        dependent: list[set[Any]] = []
        for read in block.reads:
            if read.source.same_as(out):
                continue
            idx = _index_exprs(read)
            if any(_contains(e, vvar) for e in idx):
                used: set[Any] = set()
                for e in idx:
                    used |= _vars_in(e)
                dependent.append(used)
        shared = DEPTHWISE_ROWS and len(dependent) > 1
        reuse = any if DEPTHWISE_ROWS else all
        cands = [i for i in spatial if i != vec and _int(iters[i].dom) > 1
                 and reuse(not any(d.same_as(iters[i].var) for d in used)
                           for used in dependent)]
        if cands:
            rows = max(cands, key=lambda i: (_int(iters[i].dom), i))

    if vec is None:
        raise _Skip("no vectorisable output axis")
    v_extent = _int(iters[vec].dom)
    v_factor = _vector_factor(v_extent, lanes)[0]
    regs = math.ceil(v_factor / lanes)
    budget = accumulator_registers(target)
    r_factor = (_rows_factor(_int(iters[rows].dom), budget // max(regs, 1))
                if rows is not None else 1)
    ragged = False
    if RAGGED_ROWS and rows is not None and r_factor < MIN_ROWS \
            and _int(iters[rows].dom) >= 2 * RAGGED_ROWS:
        # A prime row extent (71, 73): full tiles of RAGGED_ROWS rows and a partial last one,
        # split off by TVM's LoopPartition (the loop hint below), instead of 1-row tiles.
        r_factor, ragged = min(RAGGED_ROWS, budget // max(regs, 1)), True
    # Rows whose broadcast inputs lie a multiple of 4 KiB apart (a 1x1 conv over 1024
    # channels in NHWC) share one L1 set each: more of them than the cache has ways evict one
    # another on every step of the reduction. Keep at most ALIASED_ROWS rows and widen the
    # vector tile to fill the register budget instead.
    if ALIASED_ROWS and rows is not None and v_factor == lanes and not ragged \
            and r_factor > ALIASED_ROWS and _rows_alias(block, out, iters[rows].var, vvar):
        best = (0, 0, 0)
        for k in range(1, MAX_VECTOR_REGISTERS + 1):
            if v_extent % (k * lanes) == 0 and budget // k >= 1:
                r = _rows_factor(_int(iters[rows].dom), min(budget // k, ALIASED_ROWS))
                best = max(best, (k * r, -k, r))
        if best[0]:
            v_factor, r_factor = -best[1] * lanes, best[2]
            regs = -best[1]
    # Few rows (the row axis has a prime extent such as 17 or 71): widen the vector tile to
    # several registers instead, so that each broadcast operand feeds several multiply-adds
    # and the accumulators still fill the register budget.
    if v_factor == lanes and r_factor < MIN_ROWS:
        widen = [k for k in range(2, MAX_VECTOR_REGISTERS + 1)
                 if v_extent % (k * lanes) == 0 and k * r_factor <= budget]
        if widen:
            v_factor = max(widen) * lanes

    # Accumulate in a local tile; fold the epilogue into the tile's write-back.
    write_back = sch.cache_write(block_rv, 0, "local")
    _inline_epilogue(sch, write_back)

    outer, rows_inner, vec_inner = [], [], []
    for i in spatial:
        if i == vec and v_factor > 1:
            o, n = sch.split(loops[i], [None, v_factor], preserve_unit_iters=False)
            outer.append(o)
            vec_inner.append(n)
        elif i == rows and r_factor > 1:
            o, n = sch.split(loops[i], [None, r_factor], preserve_unit_iters=False)
            outer.append(o)
            rows_inner.append(n)
        else:
            outer.append(loops[i])
    # Rows outermost-but-serial when packing: every row tile of one output tile reuses the
    # packed input panel (loaded once, contiguous), instead of streaming strided input rows.
    rows_outer = outer[spatial.index(rows)] if rows is not None and r_factor > 1 else None
    rows_tiles = (-(-_int(iters[rows].dom) // r_factor)) if rows_outer is not None else 1
    # A depthwise conv's padded input is read along the vector axis: computing it per tile
    # (a few padded rows of one channel block) replaces a pass over the whole tensor.
    pack = rows_outer is not None and (rows_tiles > 1 or shared)
    par = [o for o in outer if o is not rows_outer] if pack else outer
    serial = [rows_outer] if pack else []
    if not par:
        par, serial = outer, []
        pack = False
    sch.reorder(*par, *serial, *[loops[i] for i in reduce_], *rows_inner, *vec_inner)
    if ragged and pack:  # (without a serial row loop the partial tile keeps its predicate)
        sch.annotate(rows_outer, "pragma_loop_partition_hint", 1)
    fused = sch.fuse(*par) if len(par) > 1 else par[0]
    sch.reverse_compute_at(write_back, serial[0] if serial else fused, preserve_unit_loops=False)
    work = _work(sch, block_rv) or 0
    if work >= PARALLEL_MIN_MACS and (_int(sch.get(fused).extent) or 0) > 1:
        sch.parallel(fused)
    _prepack_weights(sch, block_rv, out, iters[vec].var, v_factor)
    if pack:
        _pack_inputs(sch, block_rv, out, iters[vec].var, fused, target)
    for loop in rows_inner:
        sch.unroll(loop)
    for loop in vec_inner:
        sch.vectorize(loop)
    if reduce_:
        sch.decompose_reduction(block_rv, loops[reduce_[0]])
    # The write-back (with the inlined epilogue) sits under the fused loop: vectorise its
    # innermost loop when it spans the vector lanes, unroll the short loops above it.
    wb_loops = list(sch.get_loops(write_back))[1:]
    if vec_inner and wb_loops and _int(sch.get(wb_loops[-1]).extent) == v_factor:
        _try(sch.vectorize, wb_loops[-1])
        wb_loops = wb_loops[:-1]
    for loop in wb_loops:
        if (_int(sch.get(loop).extent) or 0) <= budget:
            _try(sch.unroll, loop)


def _layout_free_params(sch: s_tir.Schedule) -> list[Any]:
    """The kernel's parameters that are weights (constants), per :data:`LAYOUT_FREE_ATTR`."""
    func = sch.mod["main"]
    if func.attrs is None or LAYOUT_FREE_ATTR not in func.attrs:
        return []
    return [func.params[int(i)] for i in func.attrs[LAYOUT_FREE_ATTR]]


def _prepack_weights(sch: s_tir.Schedule, block_rv: Any, out: Any, vvar: Any,
                     v_factor: int) -> list[str]:
    """Pack each weight read along the vector axis into ``[L/V, ..., V]`` at build time.

    A weight ``W[..., l]`` read as ``W[..., v]`` (``v`` the vectorised output axis, tiled by
    ``V``) is read through a copy ``P[l // V, ..., l % V]``: one output tile's weights are then
    one contiguous panel, walked in order by the reduction (NeoCPU's pre-packed ``OIHW[x]o``;
    in HWIO the tile's next input channel is ``O`` floats away). The copy is a block marked
    :data:`PREPROC_ATTR` (TVM's layout-rewrite convention); :func:`fold_prepacked_weights`
    splits it out of the kernel and runs it once at build time on the constant weights, so the
    packed tensor is what the plan's ``params.bin`` holds. Only parameters the Relax graph
    passes as constants (:data:`LAYOUT_FREE_ATTR`) are packed. Returns the packed buffers.
    """
    weights = _layout_free_params(sch) if PREPACK_WEIGHTS else []
    if not weights or v_factor <= 1:
        return []
    packed = []
    block = sch.get(block_rv)
    for index, read in enumerate(block.reads):
        src = read.source
        if src.same_as(out) or not any(src.same_as(w) or src.name == w.name for w in weights):
            continue
        idx = _index_exprs(read)
        shape = [_int(d) for d in src.shape]
        if not idx or not isinstance(idx[-1], tirx.Var) or not idx[-1].same_as(vvar):
            continue
        if any(_contains(e, vvar) for e in idx[:-1]) or None in shape or len(shape) < 3:
            # 2-D (matmul) weights stay as they are: IOS-Merge concatenates them
            # (scheduler/merge.py identifies a kernel's weight by the op's weight shape).
            continue
        if shape[-1] % v_factor or shape[-1] == v_factor:
            continue  # a partial tile, or one tile that is already a contiguous panel
        try:
            copy = sch.cache_read(block_rv, index, "global")
            sch.transform_layout(copy, ("write", 0), _panel_map(len(shape), v_factor))
            sch.annotate(copy, PREPROC_ATTR, True)
        except Exception as e:  # the schedule is unchanged when cache_read refuses
            logger.debug("weight %s not prepacked: %s", src.name, e)
            continue
        packed.append(str(src.name))
    return packed


def _panel_map(ndim: int, v: int) -> Any:
    """``(a0, ..., l) -> (l // v, a0, ..., l % v)``: the packed-weight layout."""
    return tirx.IndexMap.from_func(lambda *ax: (ax[-1] // v, *ax[:-1], ax[-1] % v),
                                   ndim=ndim)


def _pack_inputs(sch: s_tir.Schedule, block_rv: Any, out: Any, vvar: Any, loop: Any,
                 target: tvm.target.Target) -> None:
    """Compute the reads that walk the vector axis once per output tile, under ``loop``.

    A producer block in the kernel (the padding of a conv) is moved there with compute_at;
    a read of a parameter gets a cache_read copy. Either way the tile's input panel is a
    small contiguous buffer (CompactBufferAllocation shrinks it to the tile's region).
    """
    block = sch.get(block_rv)
    for index, read in enumerate(block.reads):
        if read.source.same_as(out) or not any(_contains(e, vvar) for e in _index_exprs(read)):
            continue
        producers = [p for p in sch.get_producers(block_rv)
                     if any(w.source.same_as(read.source) for w in sch.get(p).writes)]
        if any(PREPROC_ATTR in sch.get(p).annotations for p in producers):
            continue  # weights packed at build time (_prepack_weights)
        if producers:
            target_block = producers[0]
            if not _try(sch.compute_at, target_block, loop, preserve_unit_loops=False):
                continue
        else:
            try:
                target_block = sch.cache_read(block_rv, index, "global")
            except Exception as e:
                logger.debug("no packed copy of %s: %s", read.source.name, e)
                continue
            if not _try(sch.compute_at, target_block, loop, preserve_unit_loops=False):
                continue
        inner = sch.get_loops(target_block)
        if inner:
            ext = _int(sch.get(inner[-1]).extent) or 0
            if ext >= 4 and (_branch_free_along(sch, target_block, inner[-1])
                             if DEPTHWISE_ROWS else not _has_if_then_else(sch.get(target_block))):
                _try(sch.vectorize, inner[-1])


def _inline_epilogue(sch: s_tir.Schedule, producer: Any) -> None:
    """Reverse-inline the chain of elementwise consumers of ``producer`` into it."""
    for _ in range(16):
        progressed = False
        for consumer in sch.get_consumers(producer):
            try:
                sch.reverse_compute_inline(consumer)
            except Exception:
                continue
            progressed = True
            break
        if not progressed:
            return


def _try(primitive: Any, *args: Any, **kwargs: Any) -> bool:
    try:
        primitive(*args, **kwargs)
    except Exception as e:  # optional step: the schedule is unchanged when a primitive refuses
        logger.debug("optional %s step skipped: %s", getattr(primitive, "__name__", "?"),
                     str(e).splitlines()[0] if str(e) else type(e).__name__)
        return False
    return True


def _schedule_block_generic(sch: s_tir.Schedule, info: Any,
                            target: tvm.target.Target) -> bool:
    """Parallelise and vectorise one untouched root-level block; True if anything applied.

    ``info`` is the block's ``SBlockInfo`` from ``normalize_prim_func`` (its loops and iters
    correspond one to one).
    """
    block_rv = info.block_rv
    block = sch.get(block_rv)
    iters = list(info.iters)
    if not iters or any(it.kind not in ("S", "R") for it in iters):
        return False
    if any(_int(it.dom) is None for it in iters):
        return False
    loops = [it.loop_rv for it in iters]
    if not all(_alive(sch, lp) for lp in loops):
        return False  # moved by another rule (compute_at): scheduled with that loop nest
    current = sch.get_loops(block_rv)
    if len(current) != len(loops) or not all(
            sch.get(a).same_as(sch.get(b)) for a, b in zip(current, loops, strict=True)):
        return False
    spatial = [loops[i] for i, it in enumerate(iters) if it.kind == "S"]
    reduce_ = [loops[i] for i, it in enumerate(iters) if it.kind == "R"]
    if not spatial:
        return False
    applied = False
    dtype, bits = _dtype_bits(block)
    lanes = vector_lanes(target, bits)
    # Vector axis: the output's innermost axis, contiguous for every read, no branches.
    last = max(i for i, it in enumerate(iters) if it.kind == "S")
    vec_loop = None
    if dtype in _VECTOR_DTYPES and _int(iters[last].dom) > 1 \
            and _writes_last_axis(block, iters[last].var) and not _has_if_then_else(block) \
            and _contiguous_along(block, iters[last].var, skip_buffers=[block.writes[0].source]):
        ext = _int(iters[last].dom)
        factor, exact = _vector_factor(ext, lanes)
        if exact and factor > 1:
            if factor < ext:
                o, vec_loop = sch.split(loops[last], [None, factor], preserve_unit_iters=False)
                spatial = [o if lp is loops[last] else lp for lp in spatial]
            else:
                vec_loop = loops[last]
                spatial = [lp for lp in spatial if lp is not loops[last]]
    if reduce_ and vec_loop is not None:
        # Pooling-style: the window loops go outside the vectorised lanes.
        if not _try(sch.reorder, *spatial, *reduce_, vec_loop):
            vec_loop = None
    # Outer spatial loops (above any reduction loop and the lanes): fuse and parallelise.
    current = list(sch.get_loops(block_rv))
    outer = []
    for lp in current:
        if not any(sch.get(lp).same_as(sch.get(s)) for s in spatial):
            break
        outer.append(lp)
    work = _work(sch, block_rv) or 0
    if outer and work >= PARALLEL_MIN_WORK:
        # Fuse only as many outer loops as it takes to give every thread several chunks: the
        # inner loops keep their cheap induction variables (no div/mod per element).
        take, extent = 0, 1
        while take < len(outer) and extent < PARALLEL_MIN_EXTENT:
            extent *= _int(sch.get(outer[take]).extent) or 1
            take += 1
        outer = outer[:max(take, 1)]
        fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
        if (_int(sch.get(fused).extent) or 0) > 1 and _try(sch.parallel, fused):
            applied = True
    if vec_loop is not None and _try(sch.vectorize, vec_loop):
        applied = True
    if reduce_ and applied:
        _try(sch.decompose_reduction, block_rv, reduce_[0])
    return applied


def _inline_copies(sch: s_tir.Schedule, block_rv: Any) -> None:
    """Inline the contraction's producers that only copy (a conv's zero "padding" of 0).

    TVM's conv2d always pads into a buffer first; with no padding that is a copy of the whole
    input per call, which the contraction can read in place.
    """
    for producer in sch.get_producers(block_rv):
        block = sch.get(producer)
        if len(block.reads) != 1 or _has_if_then_else(block):
            continue
        if not isinstance(block.body, tirx.BufferStore) or \
                not isinstance(block.body.value, tvm.ir.TensorLoad):
            continue
        _try(sch.compute_inline, producer)


def _alive(sch: s_tir.Schedule, rv: Any) -> bool:
    """Whether a block or loop random variable still names something (not inlined away)."""
    try:
        sch.get(rv)
    except Exception:
        return False
    return True


def _row_reduction(sch: s_tir.Schedule, infos: list[Any]) -> bool:
    """Reductions over rows only: each reduction iter indexes reads as a bare variable."""
    reds = [b for b in infos if b.is_reduction()]
    if not reds:
        return False
    for info in reds:
        block = sch.get(info.block_rv)
        rvars = [it.var for it in info.iters if it.kind == "R"]
        for read in block.reads:
            for e in _index_exprs(read):
                if any(_contains(e, r) for r in rvars) and not (
                        isinstance(e, tirx.Var) and any(e.same_as(r) for r in rvars)):
                    return False
    return True


def _apply_rules(func: tirx.PrimFunc, target: tvm.target.Target) -> tuple[s_tir.Schedule, str]:
    """Schedule one kernel; returns ``(schedule, rule)`` or raises :class:`_Skip`."""
    from tvm.s_tir.dlight.analysis import normalize_prim_func

    sch = s_tir.Schedule(func)
    infos = normalize_prim_func(sch)
    if infos is None:
        raise _Skip("not in TVM's normal form (opaque or non-affine blocks)")
    contractions = [b for b in infos if _is_contraction(sch, b)]
    others_injective = all(b.is_injective() for b in infos if b not in contractions)
    if len(contractions) == 1 and others_injective:
        if INLINE_COPIES:
            _inline_copies(sch, contractions[0].block_rv)
        try:
            _schedule_contraction(sch, contractions[0], target)
        except _Skip as e:  # raised before the schedule changes: fall back to "generic"
            logger.debug("contraction rule skipped: %s", e)
        else:
            # Whatever was not folded into the tile (padding, layout prologues, epilogues TVM
            # would not inline) runs as its own parallel loop nest.
            for b in infos:
                if b is not contractions[0] and _alive(sch, b.block_rv):
                    _schedule_block_generic(sch, b, target)
            return sch, "contraction"
    total = sum(_work(sch, b.block_rv) or 0 for b in infos)
    if not contractions and len(infos) >= 2 and total >= PARALLEL_MIN_WORK \
            and _row_reduction(sch, infos):
        from tvm.s_tir.dlight.cpu import Reduction

        try:
            result = Reduction().apply(func, target, False)
        except Exception as e:
            logger.debug("dlight cpu Reduction refused: %s", e)
            result = None
        if isinstance(result, s_tir.Schedule):
            return result, "reduction"
    applied = False
    for b in infos:
        applied |= _schedule_block_generic(sch, b, target)
    if not applied:
        raise _Skip("too little work to parallelise and no contiguous axis to vectorise")
    return sch, "generic"


def default_schedule(func: tirx.PrimFunc, target: Any) -> tuple[tirx.PrimFunc | None, str]:
    """Apply the default CPU rules to one kernel.

    Parameters
    ----------
    func
        A fused PrimFunc (TVM's block form, as FuseTIR leaves it).
    target
        The llvm target (vector width from its CPU features).

    Returns
    -------
    tuple
        ``(scheduled func, rule)`` with the func marked ``tirx.is_scheduled``, or
        ``(None, reason)`` when no rule applies; never raises for a kernel it cannot handle.
    """
    sch, how = default_schedule_trace(func, target)
    if sch is None:
        return None, how
    new = sch.mod["main"].with_attr(SCHEDULED_ATTR, True)
    if any(inst.kind.name == "Annotate" and PREPROC_ATTR in [str(a) for a in inst.attrs]
           for inst in sch.trace.insts):
        new = new.with_attr(PREPACKED_ATTR, True)  # fold_prepacked_weights has work here
    return new, how


def default_schedule_trace(func: tirx.PrimFunc,
                           target: Any) -> tuple[s_tir.Schedule | None, str]:
    """Like :func:`default_schedule`, but return the ``s_tir.Schedule`` itself.

    Its ``trace`` replays the default schedule on ``func`` (:mod:`ios_tvm.compiler.tune` stores it
    in
    the tuning database as a measured candidate, so tuning never ends worse than the rules).

    Returns
    -------
    tuple
        ``(schedule, rule)``, or ``(None, reason)`` when no rule applies.
    """
    tgt = resolve_target(target)
    if not _is_llvm(tgt):
        return None, f"target kind {tgt.kind.name!r} is not llvm"
    if is_scheduled(func):
        return None, "already scheduled"
    try:
        with tgt:
            return _apply_rules(func, tgt)
    except _Skip as e:
        return None, str(e)
    except Exception as e:  # a schedule primitive refused: leave the kernel as it was
        first = str(e).strip().splitlines()
        msg = next((ln for ln in first if "Error" in ln), first[0] if first else type(e).__name__)
        return None, f"{type(e).__name__}: {msg[:200]}"


def apply_default_schedules(mod: tvm.IRModule, target: Any, *, tuned: Iterable[str] = (),
                            enabled: bool = True) -> tvm.IRModule:
    """Schedule every unscheduled PrimFunc of ``mod`` with the default CPU rules.

    Parameters
    ----------
    mod
        A module of fused PrimFuncs (e.g. after FuseTIR).
    target
        An llvm target; for other targets nothing changes (the report says so).
    tuned
        Names of kernels that came from a MetaSchedule database (reported as ``"tuned"``).
    enabled
        False: change nothing, only report (unscheduled kernels stay ``"unscheduled"``).

    Returns
    -------
    tvm.IRModule
        The module with scheduled kernels and the :data:`CPU_SCHEDULE_ATTR` report
        (read it with :func:`schedule_report`).
    """
    tgt = resolve_target(target)
    tuned = set(tuned)
    report = ScheduleReport(str(tgt))
    updates = {}
    for gv, func in mod.functions.items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        name = gv.name_hint
        if name in tuned:
            report.kernels[name] = "tuned"
            continue
        if is_scheduled(func):
            report.kernels[name] = "prescheduled"
            continue
        if not enabled or not _is_llvm(tgt):
            report.kernels[name] = "unscheduled"
            report.reasons[name] = ("default CPU schedules disabled" if enabled is False else
                                    f"no default CPU schedule for target kind "
                                    f"{tgt.kind.name!r}")
            continue
        new, how = default_schedule(func, tgt)
        if new is None:
            report.kernels[name] = "unscheduled"
            report.reasons[name] = how
            logger.debug("kernel %s left unscheduled: %s", name, how)
            continue
        updates[gv] = new
        report.kernels[name] = how
    if updates:
        mod = mod.clone()  # IRModule.__setitem__ mutates in place; leave the caller's alone
        for gv, func in updates.items():
            mod[gv] = func
    return mod.with_attr(CPU_SCHEDULE_ATTR, json.dumps(report.to_json()))


def fold_prepacked_weights(mod: tvm.IRModule) -> tuple[tvm.IRModule, dict[str, str]]:
    """Run the weight-packing copies of the kernels once, at build time, on the constants.

    ``relax.transform.SplitLayoutRewritePreproc`` moves every block marked
    :data:`PREPROC_ATTR` (:func:`_prepack_weights`) out of its kernel ``k`` into a kernel of
    its own, called on the weight in the Relax graph, and renames ``k`` to ``k_prepacked``,
    which now takes the packed weight. ``FoldConstant`` then runs those packing kernels on the
    constant weights, so the graph passes packed constants (what ``params.bin`` stores) and no
    packing runs per inference; the unused packing kernels are dropped.

    Returns
    -------
    tuple
        ``(module, {old kernel name: new name})``; the module unchanged when nothing is packed.
    """
    from tvm import relax

    before = {gv.name_hint for gv, f in mod.functions.items() if isinstance(f, tirx.PrimFunc)}
    if not any(isinstance(f, tirx.PrimFunc) and f.attrs is not None and PREPACKED_ATTR in f.attrs
               for f in mod.functions.values()):
        return mod, {}  # (TVM's split pass fails on some kernels it has no business with)
    split = relax.transform.SplitLayoutRewritePreproc()(mod)
    after = {gv.name_hint for gv, f in split.functions.items() if isinstance(f, tirx.PrimFunc)}
    renamed = {n: f"{n}_prepacked" for n in before if f"{n}_prepacked" in after}
    if not renamed:
        return mod, {}
    # The packing of _prepack_weights is a known permutation: do it in numpy (compiling one
    # packing kernel per conv for FoldConstant costs about 0.2 s each); FoldConstant runs only
    # what is left (none of ours).
    folded = _PackConstants(split).run(split)
    folded = relax.transform.FoldConstant()(folded)
    folded = relax.transform.CanonicalizeBindings()(folded)
    entries = [gv.name_hint for gv, f in folded.functions.items()
               if isinstance(f, relax.Function) and f.attrs is not None
               and "global_symbol" in f.attrs]
    folded = relax.transform.DeadCodeElimination(entries)(folded)
    updates = {}
    for gv, f in folded.functions.items():
        if gv.name_hint in renamed.values() and not is_scheduled(f):
            updates[gv] = f.with_attr(SCHEDULED_ATTR, True)
    for gv, f in updates.items():
        folded[gv] = f
    return folded, renamed


def _pack_panel(w: Any, out_shape: list[int]) -> Any:
    """``w[..., l]`` in the layout of :func:`_panel_map`, if ``out_shape`` is that layout."""
    import numpy as np

    *rest, last = w.shape
    v = out_shape[-1] if out_shape else 0
    if v <= 0 or last % v or list(out_shape) != [last // v, *rest, v]:
        return None
    return np.ascontiguousarray(np.moveaxis(w.reshape(*rest, last // v, v), -2, 0))


def _make_pack_constants() -> Any:
    from tvm import relax

    @relax.expr_functor.mutator
    class PackConstants(relax.PyExprMutator):
        """Replaces ``call_tir(<kernel>_weight_prepack, (constant,))`` by the packed constant."""

        def __init__(self, mod: tvm.IRModule) -> None:
            super().__init__(mod)
            self.mod_ = mod

        def visit_call_(self, call: Any) -> Any:
            call = super().visit_call_(call)
            if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.call_tir"):
                return call
            gv, args = call.args[0], call.args[1]
            fields = list(args.fields) if isinstance(args, relax.Tuple) else [args]
            if not gv.name_hint.endswith("_weight_prepack") or len(fields) != 1 \
                    or not isinstance(fields[0], tvm.ir.GenericConst):
                return call
            out_ty = call.ty_args[0] if call.ty_args else None
            shape = [_int(d) for d in getattr(getattr(out_ty, "shape", None), "values", [])]
            if not shape or None in shape:
                return call
            packed = _pack_panel(fields[0].value.numpy(), shape)
            return call if packed is None else relax.const(packed)

        def run(self, mod: tvm.IRModule) -> tvm.IRModule:
            for gv, func in mod.functions_items():
                if isinstance(func, relax.Function):
                    self.builder_.update_func(gv, self.visit_expr(func))
            return self.builder_.get()

    return PackConstants


class _PackConstants:
    """Lazily built :class:`PackConstants` mutator (relax is imported on first use)."""

    _cls: Any = None

    def __new__(cls, mod: tvm.IRModule) -> Any:
        if cls._cls is None:
            cls._cls = _make_pack_constants()
        return cls._cls(mod)


@tvm.transform.module_pass(opt_level=0, name="CpuDefaultSchedule")
class CpuDefaultSchedule:
    """Module pass form of :func:`apply_default_schedules` (needs a target context or arg).

    Parameters
    ----------
    target
        The llvm target; default ``tvm.target.Target.current()``.
    """

    def __init__(self, target: Any = None) -> None:
        self.target = target

    def transform_module(self, mod: tvm.IRModule, ctx: Any) -> tvm.IRModule:
        """Run :func:`apply_default_schedules`."""
        target = self.target or tvm.target.Target.current(allow_none=False)
        return apply_default_schedules(mod, target)
