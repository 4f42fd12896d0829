"""Where a person's decisions live and who may change them: the decisions file of a folder.

A folder's decisions are ``<folder>/.imgclean-decisions.jsonl`` (format and fold:
:mod:`imgclean.quarantine.decision_records`). The rules:

* A decision is about a picture's content (size and sha256) inside the tree of the folder that
  holds the file: the same bytes anywhere below that folder (renamed, moved to a subfolder, a
  copy) are decided; a changed file is not; a file moved out of the tree is not.
* It applies to any scan that reaches the file: of that folder, of a folder above it, or of one
  inside it (the decisions files of every folder from the file's own up to / are consulted).
* Trust: a decisions file is used only when it is a regular file owned by the user running
  imgclean, by root, or by the owner of the folder it is in, and is not writable by group or
  others. Any other one is refused with one warning and none of its records is used; imgclean
  never writes to one either. (Whoever owns the folder can move or delete its files anyway.)
* Writers: every append holds an exclusive flock on the file (a bounded wait), reads it under
  that lock, and writes one record per write() with O_APPEND, fsynced, after closing a torn last
  line, exactly as the quarantine journal does. Commands that record decisions also hold the
  folder's run lock (``ScanLock``), so no scan of that tree runs meanwhile; restore already
  holds it when it records its acceptances.

This module reads and writes files only through descriptors: the folder is opened once
(O_DIRECTORY|O_NOFOLLOW) and the decisions file relative to it (O_NOFOLLOW|O_NONBLOCK).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import pwd
import stat
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..errors import ImgcleanError
from ..fileops import fsync_dir, is_quarantine, step, write_all
from .decision_records import (
    DECISIONS_NAME, Decision, DecisionFileError, DecisionLog, check_relative, fold_lines, read_decision_lines,
)

log = logging.getLogger(__name__)

FLOCK_WAIT_S = 10.0  # appends hold the file's flock for milliseconds


class DecisionError(ImgcleanError):
    """A decisions file cannot be used or written (refused, unreadable, disk full...)."""


@dataclass
class DecisionFile:
    """One folder's decisions, as read: ``log`` (empty when there is no usable file) and
    ``problem``, why the file was refused or could not be read (None when all is well)."""

    folder: Path
    log: DecisionLog
    exists: bool = False
    problem: str | None = None

    @property
    def path(self) -> Path:
        return self.folder / DECISIONS_NAME

    def problems(self) -> list[str]:
        """One line per thing a person should know: the refusal, then each invalid record."""
        where = os.fsdecode(self.path)
        out = [f"{where}: {self.problem}; none of its decisions is used"] if self.problem else []
        return out + [bad.message(where) for bad in self.log.invalid]


# ----------------------------------------------------------------------------- trust


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return f"uid {uid}"


def distrust(file_st: os.stat_result, folder_st: os.stat_result) -> str | None:
    """Why a decisions file with these stats may not be used (None: it may)."""
    if not stat.S_ISREG(file_st.st_mode):
        return "it is not a regular file"
    if file_st.st_uid not in (os.geteuid(), 0, folder_st.st_uid):
        return f"it is owned by {user_name(file_st.st_uid)}, not by you, root or the folder's owner"
    if file_st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return "it is writable by group or others (chmod go-w it if you trust it)"
    return None


def _open_folder(folder: Path) -> int:
    return os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def _open_file(dir_fd: int, flags: int) -> int:
    return os.open(DECISIONS_NAME, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)


def _explain(e: OSError) -> str:
    if e.errno == errno.ELOOP:
        return "it is a symbolic link; refusing to follow it"
    if e.errno in (errno.ENXIO, errno.EISDIR):
        return "it is not a regular file"
    return f"it cannot be opened ({e.strerror or e})"


# ----------------------------------------------------------------------------- reading


def read_folder(folder: str | os.PathLike, warn: bool = True) -> DecisionFile:
    """The decisions of ``folder`` (an absolute, resolved path). Never raises for a damaged,
    refused or unreadable file: that is the result's ``problem`` and ``log.invalid`` (logged as
    warnings here unless ``warn`` is False, for a caller that shows them itself)."""
    folder = Path(folder)
    empty = DecisionFile(folder, DecisionLog())
    try:
        dir_fd = _open_folder(folder)
    except OSError:
        return empty  # no such folder (any more): nothing decided there
    try:
        try:
            fd = _open_file(dir_fd, os.O_RDONLY)
        except FileNotFoundError:
            return empty
        except OSError as e:
            return _refused(empty, _explain(e), warn)
        try:
            why = distrust(os.fstat(fd), os.fstat(dir_fd))
            if why:
                return _refused(empty, why, warn)
            try:
                lines = read_decision_lines(fd, os.fsdecode(empty.path))
            except DecisionFileError as e:
                return _refused(empty, str(e), warn)
            except OSError as e:
                return _refused(empty, f"it cannot be read ({e.strerror or e})", warn)
        finally:
            os.close(fd)
    finally:
        os.close(dir_fd)
    result = DecisionFile(folder, fold_lines(lines), exists=True)
    for line in result.problems() if warn else ():
        log.warning("%s", line)
    return result


def _refused(empty: DecisionFile, why: str, warn: bool) -> DecisionFile:
    empty.exists, empty.problem = True, why
    if warn:
        log.warning("%s", empty.problems()[0])
    return empty


def chain(folder: str | os.PathLike) -> list[Path]:
    """``folder`` (resolved) and every folder above it, nearest first: whose decisions apply."""
    start = Path(os.path.realpath(folder))
    return [start, *start.parents]


def folders_below(folder: str | os.PathLike) -> list[Path]:
    """Folders under ``folder`` (resolved) holding a decisions file, in walk order; hidden folders,
    symbolic links and quarantines are not entered (as a scan's walk does not)."""
    found, stack = [], [Path(os.path.realpath(folder))]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as it:
                subfolders = [Path(e.path) for e in it if e.is_dir(follow_symlinks=False) and not e.name.startswith(".")]
        except OSError:
            continue
        for sub in sorted(subfolders, reverse=True):
            if is_quarantine(sub):
                continue
            if os.path.lexists(sub / DECISIONS_NAME):
                found.append(sub)
            stack.append(sub)
    return found


# ----------------------------------------------------------------------------- writing


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def new_decision(kind: str, folder: Path, path: str, size: int, sha256: str, source: str,
                 journal: tuple[str, str] | None = None, withdraws: str | None = None) -> Decision:
    """A new record by the user running imgclean. ``path`` relative to ``folder``; ``journal``:
    (quarantine folder, journal id) of the move it concerns."""
    uid = os.geteuid()
    return Decision(
        id=uuid.uuid4().hex, kind=kind, path=check_relative(path), root=os.fsdecode(os.path.abspath(folder)),
        size=size, sha256=sha256, time=now(), uid=uid, user=user_name(uid), source=source,
        journal_quarantine=None if journal is None else os.fsdecode(journal[0]),
        journal_id=None if journal is None else journal[1], withdraws=withdraws,
    )  # fmt: skip


class DecisionWriter:
    """Appends to one folder's decisions file; a context manager. Entering opens (creates) the
    file, checks that it may be used, takes its flock (waiting up to ``wait_s``) and reads it
    under that lock into ``log``, so what a writer decides from is what is in the file."""

    def __init__(self, folder: str | os.PathLike, wait_s: float = FLOCK_WAIT_S):
        self.folder = Path(folder)
        self.path = self.folder / DECISIONS_NAME
        self.wait_s = wait_s
        self.log = DecisionLog()
        self._fd: int | None = None
        self._dir_fd: int | None = None
        self._torn = False
        self._created = False
        self._line = 0

    def __enter__(self) -> "DecisionWriter":
        try:
            self._open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self) -> None:
        where = os.fsdecode(self.path)
        try:
            self._dir_fd = _open_folder(self.folder)
            size_before = _size_or_none(self._dir_fd)
            self._fd = _open_file(self._dir_fd, os.O_RDWR | os.O_APPEND | os.O_CREAT)
        except OSError as e:
            raise DecisionError(f"cannot write decisions to {where}: {_explain(e)}") from e
        why = distrust(os.fstat(self._fd), os.fstat(self._dir_fd))
        if why:
            raise DecisionError(f"refusing to write decisions to {where}: {why}")
        self._created = size_before is None
        self._flock()
        try:
            lines = read_decision_lines(self._fd, where)
        except DecisionFileError as e:
            raise DecisionError(f"refusing to write decisions to {where}: {e}") from None
        except OSError as e:
            raise DecisionError(f"cannot read {where}: {e.strerror or e}") from e
        self.log = fold_lines(lines)
        for bad in self.log.invalid:
            log.warning("%s", bad.message(where))
        self._measure()

    def _measure(self) -> None:
        """Whether the file ends in a torn line, and how many lines it has (a torn one too)."""
        assert self._fd is not None
        size = os.fstat(self._fd).st_size
        self._torn = bool(size) and os.pread(self._fd, 1, size - 1) != b"\n"
        self._line = _newlines(self._fd) + (1 if self._torn else 0)

    def _flock(self) -> None:
        assert self._fd is not None
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise DecisionError(f"{self.path} is being written by another imgclean run; try again") from None
                time.sleep(0.02)

    def append(self, decision: Decision) -> Decision:
        """Write one record (one write, fsynced); folds it into ``log`` and returns it as folded."""
        if self._fd is None:
            raise DecisionError("the decisions file is not open; use DecisionWriter as a context manager")
        line = decision.to_line()
        try:
            self.log.check(_as_read(line))  # never write what a reader would refuse
        except ValueError as e:
            raise DecisionError(f"not recorded: {e}") from None
        data = (b"\n" if self._torn else b"") + line  # close a torn last line first
        try:
            step("decision")
            self._torn = True  # until the write is known to be whole
            write_all(self._fd, data)
            os.fsync(self._fd)
            if self._created:
                fsync_dir(self.folder)  # the new file's name survives a crash too
                self._created = False
        except OSError as e:
            with contextlib.suppress(OSError):
                self._measure()  # what a partial write left, so a retry closes it and counts right
            raise DecisionError(f"cannot write to {self.path}: {e.strerror or e}") from e
        self._torn = False
        self._line += 1
        folded = self.log.add(self._line, _as_read(line))
        assert folded is not None  # checked above
        return folded

    def close(self) -> None:
        for name in ("_fd", "_dir_fd"):
            fd = getattr(self, name)
            if fd is not None:
                setattr(self, name, None)
                os.close(fd)  # closing drops the flock


def _size_or_none(dir_fd: int) -> int | None:
    try:
        return os.stat(DECISIONS_NAME, dir_fd=dir_fd, follow_symlinks=False).st_size
    except FileNotFoundError:
        return None


def _newlines(fd: int) -> int:
    count, offset = 0, 0
    while chunk := os.pread(fd, 1 << 20, offset):
        count += chunk.count(b"\n")
        offset += len(chunk)
    return count


def _as_read(line: bytes) -> object:
    return json.loads(line)  # the record as a reader will see it


def relative_in(folder: Path, path: Path) -> str | None:
    """``path`` relative to ``folder`` (both absolute, resolved), or None when it is not inside."""
    try:
        rel = path.relative_to(folder)
    except ValueError:
        return None
    return os.fspath(rel) if rel.parts else None
