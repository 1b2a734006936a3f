"""The package's shape: imports run downward through the layers, with no circles anywhere.

The layers and the forbidden imports are import-linter contracts in pyproject.toml; this runs
them, and checks what they cannot: that no two modules import each other, even inside one
layer and even from inside functions.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept() -> None:
    # In a child process: import-linter reconfigures logging in the process it runs in.
    pytest.importorskip("importlinter")
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_no_import_circles() -> None:
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("ios_tvm")
    modules = sorted(graph.modules)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(m: str) -> None:  # Tarjan's strongly connected components
        index[m] = low[m] = len(index)
        stack.append(m)
        on_stack.add(m)
        for n in graph.find_modules_directly_imported_by(m):
            if n not in index:
                visit(n)
                low[m] = min(low[m], low[n])
            elif n in on_stack:
                low[m] = min(low[m], index[n])
        if low[m] == index[m]:
            component = []
            while True:
                n = stack.pop()
                on_stack.discard(n)
                component.append(n)
                if n == m:
                    break
            # A package's __init__ re-exporting its own submodules is not a circle of logic.
            if len(component) > 1 and not _package_and_children(component):
                circles.append(sorted(component))

    for m in modules:
        if m not in index:
            visit(m)
    assert not circles, circles


def _package_and_children(component: list[str]) -> bool:
    parents = [m for m in component if all(o == m or o.startswith(m + ".") for o in component)]
    return bool(parents)
