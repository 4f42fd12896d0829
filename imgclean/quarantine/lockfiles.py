"""A folder's lock file as runs see it: the errors, this process's own held locks (closed in
every forked child), and the test of another folder's lock file (see imgclean.quarantine.locking
for the design)."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ImgcleanError

log = logging.getLogger("imgclean.quarantine.locking")

LOCK_NAME = ".imgclean.lock"
_PROBE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # a FIFO never blocks the open
NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL}
_KIND_LINE = re.compile(rb"^kind (scan|quarantine)$", re.M)


class LockError(ImgcleanError):
    """The lock file cannot be used (folder missing or not writable, no flock there...)."""


class LockHeld(ImgcleanError):
    """Another run holds a lock that excludes ours.

    ``path`` is the lock file of the folder that is actually busy (which may be an ancestor or
    a descendant of the one asked for); ``holder`` says who (e.g. "pid 1234 on host since ...").
    ``line``, when set, is the whole one-line message (the CLI prints it as is).
    """

    def __init__(self, path: Path, holder: str, requested: Path | None = None, kind: str = "scan",
                 line: str | None = None):
        self.path = Path(path)
        self.holder = holder
        self.requested = requested
        self.line = line
        if line is None:
            what = "in use as a quarantine" if kind == "quarantine" else "being processed"
            line = f"{_where(self.path.parent, requested)} is {what} by another imgclean run ({holder})"
        super().__init__(line)


class LockUnusable(LockHeld, LockError):
    """A lock file this module cannot use or test (a symlink, FIFO or folder at its name, or
    unreadable): the run is refused as if the folder were busy, with a line saying what to remove."""

    def __init__(self, path: Path, problem: str, requested: Path | None = None):
        folder = Path(path).parent
        line = (f"lock file {path} {problem}, so whether another imgclean run is using {_where(folder, requested)} "
                f"cannot be told; remove it if no run is")
        super().__init__(path, problem, requested, line=line)


def _where(busy: Path, requested: Path | None) -> str:
    if requested is None:
        return f"{busy}"
    mine, theirs = Path(os.path.realpath(requested)), Path(os.path.realpath(busy))
    if mine == theirs:
        return f"{busy}"
    relation = ("which contains" if mine.is_relative_to(theirs) else
                "inside" if theirs.is_relative_to(mine) else "the same tree as")
    return f"{busy} ({relation} {requested})"


def replaced(folder: Path) -> LockHeld:
    return LockHeld(Path(folder) / LOCK_NAME, "", line=(
        f"the lock file of {folder} was removed or replaced while this run held it, so another run may "
        f"have started on the same files; stopped"))


# --- this process's own locks


@dataclass
class Held:
    lock: Any  # the locking.ScanLock holding it
    fd: int
    kind: str
    lock_id: tuple[int, int]  # the lock file's (st_dev, st_ino)
    folder_id: tuple[int, int]  # its folder's


HELD: dict[tuple[int, int], Held] = {}  # by lock file identity


def _close_in_child() -> None:
    """In every forked child: close our copies of the lock descriptors, never unlocking (LOCK_UN
    would release the parent's lock: both descriptors share one open file description). A child
    that outlives a killed parent then holds nothing, and the next run is not refused."""
    for held in list(HELD.values()):
        try:
            os.close(held.fd)
        except OSError:
            pass
        held.lock._fd = None
    HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


def identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


# --- testing a folder's lock file


@dataclass(frozen=True)
class Busy:
    """A held lock file met while testing a folder (``own``: held by this process)."""

    path: Path
    holder: str
    kind: str | None  # None: not known for certain (counts as the stricter kind)
    own: bool = False
    problem: str = ""  # set: the lock file cannot be used or tested at all

    def error(self, requested: Path | None) -> LockHeld:
        if self.problem:
            return LockUnusable(self.path, self.problem, requested)
        return LockHeld(self.path, self.holder, requested, self.kind or "scan")


def read_text(fd: int) -> bytes:
    try:
        return os.pread(fd, 512, 0)
    except OSError:
        return b""


def holder(text: bytes) -> str:
    first = text.split(b"\n", 1)[0].decode("utf-8", "replace")
    shown = "".join(ch for ch in first if ch.isprintable())[:200].strip()
    return shown or "holder unknown"


def trusted_kind(st: os.stat_result, text: bytes) -> str | None:
    """The kind its text names, when only root or this user could have written that text."""
    if st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o022:
        return None
    found = _KIND_LINE.search(text)
    return found.group(1).decode() if found else None


def probe(dirfd: int, where: Path) -> Busy | None:
    """Whether the lock file in the folder open as ``dirfd`` (``where``, for messages) is held;
    None when it is absent or free. Never follows a link and never blocks."""
    path = where / LOCK_NAME
    try:
        fd = os.open(LOCK_NAME, _PROBE, dir_fd=dirfd)
    except FileNotFoundError:
        return None
    except OSError as e:
        problem = ("is a symlink" if e.errno == errno.ELOOP else
                   "cannot be read" if e.errno in (errno.EACCES, errno.EPERM) else f"cannot be opened ({e.strerror})")
        return Busy(path, problem, None, problem=problem)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return Busy(path, "not a regular file", None, problem="is not a regular file")
        own = HELD.get(identity(st))
        if own is not None:
            return Busy(path, f"pid {os.getpid()}, this run", own.kind, own=True)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = read_text(fd)
            return Busy(path, holder(text), trusted_kind(st, text))
        except OSError as e:
            if e.errno in NO_FLOCK:  # no run can hold a flock there either
                log.debug("cannot test %s (%s): no flock on its filesystem", path, e)
                return None
            raise
        return None  # free; closing drops our shared lock
    finally:
        os.close(fd)
