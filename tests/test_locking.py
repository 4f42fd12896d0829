"""ScanLock: one run per tree (same folder, ancestors, descendants), holder and busy folder named,
symlinks refused, a stale or unusable registry never blocks a run."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imgclean.quarantine import locking
from imgclean.quarantine.locking import LOCK_NAME, REGISTRY_ENV, LockError, LockHeld, ScanLock

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own lock registry (subprocesses inherit it through the environment)."""
    path = tmp_path / "registry"
    monkeypatch.setenv(REGISTRY_ENV, str(path))
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """P with children C (and C/D) and a sibling S."""
    (tmp_path / "P" / "C" / "D").mkdir(parents=True)
    (tmp_path / "P" / "S").mkdir()
    return tmp_path / "P"


def real(p: Path) -> Path:
    return Path(os.path.realpath(p))


def entries(registry: Path) -> list[Path]:
    return sorted(registry.glob("*.json")) if registry.is_dir() else []


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
        "from imgclean.quarantine.locking import ScanLock\n"
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


# ----------------------------------------------------------------------------- overlapping trees


def test_parent_then_child_is_refused_and_names_the_parent(tree: Path) -> None:
    with ScanLock(tree):
        for child in (tree / "C", tree / "C" / "D"):
            with pytest.raises(LockHeld) as info:
                with ScanLock(child):
                    pytest.fail(f"{child} locked while its parent is")
            assert info.value.path == real(tree) / LOCK_NAME
            assert str(real(tree)) in str(info.value) and "contains" in str(info.value)
            assert f"pid {os.getpid()} " in info.value.holder


def test_child_then_parent_is_refused_and_names_the_child(tree: Path) -> None:
    with ScanLock(tree / "C" / "D"):
        for folder in (tree, tree / "C"):
            with pytest.raises(LockHeld) as info:
                with ScanLock(folder):
                    pytest.fail(f"{folder} locked while a folder below it is")
            assert info.value.path == real(tree / "C" / "D") / LOCK_NAME
            assert str(real(tree / "C" / "D")) in str(info.value)


def test_sibling_folders_are_allowed(tree: Path, registry: Path) -> None:
    with ScanLock(tree / "C"), ScanLock(tree / "S"):
        assert len(entries(registry)) == 2
    assert entries(registry) == []  # withdrawn on release
    with ScanLock(tree):  # and the parent is free again
        pass


def test_symlinked_path_to_the_same_tree_is_refused(tree: Path, tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(tree)
    with ScanLock(tree):
        for other in (link, link / "C"):
            with pytest.raises(LockHeld) as info:
                with ScanLock(other):
                    pytest.fail(f"{other} is {tree} or inside it and was locked")
            assert real(info.value.path.parent) == real(tree)


def test_refusal_releases_everything(tree: Path, registry: Path) -> None:
    with ScanLock(tree):
        with pytest.raises(LockHeld):
            ScanLock(tree / "C").__enter__()
        assert len(entries(registry)) == 1  # the refused run withdrew its entry
    with ScanLock(tree / "C"):  # and dropped its folder lock
        pass


@pytest.mark.parametrize(("first", "second", "step", "winner"), [
    ("", "C", "published", "first"),  # parent published before the child looked
    ("", "C", "folder_locked", "first"),  # not yet published: the parent's lock file stops the child
    ("C", "", "published", "first"),
    ("C", "", "folder_locked", "second"),  # the parent gets in first; the child, looking later, is refused
])
def test_interleaved_runs_never_both_proceed(tree: Path, first: str, second: str, step: str, winner: str) -> None:
    """A second run goes through completely at a step of the first one's __enter__ and keeps its lock."""
    inner = ScanLock(tree / second)
    outcome: list[object] = []

    def hook(name: str) -> None:
        if name == step:
            locking._fault_hook = None  # the inner run's own steps run unhooked
            try:
                outcome.append(inner.__enter__())
            except LockHeld as e:
                outcome.append(e)

    outer = ScanLock(tree / first)
    locking._fault_hook = hook
    try:
        try:
            outer.__enter__()
            outer_result: object = outer
        except LockHeld as e:
            outer_result = e
        assert len(outcome) == 1
        granted = [r for r in (outer_result, outcome[0]) if isinstance(r, ScanLock)]
        assert len(granted) == 1, f"granted: {granted}"
        assert granted[0] is (outer if winner == "first" else inner)
        refused = outcome[0] if winner == "first" else outer_result
        assert isinstance(refused, LockHeld) and refused.path == real(granted[0].folder) / LOCK_NAME
    finally:
        locking._fault_hook = None
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


def test_other_process_child_blocks_parent(tree: Path) -> None:
    holder = Holder(tree / "C")
    try:
        with pytest.raises(LockHeld) as info:
            with ScanLock(tree):
                pytest.fail("parent locked while another process holds a child")
        assert info.value.path == real(tree / "C") / LOCK_NAME
        assert str(real(tree / "C")) in str(info.value)
        with ScanLock(tree / "S"):  # a sibling is fine
            pass
    finally:
        holder.release()


def test_stale_entry_of_a_killed_process_does_not_block(tree: Path, registry: Path) -> None:
    holder = Holder(tree)
    holder.kill()
    stale = entries(registry)
    assert len(stale) == 1 and json.loads(stale[0].read_text())["root"] == str(real(tree))
    with ScanLock(tree / "C"):
        assert not stale[0].exists()  # removed by the run that found it unheld
    with ScanLock(tree):
        pass


def test_planted_unheld_entry_is_ignored(tree: Path, registry: Path) -> None:
    registry.mkdir(mode=0o1777)
    planted = registry / "1-deadbeef.json"
    planted.write_text(json.dumps({"kind": "scan", "root": "/", "chain": [], "pid": 1, "host": "x", "since": "t"}))
    (registry / "garbage.json").write_text("not json")
    with ScanLock(tree):
        pass
    assert not planted.exists()


def test_ancestor_lock_file_is_checked_without_the_registry(tree: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A run on another machine shares the folder but not our registry: its lock file above us counts."""
    monkeypatch.setenv(REGISTRY_ENV, str(tmp_path / "registry-of-another-machine"))
    holder = Holder(tree)
    try:
        monkeypatch.setenv(REGISTRY_ENV, str(tmp_path / "registry-here"))
        with pytest.raises(LockHeld) as info:
            with ScanLock(tree / "C" / "D"):
                pytest.fail("locked below a folder whose lock file is held")
        assert info.value.path == real(tree) / LOCK_NAME
        assert f"pid {holder.proc.pid} " in info.value.holder
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
    q.mkdir()
    holder = Holder(q, kind="quarantine")
    try:
        with pytest.raises(LockHeld) as info:
            with ScanLock(q, kind="quarantine"):
                pass
        assert str(q) in str(info.value) and "quarantine" in str(info.value)
    finally:
        holder.release()


def test_unknown_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        ScanLock(tmp_path, kind="restore")


# ----------------------------------------------------------------------------- the registry itself


def test_registry_is_created_sticky_and_world_writable(tmp_path: Path, registry: Path) -> None:
    with ScanLock(tmp_path):
        assert (os.lstat(registry).st_mode & 0o7777) == 0o1777
        (entry,) = entries(registry)
        body = json.loads(entry.read_text())
        assert body["root"] == str(real(tmp_path)) and body["pid"] == os.getpid() and body["kind"] == "scan"


@pytest.mark.parametrize("plant", ["symlink", "file"])
def test_unusable_registry_falls_back_to_the_folder_lock(tree: Path, tmp_path: Path, registry: Path, plant: str,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    if plant == "symlink":
        registry.symlink_to(target)
    else:
        registry.write_text("not a folder\n")
    with caplog.at_level(logging.WARNING, logger="imgclean.quarantine.locking"):
        with ScanLock(tree):
            with pytest.raises(LockHeld):  # the same folder is still refused
                with ScanLock(tree):
                    pass
    assert "lock registry" in caplog.text and "unusable" in caplog.text
    assert list(target.iterdir()) == []  # nothing written through the symlink
    assert registry.is_symlink() if plant == "symlink" else registry.read_text() == "not a folder\n"
