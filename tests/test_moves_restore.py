"""restore(quarantine_root, dry_run, only): the statuses of contract 1 (issue 9 item 9, issue 10
item 6), choosing files with ``only``, and lock contention."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_moves import _move_all, _no_hook, make, qroot, scan, user_files  # noqa: F401  (fixtures)

from imgclean.quarantine.locking import LockHeld
from imgclean.quarantine.moves import MANIFEST_NAME, TMP_PREFIX, Quarantine, RestoreResult, restore

STATUSES = ["restored", "discarded", "exists", "error", "unaccounted", "invalid", "not_found"]


def test_problem_is_true_exactly_for_the_problem_statuses() -> None:
    problems = {s for s in STATUSES if RestoreResult(Path("a"), Path("b"), s).problem}
    assert problems == {"exists", "error", "unaccounted", "invalid", "not_found"}


def test_discarded_files_are_reported_but_never_a_problem(scan: Path, qroot: Path) -> None:
    reqs, data = _move_all(scan, qroot, ["junk.jpg", "keep.jpg"])
    (qroot / "junk.jpg").unlink()  # the reviewer confirmed it as junk
    results = {r.source.name: r for r in restore(qroot)}
    assert results["junk.jpg"].status == "discarded" and not results["junk.jpg"].problem
    assert results["keep.jpg"].status == "restored"
    for dry_run in (True, False):  # later runs stay clean
        again = restore(qroot, dry_run=dry_run)
        assert [r.status for r in again] == ["discarded"] and not any(r.problem for r in again)


def test_exists_and_error(scan: Path, qroot: Path, tmp_path: Path) -> None:
    reqs, _ = _move_all(scan, qroot, ["taken.jpg", "odd.jpg", "sub/escaped.jpg"])
    reqs[0].source.write_bytes(b"new file at the old name")
    (qroot / "odd.jpg").unlink()
    (qroot / "odd.jpg").mkdir()  # no longer a regular file
    (tmp_path / "elsewhere").mkdir()
    (scan / "sub").rmdir()
    (scan / "sub").symlink_to(tmp_path / "elsewhere")  # the original folder now leads outside
    results = {r.source.name: r for r in restore(qroot)}
    assert results["taken.jpg"].status == "exists" and results["taken.jpg"].problem
    assert results["odd.jpg"].status == "error" and "regular" in results["odd.jpg"].message
    assert results["escaped.jpg"].status == "error" and "outside" in results["escaped.jpg"].message
    assert os.listdir(tmp_path / "elsewhere") == []
    assert reqs[0].source.read_bytes() == b"new file at the old name"


def test_unaccounted_files_are_reported_and_bookkeeping_ignored(scan: Path, qroot: Path) -> None:
    _move_all(scan, qroot, ["a.jpg"])
    (qroot / "dropped.jpg").write_bytes(b"put here by hand")
    (qroot / "d").mkdir()
    (qroot / "d" / "deep.png").write_bytes(b"also")
    (qroot / f"{TMP_PREFIX}leftover").write_bytes(b"ours")
    (qroot / ".imgclean-probe-x").write_bytes(b"ours")
    results = restore(qroot)
    loose = sorted(r.destination for r in results if r.status == "unaccounted")
    assert loose == [qroot / "d" / "deep.png", qroot / "dropped.jpg"]
    assert all(r.problem for r in results if r.status == "unaccounted")
    assert [r.status for r in results if r.status != "unaccounted"] == ["restored"]
    assert (qroot / "dropped.jpg").read_bytes() == b"put here by hand"  # never moved


def test_overwritten_manifest_leaves_every_file_unaccounted(scan: Path, qroot: Path) -> None:
    """`scan --report Q/imgclean-manifest.jsonl` used to truncate the journal: restore said
    "0 record(s)" and exited 0 with the files still quarantined."""
    _move_all(scan, qroot, ["a.jpg", "b/c.jpg"])
    (qroot / MANIFEST_NAME).write_text("")
    results = restore(qroot)
    assert sorted(r.status for r in results) == ["unaccounted", "unaccounted"]
    assert len(user_files(qroot)) == 2


# ----------------------------------------------------------------------------- only


def test_only_by_quarantine_path_or_original_path(scan: Path, qroot: Path, tmp_path: Path, monkeypatch) -> None:
    reqs, data = _move_all(scan, qroot, ["a.jpg", "b.jpg", "c/d.jpg", "e.jpg"])
    link = tmp_path / "qlink"
    link.symlink_to(qroot)
    monkeypatch.chdir(scan)
    only = [qroot / "a.jpg", link / "c" / "d.jpg", "b.jpg"]  # in Q; in Q through a symlink; original, relative
    dry = restore(qroot, dry_run=True, only=only)
    assert sorted(r.source.name for r in dry) == ["a.jpg", "b.jpg", "d.jpg"] and {r.status for r in dry} == {"restored"}
    results = restore(qroot, only=only)
    assert [r.source for r in results] == [reqs[2].source, reqs[1].source, reqs[0].source]  # newest first
    assert all(r.source.read_bytes() == data[r.source] for r in results)
    assert not reqs[3].source.exists() and (qroot / "e.jpg").exists()
    assert restore(qroot, only=[reqs[0].source]) == []  # already restored: nothing to do


def test_only_with_unknown_and_unaccounted_paths(scan: Path, qroot: Path, tmp_path: Path) -> None:
    reqs, _ = _move_all(scan, qroot, ["a.jpg", "b.jpg"])
    (qroot / "stray.jpg").write_bytes(b"x")
    results = restore(qroot, only=[tmp_path / "nowhere.jpg", qroot / "stray.jpg", reqs[1].source])
    assert [(r.status, r.source.name) for r in results] == [
        ("restored", "b.jpg"), ("unaccounted", "stray.jpg"), ("not_found", "nowhere.jpg"),
    ]  # fmt: skip
    assert results[2].problem and not reqs[0].source.exists()


# ----------------------------------------------------------------------------- locking


def test_restore_while_a_scan_holds_the_quarantine_raises_lock_held(scan: Path, qroot: Path) -> None:
    _move_all(scan, qroot, ["a.jpg"])
    with Quarantine(qroot) as busy:  # a scan moving into it, or another restore
        with pytest.raises(LockHeld):
            restore(qroot)
        assert busy.move(make(scan, "b.jpg")).status == "moved"
    assert [r.status for r in restore(qroot)] == ["restored", "restored"]


def test_restore_while_a_scan_holds_the_original_folder_raises_lock_held(scan: Path, qroot: Path) -> None:
    # Another scan moving files out of the folder (into another quarantine) must not meet files
    # coming back into it: the restore is refused before anything moves.
    from imgclean.quarantine.locking import ScanLock

    _move_all(scan, qroot, ["a.jpg", "sub/b.jpg"])
    with ScanLock(scan / "sub"):  # a scan of a folder below the original one
        with pytest.raises(LockHeld):
            restore(qroot)
        assert (qroot / "a.jpg").exists() and not (scan / "a.jpg").exists()
    assert sorted(r.status for r in restore(qroot)) == ["restored", "restored"]
