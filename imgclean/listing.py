"""Listing one folder for the walk (walk.py): its sorted non-hidden names with their lstat.

A folder is listed and stat'ed through a directory descriptor (fstatat on each name), or, when
its path is too long for the kernel, through one opened a component at a time. A long listing
is stat'ed in two halves, the second by a forked child, while this process runs no other thread.
"""
from __future__ import annotations

import logging
import os
import struct
import threading
from operator import attrgetter
from typing import NamedTuple

log = logging.getLogger(__name__)

# The kernel refuses paths of PATH_MAX bytes or more (the count includes the final NUL).
try:
    PATH_MAX = os.pathconf("/", "PC_PATH_MAX")
except (OSError, ValueError, AttributeError):
    PATH_MAX = 4096
# Folders whose path is this long or longer are opened a component at a time.
_FD_WALK_FROM = PATH_MAX - 512


def _open_deep(path: str) -> int:
    """A descriptor for a folder whose path may exceed PATH_MAX: openat one component at a time."""
    parts = os.path.abspath(path).split(os.sep)
    fd = os.open(os.sep, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts:
            if not part:
                continue
            nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


_name = attrgetter("name")


def listing(folder: str) -> list[tuple[str, os.stat_result | None]]:
    """Sorted (name, lstat or None) of the non-hidden entries of `folder`; [] when unreadable."""
    deep = len(os.fsencode(os.path.abspath(folder))) >= _FD_WALK_FROM
    # A str folder is listed and stat'ed through a descriptor (fstatat on each name: no path to
    # resolve again per file, and every stat is of this very folder); bytes names need the path.
    by_fd = deep or isinstance(folder, str)
    fd = None
    try:
        fd = (_open_deep(folder) if deep else os.open(folder, os.O_RDONLY | os.O_DIRECTORY)) if by_fd else None
        with os.scandir(fd if by_fd else folder) as it:
            dot = "." if by_fd else b"."
            entries = [e for e in it if not e.name.startswith(dot)]  # is_hidden, inline
            if isinstance(folder, str) and all(e.name.isascii() for e in entries):
                entries.sort(key=_name)  # ASCII: the order of the bytes, without encoding each name
            else:
                entries.sort(key=lambda e: os.fsencode(e.name))
            stats = _stat_halves(entries, fd) if by_fd and len(entries) >= PARALLEL_STAT_FROM else None
            return list(zip([e.name for e in entries], stats if stats is not None else _stat_each(entries)))
    except OSError as exc:
        log.warning("cannot list %s: %s", os.fsdecode(folder), exc.strerror or exc)
        return []
    finally:
        if fd is not None:
            os.close(fd)


def _stat_each(entries: list[os.DirEntry]) -> list[os.stat_result | None]:
    try:
        return [e.stat(follow_symlinks=False) for e in entries]
    except OSError:  # an entry vanished (or cannot be stat'ed): one at a time, that one None
        return [_lstat_or_none(e) for e in entries]


# Listings at least this long are stat'ed half here and half in a forked child (stat is most of
# a rescan's time per file, and a rescan uses one core); only while this process runs no other
# thread, so the child copies no lock that another thread holds.
PARALLEL_STAT_FROM = 8192
_STAT = struct.Struct("=BIqqQQ")  # found, st_mode, st_size, st_mtime_ns, st_dev, st_ino


class _Stat(NamedTuple):
    """The fields of an lstat the walk reads, as the child sends them."""

    st_mode: int
    st_size: int
    st_mtime_ns: int
    st_dev: int
    st_ino: int


def _stat_halves(entries: list[os.DirEntry], fd: int) -> list | None:
    """_stat_each(entries), the second half stat'ed by a forked child through `fd`; None when that
    cannot be done (another thread runs, fork fails, the child fails): then stat them here."""
    if not hasattr(os, "fork") or threading.active_count() != 1:
        return None
    half = len(entries) // 2
    names = [e.name for e in entries[half:]]
    r, w = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(r)
        os.close(w)
        return None
    if pid == 0:  # the child: stat, send, leave (no cleanup of the parent's state, whatever happens)
        code = 1
        try:
            os.close(r)
            pack, stat_at, out = _STAT.pack, os.stat, bytearray()
            for name in names:
                try:
                    st = stat_at(name, dir_fd=fd, follow_symlinks=False)
                    out += pack(1, st.st_mode, st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino)
                except OSError:
                    out += pack(0, 0, 0, 0, 0, 0)
            view = memoryview(out)
            while view:
                view = view[os.write(w, view):]
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    try:
        first = _stat_each(entries[:half])
        while chunk := os.read(r, 1 << 20):
            chunks.append(chunk)
    finally:
        os.close(r)
        _, status = os.waitpid(pid, 0)
    data = b"".join(chunks)
    if status != 0 or len(data) != _STAT.size * len(names):
        return None
    return first + [_Stat(*t[1:]) if t[0] else None for t in _STAT.iter_unpack(data)]


def _lstat_or_none(entry: os.DirEntry) -> os.stat_result | None:
    try:
        return entry.stat(follow_symlinks=False)
    except OSError:
        return None
