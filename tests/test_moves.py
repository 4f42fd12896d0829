"""moves.py: journaled no-overwrite moves, fault injection, crash recovery, restore."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from imgclean.quarantine import moves
from imgclean.quarantine.locking import LockHeld
from imgclean.quarantine.moves import (
    MANIFEST_NAME,
    MoveRequest,
    Quarantine,
    QuarantineError,
    read_manifest,
    restore,
)
from imgclean import fileops

REPO = Path(__file__).resolve().parents[1]
WEIRD = os.fsdecode(b'we\xffird\n\tq"uote \xf0\x9f\x98\x80.jpg')  # non-UTF-8, newline, tab, quote, emoji


class Crash(BaseException):
    """Stands in for kill -9: aborts a move with no cleanup."""


# ----------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def _no_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fileops, "fault_hook", None)


@pytest.fixture
def scan(tmp_path: Path) -> Path:
    d = tmp_path / "scan"
    d.mkdir()
    return d


@pytest.fixture
def qroot(tmp_path: Path) -> Path:
    return tmp_path / "quarantine"


def make(scan_root: Path, rel: str, data: bytes | None = None) -> MoveRequest:
    path = scan_root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if data is not None else os.urandom(3000) + rel.encode("utf-8", "surrogateescape"))
    st = path.stat()
    return MoveRequest(path, scan_root, "ood", st.st_size, st.st_mtime_ns, {"score": 3.5, "cls": "cat"})


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def hook(
    faults: dict[tuple[str, int], BaseException], always: dict[str, BaseException] | None = None
) -> Callable[[str], None]:
    """Raise faults[(step, n)] on the n-th call of step; always[step] on every call."""
    counts: dict[str, int] = {}

    def h(step: str) -> None:
        counts[step] = counts.get(step, 0) + 1
        if always and step in always:
            raise always[step]
        if (step, counts[step]) in faults:
            raise faults[(step, counts[step])]

    return h


def exdev() -> OSError:
    return OSError(errno.EXDEV, os.strerror(errno.EXDEV))


def die(q: Quarantine) -> None:
    """What the kernel does to a killed process: drop its fds and lock, nothing else."""
    assert q._lock is not None and q._fd is not None
    q._lock.release()
    os.close(q._fd)
    q._fd = None


def user_files(root: Path) -> list[Path]:
    """Files under root other than our bookkeeping (manifest, lock)."""
    skip = {MANIFEST_NAME, ".imgclean.lock"}
    return sorted(Path(d, f) for d, _, fs in os.walk(root) for f in fs if f not in skip)


def listing(*roots: Path) -> dict[str, tuple]:
    out = {}
    for root in roots:
        for d, dirs, files in os.walk(root):
            for name in dirs + files:
                if name == ".imgclean.lock":  # taken (and rewritten) by every moving run, by design
                    continue
                st = os.lstat(os.path.join(d, name))
                out[os.path.join(d, name)] = (st.st_mode, st.st_size, st.st_mtime_ns)
        st = os.lstat(root) if root.exists() else None
        out[str(root)] = st and (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def unfinished(qroot: Path) -> list[dict]:
    return moves.unfinished(read_manifest(qroot))


def states(qroot: Path, jid: str | None = None) -> list[str]:
    return [r["state"] for r in read_manifest(qroot) if jid is None or r["id"] == jid]


def assert_clean_manifest(qroot: Path) -> None:
    lines = (qroot / MANIFEST_NAME).read_bytes().split(b"\n")
    assert lines[-1] == b""
    for line in lines[:-1]:
        if line:
            json.loads(line)  # every line is one complete record
    assert unfinished(qroot) == []
    assert not [p for p in user_files(qroot) if p.name.startswith(moves.TMP_PREFIX)]


# ----------------------------------------------------------------------------- basic moves


def test_move_same_filesystem_keeps_relative_path_and_journals(scan: Path, qroot: Path) -> None:
    req = make(scan, "a/b/img.jpg")
    digest = sha(req.source)
    with Quarantine(qroot) as q:
        assert q.plan_destination(req) == qroot / "a/b/img.jpg"
        res = q.move(req)
    assert res.status == "moved", res.message
    assert res.destination == qroot / "a/b/img.jpg"
    assert not req.source.exists() and sha(res.destination) == digest
    recs = read_manifest(qroot)
    assert [r["state"] for r in recs] == ["started", "done"]
    start = recs[0]
    assert start["op"] == "move" and start["id"] == recs[1]["id"]
    assert start["source"] == str(req.source) and start["destination"] == str(res.destination)
    assert (start["size"], start["sha256"], start["reason"]) == (req.size, digest, "ood")
    assert start["details"] == {"score": 3.5, "cls": "cat"} and start["time"]
    assert_clean_manifest(qroot)


def test_journal_is_on_disk_before_the_file_is_touched(scan: Path, qroot: Path, monkeypatch) -> None:
    req = make(scan, "x.jpg")
    seen = []
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])

    def check(step: str) -> None:
        if step == "link":
            recs = read_manifest(qroot)
            seen.append((recs[-1]["state"], recs[-1]["source"], req.source.exists(), synced[-1:] == [q._fd]))

    monkeypatch.setattr(fileops, "fault_hook", check)
    with Quarantine(qroot) as q:
        assert q.move(req).status == "moved"
    assert seen == [("started", str(req.source), True, True)]  # written and fsynced before link


@pytest.mark.parametrize("how", ["append", "replace"])
def test_source_changed_while_hashing_is_left_in_place(scan: Path, qroot: Path, monkeypatch, how: str) -> None:
    req = make(scan, "h.jpg", b"12345678")

    def edit(step: str) -> None:
        if step == "hash":
            if how == "append":
                with open(req.source, "ab") as f:
                    f.write(b"more")
            else:  # same size and mtime, different file
                tmp = scan / "other"
                tmp.write_bytes(b"87654321")
                os.utime(tmp, ns=(req.mtime_ns, req.mtime_ns))
                os.replace(tmp, req.source)

    monkeypatch.setattr(fileops, "fault_hook", edit)
    with Quarantine(qroot) as q:
        res = q.move(req)
    assert res.status == "changed", res.message
    assert req.source.exists() and user_files(qroot) == []


def test_weird_names_round_trip_one_record_per_line(scan: Path, qroot: Path) -> None:
    req = make(scan, f"dir {WEIRD}/{WEIRD}")
    data = req.source.read_bytes()
    with Quarantine(qroot) as q:
        res = q.move(req)
    assert res.status == "moved", res.message
    assert os.fsencode(res.destination) == os.fsencode(qroot) + b"/dir " + os.fsencode(WEIRD) + b"/" + os.fsencode(WEIRD)
    raw = (qroot / MANIFEST_NAME).read_bytes()
    assert raw.count(b"\n") == 2 and raw.isascii()
    start = read_manifest(qroot)[0]
    assert os.fsencode(start["source"]) == os.fsencode(req.source)
    assert os.fsencode(start["destination"]) == os.fsencode(res.destination)
    [back] = restore(qroot)
    assert back.status == "restored", back.message
    assert req.source.read_bytes() == data


def test_missing_source(scan: Path, qroot: Path) -> None:
    req = make(scan, "gone.jpg")
    req.source.unlink()
    with Quarantine(qroot) as q:
        res = q.move(req)
    assert (res.status, res.destination) == ("missing", None)
    assert user_files(qroot) == []


@pytest.mark.parametrize("change", ["size", "mtime", "directory", "fifo"])
def test_changed_source_is_left_in_place(scan: Path, qroot: Path, change: str) -> None:
    req = make(scan, "c.jpg")
    if change == "size":
        req.source.write_bytes(b"different length")
    elif change == "mtime":
        os.utime(req.source, ns=(req.mtime_ns, req.mtime_ns + 10**9))
    elif change == "directory":
        req.source.unlink()
        req.source.mkdir()
    else:
        req.source.unlink()
        os.mkfifo(req.source)
    before = listing(scan)
    with Quarantine(qroot) as q:
        res = q.move(req)
    assert res.status == "changed", res.message
    assert listing(scan) == before and user_files(qroot) == []


def test_symlink_source_is_refused(scan: Path, qroot: Path, tmp_path: Path) -> None:
    target = tmp_path / "outside.jpg"
    target.write_bytes(b"not yours")
    link = scan / "link.jpg"
    link.symlink_to(target)
    st = link.lstat()
    with Quarantine(qroot) as q:
        res = q.move(MoveRequest(link, scan, "ood", st.st_size, st.st_mtime_ns, {}))
    assert res.status == "error" and "symlink" in res.message
    assert link.is_symlink() and target.read_bytes() == b"not yours"
    assert user_files(qroot) == []


def test_file_reached_through_symlinked_folder_is_refused(scan: Path, qroot: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    req_outside = make(outside, "secret.jpg")
    (scan / "sub").symlink_to(outside, target_is_directory=True)
    src = scan / "sub" / "secret.jpg"
    req = MoveRequest(src, scan, "ood", req_outside.size, req_outside.mtime_ns, {})
    with Quarantine(qroot) as q:
        res = q.move(req)
    assert res.status == "error" and "outside" in res.message
    assert req_outside.source.exists() and user_files(qroot) == []


def test_relative_paths_are_journaled_absolute(scan: Path, qroot: Path, monkeypatch) -> None:
    req = make(scan, "rel.jpg")
    monkeypatch.chdir(scan.parent)
    rel_req = MoveRequest(Path("scan/rel.jpg"), Path("scan"), "ood", req.size, req.mtime_ns, {})
    with Quarantine(qroot) as q:
        assert q.move(rel_req).status == "moved"
    start = read_manifest(qroot)[0]
    assert start["source"] == str(req.source) and start["scan_root"] == str(scan)


def test_source_not_under_scan_root(scan: Path, qroot: Path, tmp_path: Path) -> None:
    req = make(tmp_path / "other", "o.jpg")
    bad = MoveRequest(req.source, scan, "ood", req.size, req.mtime_ns, {})
    q = Quarantine(qroot)
    with pytest.raises(ValueError):
        q.plan_destination(bad)
    with q:
        assert q.move(bad).status == "error"
    assert req.source.exists()


def test_taken_name_gets_a_number_and_both_survive(scan: Path, qroot: Path) -> None:
    (qroot / "d").mkdir(parents=True)
    (qroot / "d" / "img.tar.jpg").write_bytes(b"already here")
    reqs = [make(scan, "d/img.tar.jpg", b"first"), make(scan / "again", "d/img.tar.jpg", b"second")]
    with Quarantine(qroot) as q:
        r1 = q.move(reqs[0])
        r2 = q.move(MoveRequest(reqs[1].source, scan / "again", "ood", reqs[1].size, reqs[1].mtime_ns, {}))
    assert r1.destination == qroot / "d" / "img.tar (1).jpg" and r1.destination.read_bytes() == b"first"
    assert r2.destination == qroot / "d" / "img.tar (2).jpg" and r2.destination.read_bytes() == b"second"
    assert (qroot / "d" / "img.tar.jpg").read_bytes() == b"already here"


@pytest.mark.parametrize("cross_fs", [False, True])
def test_name_taken_during_the_move_is_not_overwritten(scan: Path, qroot: Path, monkeypatch, cross_fs: bool) -> None:
    """Something else creates our chosen name after we journal it: link's EEXIST picks the next."""
    req = make(scan, "r.jpg")
    data = req.source.read_bytes()
    step = "rename" if cross_fs else "link"

    def racer(s: str) -> None:
        if s == "link" and cross_fs:
            raise exdev()
        if s == step and not (qroot / "r.jpg").exists():
            (qroot / "r.jpg").write_bytes(b"intruder")

    monkeypatch.setattr(fileops, "fault_hook", racer)
    with Quarantine(qroot) as q:
        res = q.move(req)
    assert res.status == "moved" and res.destination == qroot / "r (1).jpg"
    assert res.destination.read_bytes() == data and (qroot / "r.jpg").read_bytes() == b"intruder"
    assert "retarget" in states(qroot)
    back, stray = restore(qroot)  # restore follows the retargeted name
    assert back.status == "restored" and req.source.read_bytes() == data
    assert (stray.status, stray.destination) == ("unaccounted", qroot / "r.jpg")  # the intruder is reported


# ----------------------------------------------------------------------------- across filesystems


def test_exdev_takes_the_copy_path(scan: Path, qroot: Path, monkeypatch) -> None:
    req = make(scan, "sub/x.jpg")
    os.chmod(req.source, 0o640)
    data = req.source.read_bytes()
    monkeypatch.setattr(fileops, "fault_hook", hook({}, always={"link": exdev()}))
    with Quarantine(qroot) as q:
        res = q.move(req)
    assert res.status == "moved", res.message
    assert not req.source.exists() and res.destination.read_bytes() == data
    st = res.destination.stat()
    assert st.st_mtime_ns == req.mtime_ns and st.st_mode & 0o777 == 0o640
    assert_clean_manifest(qroot)


@pytest.mark.parametrize("err", [errno.EPERM, errno.EMLINK])
def test_unlinkable_source_falls_back_to_copy(scan: Path, qroot: Path, monkeypatch, err: int) -> None:
    """fs.protected_hardlinks or a full link count: link(src) fails, the copy path still works."""
    req = make(scan, "p.jpg")
    data = req.source.read_bytes()
    monkeypatch.setattr(fileops, "fault_hook", hook({("link", 1): OSError(err, os.strerror(err))}))
    with Quarantine(qroot) as q:
        res = q.move(req)
    assert res.status == "moved" and res.destination.read_bytes() == data and not req.source.exists()


def test_real_cross_filesystem_move_to_dev_shm(scan: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir():
        pytest.skip("/dev/shm does not exist here")
    if shm.stat().st_dev == scan.stat().st_dev:
        pytest.skip("/dev/shm is on the same filesystem as tmp_path; no cross-device move to test")
    qroot = shm / f"imgclean-test-{uuid.uuid4().hex}"
    try:
        reqs = [make(scan, "a.jpg"), make(scan, f"n/{WEIRD}")]
        data = [r.source.read_bytes() for r in reqs]
        with Quarantine(qroot) as q:
            results = [q.move(r) for r in reqs]
        assert [r.status for r in results] == ["moved", "moved"], results
        assert [r.destination.read_bytes() for r in results] == data
        assert not any(r.source.exists() for r in reqs)
        assert_clean_manifest(qroot)
        assert {r.status for r in restore(qroot)} == {"restored"}  # and back across
        assert [r.source.read_bytes() for r in reqs] == data and user_files(qroot) == []
    finally:
        shutil.rmtree(qroot, ignore_errors=True)


def test_real_disk_full_on_small_tmpfs(scan: Path, tmp_path: Path) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True)
    if mount.returncode:
        pytest.skip(f"cannot mount a small tmpfs (needs root): {mount.stderr.decode().strip()}")
    try:
        req = make(scan, "big.jpg", os.urandom(200_000))
        data = req.source.read_bytes()
        with Quarantine(mnt / "q") as q:
            res = q.move(req)
        assert res.status == "error" and "space" in res.message.lower(), res.message
        assert req.source.read_bytes() == data
        assert user_files(mnt / "q") == []  # no temp file, no partial final file
        assert states(mnt / "q")[-1] == "rolled_back"
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


# ----------------------------------------------------------------------------- injected failures


SAME_FS_STEPS = ["link", "fsync_dir", "unlink_source"]
CROSS_FS_STEPS = ["copy", "fsync", "verify", "rename", "unlink_tmp", "fsync_dir", "unlink_source"]


@pytest.mark.parametrize(
    "cross_fs,step,err",
    [(False, s, errno.EIO) for s in SAME_FS_STEPS]
    + [(True, s, errno.ENOSPC if s == "copy" else errno.EIO) for s in CROSS_FS_STEPS],
)
def test_failure_leaves_source_intact_and_nothing_partial(
    scan: Path, qroot: Path, monkeypatch, cross_fs: bool, step: str, err: int
) -> None:
    req = make(scan, "f/img.jpg")
    data = req.source.read_bytes()
    always = {"link": exdev()} if cross_fs else {}
    monkeypatch.setattr(fileops, "fault_hook", hook({(step, 1): OSError(err, os.strerror(err))}, always))
    with Quarantine(qroot) as q:
        res = q.move(req)
    assert res.status == "error" and os.strerror(err) in res.message, res.message
    assert req.source.read_bytes() == data
    assert user_files(qroot) == []
    assert states(qroot)[-1] == "rolled_back"
    assert_clean_manifest(qroot)


def test_source_changed_during_copy_is_left_in_place(scan: Path, qroot: Path, monkeypatch) -> None:
    req = make(scan, "c.jpg")

    def edit(step: str) -> None:
        if step == "link":
            raise exdev()
        if step == "verify":
            with open(req.source, "ab") as f:
                f.write(b"appended")

    monkeypatch.setattr(fileops, "fault_hook", edit)
    with Quarantine(qroot) as q:
        res = q.move(req)
    assert res.status == "changed" and req.source.exists()
    assert user_files(qroot) == [] and states(qroot)[-1] == "changed"


def test_unjournalable_details_do_not_crash(scan: Path, qroot: Path) -> None:
    req = make(scan, "d.jpg")
    bad = MoveRequest(req.source, scan, "ood", req.size, req.mtime_ns, {(1, 2): "tuple key"})
    with Quarantine(qroot) as q:
        assert q.move(bad).status == "error"
    assert req.source.exists()


# ----------------------------------------------------------------------------- crashes and recovery


CRASH_CASES = (
    [(False, s, 1, s != "link") for s in SAME_FS_STEPS]
    + [(False, "journal", 2, True)]  # died writing the "done" record
    + [(True, s, 1, s not in ("copy", "fsync", "verify", "rename")) for s in CROSS_FS_STEPS]
    + [(True, "journal", 2, True)]
)


@pytest.mark.parametrize("cross_fs,step,nth,finished", CRASH_CASES)
def test_crash_then_recover_keeps_every_file_exactly_once(
    scan: Path, qroot: Path, monkeypatch, cross_fs: bool, step: str, nth: int, finished: bool
) -> None:
    req = make(scan, "k/img.jpg")
    data = req.source.read_bytes()
    always = {"link": exdev()} if cross_fs else {}
    monkeypatch.setattr(fileops, "fault_hook", hook({(step, nth): Crash()}, always))
    q = Quarantine(qroot).open()
    with pytest.raises(Crash):
        q.move(req)
    die(q)
    final = qroot / "k" / "img.jpg"
    assert not final.exists() or final.read_bytes() == data  # never a partial file under a final name
    assert len(unfinished(qroot)) == 1

    monkeypatch.setattr(fileops, "fault_hook", None)
    with Quarantine(qroot) as q2:  # open() recovers
        assert [a["state"] for a in q2.recovered] == ["done" if finished else "rolled_back"]
    where = [p for p in (req.source, final) if p.exists()]
    assert where == ([final] if finished else [req.source])
    assert where[0].read_bytes() == data
    assert user_files(qroot) == ([final] if finished else [])
    assert states(qroot)[-1] == ("done" if finished else "rolled_back")
    assert_clean_manifest(qroot)
    restored = restore(qroot)
    assert [r.status for r in restored] == (["restored"] if finished else [])
    assert req.source.read_bytes() == data


def test_recover_keeps_both_when_destination_is_another_file(scan: Path, qroot: Path, monkeypatch) -> None:
    req = make(scan, "b.jpg")
    monkeypatch.setattr(fileops, "fault_hook", hook({("link", 1): Crash()}))
    q = Quarantine(qroot).open()
    with pytest.raises(Crash):
        q.move(req)
    die(q)
    (qroot / "b.jpg").write_bytes(b"someone else's file")
    monkeypatch.setattr(fileops, "fault_hook", None)
    with Quarantine(qroot) as q2:
        actions = q2.recover()  # already recovered by open(): nothing left to do
    assert actions == []
    assert req.source.exists() and (qroot / "b.jpg").read_bytes() == b"someone else's file"
    assert states(qroot)[-1] == "rolled_back"


def test_keyboard_interrupt_inside_with_is_finished_on_exit(scan: Path, qroot: Path, monkeypatch) -> None:
    req = make(scan, "i.jpg")
    monkeypatch.setattr(fileops, "fault_hook", hook({("unlink_source", 1): KeyboardInterrupt()}))
    with pytest.raises(KeyboardInterrupt):
        with Quarantine(qroot) as q:
            q.move(req)
    assert not req.source.exists() and (qroot / "i.jpg").exists()
    assert_clean_manifest(qroot)


@pytest.mark.parametrize("cross_fs,step", [(False, "unlink_source"), (True, "copy"), (True, "unlink_tmp")])
def test_real_kill_9_mid_move(scan: Path, qroot: Path, cross_fs: bool, step: str) -> None:
    req = make(scan, "kill/img.jpg", os.urandom(300_000))
    data = req.source.read_bytes()
    code = (
        "import errno, os, signal, sys\n"
        "from pathlib import Path\n"
        "from imgclean.quarantine import moves\n"
        "src, scan, q, step, cross = sys.argv[1:6]\n"
        "def h(s):\n"
        "    if s == 'link' and cross == '1': raise OSError(errno.EXDEV, 'cross')\n"
        "    if s == step: os.kill(os.getpid(), signal.SIGKILL)\n"
        "moves.fileops.fault_hook = h\n"
        "st = os.stat(src)\n"
        "with moves.Quarantine(Path(q)) as qq:\n"
        "    qq.move(moves.MoveRequest(Path(src), Path(scan), 'ood', st.st_size, st.st_mtime_ns, {}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [str(req.source), str(scan), str(qroot), step, "1" if cross_fs else "0"]
    proc = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert len(unfinished(qroot)) == 1
    with Quarantine(qroot):
        pass
    copies = [p for p in (req.source, qroot / "kill" / "img.jpg") if p.exists()]
    assert len(copies) == 1 and copies[0].read_bytes() == data
    assert_clean_manifest(qroot)


def test_torn_last_line_is_ignored_and_next_record_starts_fresh(scan: Path, qroot: Path) -> None:
    with Quarantine(qroot) as q:
        assert q.move(make(scan, "1.jpg")).status == "moved"
    with open(qroot / MANIFEST_NAME, "ab") as f:
        f.write(b'{"op": "move", "id": "abc", "sta')  # crash mid-append
    assert len(read_manifest(qroot)) == 2
    with Quarantine(qroot) as q:
        assert q.move(make(scan, "2.jpg")).status == "moved"
    assert [r["state"] for r in read_manifest(qroot)] == ["started", "done", "started", "done"]


# ----------------------------------------------------------------------------- open(): refusals


def test_open_refuses_when_probe_write_fails(scan: Path, qroot: Path, monkeypatch) -> None:
    req = make(scan, "p.jpg")
    monkeypatch.setattr(fileops, "fault_hook", hook({("probe", 1): OSError(errno.EROFS, os.strerror(errno.EROFS))}))
    with pytest.raises(QuarantineError, match="not writable.*[Rr]ead-only"):
        Quarantine(qroot).open()
    assert req.source.exists() and not (qroot / MANIFEST_NAME).exists()


def test_open_refuses_a_filesystem_without_hard_links(qroot: Path, monkeypatch) -> None:
    real_link = os.link

    def no_links(src, dst, **kw):  # vfat/exFAT answer EPERM
        if str(dst).endswith(".link"):
            raise OSError(errno.EPERM, os.strerror(errno.EPERM))
        return real_link(src, dst, **kw)

    monkeypatch.setattr(os, "link", no_links)
    with pytest.raises(QuarantineError, match="hard links"):
        Quarantine(qroot).open()
    assert os.listdir(qroot) == []  # probe cleaned up


def test_open_refuses_a_read_only_folder(scan: Path, qroot: Path) -> None:
    qroot.mkdir()
    qroot.chmod(0o555)
    immutable = False
    try:
        if os.access(qroot, os.W_OK):  # root writes through mode bits; use the immutable flag
            chattr = shutil.which("chattr")
            if chattr is None or subprocess.run([chattr, "+i", str(qroot)], capture_output=True).returncode:
                pytest.skip("running as root and cannot make a folder immutable (no chattr +i)")
            immutable = True
        with pytest.raises(QuarantineError, match="not writable"):
            with Quarantine(qroot):
                pytest.fail("opened a read-only quarantine")
        assert os.listdir(qroot) == []
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(qroot)], check=True)
        qroot.chmod(0o755)


def test_open_refuses_a_file_as_root(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(QuarantineError, match="cannot create"):
        Quarantine(tmp_path / "f").open()


def test_open_refuses_symlinked_manifest(qroot: Path, tmp_path: Path) -> None:
    qroot.mkdir()
    target = tmp_path / "elsewhere.jsonl"
    target.write_text("")
    (qroot / MANIFEST_NAME).symlink_to(target)
    with pytest.raises(QuarantineError, match="manifest"):
        Quarantine(qroot).open()
    assert target.read_text() == ""


def test_second_quarantine_on_same_folder_is_locked(qroot: Path) -> None:
    with Quarantine(qroot):
        with pytest.raises(LockHeld):
            Quarantine(qroot).open()
    with Quarantine(qroot):  # released on close
        pass


# ----------------------------------------------------------------------------- restore


def _move_all(scan: Path, qroot: Path, rels: list[str]) -> tuple[list[MoveRequest], dict[Path, bytes]]:
    reqs = [make(scan, r) for r in rels]
    data = {r.source: r.source.read_bytes() for r in reqs}
    with Quarantine(qroot) as q:
        assert all(q.move(r).status == "moved" for r in reqs)
    return reqs, data


def test_restore_round_trip_and_second_restore_does_nothing(scan: Path, qroot: Path) -> None:
    reqs, data = _move_all(scan, qroot, ["a.jpg", "x/b.png", f"x/y/{WEIRD}"])
    shutil.rmtree(scan / "x")  # folders gone too: restore recreates them
    results = restore(qroot)
    assert [r.status for r in results] == ["restored"] * 3
    assert [r.source for r in results] == [r.source for r in reversed(reqs)]  # newest move first
    assert {p: p.read_bytes() for p in data} == data  # byte-identical
    assert [r.source.stat().st_mtime_ns for r in reqs] == [r.mtime_ns for r in reqs]
    assert user_files(qroot) == []
    assert sorted(os.listdir(qroot)) == sorted([MANIFEST_NAME, ".imgclean.lock"])  # empty folders pruned
    before, n = listing(scan), len(read_manifest(qroot))
    assert restore(qroot) == []
    assert listing(scan) == before and len(read_manifest(qroot)) == n


def test_restore_never_overwrites_a_file_that_reappeared(scan: Path, qroot: Path) -> None:
    reqs, _ = _move_all(scan, qroot, ["one.jpg", "two.jpg"])
    reqs[0].source.write_bytes(b"new file at the old name")
    results = {r.source: r for r in restore(qroot)}
    assert results[reqs[0].source].status == "exists"
    assert results[reqs[1].source].status == "restored"
    assert reqs[0].source.read_bytes() == b"new file at the old name"
    assert (qroot / "one.jpg").exists()  # the quarantined one survives too
    # once the way is clear, a later restore brings it back
    reqs[0].source.unlink()
    assert [r.status for r in restore(qroot)] == ["restored"]


def test_restore_reports_a_missing_quarantined_file(scan: Path, qroot: Path) -> None:
    [req], _ = _move_all(scan, qroot, ["m.jpg"])
    (qroot / "m.jpg").unlink()
    [res] = restore(qroot)  # deleted by the reviewer: reported, and not a problem
    assert res.status == "discarded" and not res.problem and not req.source.exists()


def test_restore_dry_run_changes_nothing(scan: Path, qroot: Path) -> None:
    reqs, _ = _move_all(scan, qroot, ["a.jpg", "d/b.jpg", "d/c.jpg"])
    reqs[1].source.parent.mkdir(parents=True, exist_ok=True)
    reqs[1].source.write_bytes(b"reappeared")
    before = listing(scan, qroot)
    results = restore(qroot, dry_run=True)
    assert listing(scan, qroot) == before
    assert sorted(r.status for r in results) == ["exists", "restored", "restored"]


def test_restore_without_manifest_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(QuarantineError, match="nothing to restore"):
        restore(tmp_path)


@pytest.mark.parametrize("step", ["link", "unlink_source"])
def test_crash_during_restore_is_recovered(scan: Path, qroot: Path, monkeypatch, step: str) -> None:
    [req], originals = _move_all(scan, qroot, ["r.jpg"])
    data = originals[req.source]
    q = Quarantine(qroot).open()
    monkeypatch.setattr(fileops, "fault_hook", hook({(step, 1): Crash()}))
    with pytest.raises(Crash):
        q.restore_all(dry_run=False)
    die(q)
    monkeypatch.setattr(fileops, "fault_hook", None)
    results = restore(qroot)  # recovers first, then restores whatever is still quarantined
    copies = [p for p in (req.source, qroot / "r.jpg") if p.exists()]
    assert copies == [req.source] and req.source.read_bytes() == data
    assert [r.status for r in results] == ([] if step == "unlink_source" else ["restored"])
    assert_clean_manifest(qroot)
    assert restore(qroot) == []
