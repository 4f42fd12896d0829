"""Warm rescans: batched cache look-ups, the progress bar's count without a second walk, and a
cached rescan that writes the same report as the scan before it."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from conftest import make_incoming_folder, write_png
from imgclean import data
from imgclean.store.cache import LOOKUP_CHUNK, ScanCache
from imgclean.walk import count_images, walk_images
from test_perf import NO_RACY, age, no_racy_window, run_cli  # noqa: F401  (a fixture)

OLD_NS = 1_600_000_000 * 10**9


def test_batched_lookups_equal_single_ones(tmp_path, no_racy_window):
    def entry(path, i, mtime=None):
        return data.FileEntry(path, i, OLD_NS + i if mtime is None else mtime, "", 1, 1000 + i, OLD_NS + i)

    with ScanCache(tmp_path / "c", "model-a") as cache:
        paths = [tmp_path / f"f{i:04d}.png" for i in range(LOOKUP_CHUNK + 40)]  # two queries
        cache.put_many([entry(p, i) for i, p in enumerate(paths)],
                       [("ok" if i % 3 else "ood", "a", "b", i / 7, f"m{i}") for i in range(len(paths))])
        cache.put_many([entry(tmp_path / "racy.png", 1, 2**62)], [("ok", "a", "b", 0.5, "")])  # modified "now": never stored
        cache.flush()
        keys = [entry(p, i) for i, p in enumerate(paths)]
        keys[5] = keys[5]._replace(size=999)  # size differs: a miss
        keys[9] = keys[9]._replace(mtime_ns=OLD_NS)  # mtime differs: a miss
        keys[11] = keys[11]._replace(ino=1)  # another file of the same size and mtime: a miss
        keys[12] = keys[12]._replace(ctime_ns=OLD_NS + 10**9)  # changed, mtime put back: a miss
        keys.append(entry(tmp_path / "never.png", 1))
        keys.append(entry(tmp_path / "racy.png", 1, 2**62))
        keys.append(entry(os.fsencode(paths[1]), 1))  # bytes and str name the same file
        single = [cache.get(k) for k in keys]
        hits = cache.hits
        batched = cache.get_many(keys)
        assert batched == single and cache.hits == 2 * hits
        assert [i for i, hit in enumerate(single) if hit is None] == [5, 9, 11, 12, len(keys) - 3, len(keys) - 2]
        assert single[0] == ("ood", "a", "b", 0.0, "m0") and single[-1] == single[1]
        assert cache.get_many([]) == []
    with ScanCache(tmp_path / "c", "model-b") as other:  # another model: all misses
        assert other.get_many(keys[:3]) == [None] * 3


def test_a_disabled_cache_misses_every_batched_lookup(tmp_path):
    cache = ScanCache(tmp_path / "c", "m").open()
    cache._disable(RuntimeError("gone"))
    e = data.FileEntry(tmp_path / "a.png", 1, 1, "", 1, 2, 3)
    assert cache.get_many([e] * 3) == [None] * 3 and cache.misses == 3
    cache.put_many([e], [("ok", None, None, None, "")])  # no error
    cache.close()


def tricky_tree(root: Path) -> Path:
    """Images, hidden files and folders, a link to a file and to a folder, a FIFO, a hard link,
    a quarantine, an excluded folder, a folder named like an image, non-images."""
    make_incoming_folder(root, normal=3, ood=2)
    write_png(root / "sub" / "a.png", np.zeros((8, 8), np.uint8))
    write_png(root / "sub" / "deeper" / "b.jpg.png", np.zeros((8, 8), np.uint8))
    write_png(root / ".hidden" / "c.png", np.zeros((8, 8), np.uint8))
    (root / ".dot.png").write_bytes(b"x")
    (root / "notes.txt").write_text("x")
    (root / "photo.heic").write_bytes(b"x")  # unsupported: counted, reported
    os.symlink(root / "sub" / "a.png", root / "link.png")
    os.symlink(root / "sub", root / "linked-folder")
    os.mkfifo(root / "pipe.png")
    os.link(root / "sub" / "a.png", root / "hard.png")
    write_png(root / "q" / "moved.png", np.zeros((8, 8), np.uint8))
    (root / "q" / "imgclean-manifest.jsonl").write_text("")
    write_png(root / "excluded" / "e.png", np.zeros((8, 8), np.uint8))
    (root / "folder.png").mkdir()
    write_png(root / "folder.png" / "inner.png", np.zeros((8, 8), np.uint8))
    return root


def test_count_images_counts_what_the_walk_yields(tmp_path):
    root = tricky_tree(tmp_path / "t")
    for exclude in ((), (root / "excluded",)):
        assert count_images(root, exclude) == sum(1 for _ in walk_images(root, exclude))
    assert count_images(root / "q") == 1  # the root itself is walked whatever it holds
    assert count_images(tmp_path / "missing") == 0


def test_file_entries_are_light_and_keep_their_interface(tmp_path):
    p = tmp_path / "a.png"
    e = data.FileEntry(p, 3, 4, dev=1, ino=2)
    assert e.path == p and isinstance(e.path, Path) and e.fspath == os.fspath(p) and os.fspath(e) == os.fspath(p)
    assert (e.size, e.mtime_ns, e.skip_reason, e.dev, e.ino, e.ctime_ns) == (3, 4, "", 1, 2, None)
    assert e == data.FileEntry(os.fspath(p), 3, 4, "", 1, 2) and hash(e) == hash(data.FileEntry(p, 3, 4, dev=1, ino=2))
    e = data.FileEntry(p, 3, 4, dev=1, ino=2, ctime_ns=5)
    assert e.identity == (3, 4, 1, 2, 5) and e != data.FileEntry(p, 3, 4, dev=1, ino=2, ctime_ns=6)
    import pickle

    assert pickle.loads(pickle.dumps(e)) == e and "size=3" in repr(e)
    with pytest.raises(AttributeError):
        e.size = 5


@pytest.mark.parametrize("suffix", ["jsonl", "csv"])
def test_a_warm_rescan_writes_the_same_report(model_dir, tmp_path, suffix):
    root = tricky_tree(tmp_path / "t")
    age(root)
    cache = tmp_path / "cache"
    reports = []
    for i in range(2):
        report = tmp_path / f"r{i}.{suffix}"
        proc = run_cli("scan", root, "-m", model_dir, "--json", "--cache-dir", cache, "--report", report, "--review-sample", 0, pre=NO_RACY)
        assert proc.returncode == 0, proc.stderr
        reports.append(report.read_text())
    assert reports[0] == reports[1] and len(reports[0].splitlines()) >= 12
    assert '"cached": 0' not in proc.stdout
