"""One run per folder at a time: an advisory flock on ``<folder>/.imgclean.lock``.

flock is released by the kernel when the holder dies (even kill -9), so a lock file left behind
never blocks a later run; that is why the file is never deleted (deleting it races with a
second run that has just opened it).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import stat
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

LOCK_NAME = ".imgclean.lock"


class LockError(Exception):
    """The lock file cannot be used (folder missing or not writable, lock file is a symlink...)."""


class LockHeld(Exception):
    """Another run holds the lock; ``holder`` says who (e.g. "pid 1234 on host since ...")."""

    def __init__(self, path: Path, holder: str):
        self.path = path
        self.holder = holder
        super().__init__(f"{path.parent} is being processed by another imgclean run ({holder})")


class ScanLock:
    """Exclusive, non-blocking lock on a folder; use as a context manager."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    def __enter__(self) -> "ScanLock":
        if self._fd is not None:
            raise RuntimeError(f"lock {self.path} is already held by this object")
        try:
            # O_NOFOLLOW: a planted symlink must not make us create/truncate a file elsewhere.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise LockError(self._explain(e)) from e
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise LockError(f"lock file {self.path} is not a regular file; remove it and retry")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
                raise LockHeld(self.path, holder or "holder unknown") from None
            stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        log.debug("locked %s", self.path)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def release(self) -> None:
        """Unlock and close; the file stays (see module docstring)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _explain(self, e: OSError) -> str:
        if e.errno == errno.ELOOP:
            return f"lock file {self.path} is a symlink; refusing to follow it (remove it and retry)"
        if e.errno == errno.ENOENT:
            return f"folder {self.folder} does not exist"
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return f"cannot create lock file in {self.folder}: folder is not writable ({e.strerror})"
        return f"cannot open lock file {self.path}: {e.strerror or e}"
