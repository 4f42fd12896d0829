"""Whether a scan cache's folder and files may be trusted, checked through file descriptors.

A cached verdict is only as good as the file it is read from. A cache that another user can
write could answer "ok" for any file (rows planted for the paths of files to hide), and links
planted in its folder could make SQLite write where that user chose. So (store/cache.py):

- the folder must not be a symbolic link, must be owned by this user (the effective uid) and
  must not be writable by group or others; else the scan runs without a cache, with one warning
  (UntrustedCache). It is opened once, with O_NOFOLLOW, checked with fstat, and SQLite is given
  a path through that descriptor (/proc/self/fd/N/..., where there is one): the folder checked
  is the folder used, whatever is renamed in its place afterwards. The folders above it are the
  system's and the user's own to keep safe, as for any file they hold;
- inside a trusted folder, the cache file and SQLite's -wal and -shm beside it, where they
  exist, must be regular files (not links, not FIFOs), owned by this user, not writable by group
  or others, with one link; a file that is not is set aside (renamed) and a new cache started,
  as a damaged one is (UntrustedFile).

Made here: a missing cache folder with mode 0700 (and its missing parents), the cache file
with 0600 before SQLite first opens it (SQLite gives -wal and -shm the file's mode), so neither
depends on the umask.
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

# SQLite's companions of a database file in WAL mode (and the rollback journal it may leave).
COMPANIONS = ("-wal", "-shm", "-journal")


class UntrustedCache(OSError):
    """The cache folder may be written by another user, or is a link: not to be used."""


class UntrustedFile(OSError):
    """A file in a trusted cache folder is not this user's alone: to be set aside."""


def open_folder(directory: Path) -> int:
    """A descriptor of the cache folder, made (0700) if missing, once it is checked: not a link,
    this user's, not writable by group or others. Raises UntrustedCache, or OSError when it
    cannot be made or opened."""
    _make_folders(directory)
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        # O_NOFOLLOW on a link: ELOOP, or ENOTDIR beside O_DIRECTORY (lstat only words it)
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(directory):
            raise UntrustedCache(f"{os.fsdecode(directory)} is a symbolic link") from None
        raise
    try:
        problem = _not_private(os.fstat(fd))
        if problem:
            raise UntrustedCache(f"the folder {os.fsdecode(directory)} {problem}")
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_files(folder_fd: int, name: str) -> None:
    """Check `name` and its SQLite companions in the folder open as `folder_fd`, and create
    `name` (0600) when missing. Raises UntrustedFile naming the first that is not this user's
    private regular file."""
    try:
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600, dir_fd=folder_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
            raise UntrustedFile(f"{name} is not a regular file") from None
        raise
    try:
        _check_file(fd, name)
    finally:
        os.close(fd)
    for suffix in COMPANIONS:
        try:
            fd = os.open(name + suffix, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=folder_fd)
        except FileNotFoundError:
            continue
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
                raise UntrustedFile(f"{name + suffix} is not a regular file") from None
            raise
        try:
            _check_file(fd, name + suffix)
        finally:
            os.close(fd)


def path_through(folder_fd: int, folder: Path, name: str) -> str:
    """The path SQLite is to open `name` by: through the checked folder's descriptor where the
    system has /proc/self/fd, else by the folder's name."""
    through = f"/proc/self/fd/{folder_fd}"
    if os.path.isdir(through):
        return f"{through}/{name}"
    return os.path.join(os.fspath(folder), name)


def _check_file(fd: int, name: str) -> None:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise UntrustedFile(f"{name} is not a regular file")
    problem = _not_private(st)
    if problem:
        raise UntrustedFile(f"{name} {problem}")
    if st.st_nlink != 1:
        raise UntrustedFile(f"{name} has {st.st_nlink} hard links")


def _not_private(st: os.stat_result) -> str:
    """Why a folder or file is not this user's alone ('' when it is)."""
    uid = os.geteuid()
    if st.st_uid != uid:
        return f"belongs to uid {st.st_uid}, not to this user (uid {uid})"
    writers = [who for bit, who in ((stat.S_IWGRP, "its group"), (stat.S_IWOTH, "other users")) if st.st_mode & bit]
    if writers:
        return f"is writable by {' and '.join(writers)} (mode {stat.S_IMODE(st.st_mode):04o})"
    return ""


def _make_folders(directory: Path) -> None:
    """Make the missing folders of `directory`, each 0700 (whatever the umask allows of it)."""
    missing = []
    path = Path(directory)
    while not os.path.lexists(path):
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:  # made meanwhile (another scan): checked like any other
            pass
