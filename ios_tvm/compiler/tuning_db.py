"""The MetaSchedule tuning database on disk: validation, the target it was tuned for, opening it.

A database directory holds MetaSchedule's JSON files (one document per line) and
``ios_tvm_tune.json``, which records the target it was tuned for. It is validated line by line
before MetaSchedule reads it (its C++ parser must not see a truncated file); a corrupt one, or
one tuned for another target, raises :class:`~ios_tvm.errors.TuningDatabaseError` naming the
file and line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ios_tvm.compiler.target import resolve_target
from ios_tvm.errors import TuningDatabaseError

#: The files of a MetaSchedule JSON database (one JSON document per line each).
DATABASE_FILES = ("database_workload.json", "database_tuning_record.json")
#: ios-tvm's side file: which target the database was tuned for, and by what.
META_FILE = "ios_tvm_tune.json"
#: Target attributes that decide whether tuned kernels fit a compile target.
_TARGET_KEYS = ("kind", "mcpu", "mtriple", "mattr", "arch", "mabi")


# --------------------------------------------------------------------------------------------
# targets
# --------------------------------------------------------------------------------------------
def tuning_target(target: Any) -> Any:
    """The target MetaSchedule tunes for: ``target`` with ``num-cores`` set (llvm needs it).

    ``num-cores`` is the number of CPUs this process may run on (``TVM_NUM_THREADS`` if set),
    the thread count the kernels will use.
    """
    import tvm


    tgt = resolve_target(target)
    if tgt.kind.name != "llvm":
        return tgt
    doc = dict(tgt.export())
    if not doc.get("num-cores"):
        doc["num-cores"] = _num_cores()
    doc.pop("host", None)
    return tvm.target.Target(doc)


def _num_cores() -> int:
    env = os.environ.get("TVM_NUM_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _target_key(target: Any) -> dict[str, Any]:
    """The attributes of ``target`` that tuned kernels depend on (not num-cores, tags, host)."""
    doc = dict(target.export()) if hasattr(target, "export") else dict(target)
    out = {}
    for key in _TARGET_KEYS:
        value = doc.get(key)
        if value not in (None, "", []):
            out[key] = [str(v) for v in value] if isinstance(value, list | tuple) else str(value)
    return out


# --------------------------------------------------------------------------------------------
# database files
# --------------------------------------------------------------------------------------------
@dataclass
class DatabaseInfo:
    """What a database directory holds (after :func:`validate_database`).

    Attributes
    ----------
    directory
        The database directory.
    workloads
        Number of workload lines (distinct kernels).
    records
        Number of tuning-record lines (measured trials).
    meta
        The contents of ``ios_tvm_tune.json`` ({} if absent).
    """

    directory: Path
    workloads: int = 0
    records: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        """No records at all."""
        return self.records == 0


def validate_database(directory: str | os.PathLike[str]) -> DatabaseInfo:
    """Check a MetaSchedule JSON database directory before anything parses it natively.

    Every line of ``database_workload.json`` must be a JSON array ``[hash, module]`` and every
    line of ``database_tuning_record.json`` a JSON array ``[workload index, record]`` whose
    index names an existing workload. Missing files mean an empty database.

    Raises
    ------
    IosTvmError
        Naming the file and line of the first corrupt entry (e.g. a truncated last line), or
        when ``directory`` is a file.
    """
    root = Path(directory)
    if root.exists() and not root.is_dir():
        raise TuningDatabaseError(f"{root}: a tuning database must be a directory")
    info = DatabaseInfo(root)
    workload_path, record_path = (root / name for name in DATABASE_FILES)
    for lineno, value in _json_lines(workload_path):
        if not (isinstance(value, list) and len(value) == 2 and isinstance(value[1], str)):
            raise TuningDatabaseError(f"{workload_path}:{lineno}: corrupt tuning database: "
                                      "expected [hash, module] on every line")
        info.workloads += 1
    for lineno, value in _json_lines(record_path):
        if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], int)
                and isinstance(value[1], list)):
            raise TuningDatabaseError(f"{record_path}:{lineno}: corrupt tuning database: expected "
                                      "[workload index, record] on every line")
        if not 0 <= value[0] < info.workloads:
            raise TuningDatabaseError(f"{record_path}:{lineno}: corrupt tuning database: "
                                      f"record names workload {value[0]}, but "
                                      f"{workload_path.name} has {info.workloads}")
        info.records += 1
    meta_path = root / META_FILE
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise TuningDatabaseError(f"{meta_path}: corrupt ({e})") from e
        if not isinstance(meta, dict):
            raise TuningDatabaseError(f"{meta_path}: corrupt (not a JSON object)")
        info.meta = meta
    return info


def _json_lines(path: Path) -> list[tuple[int, Any]]:
    if not path.is_file():
        return []
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise TuningDatabaseError(f"{path}: cannot read the tuning database: {e}") from e
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((lineno, json.loads(line)))
        except json.JSONDecodeError as e:
            raise TuningDatabaseError(f"{path}:{lineno}: corrupt tuning database (truncated or "
                                      f"edited? {e.msg} at column {e.colno})") from e
    return out


def open_database(directory: str | os.PathLike[str], target: Any = None, *,
                  create: bool = False) -> Any:
    """Validate and open a MetaSchedule JSON database directory.

    Parameters
    ----------
    directory
        The database directory (written by :func:`tune`).
    target
        When given, the target the database will be applied for: it must match the target it
        was tuned for (kind, mcpu, mtriple, mattr, arch; ``num-cores`` may differ).
    create
        Create the directory and empty tables if missing (for tuning); otherwise a missing
        directory is an error.

    Returns
    -------
    tvm.s_tir.meta_schedule.database.JSONDatabase

    Raises
    ------
    IosTvmError
        The directory is missing, corrupt (naming the file and line), or tuned for another
        target.
    """
    from tvm.s_tir import meta_schedule as ms

    root = Path(directory)
    if not root.exists():
        if not create:
            raise TuningDatabaseError(f"{root}: no such tuning database (run `ios-tvm tune` first)")
        root.mkdir(parents=True)
    info = validate_database(root)
    if target is not None and info.meta.get("target"):
        want = _target_key(_resolve(target))
        have = info.meta.get("target_key") or {}
        if have and have != want:
            raise TuningDatabaseError(f"{root}: tuned for target {info.meta['target']}, not "
                                      f"{json.dumps(want)}; tune again for this target or use "
                                      "another --database")
    try:
        return ms.database.JSONDatabase(work_dir=str(root), allow_missing=True)
    except Exception as e:  # the tables are valid JSON but not valid IR
        first = str(e).strip().splitlines()
        raise TuningDatabaseError(f"{root}: MetaSchedule cannot read this tuning database: "
                                  f"{first[-1] if first else type(e).__name__}") from e


def _resolve(target: Any) -> Any:
    return resolve_target(target)


def _write_root_meta(root: Path, update: Mapping[str, Any]) -> None:
    path = root / META_FILE
    try:
        meta = json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        meta = {}
    meta.update(update)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    tmp.replace(path)


def _write_meta(root: Path, target: Any, model: str, update: Mapping[str, Any]) -> None:
    path = root / META_FILE
    meta: dict[str, Any] = {}
    if path.is_file():
        try:
            meta = json.loads(path.read_text())
        except json.JSONDecodeError:
            meta = {}
    meta.update({"format": "ios_tvm.TuneDatabase", "version": 1, "target": str(target),
                 "target_key": _target_key(target)})
    models = dict(meta.get("models", {}))
    models[model] = {**models.get(model, {}), **dict(update)}
    meta["models"] = models
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    tmp.replace(path)
