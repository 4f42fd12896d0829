"""listing() of a large folder split between this process and a forked child (imgclean/listing.py):
the same columns as stat'ed here alone, whatever becomes of the child, and no child or descriptor
left behind."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from imgclean import listing as L

_real_pack = L._pack
pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the split forks")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def folder(tmp_path):
    """A folder of 200-odd names of every kind."""
    root = tmp_path / "f"
    root.mkdir()
    for i in range(150):
        (root / f"img_{i:03d}.png").write_bytes(b"x" * i)
    for i in range(20):
        (root / f"d\u00e9j\u00e0_{i:02d}_\u732b.jpg").write_bytes(b"y")  # non-ASCII
        (root / f"sub_{i:02d}").mkdir()
        os.symlink(f"img_{i:03d}.png", root / f"link_{i:02d}.png")
    os.symlink("nowhere", root / "dangling.png")
    os.mkfifo(root / "fifo.png")
    (root / ".hidden.png").write_bytes(b"")
    os.utime(root / "img_007.png", ns=(0, -86_400 * 10**9 * 365))  # before 1970: a negative mtime
    return root


@pytest.fixture
def forks(monkeypatch):
    """The split taken from 64 names, whatever the threads or the memory of the test process;
    the pids os.fork gave this process, in a list."""
    monkeypatch.setattr(L, "_may_split", lambda n: n >= 64 and os.environ.get("IMGCLEAN_SPLIT_STAT") != "0")
    pids, real = [], os.fork

    def fork():
        pid = real()
        if pid:
            pids.append(pid)
        return pid

    monkeypatch.setattr(os, "fork", fork)
    return pids


def in_process(folder) -> L.Listing:
    os.environ["IMGCLEAN_SPLIT_STAT"] = "0"
    try:
        return L.listing(folder)
    finally:
        del os.environ["IMGCLEAN_SPLIT_STAT"]


def truth(folder, names=None) -> tuple:
    """The columns from os.lstat of each name (of the listing by default; 0s for one that is gone)."""
    rows, folder = [], os.fspath(folder)
    for name in in_process(folder).names if names is None else names:
        try:
            st = os.lstat(os.path.join(folder, name))
            rows.append((st.st_mode, st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino, st.st_ctime_ns))
        except FileNotFoundError:
            rows.append((0, 0, 0, 0, 0, 0))
    return tuple(map(list, zip(*rows)))


def fds() -> set:
    return set(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else set()


def assert_reaped(pids):
    for pid in pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def stats_in(fd: int, record: list):
    """A stats_of for _split that records, in this process only, how many names it stat'ed."""
    me = os.getpid()

    def stats_of(names):
        if os.getpid() == me:
            record.append(len(names))
        return L._stat_names(names, fd)

    return stats_of


@pytest.mark.parametrize("as_bytes", [False, True], ids=["str", "bytes"])
def test_the_split_listing_equals_the_listing_in_process(folder, forks, as_bytes):
    path = os.fsencode(folder) if as_bytes else os.fspath(folder)
    before = fds()
    alone = in_process(path)
    split = L.listing(path)
    assert len(forks) == 1 and split == alone and tuple(split[1:7]) == truth(path) and split.error == ""
    assert min(split.mtimes) < 0
    assert all(type(v) is int for column in split[1:7] for v in column)
    assert_reaped(forks)
    assert fds() == before


def test_a_deep_folder_opened_a_component_at_a_time_is_split_too(folder, forks, monkeypatch):
    monkeypatch.setattr(L, "FD_WALK_FROM", 1)  # every folder "deep": through _open_deep
    alone = in_process(os.fspath(folder))
    assert L.listing(os.fspath(folder)) == alone and len(forks) == 1 and tuple(alone[1:7]) == truth(folder)
    assert_reaped(forks)


def test_a_failed_fork_leaves_the_whole_folder_to_this_process(folder, forks, monkeypatch):
    def no_fork():
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", no_fork)
    before = fds()
    assert L.listing(os.fspath(folder)) == in_process(os.fspath(folder))
    assert fds() == before


def _raise(columns):
    raise OverflowError("a value out of range")


def _short(columns):
    return _real_pack(columns)[:-8]


def _long(columns):
    return _real_pack(columns) + bytes(8)


def _killed(columns):
    os.kill(os.getpid(), signal.SIGKILL)


def _interrupted(columns):  # SIGINT back to its default action in the child: it dies of it
    os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.parametrize("pack", [_raise, _short, _long, _killed, _interrupted])
def test_a_failed_child_leaves_its_share_to_this_process(folder, forks, monkeypatch, request, pack):
    monkeypatch.setattr(L, "_pack", pack)  # runs in the child only: the fork has the patch
    if pack is _interrupted:  # Python's own SIGINT handler here (not SIG_IGN, as in a background job)
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    statuses, waitpid = [], os.waitpid

    def recording_waitpid(pid, options):
        got = waitpid(pid, options)
        statuses.append(got[1])
        return got

    monkeypatch.setattr(os, "waitpid", recording_waitpid)
    names = in_process(os.fspath(folder)).names
    fd, record = os.open(folder, os.O_RDONLY | os.O_DIRECTORY), []
    try:
        before = fds()
        columns = L._split(names, stats_in(fd, record), 100)
        assert fds() == before
    finally:
        os.close(fd)
    assert columns == list(in_process(os.fspath(folder))[1:7])
    assert record == [100, len(names) - 100]  # the child's share stat'ed here after all
    assert len(forks) == 1 and len(statuses) == 1
    assert (statuses[0] == 0) == (pack in (_short, _long))  # wrong data from a child that exited 0
    if pack is _interrupted:  # no Python handler in the child: killed by the signal, no exit code
        assert os.WIFSIGNALED(statuses[-1]) and os.WTERMSIG(statuses[-1]) == signal.SIGINT
    assert_reaped(forks)


def test_the_child_stats_its_share_and_a_vanished_name_has_zeros(folder, forks):
    names = in_process(os.fspath(folder)).names
    fd, record = os.open(folder, os.O_RDONLY | os.O_DIRECTORY), []
    try:
        gone = ["img_005.png", "link_15.png"]  # one in each share
        assert names.index(gone[0]) < 100 < names.index(gone[1])
        for name in gone:
            os.unlink(folder / name)
        columns = L._split(names, stats_in(fd, record), 100)
    finally:
        os.close(fd)
    assert record == [100]  # the tail stat'ed by the child alone
    for name in gone:
        assert [column[names.index(name)] for column in columns] == [0, 0, 0, 0, 0, 0]
    assert tuple(columns) == truth(folder, names)
    assert_reaped(forks)


def test_an_interrupted_split_kills_and_reaps_the_child(folder, forks):
    names = in_process(os.fspath(folder)).names
    me = os.getpid()

    def stats_of(share):
        if os.getpid() != me:
            signal.pause()  # the child would wait here for good: only SIGKILL ends it
        raise KeyboardInterrupt

    before = fds()
    with pytest.raises(KeyboardInterrupt):
        L._split(names, stats_of, 100)
    assert len(forks) == 1 and fds() == before
    assert_reaped(forks)


@pytest.fixture
def able(monkeypatch):
    """_may_split from 64 names, whatever the memory and the threads the kernel counts in the test
    process: whether it splits is up to the condition a test sets."""
    monkeypatch.setattr(L, "SPLIT_FROM", 64)
    monkeypatch.setattr(L, "_resident_mib", lambda: 0)
    monkeypatch.setattr(L, "_os_threads", lambda: 1)
    monkeypatch.setattr(L, "_sigchld_default", lambda: True)  # whatever earlier tests' libraries set
    monkeypatch.setattr(L, "_cpus", lambda: 2)
    monkeypatch.delenv("IMGCLEAN_SPLIT_STAT", raising=False)
    if threading.active_count() == 1:
        assert L._may_split(64) and not L._may_split(63)


def test_no_split_while_another_thread_runs(folder, able, monkeypatch):
    alone = in_process(os.fspath(folder))
    monkeypatch.setattr(os, "fork", lambda: pytest.fail("forked with another thread alive"))
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert not L._may_split(10**6)
        assert L.listing(os.fspath(folder)) == alone
    finally:
        stop.set()
        thread.join()


def test_no_split_when_the_environment_says_0(folder, able, monkeypatch):
    monkeypatch.setenv("IMGCLEAN_SPLIT_STAT", "0")
    monkeypatch.setattr(os, "fork", lambda: pytest.fail("forked with IMGCLEAN_SPLIT_STAT=0"))
    assert not L._may_split(10**6)
    assert tuple(L.listing(os.fspath(folder))[1:7]) == truth(folder)


@pytest.mark.parametrize("condition", ["kernel threads", "one CPU", "SIGCHLD handled", "much memory"])
def test_no_split_where_forking_is_unsafe_or_too_dear(able, monkeypatch, condition):
    if condition == "kernel threads":  # a thread started outside Python (a C library's pool)
        monkeypatch.setattr(L, "_os_threads", lambda: 2)
    elif condition == "one CPU":
        monkeypatch.setattr(L, "_cpus", lambda: 1)
    elif condition == "SIGCHLD handled":
        monkeypatch.setattr(L, "_sigchld_default", lambda: False)
    else:
        monkeypatch.setattr(L, "_resident_mib", lambda: 1024)  # 1 GiB to fork: from 64 + 32,768 names
        assert L._may_split(64 + 32 * 1024) or threading.active_count() > 1
    assert not L._may_split(10_000)


def test_a_fresh_single_threaded_process_splits_unless_told_not_to():
    if L._cpus() < 2:
        pytest.skip("one CPU: never split")
    code = "from imgclean import listing; print(listing._may_split(10**6), listing._may_split(listing.SPLIT_FROM - 1))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for value, expected in ((None, "True False"), ("1", "True False"), ("0", "False False")):
        env.pop("IMGCLEAN_SPLIT_STAT", None)
        if value is not None:
            env["IMGCLEAN_SPLIT_STAT"] = value
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == expected, (value, out.stderr)


def test_packed_columns_round_trip_and_what_does_not_fit_fails():
    columns = [[0o100644, -1], [0, 2**64 - 1], [-(2**63), 2**63 - 1], [2**64 - 1, 3], [1, 2**64 - 1], [-5, 2**63 - 1]]
    assert L._unpack(L._pack(columns), 2) == columns
    assert L._unpack(L._pack(columns)[:-1], 2) is None
    with pytest.raises(OverflowError):
        L._pack([[0], [-1], [0], [0], [0], [0]])  # a negative size
    with pytest.raises(OverflowError):
        L._pack([[0], [0], [2**63], [0], [0], [0]])  # an mtime past int64
    with pytest.raises(OverflowError):
        L._pack([[0], [0], [0], [0], [0], [2**63]])  # a ctime past int64


def test_a_sigchld_handler_is_seen():
    previous = signal.signal(signal.SIGCHLD, lambda *_: None)
    try:
        assert not L._sigchld_default()
    finally:
        signal.signal(signal.SIGCHLD, previous)
    if previous == signal.SIG_DFL:
        assert L._sigchld_default()
