"""Marking the review sample in a report a scan has just written (the `review` column).

The report streamed while the scan ran; the sample is chosen after it. The report is rewritten
whole: a new file created (O_EXCL) beside it in its folder, every row as it was except the
review cell of the sampled files, then renamed over the report. Only a report this run created
and that is still the file it wrote (device, inode, size, mtime): never one it overwrote (its
owner, mode and links are someone's), never through a link, never a file swapped in since.
The rows are read and written again through the report's format (reports/formats.py): rows
this scan wrote come out byte for byte as they went in.
"""
from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from ..errors import ImgcleanError
from ..structured import StructuredInputError
from .formats import BUFFER, WRITE_OPTIONS, RecordFormat, format_for
from .records import REPORT_LIMITS


class ReviewMarkError(ImgcleanError):
    """The report cannot be marked (it is not the file the scan wrote, or writing failed)."""


def mark_report(path: Path, written: tuple[int, int, int, int] | None, marks: dict[str, str]) -> int:
    """Give each row whose path is a key of `marks` that review cell; `written`: the report's
    (dev, ino, size, mtime_ns) when its writer closed it. Returns the rows marked."""
    if written is None:
        raise ReviewMarkError("the report was not written whole")
    path = Path(path)
    fmt = format_for(path, write=True)
    dir_fd = os.open(path.absolute().parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        src = os.open(path.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            st = os.fstat(src)
            if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) != written:
                raise ReviewMarkError("the report changed since the scan wrote it")
            return _rewrite(dir_fd, path.name, src, st, fmt, marks)
        finally:
            os.close(src)
    except OSError as exc:
        raise ReviewMarkError(f"cannot rewrite it: {exc.strerror or exc}") from None
    except (ValueError, UnicodeError) as exc:  # not rows this scan wrote (StructuredInputError, ...)
        raise ReviewMarkError(f"cannot read it back: {exc}") from None
    finally:
        os.close(dir_fd)


def _rewrite(dir_fd: int, name: str, src: int, st: os.stat_result, fmt: RecordFormat, marks: dict[str, str]) -> int:
    temp = f".{name[:200]}.review-{secrets.token_hex(6)}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    renamed = False
    try:
        os.fchmod(fd, stat.S_IMODE(st.st_mode))
        with fmt.open_rows(os.dup(src)) as raw, open(fd, "w", buffering=BUFFER, closefd=False, **WRITE_OPTIONS) as out:
            marked = _marked_rows(fmt, raw, out, marks)
            out.flush()
            os.fsync(fd)
        now = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if (now.st_dev, now.st_ino, now.st_size, now.st_mtime_ns) != (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns):
            raise ReviewMarkError("the report changed while it was rewritten")
        os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        renamed = True
        os.fsync(dir_fd)
        return marked
    finally:
        os.close(fd)
        if not renamed:
            try:
                os.unlink(temp, dir_fd=dir_fd)
            except OSError:
                pass


def _marked_rows(fmt: RecordFormat, raw, out, marks: dict[str, str]) -> int:
    """Copy the rows of `raw` to `out` through the format's reader and writer, each sampled
    row (its path a key of `marks`) with that review cell; the rows marked."""
    rows = fmt.reader(raw, "the report", REPORT_LIMITS)
    names = rows.fieldnames
    if names is not None and ("path" not in names or "review" not in names):
        raise ReviewMarkError("it is not a scan report with a review column")
    writer, marked = fmt.writer(out, names or ()), 0
    for _, row in rows:
        if isinstance(row, StructuredInputError):
            raise row
        if not isinstance(row, dict) or None in row:
            raise ReviewMarkError("it holds a row this scan did not write")
        path = row.get("path")
        if isinstance(path, str) and path in marks:
            row["review"] = marks[path]
            marked += 1
        writer.row(row)
    return marked
