"""A persistent cache of stage measurements (an SQLite file).

Each row is one measured stage, keyed by a *context* (device name, target, TVM version,
executor settings, cache version) and a *stage key* (the stage's strategy and its groups of
kernels, each kernel named by a hash of its TIR and argument shapes). Rebuilding the same
model, or another model that shares stages, measures nothing again.

SQLite makes it safe for several processes at once (WAL journal, busy timeout). A file that
is not a valid cache raises :class:`CacheError` naming it, or with ``on_corrupt="rebuild"``
is moved aside to ``<file>.corrupt`` and started afresh. A row with a value that cannot be a
latency is dropped and measured again rather than trusted. A valid cache that this process
may not write (a shared, read-only file or folder) is read, with a warning that new
measurements are not saved.
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
from urllib.parse import quote

from ios_tvm.errors import CacheError

logger = logging.getLogger(__name__)
#: Bump when the meaning of a stored measurement changes; old rows are then ignored.
CACHE_VERSION = 1
DEFAULT_CACHE_DIR = Path(os.environ.get("IOS_TVM_CACHE_DIR",
                                        Path.home() / ".cache" / "ios_tvm"))


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
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CacheError(f"cannot create the folder of the measurement cache {self.path}: "
                             f"{e}") from e
        self._lock = threading.Lock()
        #: True when the file can only be read: lookups work, new measurements are not saved.
        self.read_only = False
        try:
            self._conn = self._open()
        except sqlite3.DatabaseError as e:
            if not self._writable():
                self._conn = self._open_read_only(e)
                return
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

    def _writable(self) -> bool:
        """Whether this process may write the file and the journal beside it."""
        eff = os.access in os.supports_effective_ids  # as this process, even when setuid
        folder = self.path.parent
        return os.access(folder, os.W_OK, effective_ids=eff) and (
            not self.path.exists() or os.access(self.path, os.W_OK, effective_ids=eff))

    def _open_read_only(self, error: sqlite3.DatabaseError) -> sqlite3.Connection:
        """Open a cache this process may not write, for reading; CacheError if it is none."""
        if not self.path.is_file():
            raise CacheError(f"cannot create the measurement cache {self.path}: its folder is "
                             f"not writable ({error}); pass another cache file or none") from error
        uri = f"file:{quote(str(self.path.resolve()))}"
        # mode=ro still needs the WAL index beside the file; immutable=1 reads without it
        # (in a read-only folder), trusting that nobody writes the file meanwhile.
        last: sqlite3.DatabaseError = error
        for query in ("?mode=ro", "?immutable=1"):
            try:
                conn = sqlite3.connect(uri + query, uri=True, timeout=60.0,
                                       check_same_thread=False)
            except sqlite3.DatabaseError as e:
                last = e
                continue
            try:
                conn.execute("SELECT context, stage, seconds FROM measurements LIMIT 1")
            except sqlite3.DatabaseError as e:
                conn.close()
                last = e
                if not isinstance(e, sqlite3.OperationalError) or "no such table" in str(e):
                    break  # readable, but not a cache: no point trying further
                continue
            self.read_only = True
            logger.warning("measurement cache %s is read-only: reading it, but new "
                           "measurements will not be saved", self.path)
            return conn
        raise CacheError(f"{self.path} is not a valid ios-tvm measurement cache ({last}); it "
                         "is read-only here too, so pass another cache file or none") from last

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
                if not self.read_only:
                    self._conn.execute("DELETE FROM measurements WHERE context=? AND stage=?",
                                       (context, stage))
                    self._conn.commit()
                return None
            return value

    def items(self, context: str) -> list[tuple[str, float, float]]:
        """Every valid stored (stage, seconds, created time) of ``context``."""
        with self._lock:
            try:
                rows = self._conn.execute(
                    "SELECT stage, seconds, created FROM measurements WHERE context=?",
                    (context,)).fetchall()
            except sqlite3.DatabaseError as e:
                raise CacheError(f"reading the measurement cache {self.path} failed: {e}") from e
        return [(str(k), float(v), float(t)) for k, v, t in rows
                if isinstance(v, float) and math.isfinite(v) and v > 0.0]

    def contexts(self) -> list[str]:
        """Every measurement context with stored rows."""
        with self._lock:
            try:
                rows = self._conn.execute("SELECT DISTINCT context FROM measurements").fetchall()
            except sqlite3.DatabaseError as e:
                raise CacheError(f"reading the measurement cache {self.path} failed: {e}") from e
        return sorted(str(r[0]) for r in rows)

    def put(self, context: str, stage: str, seconds: float, samples: list[float]) -> None:
        """Store a measurement (replacing an older one for the same key).

        A read-only cache (:attr:`read_only`, warned about when opened) keeps what it had.
        """
        if not math.isfinite(seconds) or seconds <= 0.0:
            raise ValueError(f"refusing to cache latency {seconds!r} for stage {stage}")
        if self.read_only:
            return
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
        if self.read_only:
            raise CacheError(f"the measurement cache {self.path} is read-only")
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
