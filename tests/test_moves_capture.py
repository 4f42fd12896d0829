"""Issue 10 items 1 and 10: a file that took the source's name at any instant is never removed.

A move takes the source away atomically (rename to .imgclean-tmp-<id>-src) and removes it only if
it is still the scored file; another program that replaces the file (write a temp file, rename it
over the name: editors, rsync) at any step keeps its new version.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from test_moves import (  # noqa: F401  (fixtures)
    Crash,
    _no_hook,
    assert_clean_manifest,
    die,
    exdev,
    hook,
    make,
    qroot,
    scan,
    states,
    user_files,
)

from imgclean.quarantine import moves
from imgclean.quarantine.moves import MoveRequest, Quarantine, restore
from imgclean import fileops

SAME_FS = ["mkdir", "journal", "link", "fsync_dir", "capture", "captured", "unlink_source"]
CROSS_FS = ["mkdir", "journal", "copy", "fsync", "verify", "rename", "unlink_tmp", "fsync_dir",
            "capture", "captured", "rehash", "unlink_source"]  # fmt: skip
AFTER_CAPTURE = {"captured", "rehash", "unlink_source"}  # the scored file is already ours


def replace(path: Path, data: bytes, like: os.stat_result | None = None) -> None:
    """What an editor does: write a temp file beside it, rename it over the name."""
    tmp = path.with_name(path.name + ".swp")
    tmp.write_bytes(data)
    if like is not None:  # same size and mtime as the scored file: only the inode tells them apart
        os.utime(tmp, ns=(like.st_atime_ns, like.st_mtime_ns))
    os.replace(tmp, path)


def temp_names(*roots: Path) -> list[str]:
    return [n for r in roots for _, ds, fs in os.walk(r) for n in ds + fs if n.startswith(moves.TMP_PREFIX)]


def on_step(target: str, action, cross_fs: bool):
    done = []

    def h(step: str) -> None:
        if step == "link" and cross_fs:
            raise exdev()
        if step == target and not done:
            done.append(step)
            action()

    return h


@pytest.mark.parametrize("cross_fs,step", [(False, s) for s in SAME_FS] + [(True, s) for s in CROSS_FS])
def test_file_replaced_at_any_step_keeps_the_new_version(scan: Path, qroot: Path, monkeypatch, cross_fs, step) -> None:
    req = make(scan, "d/img.jpg", b"old version " * 50)
    old, st = req.source.read_bytes(), req.source.stat()
    new = b"NEW version " * 50  # same length, same mtime below
    with Quarantine(qroot) as q:
        monkeypatch.setattr(fileops, "fault_hook", on_step(step, lambda: replace(req.source, new, st), cross_fs))
        res = q.move(req)
    assert req.source.read_bytes() == new  # the new version always survives, in place
    if step in AFTER_CAPTURE:  # it arrived after the scored file was taken: the scored one moves
        assert res.status == "moved", res.message
        assert res.destination.read_bytes() == old
    else:
        assert res.status == "changed", res.message
        assert user_files(qroot) == [] and states(qroot)[-1] == "changed"
    assert temp_names(scan, qroot) == []
    assert_clean_manifest(qroot)


@pytest.mark.parametrize("cross_fs", [False, True])
def test_file_edited_in_place_before_capture_is_put_back(scan: Path, qroot: Path, monkeypatch, cross_fs) -> None:
    req = make(scan, "e.jpg")

    def append() -> None:
        with open(req.source, "ab") as f:
            f.write(b"appended")

    monkeypatch.setattr(fileops, "fault_hook", on_step("capture", append, cross_fs))
    with Quarantine(qroot) as q:
        res = q.move(req)
    assert res.status == "changed", res.message
    assert req.source.read_bytes().endswith(b"appended") and user_files(qroot) == []
    assert temp_names(scan, qroot) == []


@pytest.mark.parametrize("cross_fs", [False, True])
def test_name_retaken_before_put_back_keeps_both_new_versions(scan: Path, qroot: Path, monkeypatch, cross_fs) -> None:
    req = make(scan, "v.jpg", b"v1")
    seen: list[str] = []

    def h(step: str) -> None:
        seen.append(step)
        if step == "link" and cross_fs:
            raise exdev()
        if step == "capture":
            replace(req.source, b"v2")  # captured instead of v1
        if step == "put_back" and seen.count("put_back") == 1:
            replace(req.source, b"v3")  # and the name is taken again before v2 goes back

    monkeypatch.setattr(fileops, "fault_hook", h)
    with Quarantine(qroot) as q:
        res = q.move(req)
    assert res.status == "changed" and "v (1).jpg" in res.message, res.message
    assert req.source.read_bytes() == b"v3" and (scan / "v (1).jpg").read_bytes() == b"v2"
    assert user_files(qroot) == [] and temp_names(scan, qroot) == []


def test_replaced_before_the_move_with_same_size_and_mtime_is_caught_by_inode(scan: Path, qroot: Path) -> None:
    req = make(scan, "same.jpg", b"old!")
    st = req.source.stat()
    replace(req.source, b"new!", st)
    scored = MoveRequest(req.source, scan, "ood", st.st_size, st.st_mtime_ns, {}, dev=st.st_dev, ino=st.st_ino)
    with Quarantine(qroot) as q:
        res = q.move(scored)
    assert res.status == "changed" and req.source.read_bytes() == b"new!" and user_files(qroot) == []


def test_link_racing_a_rename_over_the_source_is_changed(scan: Path, qroot: Path, monkeypatch) -> None:
    """Linux's link() fails with ENOENT when the inode it found loses its last name to a rename
    over it (seen with a free-running watcher): the new version is there, so that is "changed"."""
    req = make(scan, "race.jpg", b"old")

    def h(step: str) -> None:
        if step == "link":
            replace(req.source, b"new")
            raise FileNotFoundError(2, "No such file or directory")

    with Quarantine(qroot) as q:
        monkeypatch.setattr(fileops, "fault_hook", h)
        res = q.move(req)
    assert res.status == "changed", res.message
    assert req.source.read_bytes() == b"new" and user_files(qroot) == []


# ----------------------------------------------------------------------------- vanished sources


@pytest.mark.parametrize("cross_fs,step", [(False, "link"), (False, "fsync_dir"), (False, "capture"),
                                           (True, "copy"), (True, "unlink_tmp"), (True, "capture")])  # fmt: skip
def test_source_vanishing_mid_move_is_missing_and_not_duplicated(scan: Path, qroot: Path, monkeypatch, cross_fs, step) -> None:
    """Another program (or an overlapping scan) took the file away mid-move: nothing is moved,
    so the file exists once, wherever that program put it."""
    req = make(scan, "gone.jpg")
    data = req.source.read_bytes()
    elsewhere = scan.parent / "elsewhere.jpg"
    monkeypatch.setattr(fileops, "fault_hook", on_step(step, lambda: os.rename(req.source, elsewhere), cross_fs))
    with Quarantine(qroot) as q:
        res = q.move(req)
    assert res.status == "missing", res.message
    assert elsewhere.read_bytes() == data and user_files(qroot) == []
    assert temp_names(scan, qroot) == [] and states(qroot)[-1] == "missing"


# ----------------------------------------------------------------------------- crashes at the new steps


@pytest.mark.parametrize("cross_fs", [False, True])
@pytest.mark.parametrize("step", ["capture", "captured", "rehash", "unlink_source"])
def test_crash_around_the_capture_is_recovered(scan: Path, qroot: Path, monkeypatch, cross_fs, step) -> None:
    if step == "rehash" and not cross_fs:
        pytest.skip("only copies are hashed again")
    req = make(scan, "k/img.jpg")
    data = req.source.read_bytes()
    monkeypatch.setattr(fileops, "fault_hook", hook({(step, 1): Crash()}, {"link": exdev()} if cross_fs else {}))
    q = Quarantine(qroot).open()
    with pytest.raises(Crash):
        q.move(req)
    die(q)
    monkeypatch.setattr(fileops, "fault_hook", None)
    with Quarantine(qroot) as q2:
        assert [a["state"] for a in q2.recovered] == ["done"]
    assert not req.source.exists() and (qroot / "k/img.jpg").read_bytes() == data
    assert temp_names(scan, qroot) == []
    assert_clean_manifest(qroot)


@pytest.mark.parametrize("cross_fs", [False, True])
@pytest.mark.parametrize("step", ["put_back", "drop_capture"])
def test_crash_while_putting_a_new_version_back_keeps_both(scan: Path, qroot: Path, monkeypatch, cross_fs, step) -> None:
    req = make(scan, "p.jpg", b"old")
    always = {"link": exdev()} if cross_fs else {}
    base = hook({(step, 1): Crash()}, always)

    def h(s: str) -> None:
        if s == "capture":
            replace(req.source, b"new")
        base(s)

    monkeypatch.setattr(fileops, "fault_hook", h)
    q = Quarantine(qroot).open()
    with pytest.raises(Crash):
        q.move(req)
    die(q)
    monkeypatch.setattr(fileops, "fault_hook", None)
    with Quarantine(qroot) as q2:
        assert [a["state"] for a in q2.recovered] == ["kept_both"]
    assert req.source.read_bytes() == b"new" and (qroot / "p.jpg").read_bytes() == b"old"
    assert temp_names(scan, qroot) == []
    assert_clean_manifest(qroot)
    [res] = restore(qroot)  # the quarantined old version is still accounted for
    assert res.status == "exists" and res.problem


# ----------------------------------------------------------------------------- a real watcher thread


def test_watcher_thread_replacing_each_file_as_it_is_journaled_loses_nothing(scan: Path, qroot: Path, monkeypatch) -> None:
    """A real thread that reads the journal like an outside program and replaces each file once
    its move is journaled. Events (not sleeps) pin each replacement to a step that rotates
    through the move, so every window is exercised in a real concurrent setting."""
    windows = ["link", "fsync_dir", "capture", "captured", "unlink_source"]
    reqs = [make(scan, f"w/{i:02d}.jpg", b"old %02d " % i * 40) for i in range(3 * len(windows))]
    new = {r.source: b"NEW %s" % r.source.name.encode() for r in reqs}
    acted: dict[str, threading.Event] = {str(r.source): threading.Event() for r in reqs}
    go: dict[str, threading.Event] = {str(r.source): threading.Event() for r in reqs}
    stop = threading.Event()
    errors: list[BaseException] = []

    def watcher() -> None:
        handled: set[str] = set()
        try:
            while not stop.is_set():
                for rec in moves.read_manifest(qroot):
                    src = rec.get("source")
                    if rec.get("state") == "started" and src not in handled:
                        handled.add(src)
                        if not go[src].wait(timeout=60):
                            raise TimeoutError(f"the move of {src} never reached its window")
                        replace(Path(src), new[Path(src)])
                        acted[src].set()
        except BaseException as e:  # surfaced in the main thread
            errors.append(e)
        finally:  # never leave the mover waiting
            for ev in acted.values():
                ev.set()

    current: list[tuple[str, str]] = []

    def h(step: str) -> None:
        if current and step == current[0][1]:
            go[current[0][0]].set()
            assert acted[current[0][0]].wait(timeout=60), "watcher never acted"

    monkeypatch.setattr(fileops, "fault_hook", h)
    thread = threading.Thread(target=watcher, daemon=True)
    thread.start()
    results = []
    try:
        with Quarantine(qroot) as q:
            for i, r in enumerate(reqs):
                current[:] = [(str(r.source), windows[i % len(windows)])]
                results.append(q.move(r))
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not errors, errors
    for r, res in zip(reqs, results):
        assert r.source.read_bytes() == new[r.source], (r.source, res)  # no new version lost
        if res.status == "moved":
            assert res.destination.read_bytes().startswith(b"old")
        else:
            assert res.status == "changed", res.message
    statuses = [res.status for res in results]
    # replaced before the capture (link, fsync_dir, capture): changed; after it: the old one moved
    assert statuses == ["changed", "changed", "changed", "moved", "moved"] * 3
    assert temp_names(scan, qroot) == []
    assert_clean_manifest(qroot)
