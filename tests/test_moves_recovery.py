"""Issue 10 item 2: recovery removes a source only when it is proven to be the journaled file.

A crash lands after the quarantine copy is complete and before the source is removed; the user
then saves a new version; the next open() (scan --move-to, restore) must keep both.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from test_moves import (  # noqa: F401  (fixtures)
    REPO,
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
from test_moves_capture import replace, temp_names

from imgclean.quarantine import moves
from imgclean.quarantine.moves import Quarantine, read_manifest, restore
from imgclean import fileops


def crash_before_source_removed(req, qroot: Path, monkeypatch, step: str = "capture", cross_fs: bool = False) -> None:
    monkeypatch.setattr(fileops, "fault_hook", hook({(step, 1): Crash()}, {"link": exdev()} if cross_fs else {}))
    q = Quarantine(qroot).open()
    with pytest.raises(Crash):
        q.move(req)
    die(q)
    monkeypatch.setattr(fileops, "fault_hook", None)


def recovered_states(qroot: Path) -> list[str]:
    with Quarantine(qroot) as q:
        return [a["state"] for a in q.recovered]


def test_started_record_carries_the_source_identity(scan: Path, qroot: Path) -> None:
    req = make(scan, "id.jpg")
    st = req.source.stat()
    with Quarantine(qroot) as q:
        assert q.move(req).status == "moved"
    start = read_manifest(qroot)[0]
    assert (start["dev"], start["ino"], start["size"], start["mtime_ns"]) == (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@pytest.mark.parametrize("step", ["fsync_dir", "capture"])
@pytest.mark.parametrize("same_stat", [False, True])
def test_same_fs_source_replaced_after_crash_keeps_both(scan: Path, qroot: Path, monkeypatch, step, same_stat) -> None:
    req = make(scan, "r.jpg", b"journaled version")
    st = req.source.stat()
    crash_before_source_removed(req, qroot, monkeypatch, step)
    replace(req.source, b"saved after crash", st if same_stat else None)  # a new inode
    assert recovered_states(qroot) == ["kept_both"]
    assert req.source.read_bytes() == b"saved after crash"
    assert (qroot / "r.jpg").read_bytes() == b"journaled version"
    assert states(qroot)[-1] == "kept_both" and temp_names(scan, qroot) == []
    assert_clean_manifest(qroot)
    [res] = restore(qroot)  # the quarantined version is still there and still accounted for
    assert res.status == "exists" and res.problem


def test_same_fs_source_edited_in_place_after_crash_stays_in_place_once(scan: Path, qroot: Path, monkeypatch) -> None:
    req = make(scan, "e.jpg", b"journaled")
    crash_before_source_removed(req, qroot, monkeypatch)
    with open(req.source, "ab") as f:  # same inode as the quarantined link: edit shows in both names
        f.write(b" + edit")
    assert recovered_states(qroot) == ["changed"]
    assert req.source.read_bytes() == b"journaled + edit" and user_files(qroot) == []


@pytest.mark.parametrize("edit", ["append", "same_size_and_mtime"])
def test_cross_fs_source_edited_after_crash_keeps_both(scan: Path, qroot: Path, monkeypatch, edit) -> None:
    req = make(scan, "c.jpg", b"journaled version")
    st = req.source.stat()
    crash_before_source_removed(req, qroot, monkeypatch, cross_fs=True)
    with open(req.source, "r+b") as f:  # same inode; only the content tells
        if edit == "append":
            f.seek(0, os.SEEK_END)
            f.write(b"!")
        else:
            f.write(b"J")
    if edit == "same_size_and_mtime":
        os.utime(req.source, ns=(st.st_atime_ns, st.st_mtime_ns))
    edited = req.source.read_bytes()
    assert recovered_states(qroot) == ["kept_both"]
    assert req.source.read_bytes() == edited and (qroot / "c.jpg").read_bytes() == b"journaled version"
    assert temp_names(scan, qroot) == []


def test_real_cross_fs_append_after_crash_keeps_both(scan: Path, monkeypatch) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == scan.stat().st_dev:
        pytest.skip("/dev/shm is not another filesystem here")
    qroot = shm / f"imgclean-test-{uuid.uuid4().hex}"
    try:
        req = make(scan, "a.jpg", b"journaled version")
        crash_before_source_removed(req, qroot, monkeypatch)
        with open(req.source, "ab") as f:
            f.write(b" and more")
        assert recovered_states(qroot) == ["kept_both"]
        assert req.source.read_bytes() == b"journaled version and more"
        assert (qroot / "a.jpg").read_bytes() == b"journaled version"
    finally:
        shutil.rmtree(qroot, ignore_errors=True)


def test_untouched_source_is_finished_after_crash(scan: Path, qroot: Path, monkeypatch) -> None:
    req = make(scan, "u.jpg")
    data = req.source.read_bytes()
    crash_before_source_removed(req, qroot, monkeypatch, cross_fs=True)
    assert recovered_states(qroot) == ["done"]
    assert not req.source.exists() and (qroot / "u.jpg").read_bytes() == data


@pytest.mark.parametrize("cross_fs", [False, True])
def test_real_kill_9_then_new_version_then_recovery_keeps_both(scan: Path, qroot: Path, cross_fs: bool) -> None:
    """A real process is killed (SIGKILL) with the quarantine copy complete and the source still
    in place; the user saves a new version; a second process recovers."""
    req = make(scan, "kill/img.jpg", os.urandom(200_000))
    old = req.source.read_bytes()
    code = (
        "import errno, os, signal, sys\n"
        "from pathlib import Path\n"
        "from imgclean.quarantine import moves\n"
        "src, scan, q, cross = sys.argv[1:5]\n"
        "def h(s):\n"
        "    if s == 'link' and cross == '1': raise OSError(errno.EXDEV, 'cross')\n"
        "    if s == 'capture': os.kill(os.getpid(), signal.SIGKILL)\n"
        "moves.fileops.fault_hook = h\n"
        "st = os.stat(src)\n"
        "with moves.Quarantine(Path(q)) as qq:\n"
        "    qq.move(moves.MoveRequest(Path(src), Path(scan), 'ood', st.st_size, st.st_mtime_ns, {}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [str(req.source), str(scan), str(qroot), "1" if cross_fs else "0"]
    proc = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    replace(req.source, b"the user's new version")
    recover = "import sys; from pathlib import Path; from imgclean.quarantine import moves; moves.Quarantine(Path(sys.argv[1])).open().close()"
    proc = subprocess.run([sys.executable, "-c", recover, str(qroot)], env=env, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    assert req.source.read_bytes() == b"the user's new version"
    assert (qroot / "kill" / "img.jpg").read_bytes() == old
    assert states(qroot)[-1] == "kept_both"
    assert_clean_manifest(qroot)
