#!/usr/bin/env python
"""What compiling CUDA kernels at build time costs (issue 14): seconds and bytes per model.

For each model (batch 1, target ``{"kind": "cuda", "arch": "sm_90"}``, no GPU needed): lower
it, build the kernel library (CUDA source), compile that source to a cubin with NVRTC and with
nvcc (``ios_tvm.compiler.cuda_binary.compile_source``, uncached), and export the library
with CUDA source and with the cubin (bytes, and xz-compressed bytes, what travels to a GPU
machine). Before, the GPU side paid the NVRTC compile at every load; now it is paid here once.

    python scripts/bench_cuda_compile.py --models sample,squeezenet,inception_v3 --out r.json
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def measure(name: str, tmp: Path) -> dict[str, float | int]:
    import tvm

    from ios_tvm.compiler import cuda_binary as cb
    from ios_tvm.compiler.extract import graph_from_model
    from ios_tvm.models import BUILTIN_MODELS

    t = time.perf_counter()
    ex = graph_from_model(BUILTIN_MODELS[name](batch=1), "cuda")
    row: dict[str, float | int] = {"lower_s": time.perf_counter() - t}
    funcs = {gv: f.with_attr("global_symbol", gv.name_hint) for gv, f in ex.mod.functions.items()
             if isinstance(f, tvm.tirx.PrimFunc)}
    t = time.perf_counter()
    lib = tvm.tirx.build(tvm.IRModule(funcs), target=ex.target)  # CUDA source (no GPU here)
    row.update(kernels=len(funcs), build_s=time.perf_counter() - t)
    lib.export_library(str(tmp / "src.so"))
    (module,) = cb.cuda_modules(lib)
    source = module.inspect_source("cuda")
    row["source_bytes"] = len(source)
    for compiler in ("nvrtc", "nvcc"):
        os.environ[cb.COMPILER_ENV] = compiler
        try:
            cb._cache.clear()
            t = time.perf_counter()
            binary = cb.compile_source(source, cb.target_arch(ex.target))
            row[f"{compiler}_s"] = time.perf_counter() - t
            row[f"{compiler}_cubin_bytes"] = len(binary)
            row[f"{compiler}_cubin_xz"] = len(lzma.compress(binary))
        except cb.CudaCompileError as e:
            print(f"{name}: {compiler}: {e}", file=sys.stderr)
        finally:
            os.environ.pop(cb.COMPILER_ENV, None)
    cb.compile_cuda_kernels(lib, ex.target)
    lib.export_library(str(tmp / "bin.so"))
    for kind in ("src", "bin"):
        data = (tmp / f"{kind}.so").read_bytes()
        row[f"{kind}_so_bytes"], row[f"{kind}_so_xz"] = len(data), len(lzma.compress(data))
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="sample,squeezenet,inception_v3")
    p.add_argument("--out", type=Path, help="JSON output (default: print only)")
    args = p.parse_args(argv)
    rows = {}
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            rows[name] = measure(name, Path(tmp))
        print(name, json.dumps(rows[name]), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"format": "ios_tvm.bench_cuda_compile", "models": rows,
                                        "load": os.getloadavg()}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
