"""Pictures of schedules: a stream timeline and the operator graph coloured by stage.

Uses matplotlib (the ``plot`` extra) with the non-interactive Agg backend; each function writes
one file whose format follows its suffix (``.png``, ``.svg``, ``.pdf``), whole or not at all.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ios_tvm.ir.graph import OpGraph
from ios_tvm.ir.schedule import Schedule


def _pyplot():  # noqa: ANN202 (matplotlib's module type)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    """Save ``fig`` to ``path``, whole or not at all.

    Through a uniquely named temporary file beside ``path``, renamed over it when complete
    and removed otherwise, so an interrupted or failed save leaves nothing behind.
    """
    out = Path(path)
    fmt = out.suffix.lstrip(".").lower()
    with tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp",
                                     delete=False) as tmp:
        pass
    try:
        fig.savefig(tmp.name, dpi=130, format=fmt or None)
        os.replace(tmp.name, out)
    finally:
        if os.path.exists(tmp.name):
            os.unlink(tmp.name)
    return out


def _stage_colour(plt, i: int):  # noqa: ANN001, ANN202
    return plt.get_cmap("tab20")(i % 20)


def plot_timeline(schedule: Schedule, stage_seconds: Sequence[float], path: str | os.PathLike[str],
                  *, names: Sequence[str] | None = None, title: str = "") -> Path:
    """Draw streams (rows) against time: each stage spans its latency, each group a bar.

    Parameters
    ----------
    schedule
        The schedule to draw.
    stage_seconds
        Latency of each stage (measured or estimated), same order as the stages.
    path
        Output file.
    names
        Kernel names by op id, used to label wide bars.
    title
        Figure title.
    """
    return plot_timelines([TimelinePanel(schedule, stage_seconds, names,
                                         title or schedule.summary())], path)


@dataclass(frozen=True)
class TimelinePanel:
    """One plan drawn by :func:`plot_timelines`: its schedule, stage seconds, names, title."""

    schedule: Schedule
    stage_seconds: Sequence[float]
    names: Sequence[str] | None = None
    title: str = ""


def plot_timelines(panels: Sequence[TimelinePanel], path: str | os.PathLike[str]) -> Path:
    """Draw several plans' timelines one above the other on one time axis.

    Sharing the axis is the point: a plan drawn beside another shows at a glance which is
    faster and where (e.g. the searched IOS plan and the plan that shipped, both measured).
    """
    if not panels:
        raise ValueError("plot_timelines needs at least one panel")
    plt = _pyplot()
    rows = [max(p.schedule.max_groups, 1) for p in panels]
    fig, axes = plt.subplots(len(panels), 1, sharex=True, squeeze=False,
                             figsize=(12, 0.8 * len(panels) + 0.45 * sum(rows)),
                             gridspec_kw={"height_ratios": [r + 1 for r in rows]})
    try:
        for ax, panel, streams in zip(axes[:, 0], panels, rows, strict=True):
            _draw_timeline(plt, ax, panel, streams)
        axes[-1, 0].set_xlabel("time (ms)")
        fig.tight_layout()
        return _save(fig, path)
    finally:
        plt.close(fig)


def _draw_timeline(plt, ax, panel: TimelinePanel, streams: int) -> None:  # noqa: ANN001
    total_ms = sum(panel.stage_seconds) * 1e3
    t = 0.0
    for si, (stage, secs) in enumerate(zip(panel.schedule.stages, panel.stage_seconds,
                                           strict=True)):
        ms = secs * 1e3
        for gi, group in enumerate(stage.groups):
            ax.barh(gi, ms, left=t, height=0.8, color=_stage_colour(plt, si),
                    edgecolor="black", linewidth=0.4,
                    hatch="//" if stage.strategy == "merge" else "")
            if panel.names is not None and total_ms > 0 and ms / total_ms > 0.04:
                label = "+".join(panel.names[op].split("@")[0].removeprefix("fused_")[:14]
                                 for op in group)
                ax.text(t + ms / 2, gi, label[:40], ha="center", va="center", fontsize=6)
        t += ms
    ax.set_yticks(range(streams), [f"stream {i}" for i in range(streams)])
    ax.invert_yaxis()
    ax.set_title(panel.title or panel.schedule.summary(), fontsize=9)


def plot_graph(graph: OpGraph, schedule: Schedule, path: str | os.PathLike[str], *,
               title: str = "") -> Path:
    """Draw the operator graph left to right by stage, nodes coloured by their stage."""
    plt = _pyplot()
    pos: dict[int, tuple[float, float]] = {}
    stage_of: dict[int, int] = {}
    for si, stage in enumerate(schedule.stages):
        # Groups stack vertically (one row per stream); ops of a group step right in order.
        for gi, group in enumerate(stage.groups):
            for k, op in enumerate(group):
                pos[op] = (si + 0.6 * k / max(len(group), 1), gi - (len(stage.groups) - 1) / 2.0)
                stage_of[op] = si
    height = max((len(s.groups) for s in schedule.stages), default=1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(schedule.stages) + 2), 1.5 + 0.5 * height))
    for u, v in graph.edges:
        (x0, y0), (x1, y1) = pos[u], pos[v]
        ax.plot([x0, x1], [y0, y1], color="0.6", linewidth=0.5, zorder=1)
    xs = [pos[i][0] for i in range(len(graph.nodes))]
    ys = [pos[i][1] for i in range(len(graph.nodes))]
    colours = [_stage_colour(plt, stage_of[i]) for i in range(len(graph.nodes))]
    ax.scatter(xs, ys, c=colours, s=60, edgecolors="black", linewidths=0.5, zorder=2)
    ax.set_xlabel("stage")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_yticks([])
    ax.set_title(title or f"{len(graph.nodes)} kernels in {len(schedule.stages)} stages")
    fig.tight_layout()
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_speedups(rows: dict[str, dict[str, float]], path: str | os.PathLike[str], *,
                  baseline: str = "sequential", title: str = "") -> Path:
    """Bar chart of speed-ups over ``baseline``: ``rows[model][variant] = seconds``."""
    plt = _pyplot()
    models = list(rows)
    variants = sorted({v for r in rows.values() for v in r if v != baseline})
    # wide enough for the bars, but a page wide at most
    width_in = min(12.0, max(5.0, 0.5 * len(models) * max(len(variants), 1)))
    fig, ax = plt.subplots(figsize=(width_in, 4.0))
    width = 0.8 / max(len(variants), 1)
    for k, variant in enumerate(variants):
        vals = [rows[m][baseline] / rows[m][variant] if rows[m].get(variant) else 0.0
                for m in models]
        ax.bar([i + k * width for i in range(len(models))], vals, width, label=variant)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([i + width * (len(variants) - 1) / 2 for i in range(len(models))], models)
    ax.set_ylabel(f"speed-up over {baseline}")
    ax.legend(fontsize=7)
    ax.set_title(title)
    fig.tight_layout()
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)
