"""A cache of scan results, so a nightly rescan only decodes what is new or changed.

One small SQLite file under the user cache dir ($XDG_CACHE_HOME/imgclean/scan-cache.sqlite,
~/.cache/imgclean/ by default), never inside a scanned folder. A result is reused only for the
same file, as git's index decides it: the same absolute path, device, inode, size, mtime_ns and
ctime_ns (walk.FileEntry.identity), and the same model key (the model's fingerprint, a hash of
its settings, the imgclean version). The inode catches a file replaced by another of the same
size and mtime (`cp --preserve=timestamps`, `rsync -t`, a backup restored); the ctime, which no
user can set, an edit that put the mtime back (`touch -r`, `exiftool -P`).

The cache can only make a scan faster, never different:
- a file whose mtime or ctime is within RACY_SECONDS of the scan's start, or later (a clock set
  back, a server's ahead), is not stored: a second change in the same clock tick would leave
  both the same (git's "racily clean" files);
- an outcome marked transient (data.TransientMessage: EACCES, EIO, EMFILE, MemoryError, a
  decode process killed...) is never stored: it says nothing lasting about the file;
- a cache folder another user could write, or a link, is not used (one warning:
  store/cache_trust.py); a cache file not this user's alone, damaged, foreign or of an older
  schema is set aside or emptied and rebuilt; a later SQLite error turns the cache off for the
  rest of the run (every lookup a miss). Nothing here raises.

Results are kept two ways (pipeline/scan/run_snapshots.py decides which):
- a snapshot per run of the walk (walk.walk_runs: up to 4,096 consecutive files of one folder):
  every entry as the walk saw it, its outcome and the stretch of the folder's listing it covered
  (store/run_format.py). A rescan whose listing shows that run again unchanged (walk_runs'
  `known`: whole-list checks), or whose run is equal entry for entry, takes its records from
  the snapshot in one query; a run that differs is answered file by file, from the folder's
  snapshots (load_run) and then the per-file rows, each for the same path and identity only. A
  snapshot is written only when every file of the run has a cacheable outcome and none is racy
  or transient;
- one row per file, for the files of runs that could not be snapshot (a racy file, a transient
  failure, a failed move, a scan stopped mid-run). A snapshotted run writes no per-file rows:
  the two B-trees keyed by (model, path) cost a cold scan more than its own bookkeeping.
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
from ..data import is_transient
from ..walk import identity_of
from . import cache_schema, cache_trust, run_format

log = logging.getLogger(__name__)

CACHE_FILE = "scan-cache.sqlite"
SCHEMA_VERSION = cache_schema.SCHEMA_VERSION
RACY_SECONDS = 2.0
_COMMIT_EVERY = 4096
_FS_UTF8 = (sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()) == ("utf-8", "surrogateescape")
LOOKUP_CHUNK = 500  # keys per SELECT ... IN (...): under SQLite's oldest limit of 999 variables


def _lookup_sql(n: int) -> str:
    sql = (
        "SELECT path, size, mtime_ns, dev, ino, ctime_ns, status, predicted, nearest, score, message FROM results"
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
    """get(entry) -> the cached outcome (status, predicted, nearest, score, message) or None;
    put_many(entries, outcomes) stores results; get_many does get for many entries with one
    query; snapshot / get_run / put_run / load_run / run_ordinals read and write the run
    snapshots. Entries are walk.FileEntry (or tuples of its fields, in its order)."""

    def __init__(self, directory: Path | None, key: str):
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.path = self.directory / CACHE_FILE
        self.key = key
        self.hits = 0
        self.misses = 0
        self.enabled = True
        self._db: sqlite3.Connection | None = None
        self._folder_fd: int | None = None  # the checked cache folder, open while the cache is
        self._pending = 0
        # Files whose mtime or ctime is this recent, or later, are racy: never stored.
        self._racy_after_ns = time.time_ns() - int(RACY_SECONDS * 1e9)
        # What the cache held for this model as it was opened: per-file rows, run snapshots. A
        # scan skips the queries of what it holds nothing of (a first scan with a new model:
        # all of them).
        self.held_results = False
        self.held_runs = False

    # ---- opening -----------------------------------------------------------------------------
    def open(self) -> "ScanCache":
        try:
            self._folder_fd = cache_trust.open_folder(self.directory)
        except cache_trust.UntrustedCache as exc:
            log.warning("scan cache not used, since other users could change what it says: %s; scanning without it "
                        "(use a folder of your own that only you can write: chmod go-w, or --cache-dir)", exc)
            self.enabled = False
            return self
        except OSError as exc:
            log.warning("scan cache %s cannot be used (%s); scanning without it", self.path, exc.strerror or exc)
            self.enabled = False
            return self
        try:
            try:
                cache_trust.check_files(self._folder_fd, CACHE_FILE)
            except cache_trust.UntrustedFile as exc:
                self._set_aside(f"{exc}: other users could change its verdicts", ".untrusted")
                cache_trust.check_files(self._folder_fd, CACHE_FILE)
            try:
                self._db = self._connect()
            except sqlite3.DatabaseError as exc:
                self._set_aside(exc)
                cache_trust.check_files(self._folder_fd, CACHE_FILE)
                self._db = self._connect()
            self.held_results = self._db.execute("SELECT 1 FROM results WHERE model=? LIMIT 1", (self.key,)).fetchone() is not None
            self.held_runs = self._db.execute("SELECT 1 FROM runs WHERE model=? LIMIT 1", (self.key,)).fetchone() is not None
        except (OSError, sqlite3.Error) as exc:
            log.warning("scan cache %s cannot be used (%s); scanning without it", self.path, exc)
            self._close_quietly()
            self.enabled = False
        return self

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(cache_trust.path_through(self._folder_fd, self.directory, CACHE_FILE), timeout=10,
                             isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            if db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                cache_schema.create_or_migrate(db)
            db.execute(
                "SELECT model, path, size, mtime_ns, dev, ino, ctime_ns, status, predicted, nearest, score, message"
                " FROM results LIMIT 1"
            )
            db.execute("SELECT model, folder, ordinal, snapshot FROM runs LIMIT 1")
        except BaseException:
            db.close()
            raise
        return db

    def _set_aside(self, why, suffix: str = ".damaged") -> None:
        """Rename the cache file and SQLite's files beside it out of the way (in the checked
        folder, by its descriptor): a new cache starts."""
        log.warning("scan cache %s: %s; set aside as %s and starting a new one", self.path, why, CACHE_FILE + suffix)
        for companion in ("", *cache_trust.COMPANIONS):
            name = CACHE_FILE + companion
            try:
                os.replace(name, name + suffix, src_dir_fd=self._folder_fd, dst_dir_fd=self._folder_fd)
            except FileNotFoundError:
                pass

    def _close_quietly(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
            self._db = None
        if self._folder_fd is not None:
            os.close(self._folder_fd)
            self._folder_fd = None

    def _disable(self, exc: Exception) -> None:
        log.warning("scan cache %s failed (%s); continuing without it", self.path, exc)
        self.enabled = False
        self._close_quietly()

    @property
    def held_nothing(self) -> bool:
        return not (self.held_results or self.held_runs)

    # ---- what may be stored ----------------------------------------------------------------------
    def storable(self, entry, outcome) -> bool:
        """Whether `outcome` may be stored as the verdict of `entry`: the walk saw the file whole
        (device, inode and ctime known), neither its mtime nor its ctime is racy (within
        RACY_SECONDS of the scan's start, or later), and the outcome is not transient."""
        racy, ctime = self._racy_after_ns, entry.ctime_ns
        return (entry.dev is not None and ctime is not None and entry.mtime_ns < racy and ctime < racy
                and not is_transient(outcome[4]))

    # ---- per-file rows -------------------------------------------------------------------------
    @staticmethod
    def _path_key(path: Path) -> bytes:
        path = os.fspath(path)
        if _FS_UTF8 and path.__class__ is str and path[:1] == "/":
            return path.encode("utf-8", "surrogateescape")  # what os.fsencode does, without its lookups
        return os.fsencode(path if os.path.isabs(path) else os.path.abspath(path))

    def get(self, entry) -> tuple[str, str | None, str | None, float | None, str] | None:
        """(status, predicted, nearest, score, message) stored for this very file, or None."""
        return self.get_many([entry])[0]

    def get_many(self, entries: list) -> list[tuple | None]:
        """The stored outcome of each entry, in order, or None where its path has none or the
        stored file's identity (size, mtime_ns, dev, ino, ctime_ns) is not the entry's: one query
        per LOOKUP_CHUNK."""
        if not self.enabled or not entries:
            self.misses += len(entries)
            return [None] * len(entries)
        wanted = self._keys_of(entries)
        rows: dict = {}
        try:
            for i in range(0, len(wanted), LOOKUP_CHUNK):
                part = wanted[i : i + LOOKUP_CHUNK]
                sql = _LOOKUP_SQL.get(len(part)) or _lookup_sql(len(part))
                rows.update({row[0]: row for row in self._db.execute(sql, (self.key, *part))})
        except sqlite3.Error as exc:
            self._disable(exc)
            self.misses += len(entries)
            return [None] * len(entries)
        get = rows.get
        out = [
            row[6:] if (row := get(w)) is not None and row[1:6] == identity_of(e) else None
            for w, e in zip(wanted, entries, strict=True)
        ]
        hits = len(out) - out.count(None)
        self.hits += hits
        self.misses += len(out) - hits
        return out

    def _keys_of(self, entries) -> list[bytes]:
        """The stored path keys of entries: one encode each when all are absolute str."""
        paths = [e.fspath for e in entries]
        if _FS_UTF8 and all(p.__class__ is str and p[:1] == "/" for p in paths):
            return [p.encode("utf-8", "surrogateescape") for p in paths]
        return [self._path_key(p) for p in paths]

    def put_many(self, entries: list, outcomes: list[tuple]) -> None:
        """Store each entry's outcome (status, predicted, nearest, score, message) where it is
        storable(); callers pass only statuses that may be reused."""
        if not self.enabled:
            return
        kept = [(e, o) for e, o in zip(entries, outcomes, strict=True) if self.storable(e, o)]
        if not kept:
            return
        key = self.key
        rows = [(key, k, *identity_of(e), *o) for k, (e, o) in zip(self._keys_of([e for e, _ in kept]), kept, strict=True)]
        try:
            if self._pending == 0:
                self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            self._pending += len(rows)
            if self._pending >= _COMMIT_EVERY:
                self.flush()
        except sqlite3.Error as exc:
            self._disable(exc)

    # ---- run snapshots ---------------------------------------------------------------------------
    # The snapshots' format, and how one is checked and read back: store/run_format.py.

    def snapshot(self, folder, ordinal: int) -> run_format.Snapshot | None:
        """The stored snapshot of (folder, ordinal), or None when there is none or it is damaged
        (bad checksum, wrong shape, an older format): a miss, rewritten by the scan."""
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
        ordinal) (`snapshot` when already read, False to read it) holds exactly these entries
        (paths, identities, skip reasons) and only these statuses; else None."""
        if snapshot is False:
            snapshot = self.snapshot(folder, ordinal)
        if snapshot is None or len(snapshot.names) != len(entries) or run_format.entries(snapshot, folder) != entries:
            return None
        return self.answered(snapshot, statuses)

    def answered(self, snapshot: run_format.Snapshot, statuses: frozenset) -> tuple[list[tuple], str | None] | None:
        """(outcomes, rows) of a snapshot whose entries are the run's, when it holds only these
        statuses (counted as cache hits); else None."""
        outcomes = snapshot.outcomes
        if not set(map(run_format.status, outcomes)) <= statuses:
            return None
        self.hits += snapshot.skips.count("")  # skipped files are never looked up
        return outcomes, snapshot.rows

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

    def load_run(self, folder, ordinal: int) -> tuple[list, list[tuple], str | None] | None:
        """(entries, outcomes, rows) of the stored snapshot of (folder, ordinal), or None."""
        snapshot = self.snapshot(folder, ordinal)
        if snapshot is None:
            return None
        return run_format.entries(snapshot, folder), snapshot.outcomes, snapshot.rows

    def put_run(self, folder, ordinal: int, entries: list, outcomes: list[tuple], rows: str | None = None,
                span: list | None = None, positions: list[int] | None = None) -> bool:
        """Store a run's snapshot: its entries (walk.FileEntry), all in `folder`, each one's
        outcome, `rows` (a text given back with them) and the listing stretch it covered
        (`span`, `positions`: walk.Run's). Callers pass only reusable statuses; a run holding a
        file that is not storable() (racy, transient; a skipped entry is stored as it is) is
        not stored. True when stored."""
        if not self.enabled or not entries:
            return False
        storable = self.storable
        if not all(e.skip_reason or storable(e, o) for e, o in zip(entries, outcomes, strict=True)):
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
