"""One run per tree at a time, with no state shared between users: each run flocks the lock file
of its own folder and tests the lock files above it (when it starts) and below it (before each
move).

* ``<folder>/.imgclean.lock``, flocked exclusively (LOCK_EX) for the whole run: the same folder,
  however it is reached (a symlink, a bind mount, another machine sharing the filesystem), is one
  inode, so a second run on it is refused. The file is never deleted (deleting races with a run
  that has just opened it). Its text names the holder and its kind, for messages only.
* Upward, when a run starts (after its own lock is held): the lock file of every folder above,
  reached from the folder's descriptor through ``..`` (never by re-resolving a path), is tested
  with a non-blocking shared flock; a held one refuses the run.
* Downward, before each move (:func:`check_below`, called by quarantine/moves.py and restore.py):
  the lock files of the folders between a run's root and the folder a file leaves or enters,
  walked one descriptor at a time with O_NOFOLLOW. A run on a folder below that started earlier
  holds one of them.

Why two overlapping runs never both go on: each run locks before it looks. Of a run on P and one
on P/C, if the P/C run tested P after P was locked, it is refused; otherwise it locked P/C before
P was locked, so every move test of the P run (all after its lock) finds P/C held. The same holds
for the quarantine side of a move.

Kinds: a scan locks its folder with kind "scan", a quarantine with kind "quarantine". A held lock
above a scan always refuses it; a held lock above a quarantine refuses it unless it is a scan's
(a quarantine inside the folder its scan walks: walks skip quarantines). The kind of another
process's lock is read from its text only when the file can be written by nobody but root or this
user; otherwise it counts as the stricter kind. Anything this module cannot read with certainty
(a symlink, FIFO or folder at the lock file's name, an unreadable lock file) refuses the run, so
a user who can write a folder can make runs refuse, never make two overlapping runs proceed.
flock belongs to the open file description: this process's own locks (tracked by the lock file's
device and inode) are recognised as such, and forked children close their copies at once
(`lockfiles._close_in_child`), so no child ever keeps a run's lock alive.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import stat
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType

from .folders import DIR_OPEN as _DIR
from .lockfiles import HELD as _HELD  # the very dict (tests look at it)
from .lockfiles import (  # noqa: F401  (LOCK_NAME, Busy and the errors: imgclean.quarantine.locking's names)
    LOCK_NAME, NO_FLOCK, Busy, Held, LockError, LockHeld, LockUnusable, holder, identity, probe, read_text,
    replaced, trusted_kind,
)

log = logging.getLogger(__name__)

KINDS = ("scan", "quarantine")
_RETRIES_S = (0.001, 0.004, 0.016)  # another run's probe holds a shared lock for microseconds

# Tests set this to a callable taking the step name ("folder_locked": our lock held, the folders
# above not yet tested) to interleave two lock attempts deterministically.
fault_hook: Callable[[str], None] | None = None


def _step(name: str) -> None:
    if fault_hook is not None:
        fault_hook(name)


def _open_folder(folder: Path) -> int:
    try:
        return os.open(folder, _DIR)
    except FileNotFoundError:
        raise LockError(f"folder {folder} does not exist") from None
    except NotADirectoryError:
        raise LockError(f"{folder} is not a folder") from None
    except OSError as e:
        raise LockError(f"cannot open folder {folder}: {e.strerror or e}") from None


class ScanLock:
    """Exclusive, non-blocking lock on a folder and its tree; use as a context manager.

    ``kind`` is "scan" (the default) or "quarantine" (see the module docstring). The folders
    below are tested by :func:`check_below` before each move, not here.
    """

    def __init__(self, folder: Path, kind: str = "scan"):
        if kind not in KINDS:
            raise ValueError(f"lock kind must be one of {KINDS}, not {kind!r}")
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.kind = kind
        self.root: str | None = None  # resolved folder, set by __enter__
        self._fd: int | None = None
        self._id: tuple[int, int] | None = None

    def __enter__(self) -> "ScanLock":
        if self._fd is not None:
            raise RuntimeError(f"lock {self.path} is already held by this object")
        dirfd = _open_folder(self.folder)
        try:
            self.root = os.path.realpath(self.folder)
            self._lock_own(dirfd)
            try:
                _step("folder_locked")
                self._check_above(dirfd)
            except BaseException:
                self.release()
                raise
        finally:
            os.close(dirfd)
        log.debug("locked %s (%s)", self.path, self.kind)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        intact = self._fd is None or exc_type is not None or self.intact()
        self.release()
        if not intact:
            raise replaced(self.folder)

    def intact(self) -> bool:
        """Whether the folder's lock file is still the one this object holds (whoever can write
        the folder can replace it; a run that started meanwhile could then overlap ours)."""
        try:
            st = os.lstat(self.path)
        except OSError:
            return False
        return identity(st) == self._id

    def release(self) -> None:
        """Unlock; the lock file stays."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        if self._id is not None:
            _HELD.pop(self._id, None)
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    # --- our own lock file

    def _open_own(self, dirfd: int) -> int:
        flags = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            return os.open(LOCK_NAME, os.O_RDWR | os.O_CREAT | flags, 0o644, dir_fd=dirfd)
        except OSError as e:
            first = e
        if first.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            try:  # another user's lock file, or a read-only mount: a read-only descriptor flocks too
                return os.open(LOCK_NAME, os.O_RDONLY | flags, dir_fd=dirfd)
            except FileNotFoundError:
                raise LockError(f"cannot create lock file in {self.folder}: folder is not writable "
                                f"({first.strerror})") from None
            except OSError as e:
                first = e
        if first.errno == errno.ELOOP:
            raise LockUnusable(self.path, "is a symlink; refusing to follow it") from None
        if first.errno in (errno.EACCES, errno.EPERM):
            raise LockUnusable(self.path, "cannot be opened") from None
        if first.errno in (errno.ENXIO, errno.EISDIR):
            raise LockUnusable(self.path, "is not a regular file") from None
        raise LockError(f"cannot open lock file {self.path}: {first.strerror or first}") from None

    def _lock_own(self, dirfd: int) -> None:
        fd = self._open_own(dirfd)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise LockUnusable(self.path, "is not a regular file")
            if identity(st) in _HELD:  # this process holds it through another descriptor
                raise LockHeld(self.path, f"pid {os.getpid()}, this run", kind=_HELD[identity(st)].kind)
            self._flock(fd, st)
            if os.fstat(fd).st_uid == os.geteuid():
                self._write_text(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._id = fd, identity(st)
        _HELD[self._id] = Held(self, fd, self.kind, self._id, identity(os.fstat(dirfd)))

    def _flock(self, fd: int, st: os.stat_result) -> None:
        for pause in (*_RETRIES_S, None):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if pause is None:
                    text = read_text(fd)
                    raise LockHeld(self.path, holder(text), kind=trusted_kind(st, text) or "scan") from None
                time.sleep(pause)
            except OSError as e:
                why = "its filesystem has no flock" if e.errno in NO_FLOCK else e.strerror or str(e)
                raise LockError(f"cannot lock {self.path}: {why}") from None

    def _write_text(self, fd: int) -> None:
        try:
            os.fchmod(fd, 0o644)  # others must open it to test it, whatever our umask
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{_holder_text()}\nkind {self.kind}\n".encode(), 0)
        except OSError as e:  # read-only descriptor or full disk: the text is for messages only
            log.debug("cannot write the holder into %s: %s", self.path, e)

    # --- the folders above

    def _check_above(self, dirfd: int) -> None:
        """A held lock file in any folder above ours refuses this run (see the module docstring)."""
        shown = Path(self.root or self.folder).parents
        here, cur = identity(os.fstat(dirfd)), dirfd
        try:
            for level in range(1 << 16):
                parent = os.open("..", _DIR, dir_fd=cur)
                if cur != dirfd:
                    os.close(cur)
                cur = parent
                up = identity(os.fstat(cur))
                if up == here:  # "/" is its own parent
                    return
                here = up
                busy = probe(cur, shown[level] if level < len(shown) else Path("..").joinpath(*[".."] * level))
                if busy is not None and (busy.problem or self.kind == "scan" or busy.kind != "scan"):
                    raise busy.error(self.folder)
        finally:
            if cur != dirfd:
                os.close(cur)


def check_below(root: Path, folder: Path) -> None:
    """Before a file leaves or enters ``folder`` (inside ``root``, a folder this run locked):
    raise :class:`LockHeld` if the lock file of ``root`` is no longer the one this process holds
    (removed or replaced while held), or if a lock file of any folder from below ``root`` down to
    ``folder`` is held (by another run, or by this process under another kind). Folders are walked
    from ``root``'s descriptor with O_NOFOLLOW (a folder not there yet ends the walk); a path with
    a link or ``..`` on the way is walked as it resolves. An OSError means the walk failed (say a
    folder replaced by a link meanwhile): the caller leaves the file alone."""
    resolve = os.pardir in Path(folder).parts
    names = _names_below(root, folder, resolve)
    if names is None:
        return  # not inside: the caller refuses the move for that
    try:
        _walk_below(Path(root), names)
    except NotADirectoryError:  # a link on the way (O_NOFOLLOW): walk the folders it leads to
        if resolve:
            raise
        names = _names_below(root, folder, True)
        if names is not None:
            _walk_below(Path(root), names)


def _names_below(root: Path, folder: Path, resolve: bool) -> list[str] | None:
    """The names leading from ``root`` down to ``folder``, lexically or resolved (realpath costs
    a stat per level of each path: quadratic in a deep tree, so only when needed)."""
    norm = os.path.realpath if resolve else os.path.abspath
    rel = os.path.relpath(norm(folder), norm(root))
    if rel == os.pardir or rel.startswith(os.pardir + os.sep):
        return None
    return [] if rel == os.curdir else rel.split(os.sep)


def _walk_below(root: Path, names: list[str]) -> None:
    cur = os.open(root, _DIR)
    try:
        _check_root(cur, root)
        where = root
        for name in names:
            try:
                nxt = os.open(name, _DIR | os.O_NOFOLLOW, dir_fd=cur)
            except FileNotFoundError:
                return  # not made yet: no run holds a folder there (one made later sees ours above it)
            os.close(cur)
            cur = nxt
            where = where / name
            busy = probe(cur, where)
            if busy is not None:
                raise busy.error(root)
    finally:
        os.close(cur)


def _check_root(rootfd: int, shown: Path) -> None:
    """The root's own lock: still the file this process holds, or (a root we did not lock)
    held by nobody."""
    folder = identity(os.fstat(rootfd))
    ours = [h for h in _HELD.values() if h.folder_id == folder]
    if not ours:
        busy = probe(rootfd, shown)
        if busy is not None:
            raise busy.error(None)
        return
    try:
        now = identity(os.stat(LOCK_NAME, dir_fd=rootfd, follow_symlinks=False))
    except FileNotFoundError:
        now = None
    if all(h.lock_id != now for h in ours):
        raise replaced(shown)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _holder_text() -> str:
    return f"pid {os.getpid()} on {socket.gethostname()} since {_now()}"
