"""Targets and devices: what ``"host"``, ``"llvm"`` or ``"cuda"`` mean, and which device runs them.

:func:`resolve_target` turns a name, a dict or a ``tvm.target.Target`` into a Target
(``"host"`` is llvm for this machine's CPU, written once here); :func:`target_device_type`,
:func:`device_present` and :func:`device_name` (the name measurements are cached under) say
where a target's code runs.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Mapping
from typing import Any, Union

import tvm

from ios_tvm.errors import ConfigError


def device_name(device_type: str, index: int = 0) -> str:
    """A stable name of the device that measurements belong to.

    The CPU model and core count, or the CUDA device name.
    """
    if device_type == "cuda":
        import tvm

        return str(tvm.cuda(index).device_name)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    threads = os.environ.get("TVM_NUM_THREADS", "default")
    return f"{model} x{os.cpu_count()} (TVM_NUM_THREADS={threads})"


#: What :func:`resolve_target` accepts.
TargetLike = Union[str, Mapping[str, Any], "tvm.target.Target"]  # noqa: UP007 (forward ref)


# --------------------------------------------------------------------------------------------
# targets and lowering
# --------------------------------------------------------------------------------------------
def resolve_target(target: TargetLike) -> tvm.target.Target:
    """Turn a name (``llvm``, ``host``, ``cuda``, a tag), a dict or a Target into a ``Target``.

    ``"host"`` is llvm for this machine's CPU (``mcpu`` as LLVM detects it); a bare ``"llvm"``
    is generic x86-64 (SSE2 only), much slower on any recent CPU.
    ``"cuda"`` means ``{"kind": "cuda", "arch": "sm_90"}``; a CUDA target without a host gets an
    llvm host. TVM 0.27 rejects the old CLI strings (``"cuda -arch=sm_90"``), so a string with
    spaces is parsed here into a dict (``-key=value`` options).
    """
    if isinstance(target, tvm.target.Target):
        tgt = target
    elif isinstance(target, Mapping):
        tgt = tvm.target.Target(dict(target))
    elif isinstance(target, str):
        text = target.strip()
        if text.startswith("{"):
            tgt = tvm.target.Target(json.loads(text))
        elif " " in text:
            kind, *opts = text.split()
            d: dict[str, Any] = {"kind": kind}
            if kind == "cuda":
                d["arch"] = "sm_90"
            for opt in opts:
                key, _, value = opt.lstrip("-").partition("=")
                d[key] = int(value) if value.isdigit() else value
            tgt = tvm.target.Target(d)
        elif text == "cuda":
            tgt = tvm.target.Target({"kind": "cuda", "arch": "sm_90"})
        elif text == "host":
            from tvm.target import codegen

            tgt = tvm.target.Target({"kind": "llvm",
                                     "mcpu": str(codegen.llvm_get_system_cpu())})
        else:
            tgt = tvm.target.Target(text)
    else:
        raise TypeError(f"target must be a str, dict or tvm.target.Target, not {type(target)}")
    if "gpu" in tgt.keys and tgt.host is None:
        tgt = tvm.target.Target(tgt, tvm.target.Target({"kind": "llvm"}))
    return tgt


def target_device_type(target: Any) -> str:
    """``"cuda"`` for CUDA targets, ``"cpu"`` for llvm ones."""
    kind = target.kind.name
    if kind == "cuda":
        return "cuda"
    if kind in ("llvm", "c"):
        return "cpu"
    raise ConfigError(f"target kind {kind!r} is not supported (use llvm or cuda)")


def device_present(device_type: str) -> bool:
    """Whether this machine has a device of ``device_type`` (never raises)."""
    if device_type == "cpu":
        return True
    try:
        import tvm

        return bool(tvm.cuda(0).exist)
    except Exception:  # no CUDA runtime at all
        return False


def host_target() -> dict[str, Any]:
    """The llvm target of this machine's CPU (a bare ``"llvm"`` is generic x86-64, SSE2 only)."""
    from tvm.target import codegen

    return {"kind": "llvm", "mcpu": str(codegen.llvm_get_system_cpu())}
