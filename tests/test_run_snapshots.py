"""Run snapshots in the scan cache: a rescan takes an unchanged run of a folder whole (one
RecordBlock), anything changed in a run is answered file by file, and every sink ends with what
a file-by-file scan gives it."""
from __future__ import annotations

import os
import shutil
import sqlite3
import time
import zlib
from pathlib import Path

import marshal
import numpy as np
import pytest

from conftest import class_image, make_incoming_folder, ood_image, write_png
from imgclean.cli.runs import Printer, feed
from imgclean.pipeline.scan.scanner import ScanOptions, run_scan
from imgclean.reports.record_blocks import RecordBlock
from imgclean.reports.records import RecordWriter, ScanRecord
from imgclean.store.artifact import load_model
from imgclean.store.cache import CACHE_FILE
from imgclean.walk import walk_images, walk_runs
from test_perf import OLD_NS, age, no_racy_window  # noqa: F401  (a fixture)

# Every test here caches files it has just written (see test_perf.no_racy_window).
pytestmark = pytest.mark.usefixtures("no_racy_window")


class BlockSink:
    """An on_record that also takes blocks whole, keeping every record in order."""

    def __init__(self):
        self.records: list[ScanRecord] = []
        self.blocks = 0
        self.block_records = 0

    def __call__(self, record):
        self.records.append(record)

    def block(self, block):
        if block.stored:  # a run the cache answered whole (a scored batch comes as a block too)
            self.blocks += 1
            self.block_records += len(block)
        self.records.extend(block.records())


def snapshot_tree(root: Path) -> Path:
    """Files before, between and after sub-folders, a link (skipped), a broken file, a hard link."""
    make_incoming_folder(root, normal=5, ood=3)
    rng = np.random.default_rng(4)
    write_png(root / "m-sub" / "in.png", class_image("checker", rng))
    write_png(root / "m-sub" / "out.png", ood_image(rng))
    write_png(root / "z-after.png", class_image("stripes_h", rng))
    (root / "broken.png").write_bytes(b"\x89PNG not really")
    os.symlink(root / "normal_00.png", root / "link.png")
    os.link(root / "normal_01.png", root / "m-sub" / "hard.png")
    age(root)
    return root


def scan(root, model_dir, cache, sink=None, move_to=None, **kw):
    sink = sink if sink is not None else BlockSink()
    opts = ScanOptions(batch_size=3, workers=1, use_cache=cache is not None, cache_dir=cache, **kw)
    quarantine = None
    if move_to is not None:
        from imgclean.quarantine.moves import Quarantine

        opts.exclude = (Path(move_to),)
        quarantine = Quarantine(move_to)
        quarantine.__enter__()
    try:
        summary = run_scan(root, load_model(model_dir, lazy=True), opts, quarantine, on_record=sink)
    finally:
        if quarantine is not None:
            quarantine.__exit__(None, None, None)
    return summary, sink


def rows(sink) -> list[dict]:
    return [r.to_dict() for r in sink.records]


def same_rows(a, b) -> bool:
    """Equal records; a score computed again may differ in its last bits (another batch)."""
    def key(r):
        return {**r, "score": None if r["score"] is None else round(r["score"], 4)}

    return [key(r) for r in rows(a)] == [key(r) for r in rows(b)] and all(
        (x.score is None) == (y.score is None) and (x.score is None or abs(x.score - y.score) <= 1e-5 * max(1, abs(y.score)))
        for x, y in zip(a.records, b.records)
    )


# ---- the walk's runs ------------------------------------------------------------------------------
def test_walk_runs_are_the_walk_cut_at_sub_folders_and_at_the_limit(tmp_path):
    root = snapshot_tree(tmp_path / "t")
    runs = [(r.folder, r.ordinal, r.entries) for r in walk_runs(root)]
    assert [e for _, _, run in runs for e in run] == list(walk_images(root))
    where = [(os.path.basename(f), n, [os.path.basename(e[0]) for e in run]) for f, n, run in runs]
    top = "t"
    assert where[0][:2] == (top, 0) and where[0][2][-1] == "link.png"  # everything before m-sub
    assert where[1] == ("m-sub", 0, ["hard.png", "in.png", "out.png"])
    assert where[2][:2] == (top, 1) and where[2][2][0] == "normal_00.png" and where[2][2][-1] == "z-after.png"
    small = [(r.folder, r.ordinal, r.entries) for r in walk_runs(root, limit=2)]
    assert all(len(run) <= 2 for _, _, run in small)
    assert [e for _, _, run in small for e in run] == list(walk_images(root))
    assert [n for f, n, _ in small if f == os.fspath(root)] == list(range(sum(1 for f, _, _ in small if f == os.fspath(root))))
    for i in range(5):  # stretches of names that are not images, longer than the limit
        (root / f"m-sub/notes{i}.txt").write_text("x")
        (root / f"a-notes{i}.txt").write_text("x")
    for limit in (1, 2, 3, 5, 7):
        assert [e for run in walk_runs(root, limit=limit) for e in run.entries] == list(walk_images(root))


# ---- rescans -------------------------------------------------------------------------------------
def test_a_rescan_takes_unchanged_runs_whole_with_the_same_records(model_dir, tmp_path):
    root = snapshot_tree(tmp_path / "t")
    cache = tmp_path / "cache"
    truth_summary, truth = scan(root, model_dir, None)
    cold_summary, cold = scan(root, model_dir, cache)
    assert cold.blocks == 0 and rows(cold) == rows(truth)
    warm_summary, warm = scan(root, model_dir, cache)
    assert warm.blocks == 3 and warm.block_records == len(warm.records) == len(truth.records)
    assert rows(warm) == rows(truth)
    assert warm_summary.counts == truth_summary.counts and warm_summary.decoded == 0
    assert warm_summary.cached == sum(1 for r in truth.records if r.status != "skipped") == cold_summary.decoded
    statuses = {r.status for r in warm.records}
    assert {"ok", "ood", "unreadable", "skipped"} <= statuses


@pytest.mark.parametrize("change", ["touch", "new inode", "added", "removed", "now unreadable"])
def test_a_changed_run_is_answered_file_by_file(model_dir, tmp_path, change):
    root = snapshot_tree(tmp_path / "t")
    cache = tmp_path / "cache"
    scan(root, model_dir, cache)
    target = root / "m-sub" / "in.png"
    if change == "touch":
        os.utime(target, ns=(OLD_NS + 10**12, OLD_NS + 10**12))
    elif change == "new inode":  # same name, size and mtime: only the inode tells
        st = target.stat()
        shutil.copyfile(target, tmp_path / "copy")
        os.replace(tmp_path / "copy", target)
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    elif change == "added":
        write_png(root / "m-sub" / "j.png", ood_image(np.random.default_rng(9)))
        os.utime(root / "m-sub" / "j.png", ns=(OLD_NS, OLD_NS))
    elif change == "removed":
        target.unlink()
    else:
        st = target.stat()
        target.write_bytes(b"x" * st.st_size)
        os.utime(target, ns=(OLD_NS + 10**12, OLD_NS + 10**12))
    summary, warm = scan(root, model_dir, cache)
    _, truth = scan(root, model_dir, None)
    assert same_rows(warm, truth)
    assert warm.blocks == 2  # the two runs of the top folder; m-sub's run differs
    # (a new inode is another file, even with the same bytes: decoded again, never answered from the cache)
    assert summary.decoded == (1 if change in ("touch", "new inode", "added", "now unreadable") else 0)
    assert scan(root, model_dir, cache)[1].blocks == 3  # and its new snapshot serves the next rescan


def test_damaged_or_foreign_snapshots_are_misses(model_dir, tmp_path):
    root = snapshot_tree(tmp_path / "t")
    cache = tmp_path / "cache"
    cold, truth = scan(root, model_dir, None)
    scan(root, model_dir, cache)
    db = sqlite3.connect(cache / CACHE_FILE)
    (n,) = db.execute("SELECT count(*) FROM runs").fetchone()
    assert n == 3
    (n,) = db.execute("SELECT count(*) FROM results").fetchone()
    assert n == 0  # the snapshots are the only copy

    def rewrite(fn):
        with db:
            for rowid, blob in db.execute("SELECT rowid, snapshot FROM runs").fetchall():
                db.execute("UPDATE runs SET snapshot=? WHERE rowid=?", (fn(blob), rowid))

    def sealed(data: bytes) -> bytes:
        return zlib.crc32(data).to_bytes(4, "big") + data

    fields = ("format", "span", "positions", "sizes", "mtimes", "skips", "devs", "inos", "ctimes", "names", "outcomes", "rows")

    def edited(**changes):
        def edit(blob):
            stored = list(marshal.loads(blob[4:]))
            assert len(stored) == len(fields)
            for name, change in changes.items():
                stored[fields.index(name)] = change(stored)
            return sealed(marshal.dumps(tuple(stored)))
        return edit

    def names(stored):
        span, positions, names = stored[1], stored[2], stored[9]
        return names if names is not None else span if positions is None else [span[p] for p in positions]

    for damage in (
        lambda b: b[:4] + bytes([b[4] ^ 1]) + b[5:],  # a flipped bit: the checksum fails
        lambda b: sealed(b"\x00not marshal"),  # right checksum, not a snapshot
        lambda b: sealed(marshal.dumps(([], [], None))),  # another shape
        lambda b: sealed(marshal.dumps(marshal.loads(b[4:])[:2])),
        edited(outcomes=lambda t: [("bogus", *o[1:]) for o in t[10]]),  # a status no scan gives
        edited(outcomes=lambda t: [o[:4] for o in t[10]]),  # outcomes of another shape
        edited(rows=lambda t: 5),
        edited(sizes=lambda t: t[3][:-1]),  # a column one short
        edited(ctimes=lambda t: t[8][:-1]),
        edited(format=lambda t: 1),  # another format's
        lambda b: sealed(marshal.dumps(marshal.loads(b[4:])[1:9] + marshal.loads(b[4:])[10:])),  # format 1's layout: no ctimes
        edited(names=names, span=lambda t: "abc"),  # a span that is not a list
        edited(names=lambda t: None, span=lambda t: names(t), positions=lambda t: [10**6] * len(names(t))),  # out of range
        lambda b: b"",
    ):
        rewrite(damage)
        summary, warm = scan(root, model_dir, cache)
        # A miss: decoded again (the snapshots were the only copy), the same records
        assert warm.blocks == 0 and rows(warm) == rows(truth) and summary.decoded == cold.decoded > 0
        assert scan(root, model_dir, cache)[1].blocks == 3  # rewritten by the scan that missed
    db.close()


def test_a_run_with_a_racy_file_is_not_snapshot(model_dir, tmp_path):
    root = snapshot_tree(tmp_path / "t")
    soon = time.time_ns() + 600 * 10**9  # modified "now" for any scan in the next ten minutes: racy
    os.utime(root / "m-sub" / "in.png", ns=(soon, soon))
    cache = tmp_path / "cache"
    scan(root, model_dir, cache)
    summary, warm = scan(root, model_dir, cache)
    assert warm.blocks == 2
    assert summary.decoded == 1  # the rest of the unsnapshot run was kept as per-file rows


def test_a_snapshot_with_rejects_still_moves_them_one_by_one(model_dir, tmp_path):
    root = snapshot_tree(tmp_path / "t")
    twin = tmp_path / "twin"
    shutil.copytree(root, twin, symlinks=True)
    os.unlink(twin / "m-sub" / "hard.png")
    os.link(twin / "normal_01.png", twin / "m-sub" / "hard.png")
    cache = tmp_path / "cache"
    scan(root, model_dir, cache)  # a report-only scan fills the cache
    summary, warm = scan(root, model_dir, cache, move_to=tmp_path / "q1")
    expected_summary, expected = scan(twin, model_dir, None, move_to=tmp_path / "q2")
    assert warm.blocks == 0  # every run holds a reject: applied record by record
    assert summary.moved == expected_summary.moved > 0
    assert [(r.path, r.status, r.action) for r in warm.records] == [(r.path, r.status, r.action) for r in expected.records]
    assert sorted(p.name for p in (tmp_path / "q1").rglob("*.png")) == sorted(p.name for p in (tmp_path / "q2").rglob("*.png"))
    # Without rejects left, the next rescan counts the runs whole and moves nothing.
    again, rescan = scan(root, model_dir, cache, move_to=tmp_path / "q1")
    assert rescan.blocks >= 1 and again.moved == 0 and again.counts["ood"] == 0


@pytest.fixture
def short_runs(monkeypatch):
    """Runs of 3 files, so a small folder has several."""
    import functools

    from imgclean import walk
    from imgclean.pipeline.scan import scanner as scan_module

    monkeypatch.setattr(scan_module, "walk_runs", functools.partial(walk.walk_runs, limit=3))


def flat_tree(root: Path) -> Path:
    make_incoming_folder(root, normal=8, ood=4)  # 13 files: runs of 3, 3, 3, 3, 1
    age(root)
    return root


@pytest.mark.parametrize("change", ["added first", "removed first", "most removed", "renamed"])
def test_files_shifted_to_other_runs_are_found_in_the_folders_snapshots(model_dir, tmp_path, short_runs, change):
    root = flat_tree(tmp_path / "t")
    cache = tmp_path / "cache"
    cold, _ = scan(root, model_dir, cache)
    names = sorted(os.listdir(root))
    if change == "added first":  # every run of the folder now starts one file later
        write_png(root / "a-first.png", ood_image(np.random.default_rng(7)))
        os.utime(root / "a-first.png", ns=(OLD_NS, OLD_NS))
    elif change == "removed first":
        os.unlink(root / names[0])
    elif change == "most removed":  # 13 files become 4: the last runs' snapshots are left behind
        for name in names[4:]:
            os.unlink(root / name)
    else:  # a new name: a new file to the cache, wherever it lands
        os.rename(root / names[5], root / "zz-renamed.png")
    summary, warm = scan(root, model_dir, cache)
    _, truth = scan(root, model_dir, None)
    assert same_rows(warm, truth)
    assert summary.decoded == (1 if change in ("added first", "renamed") else 0)
    assert summary.cached == summary.scanned - summary.decoded - summary.counts.get("skipped", 0)
    again, rescan = scan(root, model_dir, cache)
    assert again.decoded == 0 and rescan.blocks == len(list(walk_runs(root, limit=3))) and same_rows(rescan, truth)
    if change == "most removed":  # files back under the names the stale snapshots still hold: new files
        for name in names[4:8]:
            write_png(root / name, ood_image(np.random.default_rng(8)))
            os.utime(root / name, ns=(OLD_NS, OLD_NS))
        summary, warm = scan(root, model_dir, cache)
        assert summary.decoded == 4 and same_rows(warm, scan(root, model_dir, None)[1])


def test_a_stopped_scan_keeps_what_it_scored(model_dir, tmp_path, short_runs):
    root = flat_tree(tmp_path / "t")
    cache = tmp_path / "cache"
    full, _ = scan(root, model_dir, None)
    sink = BlockSink()
    opts = ScanOptions(batch_size=2, workers=1, use_cache=True, cache_dir=cache)
    stopped = run_scan(root, load_model(model_dir, lazy=True), opts, on_record=sink, should_stop=lambda: len(sink.records) >= 4)
    given = len(sink.records)
    assert stopped.interrupted and 4 <= given < 13 and given % 3  # it stops after the batch in hand, inside a run
    summary, _ = scan(root, model_dir, cache)
    # What it gave out is cached: the first run as a snapshot, the files of the next as per-file rows
    assert summary.decoded == full.decoded - given and summary.cached == given


def test_a_stop_request_ends_a_scan_between_blocks(model_dir, tmp_path):
    root = snapshot_tree(tmp_path / "t")
    cache = tmp_path / "cache"
    scan(root, model_dir, cache)
    sink = BlockSink()
    opts = ScanOptions(batch_size=3, workers=1, use_cache=True, cache_dir=cache)
    summary = run_scan(root, load_model(model_dir, lazy=True), opts, on_record=sink, should_stop=lambda: sink.blocks >= 1)
    assert summary.interrupted and sink.blocks == 1 and summary.scanned == len(sink.records) < 15


# ---- sinks ---------------------------------------------------------------------------------------
NAMES = ["plain.png", "comma,name.png", 'quote"name.png', "line\nbreak.png", "caf\udce9.png", "é.png"]


def block_of(names, tmp_path, statuses=("ok", "ood", "unreadable", "skipped", "too_large", "unsupported"), stored=False):
    """A block of records for files in tmp_path/sub; stored: with the rows a snapshot keeps."""
    from imgclean.pipeline.scan.scanner import _relative_namer
    from imgclean.reports.record_blocks import csv_rows

    root = os.fspath(tmp_path)
    from imgclean.walk import FileEntry

    entries = [FileEntry(f"{root}/sub/{n}", 10 + i, OLD_NS + i, "" if i % 4 != 3 else "symbolic link (not followed)",
                         None if i % 4 == 3 else 7, None if i % 4 == 3 else 100 + i, None if i % 4 == 3 else OLD_NS + i)
               for i, n in enumerate(names)]
    outcomes = [(statuses[i % len(statuses)], "a" if i % 2 else None, "b", 0.1 * i if i % 3 else None,
                 "" if i % 2 else "a message") for i in range(len(names))]
    folder = f"{root}/sub"
    rows = csv_rows(entries, outcomes, len(folder) + 1) if stored else None
    return RecordBlock(entries, outcomes, _relative_namer(Path(root)), folder, rows)


@pytest.mark.parametrize("stored", [False, True], ids=["formatted", "stored-rows"])
@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
@pytest.mark.parametrize("names", [NAMES[:1] * 3, NAMES], ids=["plain", "needs-quoting"])
def test_a_block_writes_the_report_rows_its_records_write(tmp_path, suffix, names, stored):
    names = [f"{i}-{n}" for i, n in enumerate(names)]
    block = block_of(names, tmp_path, stored=stored)
    with RecordWriter(tmp_path / f"whole.{suffix}", tmp_path) as whole:
        whole.write_block(block)
    with RecordWriter(tmp_path / f"each.{suffix}", tmp_path) as each:
        for record in block_of(names, tmp_path).records():
            each.write(record)
    assert (tmp_path / f"whole.{suffix}").read_bytes() == (tmp_path / f"each.{suffix}").read_bytes()
    assert len(block.records()) == len(names)
    if stored and "," not in "".join(names):  # the stored rows are what is written, not formatted again
        b = block_of(names, tmp_path, stored=True)
        marked = RecordBlock(b.entries, b.outcomes, b.rel, b.folder, b.rows.replace(",ok,", ",OK,"))
        assert ",OK," in marked.csv_text(f"{tmp_path}\r\n")


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_scans_write_the_report_their_records_write_one_by_one(model_dir, tmp_path, short_runs, suffix):
    root = snapshot_tree(tmp_path / "t")
    for name in ("comma,name.png", 'quote"name.png', "line\nbreak.png", "caf\udce9.png", "é.png"):
        shutil.copyfile(root / "normal_00.png", root / "m-sub" / name)
    age(root)
    cache = tmp_path / "cache"

    class Records(list):  # takes blocks whole without giving their records out (as the printer does)
        __call__ = list.append

        def write_block(self, block):
            self.extend(RecordBlock(block.entries, block.outcomes, block.rel).records())

    for i in range(2):  # scored blocks (their rows then go to the snapshots), then stored runs
        report, records = tmp_path / f"r{i}.{suffix}", Records()
        with RecordWriter(report, root) as writer:
            summary = run_scan(root, load_model(model_dir, lazy=True), ScanOptions(batch_size=4, workers=1, use_cache=True, cache_dir=cache),
                               on_record=feed([writer, records]))
        assert summary.decoded == (17 if i == 0 else 0)
        with RecordWriter(tmp_path / f"each{i}.{suffix}", root) as each:
            for record in records:
                each.write(record)
        assert report.read_bytes() == (tmp_path / f"each{i}.{suffix}").read_bytes()
    assert (tmp_path / f"r0.{suffix}").read_bytes() == (tmp_path / f"r1.{suffix}").read_bytes()


@pytest.mark.parametrize("keep_unreadable", [False, True])
def test_the_printer_counts_a_block_as_its_records(tmp_path, keep_unreadable):
    whole = Printer(dry_run=False, json_out=False, verbose=False, keep_unreadable=keep_unreadable)
    each = Printer(dry_run=False, json_out=False, verbose=False, keep_unreadable=keep_unreadable)
    block = block_of(NAMES * 2, tmp_path)
    feed([whole]).block(block)
    for record in block.records():
        each(record)
    assert whole.counts == each.counts and sum(whole.counts.values()) == len(block)


def test_feed_gives_a_block_record_by_record_to_plain_sinks(tmp_path):
    got = []
    block = block_of(NAMES, tmp_path)
    feed([got.append]).block(block)
    assert got == block.records()


def test_a_cache_without_results_for_the_model_is_not_queried(model_dir, tmp_path, monkeypatch):
    from imgclean.store.cache import ScanCache

    from imgclean.walk import FileEntry

    entry = FileEntry(tmp_path / "a.png", 1, OLD_NS, "", 1, 2, OLD_NS)
    with ScanCache(tmp_path / "c", "model-b") as other:
        other.put_many([entry], [("ok", None, None, 0.5, "")])
    with ScanCache(tmp_path / "c", "model-a") as cache:
        assert cache.held_nothing
    with ScanCache(tmp_path / "c", "model-b") as cache:
        assert not cache.held_nothing and cache.get(entry)[0] == "ok"
    root = snapshot_tree(tmp_path / "t")
    _, truth = scan(root, model_dir, None)

    def no_query(*_):
        raise AssertionError("a cache that held nothing for the model was queried")

    with monkeypatch.context() as m:
        m.setattr(ScanCache, "get_many", no_query)
        m.setattr(ScanCache, "get_run", no_query)
        summary, cold = scan(root, model_dir, tmp_path / "c")
    assert rows(cold) == rows(truth) and summary.cached == 0
    summary, warm = scan(root, model_dir, tmp_path / "c")  # and what it stored answers the next scan
    assert warm.blocks == 3 and summary.decoded == 0 and rows(warm) == rows(truth)


def test_the_listing_stats_each_name_through_the_folder_descriptor(tmp_path):
    from imgclean import listing

    root = snapshot_tree(tmp_path / "t")
    os.mkfifo(root / "fifo.png")
    by_name = listing.listing(os.fspath(root))
    by_path = listing.listing(os.fsencode(root))  # bytes: the same, names as bytes
    assert [os.fsencode(n) for n in by_name.names] == by_path.names and by_name[1:] == by_path[1:]
    names = by_name.names
    for name, mode, size, mtime, dev, ino, ctime in zip(*by_name[:7]):
        st = os.lstat(root / name)
        assert (mode, size, mtime, dev, ino, ctime) == (st.st_mode, st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino, st.st_ctime_ns)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.rename(root / names[-1], tmp_path / "away")  # gone after the listing: None, the rest stat'ed
        stats = listing._stat_names(names, fd)
        assert stats[-1] is None and all(s is not None for s in stats[:-1])
    finally:
        os.close(fd)


@pytest.fixture
def matched_runs(monkeypatch):
    """The `matched` flag of every run the scans walk, in order (reset by the test)."""
    from imgclean import walk
    from imgclean.pipeline.scan import scanner as scan_module

    seen: list[bool] = []

    def recording(*args, **kwargs):
        for run in walk.walk_runs(*args, **kwargs):
            seen.append(run.matched)
            yield run

    monkeypatch.setattr(scan_module, "walk_runs", recording)
    return seen


def test_a_rescan_after_rejects_were_moved_is_matched_from_the_listing(model_dir, tmp_path, matched_runs):
    root = flat_tree(tmp_path / "t")
    (root / "notes.txt").write_text("not an image: part of the run's stretch of the listing")
    (root / "z-sub").mkdir()
    write_png(root / "z-sub" / "in.png", class_image("checker", np.random.default_rng(1)))
    age(root)
    cache = tmp_path / "cache"
    scan(root, model_dir, cache)
    matched_runs.clear()
    summary, _ = scan(root, model_dir, cache, move_to=tmp_path / "q")
    assert summary.moved > 0 and matched_runs == [True, True]  # the rejects came out of matched runs
    matched_runs.clear()
    again, rescan = scan(root, model_dir, cache, move_to=tmp_path / "q")
    # Their snapshots lost the moved files (and their names): the next listing matches them again.
    assert matched_runs == [True, True] and rescan.blocks == 2 and again.moved == 0 and again.decoded == 0
