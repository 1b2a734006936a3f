"""The error classes: one module, two families, registered with tvm-ffi, raised specifically."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from ios_tvm import errors
from ios_tvm.errors import (
    ConfigError,
    ExecutionError,
    InternalError,
    IosTvmError,
    all_errors,
    register_errors,
)

PACKAGE = Path(errors.__file__).parent


def test_every_error_class_lives_in_errors_py() -> None:
    """No module but errors.py defines an exception class (one place to look them up).

    Private control-flow exceptions that never leave their module (``_Skip``) are allowed.
    """
    elsewhere = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "errors.py" and path.parent == PACKAGE:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_") and any(
                    getattr(b, "id", getattr(b, "attr", "")).endswith(("Error", "Exception"))
                    for b in node.bases):
                elsewhere.append(f"{path.relative_to(PACKAGE)}: {node.name}")
    assert not elsewhere, elsewhere


def test_code_raises_specific_errors_not_the_base_class() -> None:
    raised = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and \
                    getattr(node.exc.func, "id", None) == "IosTvmError":
                raised.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not raised, raised


def test_families() -> None:
    classes = all_errors()
    assert classes[0] is IosTvmError and len(set(classes)) == len(classes) > 10
    for cls in classes[1:]:
        assert issubclass(cls, IosTvmError)
        # Every error is exactly one of: the caller's (ValueError), the environment's, a bug.
        assert not (issubclass(cls, ValueError) and issubclass(cls, RuntimeError)), cls
    assert issubclass(InternalError, RuntimeError) and issubclass(ConfigError, ValueError)


def test_errors_keep_their_type_across_the_ffi() -> None:
    """A Python error raised inside a function that C++ calls comes back as itself."""
    tvm_ffi = pytest.importorskip("tvm_ffi")
    register_errors()
    for cls in all_errors():
        assert tvm_ffi.core.ERROR_NAME_TO_TYPE[cls.__name__] is cls

    def kernel() -> None:
        raise ExecutionError("kernel 'k' failed")

    func = tvm_ffi.convert(kernel)
    with pytest.raises(ExecutionError, match="kernel 'k' failed"):
        func()
