"""The scan cache reuses a verdict only for the very same file (store/cache.py): a file replaced
by another of the same size and mtime, or edited in place with its mtime put back, is decoded
again, whichever way the cache would have answered (a run's snapshot matched from the listing,
the folder's other snapshots, the per-file rows); racy timestamps (ctime too) are never stored;
caches of an older format are misses."""
from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import CLASSES, class_image, ood_image
from imgclean.pipeline.scan.scanner import ScanOptions, run_scan
from imgclean.store import cache as cache_module
from imgclean.store.artifact import load_model
from imgclean.store.cache import CACHE_FILE, ScanCache
from imgclean.walk import FileEntry
from test_perf import OLD_NS, no_racy_window  # noqa: F401  (a fixture)


def write_bmp(path: Path, array: np.ndarray) -> Path:
    """A BMP: its size depends only on the image's dimensions (a replacement can match it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode="L").save(path, format="BMP")
    return path


def bmp_tree(root: Path) -> Path:
    rng = np.random.default_rng(3)
    for i in range(6):
        write_bmp(root / f"normal_{i:02d}.bmp", class_image(CLASSES[i % len(CLASSES)], rng))
    for i in range(3):
        write_bmp(root / f"odd_{i:02d}.bmp", ood_image(rng))
    write_bmp(root / "sub" / "inner.bmp", class_image(CLASSES[0], rng))
    for p in root.rglob("*.bmp"):
        os.utime(p, ns=(OLD_NS, OLD_NS))
    return root


class Sink:
    """An on_record that takes the cache's stored blocks whole, counting them."""

    def __init__(self):
        self.records, self.stored_blocks = [], 0

    def __call__(self, record):
        self.records.append(record)

    def block(self, block):
        self.stored_blocks += block.stored
        self.records.extend(block.records())


def scan(root: Path, model_dir: Path, cache: Path | None):
    sink = Sink()
    opts = ScanOptions(batch_size=4, workers=1, use_cache=cache is not None, cache_dir=cache)
    summary = run_scan(root, load_model(model_dir, lazy=True), opts, on_record=sink)
    return summary, sink, {r.path: r for r in sink.records}


def verdicts(by_path: dict) -> dict:
    return {p: r.status for p, r in by_path.items()}


def replace_keeping_size_and_mtime(path: Path, array: np.ndarray) -> None:
    """What `cp --preserve=timestamps`, `rsync -t` or a restore from a backup do: another file
    (a new inode) under the name, with the old size and mtime."""
    st = path.stat()
    tmp = write_bmp(path.with_name(".incoming.tmp"), array)
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp, path)
    new = path.stat()
    assert (new.st_size, new.st_mtime_ns) == (st.st_size, st.st_mtime_ns) and new.st_ino != st.st_ino


def edit_in_place_keeping_mtime(path: Path, array: np.ndarray) -> None:
    """What `exiftool -P` or an editor followed by `touch -r` do: new bytes in the same inode,
    the mtime put back. Only the ctime (which no user can set) tells."""
    st = path.stat()
    tmp = write_bmp(path.with_name(".edit.tmp"), array)
    data = tmp.read_bytes()
    tmp.unlink()
    assert len(data) == st.st_size
    with open(path, "r+b") as fh:
        fh.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    new = path.stat()
    assert (new.st_size, new.st_mtime_ns, new.st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino)
    assert new.st_ctime_ns != st.st_ctime_ns


# How the cache would have answered the changed file: its run's snapshot matched from the
# listing ("snapshot"); the folder's snapshots file by file, the run being changed elsewhere
# too ("folder snapshots"); the per-file rows, the run never snapshot for a racy file in it.
ANSWERED_BY = ["snapshot", "folder snapshots", "per-file rows"]


@pytest.mark.parametrize("change", [replace_keeping_size_and_mtime, edit_in_place_keeping_mtime],
                         ids=["replaced, same size and mtime", "edited in place, mtime kept"])
@pytest.mark.parametrize("answered_by", ANSWERED_BY)
def test_a_changed_file_is_never_answered_from_the_cache(model_dir, tmp_path, no_racy_window, change, answered_by):
    root = bmp_tree(tmp_path / "t")
    if answered_by == "per-file rows":
        soon = time.time_ns() + 600 * 10**9  # modified "now" for any scan in the next ten minutes
        write_bmp(root / "racy.bmp", class_image(CLASSES[1], np.random.default_rng(8)))
        os.utime(root / "racy.bmp", ns=(soon, soon))
    cache = tmp_path / "cache"
    _, _, before = scan(root, model_dir, cache)
    target = next(p for p, r in sorted(before.items()) if r.status == "ok" and "/" not in p)
    change(root / target, ood_image(np.random.default_rng(11)))
    if answered_by == "folder snapshots":
        write_bmp(root / "normal_00a.bmp", class_image(CLASSES[2], np.random.default_rng(9)))
        os.utime(root / "normal_00a.bmp", ns=(OLD_NS, OLD_NS))
    _, _, truth = scan(root, model_dir, None)
    assert truth[target].status == "ood"  # what --no-cache says of the new bytes
    summary, sink, warm = scan(root, model_dir, cache)
    assert verdicts(warm) == verdicts(truth) and warm[target].status == "ood"
    assert warm[target].ino == (root / target).stat().st_ino and warm[target].score == pytest.approx(truth[target].score)
    assert summary.decoded == 1 + (answered_by == "folder snapshots") + (answered_by == "per-file rows")  # the new file, the racy one
    assert sink.stored_blocks == 1  # sub's run: unchanged, still taken whole
    _, _, again = scan(root, model_dir, cache)
    assert verdicts(again) == verdicts(truth)  # and what the cache learnt is the new file's verdict


def test_cached_results_are_compared_on_the_whole_identity(tmp_path, no_racy_window):
    entry = FileEntry(tmp_path / "a.bmp", 1078, OLD_NS, "", 2049, 77, OLD_NS + 5)
    with ScanCache(tmp_path / "c", "m") as cache:
        cache.put_many([entry], [("ok", "a", "a", 0.5, "")])
        assert cache.get(entry) == ("ok", "a", "a", 0.5, "")
        for field in ("size", "mtime_ns", "dev", "ino", "ctime_ns"):
            assert cache.get(entry._replace(**{field: getattr(entry, field) + 1})) is None, field
        # A skipped entry, or one without the walk's device/inode/ctime, is never stored.
        other = tmp_path / "b.bmp"
        cache.put_many([FileEntry(other, 1, OLD_NS, "", None, None, None), FileEntry(other, 1, OLD_NS, "", 1, 2, None)],
                       [("ok", None, None, 0.1, "")] * 2)
        assert cache.get(FileEntry(other, 1, OLD_NS, "", 1, 2, None)) is None


def test_racy_mtimes_and_ctimes_are_never_stored(tmp_path):
    with ScanCache(tmp_path / "c", "m") as cache:
        cut = cache._racy_after_ns  # the scan's start less RACY_SECONDS
        now = cut + int(cache_module.RACY_SECONDS * 1e9)
        ok = ("ok", None, None, 0.1, "")
        cases = {
            "old": (OLD_NS, OLD_NS, True),
            "mtime within the window": (cut + 1, OLD_NS, False),
            "ctime within the window": (OLD_NS, cut + 1, False),
            "ctime just before the window": (OLD_NS, cut - 1, True),
            "ctime in the future (a clock set back, a server's clock ahead)": (OLD_NS, now + 3600 * 10**9, False),
            "mtime in the future": (now + 3600 * 10**9, OLD_NS, False),
        }
        entries = {name: FileEntry(tmp_path / f"{i}.bmp", 1, m, "", 1, i, c) for i, (name, (m, c, _)) in enumerate(cases.items())}
        for name, (_, _, stored) in cases.items():
            assert cache.storable(entries[name], ok) is stored, name
        cache.put_many(list(entries.values()), [ok] * len(entries))
        assert {name: cache.get(e) is not None for name, e in entries.items()} == {n: c[2] for n, c in cases.items()}
        assert not cache.put_run(os.fspath(tmp_path), 0, [entries["old"], entries["ctime within the window"]], [ok, ok])
        assert cache.put_run(os.fspath(tmp_path), 0, [entries["old"]], [ok])


def test_files_changed_just_before_a_scan_are_scored_again_next_time(model_dir, tmp_path):
    """With the real window: files just written (or given an old mtime just now: os.utime sets
    the ctime) are racy by their ctime, so the next scan decodes them again."""
    root = bmp_tree(tmp_path / "t")  # mtimes long past, ctimes now
    cache = tmp_path / "cache"
    first, _, _ = scan(root, model_dir, cache)
    second, _, _ = scan(root, model_dir, cache)
    assert first.decoded == second.decoded == 10 and second.cached == 0


# ---- older caches ----------------------------------------------------------------------------------
SCHEMA_1 = (
    "CREATE TABLE results (model TEXT NOT NULL, path BLOB NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,"
    " status TEXT NOT NULL, predicted TEXT, nearest TEXT, score REAL, message TEXT NOT NULL, PRIMARY KEY (model, path))",
    "CREATE TABLE runs (model TEXT NOT NULL, folder BLOB NOT NULL, ordinal INTEGER NOT NULL, snapshot BLOB NOT NULL,"
    " PRIMARY KEY (model, folder, ordinal))",
)


def test_a_cache_of_the_older_schema_is_emptied_not_trusted(model_dir, tmp_path, no_racy_window, caplog):
    """Rows an older imgclean wrote (path, size and mtime only) cannot say it is the same file:
    every one is a miss, and the file is rebuilt in place, with no error."""
    root = bmp_tree(tmp_path / "t")
    cache = tmp_path / "cache"
    _, _, truth = scan(root, model_dir, None)
    key = cache_module.model_key(load_model(model_dir, lazy=True).config, extra="mahalanobis")
    cache.mkdir(mode=0o700)
    db = sqlite3.connect(cache / CACHE_FILE)
    for sql in SCHEMA_1:
        db.execute(sql)
    for path, record in truth.items():  # every file "unreadable": a verdict no scan would give them
        db.execute("INSERT INTO results VALUES (?, ?, ?, ?, 'unreadable', NULL, NULL, NULL, 'planted')",
                   (key, os.fsencode(root / path), record.size, record.mtime_ns))
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()
    (cache / CACHE_FILE).chmod(0o600)
    with caplog.at_level("WARNING"):
        cold, _, first = scan(root, model_dir, cache)
    assert cold.cached == 0 and cold.decoded == 10 and verdicts(first) == verdicts(truth)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]  # an upgrade, not damage
    warm, _, second = scan(root, model_dir, cache)
    assert warm.decoded == 0 and verdicts(second) == verdicts(truth)
    assert sqlite3.connect(cache / CACHE_FILE).execute("PRAGMA user_version").fetchone()[0] == cache_module.SCHEMA_VERSION


def test_a_cache_of_a_newer_schema_is_set_aside(model_dir, tmp_path, no_racy_window):
    root = bmp_tree(tmp_path / "t")
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    db = sqlite3.connect(cache / CACHE_FILE)
    db.execute("CREATE TABLE results (x)")
    db.execute(f"PRAGMA user_version={cache_module.SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    (cache / CACHE_FILE).chmod(0o600)
    scan(root, model_dir, cache)
    assert (cache / (CACHE_FILE + ".damaged")).is_file()
    warm, _, _ = scan(root, model_dir, cache)
    assert warm.decoded == 0
