"""The package surface: every public name of ``ios_tvm`` stays what it is, whatever is imported.

Each check runs in a fresh interpreter, since what breaks here is the order in which a process
first imports the package's submodules: the import system binds a submodule on its package when
it is first imported, so a submodule named like a public function (once ``ios_tvm.build``)
replaces the function. No public name may be a submodule's name.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import ios_tvm

LAZY = sorted(ios_tvm._LAZY)

# Resolve every lazy name twice, then import every module of the package (which would bind
# ``ios_tvm.build`` the module over ``ios_tvm.build`` the function) and resolve them again.
_CHECK = """
import importlib
import pkgutil
import sys
import types
import ios_tvm

def expected(name):
    module, attr = ios_tvm._LAZY[name]
    return getattr(importlib.import_module(module), attr)

def check(where):
    for name in ios_tvm.__all__:
        first, second = getattr(ios_tvm, name), getattr(ios_tvm, name)
        assert not isinstance(first, types.ModuleType), (where, name, first)
        assert first is second, (where, name)
        if name in ios_tvm._LAZY:
            assert first is expected(name), (where, name)
    from ios_tvm.compiler.build import build
    from ios_tvm.runtime.artifact import load
    assert build is ios_tvm.build and callable(build), where
    assert load is ios_tvm.load and callable(load), where
"""


def _run(code: str) -> None:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _import_all() -> str:
    """Code importing every module of ios_tvm that imports here (optional extras may not)."""
    return """
for info in pkgutil.walk_packages(ios_tvm.__path__, "ios_tvm."):
    if info.name == "ios_tvm.__main__":  # runs the command line
        continue
    try:
        importlib.import_module(info.name)
    except ImportError:
        pass
"""


def test_lazy_names_then_submodules() -> None:
    """Names first (the first access imports ``ios_tvm.build``), then every submodule."""
    _run(_CHECK + "check('names first')\n" + _import_all() + "check('after all imports')\n")


def test_submodules_then_lazy_names() -> None:
    """Submodules first (as another library or a test would), then the names."""
    _run(_CHECK.replace("import ios_tvm\n", "import ios_tvm.compiler.build, ios_tvm.runtime\n"
                        "import ios_tvm\n", 1)
         + _import_all() + "check('submodules first')\n")


@pytest.mark.parametrize("name", LAZY)
def test_each_lazy_name_twice_in_a_fresh_process(name: str) -> None:
    """One name alone, accessed twice, with its defining module imported before the first
    access, between the two, or not at all."""
    module, attr = ios_tvm._LAZY[name]
    imports = [f"import {module}"]
    for before, between in [("", ""), *[(i, "") for i in imports], *[("", i) for i in imports]]:
        _run(f"""
import importlib
import ios_tvm
{before}
value = ios_tvm.{name}
{between}
again = ios_tvm.{name}
assert value is again is getattr(importlib.import_module({module!r}), {attr!r}), (value, again)
""")


def test_build_called_twice_in_one_process() -> None:
    """The reported case: ``ios_tvm.build(a); ios_tvm.build(b)``."""
    pytest.importorskip("tvm")
    _run("""
import ios_tvm
from ios_tvm.models import sample_block
for channels in (4, 8):
    r = ios_tvm.build(sample_block(channels=channels, size=4), "llvm", cost="analytic",
                      measure=False, compare_vm=False)
    assert r.schedule is not None
""")


def test_no_public_name_is_a_submodule() -> None:
    """The class of the ``ios_tvm.build`` bug: a public name equal to a submodule's name."""
    import pkgutil

    submodules = {info.name.rsplit(".", 1)[-1] for info in pkgutil.iter_modules(ios_tvm.__path__)}
    assert not submodules & set(ios_tvm.__all__), submodules & set(ios_tvm.__all__)


def test_submodule_stays_importable() -> None:
    """``from ios_tvm.compiler.build import ...`` gives what ``ios_tvm`` exports."""
    _run("""
import ios_tvm
ios_tvm.build
from ios_tvm.compiler.build import BuildResult, build
assert build is ios_tvm.build and BuildResult is ios_tvm.BuildResult
""")
