"""A cache of scan results, so a nightly rescan only decodes what is new or changed.

One small SQLite file under the user cache dir ($XDG_CACHE_HOME/imgclean/scan-cache.sqlite,
~/.cache/imgclean/ by default), never inside a scanned folder. A result is reused only when the
file's absolute path, size and mtime_ns, and the model key (the model's fingerprint plus a hash
of its settings and the imgclean version) all match; anything else is a miss and is scored.

The cache can only make a scan faster, never different:
- a file modified within RACY_SECONDS of the scan is not stored (its mtime could repeat after a
  second write in the same clock tick, like git's "racily clean" files);
- a cache file that is unreadable or not ours is moved aside and rebuilt; any SQLite error later
  turns the cache off for the rest of the run (every lookup a miss). Nothing here raises.

Results are kept two ways (pipeline/run_snapshots.py decides which):
- a snapshot per run of the walk (walk.walk_runs: up to 4,096 consecutive files of one folder):
  every entry exactly as the walk saw it (path, size, mtime_ns, skip reason, device, inode), its
  outcome, and the stretch of the folder's listing it covered (store/run_format.py). A rescan
  whose listing shows that run again unchanged (walk_runs' `known`: checked with whole-list
  operations, no entry built one by one), or whose run is equal entry for entry, takes the
  run's records from the snapshot in one query; a run that differs (a file added, removed, touched, replaced) is
  answered file by file, first from the folder's snapshots (load_run: a file whose path, size
  and mtime_ns are a snapshot's), then from the per-file rows. A snapshot is written only when
  every file of the run has a cacheable outcome and none is racy;
- one row per file, for the files of runs that could not be snapshot (a racy file, a failed
  move, a scan stopped in the middle of a run). A snapshotted run writes no per-file rows: the
  two B-trees keyed by (model, path) cost a cold scan more than the scoring's own bookkeeping.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import sys
import time
from pathlib import Path

from .. import __version__
from . import run_format

log = logging.getLogger(__name__)

CACHE_FILE = "scan-cache.sqlite"
SCHEMA_VERSION = 1
RACY_SECONDS = 2.0
_COMMIT_EVERY = 4096
_FS_UTF8 = (sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()) == ("utf-8", "surrogateescape")
LOOKUP_CHUNK = 500  # keys per SELECT ... IN (...): under SQLite's oldest limit of 999 variables


def _lookup_sql(n: int) -> str:
    sql = (
        "SELECT path, size, mtime_ns, status, predicted, nearest, score, message FROM results"
        f" WHERE model=? AND path IN ({','.join('?' * n)})"
    )
    if len(_LOOKUP_SQL) < 64:
        _LOOKUP_SQL[n] = sql
    return sql


_LOOKUP_SQL: dict[int, str] = {}


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "imgclean"


def model_key(config: dict, extra: str = "") -> str:
    """What a cached score depends on: the model (weights, detector, settings) and this code."""
    settings = json.dumps(config, sort_keys=True, default=str)
    digest = hashlib.sha256(f"{__version__}\0{settings}\0{extra}".encode()).hexdigest()[:16]
    return f"{config.get('fingerprint', '')}-{digest}"


class ScanCache:
    """get(path, size, mtime_ns) -> cached tuple or None; put(...) stores one result; get_many and
    put_many do the same for many files with one query; snapshot / get_run / put_run / load_run /
    run_ordinals read and write the run snapshots."""

    def __init__(self, directory: Path | None, key: str):
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.path = self.directory / CACHE_FILE
        self.key = key
        self.hits = 0
        self.misses = 0
        self.enabled = True
        self._db: sqlite3.Connection | None = None
        self._pending = 0
        self._racy_after_ns = time.time_ns() - int(RACY_SECONDS * 1e9)
        # What the cache held for this model as it was opened: per-file rows, run snapshots. A
        # scan skips the queries of what it holds nothing of (a first scan with a new model:
        # all of them).
        self.held_results = False
        self.held_runs = False

    # ---- opening -----------------------------------------------------------------------------
    def open(self) -> "ScanCache":
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            try:
                self._db = self._connect()
            except sqlite3.DatabaseError as exc:
                self._set_aside(exc)
                self._db = self._connect()
            self.held_results = self._db.execute("SELECT 1 FROM results WHERE model=? LIMIT 1", (self.key,)).fetchone() is not None
            self.held_runs = self._db.execute("SELECT 1 FROM runs WHERE model=? LIMIT 1", (self.key,)).fetchone() is not None
        except (OSError, sqlite3.Error) as exc:
            log.warning("scan cache %s cannot be used (%s); scanning without it", self.path, exc)
            self._close_quietly()
            self.enabled = False
        return self

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if version == 0 and not tables:
                db.execute(
                    "CREATE TABLE results (model TEXT NOT NULL, path BLOB NOT NULL, size INTEGER NOT NULL,"
                    " mtime_ns INTEGER NOT NULL, status TEXT NOT NULL, predicted TEXT, nearest TEXT,"
                    " score REAL, message TEXT NOT NULL, PRIMARY KEY (model, path))"
                )
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION or "results" not in tables:
                raise sqlite3.DatabaseError(f"schema version {version}, expected {SCHEMA_VERSION}")
            # Added later, in the same schema version: a cache without it gains it, and an older
            # imgclean reading this one never looks at it.
            db.execute(
                "CREATE TABLE IF NOT EXISTS runs (model TEXT NOT NULL, folder BLOB NOT NULL, ordinal INTEGER NOT NULL,"
                " snapshot BLOB NOT NULL, PRIMARY KEY (model, folder, ordinal))"
            )
            db.execute("SELECT model, path, size, mtime_ns, status, predicted, nearest, score, message FROM results LIMIT 1")
        except BaseException:
            db.close()
            raise
        return db

    def _set_aside(self, exc: Exception) -> None:
        log.warning("scan cache %s is damaged (%s); starting a new one", self.path, exc)
        for suffix in ("", "-wal", "-shm"):
            p = Path(f"{self.path}{suffix}")
            if p.exists():
                os.replace(p, f"{p}.damaged")

    def _close_quietly(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
            self._db = None

    def _disable(self, exc: Exception) -> None:
        log.warning("scan cache %s failed (%s); continuing without it", self.path, exc)
        self.enabled = False
        self._close_quietly()

    @property
    def held_nothing(self) -> bool:
        return not (self.held_results or self.held_runs)

    # ---- use -----------------------------------------------------------------------------------
    @staticmethod
    def _path_key(path: Path) -> bytes:
        path = os.fspath(path)
        if _FS_UTF8 and path.__class__ is str and path[:1] == "/":
            return path.encode("utf-8", "surrogateescape")  # what os.fsencode does, without its lookups
        return os.fsencode(path if os.path.isabs(path) else os.path.abspath(path))

    def get(self, path: Path, size: int, mtime_ns: int) -> tuple[str, str | None, str | None, float | None, str] | None:
        """(status, predicted, nearest, score, message) stored for this exact file, or None."""
        if not self.enabled:
            self.misses += 1
            return None
        try:
            row = self._db.execute(
                "SELECT size, mtime_ns, status, predicted, nearest, score, message FROM results WHERE model=? AND path=?",
                (self.key, self._path_key(path)),
            ).fetchone()
        except sqlite3.Error as exc:
            self._disable(exc)
            row = None
        if row is None or row[0] != size or row[1] != mtime_ns:
            self.misses += 1
            return None
        self.hits += 1
        return row[2], row[3], row[4], row[5], row[6]

    def get_many(self, keys: list[tuple]) -> list[tuple | None]:
        """get() for many (path, size, mtime_ns) at once, in order: one query per LOOKUP_CHUNK."""
        if not self.enabled or not keys:
            self.misses += len(keys)
            return [None] * len(keys)
        wanted = self._keys_of(keys)  # keys may be data.FileEntry: (path, size, mtime_ns, ...)
        rows: dict = {}
        try:
            for i in range(0, len(wanted), LOOKUP_CHUNK):
                part = wanted[i : i + LOOKUP_CHUNK]
                sql = _LOOKUP_SQL.get(len(part)) or _lookup_sql(len(part))
                rows.update({row[0]: row for row in self._db.execute(sql, (self.key, *part))})
        except sqlite3.Error as exc:
            self._disable(exc)
            self.misses += len(keys)
            return [None] * len(keys)
        get = rows.get
        out = [
            row[3:] if (row := get(w)) is not None and row[1] == k[1] and row[2] == k[2] else None
            for w, k in zip(wanted, keys, strict=True)
        ]
        hits = len(out) - out.count(None)
        self.hits += hits
        self.misses += len(out) - hits
        return out

    def _keys_of(self, keys) -> list[bytes]:
        """The stored path keys of (path, ...) tuples: one encode each when all are absolute str."""
        paths = [k[0] for k in keys]
        if _FS_UTF8 and all(p.__class__ is str and p[:1] == "/" for p in paths):
            return [p.encode("utf-8", "surrogateescape") for p in paths]
        return [self._path_key(p) for p in paths]

    def put(self, path: Path, size: int, mtime_ns: int, status: str, predicted, nearest, score, message: str) -> None:
        self.put_many([(path, size, mtime_ns, status, predicted, nearest, score, message)])

    def put_many(self, results) -> None:
        """put() for many (path, size, mtime_ns, status, predicted, nearest, score, message) at once."""
        if not self.enabled:
            return
        racy, key = self._racy_after_ns, self.key
        results = [r for r in results if r[2] < racy]
        rows = [(key, k, *r[1:]) for k, r in zip(self._keys_of(results), results, strict=True)]
        if not rows:
            return
        try:
            if self._pending == 0:
                self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            self._pending += len(rows)
            if self._pending >= _COMMIT_EVERY:
                self.flush()
        except sqlite3.Error as exc:
            self._disable(exc)

    # ---- run snapshots ---------------------------------------------------------------------------
    # The snapshots' format, and how one is checked and read back: store/run_format.py.

    def snapshot(self, folder, ordinal: int) -> tuple | None:
        """The stored snapshot of (folder, ordinal) as a tuple (see above), or None when there
        is none or it is damaged (bad checksum, wrong shape): a miss, rewritten by the scan."""
        if not self.enabled or not self.held_runs:
            return None
        try:
            row = self._db.execute(
                "SELECT snapshot FROM runs WHERE model=? AND folder=? AND ordinal=?",
                (self.key, self._folder_key(folder), ordinal),
            ).fetchone()
        except sqlite3.Error as exc:
            self._disable(exc)
            return None
        if row is None:
            return None
        return run_format.decoded(row[0])

    def get_run(self, folder, ordinal: int, entries: list, statuses: frozenset, snapshot=False) -> tuple[list[tuple], str | None] | None:
        """(outcomes, rows) stored for a walk run: the outcomes (status, predicted, nearest, score,
        message) in order and the text stored with them, when the stored snapshot of (folder,
        ordinal) (`snapshot` when already read, False to read it) holds exactly these entries and
        only these statuses; else None."""
        if snapshot is False:
            snapshot = self.snapshot(folder, ordinal)
        if snapshot is None or len(snapshot[7]) != len(entries) or run_format.entries(snapshot, folder) != entries:
            return None
        return self.answered(snapshot, statuses)

    def answered(self, snapshot: tuple, statuses: frozenset) -> tuple[list[tuple], str | None] | None:
        """(outcomes, rows) of a snapshot whose entries are the run's, when it holds only these
        statuses (counted as cache hits); else None."""
        outcomes = snapshot[8]
        if not set(map(run_format.status, outcomes)) <= statuses:
            return None
        self.hits += snapshot[4].count("")  # skipped files are never looked up
        return outcomes, snapshot[9]

    def run_ordinals(self, folder) -> list[int]:
        """The ordinals of the runs of `folder` stored for this model, in order."""
        if not self.enabled or not self.held_runs:
            return []
        try:
            return [r[0] for r in self._db.execute(
                "SELECT ordinal FROM runs WHERE model=? AND folder=? ORDER BY ordinal", (self.key, self._folder_key(folder)))]
        except sqlite3.Error as exc:
            self._disable(exc)
            return []

    def load_run(self, folder, ordinal: int) -> tuple[list[tuple], list[tuple], str | None] | None:
        """(entries, outcomes, rows) of the stored snapshot of (folder, ordinal), or None."""
        snapshot = self.snapshot(folder, ordinal)
        if snapshot is None:
            return None
        return run_format.entries(snapshot, folder), snapshot[8], snapshot[9]

    def put_run(self, folder, ordinal: int, entries: list, outcomes: list[tuple], rows: str | None = None,
                span: list | None = None, positions: list[int] | None = None) -> bool:
        """Store a run's snapshot: its entries (path, size, mtime_ns, skip_reason, dev, ino), all
        in `folder`, each one's outcome, `rows` (a text given back with them) and the listing
        stretch it covered (`span`, `positions`: walk.Run's). Callers pass only cacheable
        outcomes; a run holding a racy file is not stored. True when stored."""
        if not self.enabled or not entries or any(e[2] >= self._racy_after_ns for e in entries):
            return False
        blob = run_format.encoded(folder, entries, outcomes, rows, span, positions)
        if blob is None:  # a value marshal cannot store: no snapshot (the caller stores rows per file)
            return False
        try:
            if self._pending == 0:
                self._db.execute("BEGIN")
            self._db.execute("INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?)", (self.key, self._folder_key(folder), ordinal, blob))
            self._pending += len(entries)
            if self._pending >= _COMMIT_EVERY:
                self.flush()
        except sqlite3.Error as exc:
            self._disable(exc)
            return False
        return self.enabled

    def _folder_key(self, folder) -> bytes:
        return self._path_key(folder)

    def flush(self) -> None:
        if self._db is not None and self._pending:
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._disable(exc)
            self._pending = 0

    def close(self) -> None:
        self.flush()
        self._close_quietly()

    def __enter__(self) -> "ScanCache":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()
