"""The pictures (ios_tvm.bench.plot): written whole or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from ios_tvm import OpGraph
from ios_tvm.bench.plot import (
    TimelinePanel,
    plot_graph,
    plot_speedups,
    plot_timeline,
    plot_timelines,
)
from ios_tvm.scheduler.search import search


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_pictures_are_written(tmp_path: Path) -> None:
    g = OpGraph.from_edges(4, [(0, 1), (0, 2), (1, 3), (2, 3)])
    sch = search(g, lambda s: 1.0).schedule
    for fmt in ("png", "svg", "pdf"):
        assert plot_timeline(sch, [1e-3] * len(sch), tmp_path / f"t.{fmt}").stat().st_size > 0
        assert plot_graph(g, sch, tmp_path / f"g.{fmt}").stat().st_size > 0
        assert plot_speedups({"m": {"sequential": 2.0, "ios": 1.0}},
                             tmp_path / f"s.{fmt}").stat().st_size > 0
    assert not [n for n in _leftovers(tmp_path) if n.endswith(".tmp")]


def test_timelines_share_one_axis(tmp_path: Path) -> None:
    """Two plans drawn one above the other (the shipped plan and the one that lost)."""
    g = OpGraph.from_edges(4, [(0, 1), (0, 2), (1, 3), (2, 3)])
    ios = search(g, lambda s: 1.0 if len(s.groups) > 1 else 2.0).schedule
    seq = search(g, lambda s: 1.0 if len(s.groups) == 1 and len(s.groups[0]) == 1
                 else 9.0).schedule
    assert len(ios) < len(seq)
    out = plot_timelines([TimelinePanel(ios, [1e-3] * len(ios), None, "ios"),
                          TimelinePanel(seq, [1e-3] * len(seq), None, "seq")],
                         tmp_path / "t.png")
    assert out.stat().st_size > 0
    with pytest.raises(ValueError):
        plot_timelines([], tmp_path / "none.png")
    with pytest.raises(ValueError):  # stage seconds must match the stages
        plot_timelines([TimelinePanel(ios, [1e-3], None)], tmp_path / "bad.png")
    assert _leftovers(tmp_path) == ["t.png"]


@pytest.mark.parametrize("name", ["chart.txt", "folder"])
def test_a_failed_save_leaves_nothing(tmp_path: Path, name: str) -> None:
    """An unknown format, or a path that is a folder: an error, and no file nor temporary."""
    if name == "folder":
        (tmp_path / name).mkdir()
    with pytest.raises((ValueError, OSError)):
        plot_speedups({"m": {"sequential": 2.0, "ios": 1.0}}, tmp_path / name)
    assert _leftovers(tmp_path) == ([name] if name == "folder" else [])
