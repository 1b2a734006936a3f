"""Timing several runners side by side on a shared machine, and the facts to keep with a timing.

:func:`time_rounds` interleaves the runners in rounds (one sample each per round, after a
pause and a warm-up turn), so load drift hits every variant alike; :func:`machine_info`
records the CPU, cores, load average, versions and git commit. The benchmark scripts use both.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import platform
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ios_tvm.compiler.choose import time_paired


# -- machine and timing (shared by scripts/bench*.py) ---------------------------------------------
def machine_info() -> dict[str, Any]:
    """Facts worth keeping next to a timing: CPU, cores, load, versions, the git commit."""
    import tvm

    info: dict[str, Any] = {
        "host": platform.node(), "platform": platform.platform(),
        "python": platform.python_version(), "cpus": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "tvm": tvm.__version__, "TVM_NUM_THREADS": os.environ.get("TVM_NUM_THREADS"),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    info["machine"] = platform.machine()
    info["processor"] = platform.processor() or None
    info["tvm_num_threads"] = int(tvm.get_global_func("runtime.NumThreads")())
    root = Path(__file__).resolve().parent.parent
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        def git(*args: str) -> str:
            return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True,
                                  text=True).stdout.strip()

        info["git_commit"] = git("rev-parse", "HEAD")
        info["git_dirty"] = bool(git("status", "--porcelain"))
    try:
        import onnxruntime as ort

        info["onnxruntime"] = ort.__version__
    except ImportError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_num_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        if tvm.cuda(0).exist:
            info["gpu"] = str(tvm.cuda(0).device_name)
    except Exception:  # no CUDA runtime at all
        pass
    return info


def time_rounds(runners: Mapping[str, Callable[[], Any]], rounds: int, min_ms: float, *,
                warmup: int = 2, pause_ms: float = 300.0, turn_warmup: int = 1,
                progress: bool = False) -> dict[str, list[float]]:
    """Seconds per run of each runner: one sample per round, runners interleaved.

    The build's own paired timing (:func:`ios_tvm.compiler.choose.time_paired`, the order
    rotated every round) with a longer default pause. Each runner is called ``warmup`` times
    first (allocations, caches, thread pools). In
    every round each runner then takes a turn: the process sleeps ``pause_ms``, the runner
    runs ``turn_warmup`` times untimed, then back to back for at least ``min_ms``; the mean
    of that turn is its sample. Runners must return only when their work has finished.

    Why the pause: thread pools keep spinning after a run (TVM's for well over 50 ms, ONNX
    Runtime's too), and a spinning pool of one runner takes the cores from whichever runs
    next; on the 2-core CI machine that made ONNX Runtime 4x slower after a TVM runner.
    Why the warm-up in each turn: after the pause a runner's own pool has gone to sleep,
    and the first run pays for waking it.
    """
    return time_paired(runners, rounds, min_ms, warmup=warmup, pause_ms=pause_ms,
                       turn_warmup=turn_warmup, progress=progress)


def write_result(path: str | os.PathLike[str], doc: Mapping[str, Any]) -> Path:
    """Write a benchmark's JSON record to ``path`` (folders made), atomically.

    A reader (or a benchmark killed halfway) never sees half a file: the record goes to a
    temporary file beside it first. Returns the path.
    """
    import json

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(doc, indent=1, default=str) + "\n", encoding="utf-8")
    tmp.replace(out)
    return out
