"""A persistent cache of stage measurements (an SQLite file).

Each row is one measured stage, keyed by a *context* (device name, target, TVM version,
executor settings, cache version) and a *stage key* (the stage's strategy and its groups of
kernels, each kernel named by a hash of its TIR and argument shapes). Rebuilding the same
model, or another model that shares stages, measures nothing again.

SQLite makes it safe for several processes at once (WAL journal, busy timeout). A file that
is not a valid cache raises :class:`CacheError` naming it, or with ``on_corrupt="rebuild"``
is moved aside to ``<file>.corrupt`` and started afresh. A row with a value that cannot be a
latency is dropped and measured again rather than trusted.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import threading
import time
from pathlib import Path

from ..errors import IosTvmError

logger = logging.getLogger(__name__)

#: Bump when the meaning of a stored measurement changes; old rows are then ignored.
CACHE_VERSION = 1
DEFAULT_CACHE_DIR = Path(os.environ.get("IOS_TVM_CACHE_DIR",
                                        Path.home() / ".cache" / "ios_tvm"))


class CacheError(IosTvmError):
    """The measurement cache file is unusable (the message names it)."""


class MeasurementCache:
    """Stage latencies on disk.

    Parameters
    ----------
    path
        The SQLite file (created with its folder if missing). Default:
        ``$IOS_TVM_CACHE_DIR/measurements.sqlite`` or ``~/.cache/ios_tvm/...``.
    on_corrupt
        ``"raise"`` (default) or ``"rebuild"``: what to do with a file that is not a cache.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *,
                 on_corrupt: str = "raise") -> None:
        if on_corrupt not in ("raise", "rebuild"):
            raise ValueError(f"on_corrupt must be 'raise' or 'rebuild', not {on_corrupt!r}")
        self.path = Path(path) if path is not None else DEFAULT_CACHE_DIR / "measurements.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._conn = self._open()
        except sqlite3.DatabaseError as e:
            if on_corrupt == "raise":
                raise CacheError(f"{self.path} is not a valid ios-tvm measurement cache ({e}); "
                                 "delete it or open it with on_corrupt='rebuild'") from e
            aside = self.path.with_name(self.path.name + ".corrupt")
            logger.warning("measurement cache %s is corrupt (%s); moved to %s", self.path, e, aside)
            self.path.replace(aside)
            self._conn = self._open()

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=60.0, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS measurements ("
                " context TEXT NOT NULL, stage TEXT NOT NULL, seconds REAL NOT NULL,"
                " samples TEXT NOT NULL, created REAL NOT NULL, PRIMARY KEY (context, stage))")
            conn.execute("SELECT count(*) FROM measurements").fetchone()
            conn.commit()
        except sqlite3.DatabaseError:
            conn.close()
            raise
        return conn

    def get(self, context: str, stage: str) -> float | None:
        """The stored latency (seconds) of ``stage`` in ``context``, or None."""
        with self._lock:
            try:
                row = self._conn.execute(
                    "SELECT seconds FROM measurements WHERE context=? AND stage=?",
                    (context, stage)).fetchone()
            except sqlite3.DatabaseError as e:
                raise CacheError(f"reading the measurement cache {self.path} failed: {e}") from e
            if row is None:
                return None
            value = row[0]
            if not isinstance(value, float) or not math.isfinite(value) or value <= 0.0:
                logger.warning("dropping an invalid cached latency %r in %s", value, self.path)
                self._conn.execute("DELETE FROM measurements WHERE context=? AND stage=?",
                                   (context, stage))
                self._conn.commit()
                return None
            return value

    def put(self, context: str, stage: str, seconds: float, samples: list[float]) -> None:
        """Store a measurement (replacing an older one for the same key)."""
        if not math.isfinite(seconds) or seconds <= 0.0:
            raise ValueError(f"refusing to cache latency {seconds!r} for stage {stage}")
        with self._lock:
            try:
                self._conn.execute(
                    "INSERT OR REPLACE INTO measurements VALUES (?, ?, ?, ?, ?)",
                    (context, stage, float(seconds), json.dumps(samples), time.time()))
                self._conn.commit()
            except sqlite3.DatabaseError as e:
                raise CacheError(f"writing the measurement cache {self.path} failed: {e}") from e

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM measurements").fetchone()[0])

    def clear(self) -> None:
        """Delete every measurement."""
        with self._lock:
            self._conn.execute("DELETE FROM measurements")
            self._conn.commit()

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._conn.close()


def open_cache(cache: MeasurementCache | str | os.PathLike[str] | bool | None
               ) -> MeasurementCache | None:
    """The cache a ``cache=`` argument names.

    True: the user cache; False or None: none; a path: that file; a
    :class:`MeasurementCache`: itself.
    """
    if cache is True:
        return MeasurementCache()
    if cache is None or cache is False:
        return None
    if isinstance(cache, MeasurementCache):
        return cache
    return MeasurementCache(cache)
