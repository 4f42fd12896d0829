"""ScanLock: one run per folder, holder named, symlinks refused."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imgclean.locking import LOCK_NAME, LockError, LockHeld, ScanLock

REPO = Path(__file__).resolve().parents[1]


def test_lock_writes_holder_and_leaves_file(tmp_path: Path) -> None:
    with ScanLock(tmp_path) as lock:
        text = lock.path.read_text()
        assert text.startswith(f"pid {os.getpid()} on ")
        assert " since " in text and text.endswith("\n")
    assert (tmp_path / LOCK_NAME).exists()  # never deleted: deleting races
    with ScanLock(tmp_path):  # and it can be taken again
        pass


def test_second_lock_in_same_process_is_refused(tmp_path: Path) -> None:
    with ScanLock(tmp_path):
        with pytest.raises(LockHeld) as info:
            with ScanLock(tmp_path):
                pytest.fail("second lock was granted")
        assert f"pid {os.getpid()}" in info.value.holder
        assert str(tmp_path) in str(info.value)


def test_symlinked_lock_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    before = target.stat()
    folder = tmp_path / "scan"
    folder.mkdir()
    (folder / LOCK_NAME).symlink_to(target)
    with pytest.raises(LockError, match="symlink"):
        with ScanLock(folder):
            pytest.fail("lock followed a symlink")
    assert target.read_text() == "keep me\n"
    assert target.stat().st_mtime_ns == before.st_mtime_ns


def test_lock_file_that_is_a_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / LOCK_NAME).mkdir()
    with pytest.raises(LockError):
        with ScanLock(tmp_path):
            pass


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


def test_lock_held_by_another_process_blocks(tmp_path: Path) -> None:
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from imgclean.locking import ScanLock\n"
        "with ScanLock(Path(sys.argv[1])):\n"
        "    print('locked', flush=True)\n"
        "    time.sleep(30)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(LockHeld) as info:
            with ScanLock(tmp_path):
                pytest.fail("lock granted while another process holds it")
        assert f"pid {child.pid} " in info.value.holder
    finally:
        child.kill()
        child.wait()
    # kill -9 releases flock: the stale file does not block the next run.
    deadline = time.monotonic() + 5
    while True:
        try:
            with ScanLock(tmp_path):
                break
        except LockHeld:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
