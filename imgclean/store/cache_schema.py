"""The scan cache's tables (store/cache.py), made in a new file or in place of an older schema's.

results: one row per file, keyed by (model, path), with the file's identity (size, mtime_ns,
dev, ino, ctime_ns) and its outcome; runs: one snapshot per walk run, keyed by (model, folder,
ordinal) (store/run_format.py). PRAGMA user_version holds the schema's number.
"""
from __future__ import annotations

import logging
import sqlite3

log = logging.getLogger(__name__)

# 2: per-file rows keep the file's device, inode and ctime_ns. 1 kept size and mtime only: such a
# cache is emptied and rebuilt, its rows and snapshots being unable to say it is the same file.
SCHEMA_VERSION = 2


def create_or_migrate(db: sqlite3.Connection) -> None:
    """Make the tables of a new cache file, or empty one of an older schema (its results cannot
    say they are of the same file: misses, all of them); raise DatabaseError for a file that is
    not a cache of a schema this imgclean knows (a newer one's: set aside, as a damaged file)."""
    db.execute("BEGIN IMMEDIATE")  # one process creates or migrates; the others then see it done
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if version == SCHEMA_VERSION:
            db.execute("COMMIT")
            return
        if version == 0 and tables:
            raise sqlite3.DatabaseError(f"not an imgclean scan cache (tables {', '.join(sorted(tables))})")
        if version not in (0, 1) or (version == 1 and "results" not in tables):
            raise sqlite3.DatabaseError(f"schema version {version}, expected {SCHEMA_VERSION}")
        if version == 1:
            log.info("scan cache of schema 1 (no file identities): emptied, rebuilt by this scan")
            db.execute("DROP TABLE IF EXISTS results")
            db.execute("DROP TABLE IF EXISTS runs")
        db.execute(
            "CREATE TABLE results (model TEXT NOT NULL, path BLOB NOT NULL, size INTEGER NOT NULL,"
            " mtime_ns INTEGER NOT NULL, dev INTEGER NOT NULL, ino INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,"
            " status TEXT NOT NULL, predicted TEXT, nearest TEXT, score REAL, message TEXT NOT NULL,"
            " PRIMARY KEY (model, path))"
        )
        db.execute(
            "CREATE TABLE runs (model TEXT NOT NULL, folder BLOB NOT NULL, ordinal INTEGER NOT NULL,"
            " snapshot BLOB NOT NULL, PRIMARY KEY (model, folder, ordinal))"
        )
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
