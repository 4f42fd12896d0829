"""ScanLock and check_below: one run per tree (same folder, ancestors at the start, descendants
before each move), holder and busy folder named, anything unreadable refuses, no shared state,
and no child process ever keeps a run's lock."""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from imgclean.quarantine import locking
from imgclean.quarantine.locking import LOCK_NAME, LockError, LockHeld, LockUnusable, ScanLock, check_below

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """P with children C (and C/D) and a sibling S."""
    (tmp_path / "P" / "C" / "D").mkdir(parents=True)
    (tmp_path / "P" / "S").mkdir()
    return tmp_path / "P"


def real(p: Path) -> Path:
    return Path(os.path.realpath(p))


class Holder:
    """A second process holding ScanLock(folder, kind) until it is released or killed."""

    CODE = (
        "import sys\n"
        "from pathlib import Path\n"
        "from imgclean.quarantine.locking import ScanLock\n"
        "with ScanLock(Path(sys.argv[1]), kind=sys.argv[2]):\n"
        "    print('locked', flush=True)\n"
        "    sys.stdin.read()\n"  # held until the test closes our stdin
    )

    def __init__(self, folder: Path, kind: str = "scan"):
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", self.CODE, str(folder), kind],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != "locked":
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"holder did not get the lock on {folder}")

    def release(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        assert self.proc.wait(timeout=60) == 0

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=60)  # the kernel closed its files (and dropped its flocks) by now


def test_lock_writes_holder_and_kind_and_leaves_file(tmp_path: Path) -> None:
    with ScanLock(tmp_path, kind="quarantine") as lock:
        text = lock.path.read_text()
        assert text.startswith(f"pid {os.getpid()} on ")
        assert " since " in text and text.endswith("\nkind quarantine\n")
        assert (lock.path.stat().st_mode & 0o777) == 0o644  # others can open it to test it
    assert (tmp_path / LOCK_NAME).exists()  # never deleted: deleting races
    with ScanLock(tmp_path):  # and it can be taken again
        pass


def test_lock_file_mode_does_not_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        with ScanLock(tmp_path) as lock:
            assert (lock.path.stat().st_mode & 0o777) == 0o644
    finally:
        os.umask(old)


def test_second_lock_in_same_process_is_refused(tmp_path: Path) -> None:
    with ScanLock(tmp_path):
        with pytest.raises(LockHeld) as info:
            with ScanLock(tmp_path):
                pytest.fail("second lock was granted")
        assert f"pid {os.getpid()}" in info.value.holder
        assert str(tmp_path) in str(info.value)


@pytest.mark.parametrize("plant", ["symlink", "folder", "fifo"])
def test_planted_lock_file_is_refused_as_busy(tmp_path: Path, plant: str) -> None:
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    before = target.stat()
    folder = tmp_path / "scan"
    folder.mkdir()
    lock = folder / LOCK_NAME
    {"symlink": lambda: lock.symlink_to(target), "folder": lock.mkdir, "fifo": lambda: os.mkfifo(lock)}[plant]()
    with pytest.raises(LockUnusable) as info:  # a LockHeld (exit 4) and a LockError
        with ScanLock(folder):
            pytest.fail("lock used a planted file")
    assert isinstance(info.value, LockError) and "remove it" in str(info.value)
    if plant == "symlink":
        assert "symlink" in str(info.value)
    assert target.read_text() == "keep me\n"
    assert target.stat().st_mtime_ns == before.st_mtime_ns


def test_missing_folder_is_a_lock_error(tmp_path: Path) -> None:
    with pytest.raises(LockError, match="does not exist"):
        with ScanLock(tmp_path / "nope"):
            pass


def test_read_only_folder_is_a_lock_error(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    immutable = False
    try:
        if os.access(folder, os.W_OK):  # root ignores mode bits; try the immutable flag instead
            chattr = shutil.which("chattr")
            if chattr is None or subprocess.run([chattr, "+i", str(folder)], capture_output=True).returncode:
                pytest.skip("running as root and cannot make a folder immutable (no chattr +i)")
            immutable = True
        with pytest.raises(LockError, match="not writable"):
            with ScanLock(folder):
                pass
        assert not (folder / LOCK_NAME).exists()
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


def test_lock_held_by_another_process_blocks_until_it_is_killed(tmp_path: Path) -> None:
    holder = Holder(tmp_path)
    with pytest.raises(LockHeld) as info:
        with ScanLock(tmp_path):
            pytest.fail("lock granted while another process holds it")
    assert f"pid {holder.proc.pid} " in info.value.holder
    holder.kill()
    with ScanLock(tmp_path):  # kill -9 released the flock: the file left behind blocks nothing
        pass


# ----------------------------------------------------------------------------- overlapping trees


def test_parent_then_child_is_refused_and_names_the_parent(tree: Path) -> None:
    with ScanLock(tree):
        for child in (tree / "C", tree / "C" / "D"):
            with pytest.raises(LockHeld) as info:
                with ScanLock(child):
                    pytest.fail(f"{child} locked while its parent is")
            assert info.value.path == real(tree) / LOCK_NAME
            assert str(real(tree)) in str(info.value) and "contains" in str(info.value)
            assert f"pid {os.getpid()}" in info.value.holder


def test_child_then_parent_is_refused_at_the_first_move_below_the_child(tree: Path) -> None:
    """The parent cannot see below itself when it starts; every move test (check_below) does."""
    with ScanLock(tree / "C" / "D"):
        with ScanLock(tree):
            check_below(tree, tree / "S")  # a sibling folder is free
            check_below(tree, tree)
            for folder in (tree / "C" / "D", tree / "C" / "D" / "not-made-yet"):
                with pytest.raises(LockHeld) as info:
                    check_below(tree, folder)
                assert info.value.path == real(tree / "C" / "D") / LOCK_NAME
                assert str(real(tree / "C" / "D")) in str(info.value) and "inside" in str(info.value)
            check_below(tree, tree / "C")  # above the busy folder: free


def test_sibling_folders_are_allowed(tree: Path) -> None:
    with ScanLock(tree / "C"), ScanLock(tree / "S"):
        pass
    with ScanLock(tree):  # and the parent is free again
        check_below(tree, tree / "C" / "D")


def test_symlinked_path_to_the_same_tree_is_refused(tree: Path, tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(tree)
    with ScanLock(tree):
        for other in (link, link / "C"):
            with pytest.raises(LockHeld) as info:
                with ScanLock(other):
                    pytest.fail(f"{other} is {tree} or inside it and was locked")
            assert real(info.value.path.parent) == real(tree)
    with ScanLock(link / "C"):  # and below: the parent's moves into C meet the lock through the link
        with ScanLock(tree), pytest.raises(LockHeld):
            check_below(tree, tree / "C")


def test_refusal_releases_everything(tree: Path) -> None:
    with ScanLock(tree):
        with pytest.raises(LockHeld):
            ScanLock(tree / "C").__enter__()
        assert locking._HELD and len(locking._HELD) == 1
    assert not locking._HELD
    with ScanLock(tree / "C"):  # the refused run dropped its folder lock
        pass


@pytest.mark.parametrize(("first", "second"), [("", "C"), ("C", ""), ("", "C/D"), ("C/D", "")])
def test_interleaved_runs_never_both_move(tree: Path, first: str, second: str) -> None:
    """A second run goes through its whole start while the first one holds its own lock and has
    not yet looked above. Whatever the order, at most one of them gets to move a file below the
    deeper folder, and one does."""
    inner = ScanLock(tree / second)
    outcome: list[object] = []

    def hook(name: str) -> None:
        if name == "folder_locked":
            locking.fault_hook = None  # the inner run's own steps run unhooked
            try:
                outcome.append(inner.__enter__())
            except LockHeld as e:
                outcome.append(e)

    outer = ScanLock(tree / first)
    deep = tree / max(first, second, key=len) / "file-folder"
    locking.fault_hook = hook
    try:
        try:
            outer.__enter__()
            outer_result: object = outer
        except LockHeld as e:
            outer_result = e
        moving = []
        for lock in (r for r in (outer_result, outcome[0]) if isinstance(r, ScanLock)):
            try:
                check_below(lock.folder, deep)
                moving.append(lock)
            except LockHeld:
                pass
        assert len(moving) == 1, f"runs that may move files below {deep}: {moving}"
    finally:
        locking.fault_hook = None
        outer.release()
        inner.release()


def test_other_process_parent_blocks_child(tree: Path) -> None:
    holder = Holder(tree)
    try:
        with pytest.raises(LockHeld) as info:
            with ScanLock(tree / "C"):
                pytest.fail("child locked while another process holds the parent")
        assert info.value.path == real(tree) / LOCK_NAME
        assert f"pid {holder.proc.pid} " in info.value.holder
        assert str(real(tree)) in str(info.value)
    finally:
        holder.release()
    with ScanLock(tree / "C"):
        pass


def test_other_process_child_blocks_the_parents_moves_below_it(tree: Path) -> None:
    holder = Holder(tree / "C")
    try:
        with ScanLock(tree):
            with pytest.raises(LockHeld) as info:
                check_below(tree, tree / "C" / "D")
            assert info.value.path == real(tree / "C") / LOCK_NAME
            assert f"pid {holder.proc.pid} " in info.value.holder
            check_below(tree, tree / "S")
    finally:
        holder.release()


def test_replaced_root_lock_stops_the_run(tree: Path) -> None:
    """Whoever can write the folder can swap its lock file for a fresh one no run holds: the run
    that held it stops before its next move, so a run started meanwhile below is not a second one."""
    lock = ScanLock(tree).__enter__()
    check_below(tree, tree / "C")
    (tree / LOCK_NAME).rename(tree / "old-lock")
    (tree / LOCK_NAME).write_text("")
    with ScanLock(tree / "C"):  # its start sees no held lock above any more
        pass
    with pytest.raises(LockHeld, match="removed or replaced"):
        check_below(tree, tree / "S")
    (tree / LOCK_NAME).unlink()
    with pytest.raises(LockHeld, match="removed or replaced"):
        check_below(tree, tree)
    with pytest.raises(LockHeld, match="removed or replaced"):  # and at its end, even with no move left
        lock.__exit__(None, None, None)
    assert not locking._HELD


def test_check_below_never_follows_a_link(tree: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tree / "S" / "ln").symlink_to(elsewhere)
    holder = Holder(elsewhere)  # a lock that would be met only through the link
    try:
        with ScanLock(tree):
            check_below(tree, tree / "S" / "ln")  # resolves outside: the move itself refuses it
    finally:
        holder.release()


def test_check_below_follows_a_link_inside_the_root_to_the_folder_it_reaches(tree: Path) -> None:
    (tree / "S" / "ln").symlink_to(tree / "C")
    holder = Holder(tree / "C" / "D")
    try:
        with ScanLock(tree):
            with pytest.raises(LockHeld) as info:
                check_below(tree, tree / "S" / "ln" / "D")
            assert info.value.path == real(tree / "C" / "D") / LOCK_NAME
            with pytest.raises(LockHeld):
                check_below(tree, tree / "S" / ".." / "C" / "D")
    finally:
        holder.release()


@pytest.mark.parametrize("plant", ["symlink", "folder", "fifo", "unreadable"])
def test_planted_lock_files_above_or_below_refuse(tree: Path, tmp_path: Path, plant: str) -> None:
    for where in (tree, tree / "C"):  # above C/D at its start; below P before a move
        lock = where / LOCK_NAME
        if plant == "symlink":
            lock.symlink_to(tmp_path / "nowhere")
        elif plant == "folder":
            lock.mkdir()
        elif plant == "fifo":
            os.mkfifo(lock)
        else:
            lock.write_text("x")
            lock.chmod(0)
            if os.geteuid() == 0:
                pytest.skip("root reads a chmod-000 file (the second-user tests cover it)")
    with pytest.raises(LockUnusable, match="remove it"):
        with ScanLock(tree / "C" / "D"):
            pass
    (tree / LOCK_NAME).rmdir() if plant == "folder" else (tree / LOCK_NAME).unlink()
    with ScanLock(tree):
        with pytest.raises(LockUnusable):
            check_below(tree, tree / "C" / "D")


def test_holder_text_is_shown_as_one_printable_line(tree: Path) -> None:
    holder = Holder(tree)
    try:
        (tree / LOCK_NAME).write_bytes(b"[" * 5000 + b"\x1b[31m\x00\xff evil\nkind quarantine\n")
        with pytest.raises(LockHeld) as info:
            with ScanLock(tree / "C"):
                pass
        message = str(info.value)
        assert "\x1b" not in message and "\x00" not in message and "\n" not in message
        assert len(info.value.holder) <= 200
    finally:
        holder.release()


# ----------------------------------------------------------------------------- quarantines


def test_quarantine_inside_its_scanned_folder_is_allowed(tree: Path) -> None:
    q = tree / "quarantine"
    q.mkdir()
    with ScanLock(tree), ScanLock(q, kind="quarantine"):
        with pytest.raises(LockHeld) as info:  # a second user of the same quarantine (scan or restore)
            with ScanLock(q, kind="quarantine"):
                pass
        assert info.value.path == q / LOCK_NAME and str(q) in str(info.value)


def test_quarantine_excludes_scans_inside_it_and_nested_quarantines(tmp_path: Path) -> None:
    q = tmp_path / "q"
    (q / "sub").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    with ScanLock(q, kind="quarantine"):
        for kind, folder in (("scan", q), ("scan", q / "sub"), ("quarantine", q / "sub")):
            with pytest.raises(LockHeld) as info:
                with ScanLock(folder, kind=kind):
                    pytest.fail(f"{kind} lock on {folder} granted inside a quarantine in use")
            assert real(info.value.path.parent) == real(q)
        (tmp_path / "q2").mkdir()
        with ScanLock(tmp_path / "elsewhere"), ScanLock(tmp_path / "q2", kind="quarantine"):
            pass  # unrelated folders and quarantines are fine


def test_quarantine_in_another_process(tmp_path: Path) -> None:
    q = tmp_path / "q"
    (q / "sub").mkdir(parents=True)
    holder = Holder(q, kind="quarantine")
    try:
        for kind, folder in (("quarantine", q), ("scan", q / "sub"), ("quarantine", q / "sub")):
            with pytest.raises(LockHeld) as info:
                with ScanLock(folder, kind=kind):
                    pass
            assert str(q) in str(info.value) and "quarantine" in str(info.value)
    finally:
        holder.release()


def test_another_process_scan_above_a_quarantine_is_trusted_only_from_a_safe_file(tree: Path) -> None:
    """A quarantine inside another run's scanned folder is allowed when the lock file's text can be
    trusted (written only by root or us); a lock file others may write counts as a quarantine's."""
    q = tree / "C" / "q"
    q.mkdir()
    holder = Holder(tree, kind="scan")
    try:
        with ScanLock(q, kind="quarantine"):
            pass
        (tree / LOCK_NAME).chmod(0o666)
        with pytest.raises(LockHeld):
            with ScanLock(q, kind="quarantine"):
                pass
    finally:
        holder.release()


def test_unknown_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        ScanLock(tmp_path, kind="restore")


# ----------------------------------------------------------------------------- children


def _wait_on(pipe_fd: int) -> None:
    os.read(pipe_fd, 1)  # until the test writes or closes the pipe
    os._exit(0)


@pytest.mark.parametrize("how", ["os.fork", "multiprocessing"])
def test_forked_children_never_hold_the_lock(tmp_path: Path, how: str) -> None:
    """A child forked while a lock is held (a decode process, the listing's stat child) closes its
    copy at once: once the parent lets go, the folder is free although the child lives on."""
    r, w = os.pipe()
    lock = ScanLock(tmp_path).__enter__()
    try:
        if how == "os.fork":
            pid = os.fork()
            if pid == 0:
                _wait_on(r)
            child = None
        else:
            child = mp.get_context("fork").Process(target=_wait_on, args=(r,))
            child.start()
            pid = child.pid
        fd, lock._fd = lock._fd, None  # the parent's end as kill -9 ends it: closed, never unlocked
        locking._HELD.pop(lock._id)
        os.close(fd)
        probe = subprocess.run(
            [sys.executable, "-c", "import sys\nfrom imgclean.quarantine.locking import ScanLock\n"
             "with ScanLock(sys.argv[1]): print('free')", str(tmp_path)],
            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert probe.stdout.strip() == "free", probe.stderr
        assert os.waitpid(pid, os.WNOHANG) == (0, 0)  # the child was still alive
    finally:
        os.write(w, b"x")
        os.close(w)
        os.close(r)
        if child is not None:
            child.join(60)
        else:
            os.waitpid(pid, 0)
        lock.release()


def test_kill_9_of_the_holder_frees_the_folder_for_its_children_s_lifetime(tmp_path: Path) -> None:
    """The holder forks a child and is killed with -9; the child lives on and holds nothing."""
    code = (
        "import os, sys, time\n"
        "from imgclean.quarantine.locking import ScanLock\n"
        "lock = ScanLock(sys.argv[1]).__enter__()\n"
        "if os.fork() == 0:\n"
        "    time.sleep(120)\n"
        "    os._exit(0)\n"
        "print('locked', flush=True)\n"
        "time.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        proc.kill()
        proc.wait(60)
        with ScanLock(tmp_path):
            pass
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the orphaned child, in the holder's own session
        except ProcessLookupError:
            pass


def test_bind_mount_of_a_child_collides_with_its_parent(tree: Path, tmp_path: Path) -> None:
    """A run on a bind mount of P/C, in a mount namespace of its own, and one on P: one lock file."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("mount"):
        pytest.skip("needs root, unshare and mount for a private bind mount")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    code = ("import sys, time\nfrom imgclean.quarantine.locking import ScanLock\n"
            "with ScanLock(sys.argv[1]):\n    print('locked', flush=True)\n    sys.stdin.read()\n")
    proc = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         f'mount --bind "$1" "$2" && exec "$3" -c "$4" "$2"', "sh", str(tree / "C"), str(mnt), sys.executable, code],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        line = proc.stdout.readline().strip()
        if line != "locked":
            pytest.skip(f"cannot bind-mount in a private namespace here: {proc.stderr.read()[-300:]}")
        with ScanLock(tree):
            with pytest.raises(LockHeld):
                check_below(tree, tree / "C" / "D")
        with pytest.raises(LockHeld):
            with ScanLock(tree / "C"):
                pass
    finally:
        proc.stdin.close()
        proc.wait(60)
