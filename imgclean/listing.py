"""Listing one folder for the walk (walk.py): its sorted non-hidden names with their lstat
fields, in columns.

A folder is listed and stat'ed through a directory descriptor (fstatat on each name), opened a
component at a time when its path is too long for the kernel; a folder given as bytes is listed
by path.
"""
from __future__ import annotations

import logging
import os
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
_MODE, _SIZE, _MTIME, _DEV, _INO = (attrgetter(f) for f in ("st_mode", "st_size", "st_mtime_ns", "st_dev", "st_ino"))


class Listing(NamedTuple):
    """One folder's sorted non-hidden names and, in columns (one list each, index for index), the
    lstat fields the walk uses. A name that could not be stat'ed (it vanished between the listing
    and its stat) has mode 0 (no file type) and zeros."""

    names: list
    modes: list[int]
    sizes: list[int]
    mtimes: list[int]  # st_mtime_ns
    devs: list[int]
    inos: list[int]


EMPTY = Listing([], [], [], [], [], [])


def listing(folder: str | bytes) -> Listing:
    """The sorted non-hidden entries of `folder` with their lstat fields; empty when unreadable."""
    deep = len(os.fsencode(os.path.abspath(folder))) >= _FD_WALK_FROM
    fd = None
    try:
        if not (deep or isinstance(folder, str)):  # bytes names: listed and stat'ed by path
            with os.scandir(folder) as it:
                entries = [e for e in it if not e.name.startswith(b".")]  # is_hidden, inline
            entries.sort(key=_name)
            return _columns([e.name for e in entries], _stat_each(entries))
        # Listed and stat'ed through a descriptor: fstatat on each name, no path to resolve
        # again per file, and every stat is of this very folder.
        fd = _open_deep(folder) if deep else os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        with os.scandir(fd) as it:
            names = [e.name for e in it]
        names = [n for n in names if not n.startswith(".")]  # is_hidden, inline
        if "".join(names).isascii():
            names.sort()  # ASCII: the order of the bytes, without encoding each name
        else:
            names.sort(key=os.fsencode)
        return _columns(names, _stat_names(names, fd))
    except OSError as exc:
        log.warning("cannot list %s: %s", os.fsdecode(folder), exc.strerror or exc)
        return EMPTY
    finally:
        if fd is not None:
            os.close(fd)


def _columns(names: list, stats: list[os.stat_result | None]) -> Listing:
    if None in stats:
        stats = [_VANISHED if s is None else s for s in stats]
    return Listing(names, *(list(map(field, stats)) for field in (_MODE, _SIZE, _MTIME, _DEV, _INO)))


class _Vanished:
    """The stat of a name that could not be stat'ed: mode 0 (no file type), zeros."""

    st_mode = st_size = st_mtime_ns = st_dev = st_ino = 0


_VANISHED = _Vanished()


def _stat_each(entries: list[os.DirEntry]) -> list[os.stat_result | None]:
    try:
        return [e.stat(follow_symlinks=False) for e in entries]
    except OSError:  # an entry vanished (or cannot be stat'ed): one at a time, that one None
        return [_lstat_or_none(e) for e in entries]


def _stat_names(names: list[str], fd: int) -> list[os.stat_result | None]:
    """lstat of each name in the folder open as `fd`; None for one that cannot be stat'ed."""
    stat = os.stat
    try:
        return [stat(n, dir_fd=fd, follow_symlinks=False) for n in names]
    except OSError:  # an entry vanished (or cannot be stat'ed): one at a time, that one None
        return [_stat_or_none(n, fd) for n in names]


def _stat_or_none(name: str, fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=fd, follow_symlinks=False)
    except OSError:
        return None


def _lstat_or_none(entry: os.DirEntry) -> os.stat_result | None:
    try:
        return entry.stat(follow_symlinks=False)
    except OSError:
        return None
