"""Listing one folder for the walk (walk.py): its sorted non-hidden names with their lstat
fields, in columns.

A folder is listed and stat'ed through a directory descriptor (fstatat on each name), opened a
component at a time when its path is too long for the kernel. A sub-folder is opened without
following a symbolic link and checked to be the folder its parent's listing showed. A folder
that cannot be listed says why (Listing.error), so the walk can report it.

A large folder (SPLIT_FROM names or more, more in a process with much memory to fork) is
stat'ed in two processes at once: a forked child stats the tail of the names (CHILD_SHARE of
them) while this process stats the rest, and sends its columns back through a pipe as packed
64-bit integers. Only where forking is safe: os.fork exists, this process runs one thread
(Python's count and the kernel's), the main one, SIGCHLD is not handled, and it may run on two
CPUs or more. The child only stats, packs and writes, and leaves with os._exit; on any failure
of it (no fork, a non-zero exit, short data) this process stats the child's share itself, and it
never leaves a child behind. IMGCLEAN_SPLIT_STAT=0 in the environment turns the split off.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import logging
import os
import signal
import threading
from array import array
from operator import attrgetter
from typing import NamedTuple

from . import tuning

log = logging.getLogger(__name__)

# The kernel refuses paths of PATH_MAX bytes or more (the count includes the final NUL).
try:
    PATH_MAX = os.pathconf("/", "PC_PATH_MAX")
except (OSError, ValueError, AttributeError):
    PATH_MAX = 4096
# Folders whose path is this long or longer are opened a component at a time.
FD_WALK_FROM = PATH_MAX - 512


def _open_deep(path: str) -> int:
    """A descriptor for a folder whose path may exceed PATH_MAX: openat one component at a time."""
    parts = os.path.abspath(os.fsdecode(path)).split(os.sep)
    fd = os.open(os.sep, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts:
            if not part:
                continue
            nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


_COLUMNS = ("st_mode", "st_size", "st_mtime_ns", "st_dev", "st_ino", "st_ctime_ns")
_GETTERS = tuple(map(attrgetter, _COLUMNS))


class Listing(NamedTuple):
    """One folder's sorted non-hidden names and, in columns (one list each, index for index), the
    lstat fields the walk uses. A name that could not be stat'ed (it vanished between the listing
    and its stat) has mode 0 (no file type) and zeros. `error`: why the folder could not be
    listed ('' when it was; its columns are then empty)."""

    names: list
    modes: list[int]
    sizes: list[int]
    mtimes: list[int]  # st_mtime_ns
    devs: list[int]
    inos: list[int]
    ctimes: list[int]  # st_ctime_ns: changes with every write, and no user can set it back
    error: str = ""


EMPTY = Listing([], [], [], [], [], [], [])


def listing(folder: str | bytes, identity: tuple[int, int] | None = None) -> Listing:
    """The sorted non-hidden entries of `folder` with their lstat fields (names as str, or as
    bytes for a bytes folder).

    `identity`: the (st_dev, st_ino) the walk saw for this folder in its parent's listing. Then
    the folder is opened without following a symbolic link and must still be that folder: one
    swapped for a link or another folder after its parent was listed is not listed (the walk
    never leaves the tree through it). A folder that is gone is an empty listing; one that
    cannot be listed (permission denied, I/O error, replaced) an empty listing with `error`."""
    deep = len(os.fsencode(os.path.abspath(folder))) >= FD_WALK_FROM
    fd = None
    try:
        # Listed and stat'ed through a descriptor: fstatat on each name, no path to resolve
        # again per file, and every stat is of this very folder.
        if deep:
            fd = _open_deep(folder)
        else:
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | (os.O_NOFOLLOW if identity is not None else 0)
            fd = os.open(folder, flags)
        if identity is not None:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != identity:
                return _unlisted(folder, "it was replaced by another folder during the walk")
        with os.scandir(fd) as it:
            names = [e.name for e in it]
        names = [n for n in names if not n.startswith(".")]  # is_hidden, inline
        if isinstance(folder, bytes):
            names = sorted(map(os.fsencode, names))
        elif "".join(names).isascii():
            names.sort()  # ASCII: the order of the bytes, without encoding each name
        else:
            names.sort(key=os.fsencode)
        return Listing(names, *_stat_columns(names, lambda share: _stat_names(share, fd)))
    except OSError as exc:
        if exc.errno == errno.ENOENT:  # gone since its parent was listed: nothing left to find in it
            log.info("folder %s vanished during the walk", os.fsdecode(folder))
            return EMPTY
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and identity is not None:  # (O_NOFOLLOW met a link)
            return _unlisted(folder, "it was replaced by a symbolic link or a file during the walk (not followed)")
        return _unlisted(folder, exc.strerror or str(exc))
    finally:
        if fd is not None:
            os.close(fd)


def _unlisted(folder, reason: str) -> Listing:
    log.warning("cannot list %s: %s", os.fsdecode(folder), reason)
    return Listing([], [], [], [], [], [], [], reason)


def _fields(stats: list[os.stat_result | None]) -> list[list[int]]:
    """The columns (modes, sizes, mtimes, devs, inos, ctimes) of `stats`; zeros for a None."""
    if None in stats:
        stats = [_VANISHED if s is None else s for s in stats]
    return [list(map(field, stats)) for field in _GETTERS]


class _Vanished:
    """The stat of a name that could not be stat'ed: mode 0 (no file type), zeros."""

    st_mode = st_size = st_mtime_ns = st_dev = st_ino = st_ctime_ns = 0


_VANISHED = _Vanished()


def _stat_names(names: list, fd: int) -> list[os.stat_result | None]:
    """lstat of each name in the folder open as `fd`; None for one that cannot be stat'ed."""
    stat = os.stat
    try:
        return [stat(n, dir_fd=fd, follow_symlinks=False) for n in names]
    except OSError:  # an entry vanished (or cannot be stat'ed): one at a time, that one None
        return [_stat_or_none(n, fd) for n in names]


def _stat_or_none(name, fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=fd, follow_symlinks=False)
    except OSError:
        return None


# Split from this many names (and 32 more per MiB this process holds, its fork's cost). Measured
# on two cores, listing() in-process and split: 4,096 names 12.0 and 10.5 ms, 8,192 names 24.8
# and 19.7 ms, 60,000 names 205 and 145 ms; a busy machine gives the child no core to run on.
SPLIT_FROM = 8192
# The child's share, the tail: this process also unpacks the child's columns (0.45 and 0.5
# measured alike, 0.4 slower).
CHILD_SHARE = 0.45
_TYPES = "qQqQQq"  # array types of mode, size, mtime_ns (may be negative), dev, ino, ctime_ns: 8 bytes each


def _stat_columns(items: list, stats_of) -> list[list[int]]:
    """The five columns of `items`, stat'ed by `stats_of(items)`: split with a child when worth it."""
    n = len(items)
    if _may_split(n):
        return _split(items, stats_of, n - int(n * CHILD_SHARE))
    return _fields(stats_of(items))


def _may_split(n: int) -> bool:
    """Whether n names are worth a child, and forking one is safe here."""
    return (n >= SPLIT_FROM and hasattr(os, "fork") and tuning.current().split_stat
            and threading.active_count() == 1 and threading.current_thread() is threading.main_thread()
            and _sigchld_default()
            and n >= SPLIT_FROM + 32 * _resident_mib()  # a fork costs ~20 us per MiB, a name saves ~1 us
            and _os_threads() == 1 and _cpus() >= 2)


def _sigchld_default() -> bool:
    """SIGCHLD has its default disposition: no handler (Python's or a library's) would reap the child."""
    return signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL


def _resident_mib() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20
    except (OSError, ValueError, IndexError):
        return 0


def _os_threads() -> int:
    """This process's threads as the kernel counts them: threads started outside Python too."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


def _cpus() -> int:
    """The CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _split(items: list, stats_of, cut: int) -> list[list[int]]:
    """The columns of items[:cut] stat'ed here and of items[cut:] in a forked child, or here too
    when the child fails."""
    tail, got, pid = items[cut:], None, 0
    r, w = os.pipe()
    try:
        with contextlib.suppress(OSError, AttributeError):  # room for all the child writes (Linux)
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, min(8 * len(_TYPES) * len(tail), 1 << 20))
        # Signals with a Python handler wait until the child has dropped its copy of the handler.
        handled = [s for s in signal.valid_signals() if callable(signal.getsignal(s))]
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, handled)
        try:
            pid = os.fork()
            if pid == 0:
                _child(stats_of, tail, r, w, handled, mask)  # never returns
        except OSError:
            pass
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(w)
        w = -1
        head = _fields(stats_of(items[:cut]))
        if pid:
            with contextlib.suppress(OSError):  # a failed read or wait: the child's share here
                got = _unpack(_read_all(r), len(tail))  # while the child's exit tears it down
                status = os.waitpid(pid, 0)[1]
                pid = 0
                if status != 0:
                    got = None
    finally:
        if pid:  # interrupted, or the read failed: the child does not outlive this call
            _kill(pid)
        os.close(r)
        if w >= 0:
            os.close(w)
    for column, more in zip(head, _fields(stats_of(tail)) if got is None else got):
        column += more
    return head


def _child(stats_of, items: list, r: int, w: int, handled: list, mask) -> None:
    """In the forked child: stat `items`, write their packed columns to `w`, exit (0 when all
    went out). Never returns, never raises, never runs the parent's handlers or exit handlers."""
    code = 1
    try:
        for sig in handled:  # a signal for the parent's Python handler does what it does by default
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        gc.disable()  # no full collection touching (copying) every page of the parent's heap
        os.close(r)  # the parent gone, a write fails (EPIPE) instead of blocking
        data = memoryview(_pack(_fields(stats_of(items))))
        while data:
            data = data[os.write(w, data):]
        os.close(w)  # EOF for the parent now, not after this process is torn down
        code = 0
    finally:
        os._exit(code)


def _pack(columns: list[list[int]]) -> bytes:
    """The columns as 8-byte integers, one after the other (OverflowError for one that does not fit)."""
    return b"".join(array(t, column).tobytes() for t, column in zip(_TYPES, columns))


def _unpack(data: bytes, n: int) -> list[list[int]] | None:
    """The columns of n names from _pack's bytes; None when they are not all there."""
    if len(data) != 8 * n * len(_TYPES):
        return None
    view, columns = memoryview(data), []
    for i, t in enumerate(_TYPES):
        column = array(t)
        column.frombytes(view[8 * n * i:8 * n * (i + 1)])
        columns.append(column.tolist())
    return columns


def _read_all(r: int) -> bytes:
    chunks = []
    while chunk := os.read(r, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _kill(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
