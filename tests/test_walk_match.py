"""walk_runs' `known`: a run the cache's snapshot describes is matched from whole-list checks,
and whatever changed in the tree, a walk that asks the snapshots gives exactly the entries of a
walk that does not (only faster where nothing changed)."""
from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

from imgclean import listing as listing_module
from imgclean import walk
from imgclean.store.cache import ScanCache
from imgclean.store.run_format import narrowed as _narrowed
from imgclean.walk import FileEntry, walk_runs

OLD_NS = 1_600_000_000 * 10**9
OK = ("ok", "a", "a", 0.5, "")


def touch(path: Path, data: bytes = b"x", ns: int = OLD_NS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, ns=(ns, ns))


def snapshot_all(root: Path, cache: ScanCache, limit: int) -> None:
    """A snapshot of every run of the walk, as a scan stores them (as of now: the files were all
    written before this, so none is racy here; the real window: tests/test_cache_identity.py)."""
    cache._racy_after_ns = time.time_ns()
    for run in walk_runs(root, limit=limit):
        cache.put_run(run.folder, run.ordinal, run.entries, [OK] * len(run.entries), None, run.span, run.positions)
    cache.flush()


def both_walks(root: Path, cache: ScanCache, limit: int) -> tuple[list, list]:
    """(runs of a plain walk, runs of a walk asking the cache) as (folder, ordinal, entries, matched)."""
    plain = [(r.folder, r.ordinal, r.entries, r.matched) for r in walk_runs(root, limit=limit)]
    asked = [(r.folder, r.ordinal, r.entries, r.matched) for r in walk_runs(root, limit=limit, known=cache.snapshot)]
    return plain, asked


def same_entries(plain, asked) -> bool:
    return [p[:3] for p in plain] == [a[:3] for a in asked] and all(e.__class__ is FileEntry for a in asked for e in a[2])


@pytest.fixture
def cache(tmp_path):
    with ScanCache(tmp_path / "cache", "model") as c:
        yield c


def tree(root: Path) -> Path:
    for i in range(7):
        touch(root / f"a{i:02d}.png", bytes(i + 1))
    touch(root / "b-notes.txt")
    for i in range(4):
        touch(root / f"c{i:02d}.jpg", bytes(i + 3))
    touch(root / "m-sub" / "in.png")
    touch(root / "m-sub" / "readme.md")
    for i in range(5):
        touch(root / f"z{i:02d}.png", bytes(i + 2))
    return root


@pytest.mark.parametrize("limit", [3, 4096])
def test_an_unchanged_tree_is_matched_run_for_run(tmp_path, cache, limit):
    root = tree(tmp_path / "t")
    snapshot_all(root, cache, limit)
    cache.held_runs = True
    plain, asked = both_walks(root, cache, limit)
    assert same_entries(plain, asked)
    assert all(a[3] for a in asked) and not any(p[3] for p in plain)


def test_runs_with_skipped_entries_are_not_matched_but_still_equal(tmp_path, cache):
    root = tree(tmp_path / "t")
    os.symlink(root / "a00.png", root / "a03-link.png")
    os.link(root / "a01.png", root / "z09-hard.png")
    snapshot_all(root, cache, 4096)
    cache.held_runs = True
    plain, asked = both_walks(root, cache, 4096)
    assert same_entries(plain, asked)
    skipped = [any(e[3] for e in a[2]) for a in asked]
    assert [a[3] for a in asked] == [not s for s in skipped] and any(skipped)


CHANGES = {
    "touched": lambda root: os.utime(root / "a02.png", ns=(OLD_NS + 1, OLD_NS + 1)),
    "grown": lambda root: touch(root / "a02.png", b"longer than before"),
    # (written beside it, then renamed over it: the new file cannot reuse the old one's inode)
    "replaced, same size and time": lambda root: (touch(root / "new.tmp", bytes(3)), os.replace(root / "new.tmp", root / "a02.png")),
    "image added": lambda root: touch(root / "a02b.png"),
    "image added at the end": lambda root: touch(root / "z99.png"),
    "image removed": lambda root: os.unlink(root / "a02.png"),
    "other file added": lambda root: touch(root / "a02b.txt"),
    "other file became a folder": lambda root: (os.unlink(root / "b-notes.txt"), (root / "b-notes.txt").mkdir()),
    "image became a link": lambda root: (os.unlink(root / "c01.jpg"), os.symlink(root / "a00.png", root / "c01.jpg")),
    "image became a fifo": lambda root: (os.unlink(root / "c01.jpg"), os.mkfifo(root / "c01.jpg")),
    "hard link to a file walked before": lambda root: (os.unlink(root / "z03.png"), os.link(root / "a01.png", root / "z03.png")),
    "hard link to it added before it": lambda root: os.link(root / "z03.png", root / "a00b.png"),
    "folder added": lambda root: touch(root / "c02-sub" / "x.png"),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
@pytest.mark.parametrize("limit", [3, 4096])
def test_a_changed_run_is_walked_file_by_file(tmp_path, cache, change, limit):
    root = tree(tmp_path / "t")
    snapshot_all(root, cache, limit)
    cache.held_runs = True
    CHANGES[change](root)
    plain, asked = both_walks(root, cache, limit)
    assert same_entries(plain, asked)
    assert not all(a[3] for a in asked)  # something was walked file by file


def test_runs_after_a_folder_that_lost_its_images_are_still_matched(tmp_path, cache):
    root = tree(tmp_path / "t")
    snapshot_all(root, cache, 4096)
    cache.held_runs = True
    os.unlink(root / "m-sub" / "in.png")  # m-sub's run is gone; the rest is as it was
    plain, asked = both_walks(root, cache, 4096)
    assert same_entries(plain, asked) and len(asked) == 2 and all(a[3] for a in asked)


def test_a_name_that_vanished_mid_walk_is_not_matched(tmp_path, cache, monkeypatch):
    root = tree(tmp_path / "t")
    snapshot_all(root, cache, 4096)
    cache.held_runs = True
    real = listing_module.listing

    def vanishing(folder, identity=None):
        found = real(folder, identity)
        if os.path.basename(folder) == "t":  # a02.png listed, then gone before its stat
            i = found.names.index("a02.png")
            for column in found[1:7]:  # the stat columns
                column[i] = 0
        return found

    monkeypatch.setattr(walk, "_listing", vanishing)
    plain, asked = both_walks(root, cache, 4096)
    assert same_entries(plain, asked) and "a02.png" not in [os.path.basename(e[0]) for a in asked for e in a[2]]
    assert not asked[0][3]
    run = next(walk_runs(root))
    assert run.span is None  # so its snapshot is never matched by its names


def test_random_trees_and_changes(tmp_path):
    """Whatever the tree and whatever changed since the snapshots, the same entries."""
    rng = random.Random(7)
    for trial in range(12):
        root = tmp_path / f"t{trial}"
        names = sorted({f"{rng.choice('abcxyz')}{rng.randrange(40):02d}{rng.choice(['.png', '.jpg', '.txt', ''])}" for _ in range(30)})
        for name in names:
            touch(root / name, bytes(rng.randrange(1, 5)))
        for sub in rng.sample(names, 3):
            touch(root / (sub + "-d") / "in.png")
        limit = rng.choice([1, 2, 3, 5, 4096])
        with ScanCache(tmp_path / f"c{trial}", "model") as c:
            snapshot_all(root, c, limit)
            c.held_runs = True
            for _ in range(rng.randrange(4)):
                victim = root / rng.choice(names)
                if not victim.is_file():
                    continue
                what = rng.randrange(5)
                if what == 0:
                    victim.unlink()
                elif what == 1:
                    touch(victim, b"changed")
                elif what == 2:
                    touch(root / (victim.name + "2.png"))
                elif what == 3:
                    victim.unlink()
                    victim.mkdir()
                else:
                    os.utime(victim, ns=(OLD_NS + 5, OLD_NS + 5))
            plain, asked = both_walks(root, c, limit)
            assert same_entries(plain, asked), (trial, limit)


def test_a_run_left_without_its_moved_files_keeps_its_stretch_of_the_listing():
    span = ["a.png", "b.txt", "c.png", "d.png"]
    assert _narrowed(span, [0, 2, 3], ["a.png", "d.png"]) == (["a.png", "b.txt", "d.png"], [0, 2])
    assert _narrowed(span, [0, 2, 3], ["a.png", "c.png", "d.png"]) == (span, [0, 2, 3])
    assert _narrowed(["a.png", "c.png"], None, ["c.png"]) == (["c.png"], None)
    assert _narrowed(span, [0, 2, 3], ["c.png", "a.png"]) == (None, None)  # not in the stretch's order
    assert _narrowed(span, [0, 2, 3], ["e.png"]) == (None, None)
    assert _narrowed(span, [0, 9], ["a.png"]) == (None, None)


def test_matched_entries_are_built_only_when_asked_for(tmp_path, cache):
    root = tree(tmp_path / "t")
    snapshot_all(root, cache, 4096)
    cache.held_runs = True
    plain = [r.entries for r in walk_runs(root)]
    asked = [r.entries for r in walk_runs(root, known=cache.snapshot)]
    lazy, truth = asked[0], plain[0]
    assert isinstance(lazy, walk.MatchedEntries) and len(lazy) == len(truth) > 2
    assert lazy[0] == truth[0] and lazy[-1] == truth[-1] and lazy[1].__class__ is FileEntry
    assert lazy._built is None  # one entry by index builds that entry alone
    with pytest.raises(IndexError):
        lazy[len(truth)]
    assert lazy[1:3] == truth[1:3] and list(lazy) == truth and lazy == truth and lazy._built is not None
    assert all(a == p for a, p in zip(asked, plain))
