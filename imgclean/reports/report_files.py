"""Opening a report file for writing: never through a link, never over an existing file unless
asked (`--overwrite-report`), and never anything but a regular file.

A report folder may be shared (reports/ of a nightly job): a name checked before the run may be
taken by the time the writer opens it, so the refusal is the open itself (O_EXCL), not only the
check before it. With `overwrite` an existing regular file is truncated after it is checked;
a link, a folder, a FIFO or a device is refused either way.
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path
from typing import IO

from ..errors import ImgcleanError


class ReportExistsError(ImgcleanError):
    """The report file exists and the run was not asked to overwrite it."""


class ReportPathError(ImgcleanError):
    """The report path cannot be written as a report (a link, a folder, a FIFO, a missing folder)."""


def existing_report_problem(path: Path, overwrite: bool) -> str | None:
    """Why `path` cannot take a new report (for the check before a run), or None when it can."""
    parent = path.absolute().parent
    if not parent.is_dir():
        if os.path.lexists(parent):
            return f"{parent} is not a folder"
        return (f"folder {parent} does not exist; create it first (mkdir -p {parent}) "
                "or give a report path in an existing folder")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot check it: {exc.strerror or exc}"
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link; a report is never written through one: give another file name"
    if stat.S_ISDIR(st.st_mode):
        return "is a folder; give a file name such as reports/scan.csv"
    if not stat.S_ISREG(st.st_mode):
        return "exists and is not a regular file; give another file name"
    if not overwrite:
        return ("exists and is never overwritten; give a new name (e.g. a dated one: reports/$(date +%F-%H%M%S).csv) "
                "or pass --overwrite-report")
    return None


def open_report(path: Path, overwrite: bool = False, **text_options) -> IO[str]:
    """The report file opened for writing as text (`text_options`: those of open()): created, or
    with `overwrite` an existing regular file emptied. Raises ReportExistsError when it exists
    and `overwrite` is off, ReportPathError for a link or anything but a regular file."""
    return open_new_report(path, overwrite, **text_options)[0]


def open_new_report(path: Path, overwrite: bool = False, **text_options) -> tuple[IO[str], bool]:
    """open_report, and whether this open created the file (False: an existing one emptied)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    created = True
    try:
        try:
            fd = os.open(path, flags | os.O_EXCL, 0o666)
        except FileExistsError:
            if not overwrite:
                raise
            created = False
            fd = os.open(path, flags, 0o666)
    except FileExistsError:
        raise ReportExistsError(f"report file {path} exists and is never overwritten; give a new name "
                                "or pass --overwrite-report") from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK):
            raise ReportPathError(f"report file {path} is a symbolic link; a report is never written through one") from None
        if exc.errno == errno.ENXIO:  # a FIFO with no reader
            raise ReportPathError(f"report file {path} is not a regular file") from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ReportPathError(f"report file {path} is not a regular file")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        if not created:
            os.ftruncate(fd, 0)
        return open(fd, "w", closefd=True, **text_options), created
    except BaseException:
        os.close(fd)
        raise
