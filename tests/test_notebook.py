"""The benchmark notebook runs headless, top to bottom, at a small size (so it never rots)."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parent.parent / "scripts" / "benchmark.ipynb"


def test_benchmark_notebook_executes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    # The kernel inherits this environment: small size, a private measurement cache, Agg plots.
    monkeypatch.setenv("IOS_TVM_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("IOS_TVM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "sample on" in text and "sequential" in text  # the report table was printed
    markdown = [o for o in outputs if "text/markdown" in o.get("data", {})]
    assert markdown and "| sample |" in markdown[0]["data"]["text/markdown"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2  # speed-up chart and timeline


def test_notebook_is_stored_without_outputs() -> None:
    # Outputs are machine-specific and bloat diffs; the notebook is committed clean.
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
