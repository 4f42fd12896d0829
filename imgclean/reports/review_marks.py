"""Marking the review sample in a report a scan has just written (the `review` column).

The report streamed while the scan ran; the sample is chosen after it. The report is rewritten
whole: a new file created (O_EXCL) beside it in its folder, every row as it was except the
review cell of the sampled files, then renamed over the report. Only a report this run created
and that is still the file it wrote (device, inode, size, mtime): never one it overwrote (its
owner, mode and links are someone's), never through a link, never a file swapped in since.
"""
from __future__ import annotations

import csv
import json
import os
import secrets
import stat
from pathlib import Path

from ..errors import ImgcleanError
from .records import report_format

_encode = json.JSONEncoder(ensure_ascii=True).encode  # as RecordWriter writes rows
_BUFFER = 2**20


class ReviewMarkError(ImgcleanError):
    """The report cannot be marked (it is not the file the scan wrote, or writing failed)."""


def mark_report(path: Path, written: tuple[int, int, int, int] | None, marks: dict[str, str]) -> int:
    """Give each row whose path is a key of `marks` that review cell; `written`: the report's
    (dev, ino, size, mtime_ns) when its writer closed it. Returns the rows marked."""
    if written is None:
        raise ReviewMarkError("the report was not written whole")
    path = Path(path)
    fmt = report_format(path, write=True)
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
    except (ValueError, UnicodeError, csv.Error) as exc:  # not rows this scan wrote
        raise ReviewMarkError(f"cannot read it back: {exc}") from None
    finally:
        os.close(dir_fd)


def _rewrite(dir_fd: int, name: str, src: int, st: os.stat_result, fmt: str, marks: dict[str, str]) -> int:
    temp = f".{name[:200]}.review-{secrets.token_hex(6)}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    renamed = False
    try:
        os.fchmod(fd, stat.S_IMODE(st.st_mode))
        reader = os.dup(src)
        with open(reader, "rb", buffering=_BUFFER) as raw, open(fd, "wb", buffering=_BUFFER, closefd=False) as out:
            marked = _csv_rows(raw, out, marks) if fmt == "csv" else _jsonl_rows(raw, out, marks)
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


def _csv_rows(raw, out, marks: dict[str, str]) -> int:
    import io

    text_in = io.TextIOWrapper(raw, encoding="utf-8", newline="", errors="surrogateescape")
    text_out = io.TextIOWrapper(out, encoding="utf-8", newline="", errors="surrogateescape", write_through=True)
    rows, writer = csv.reader(text_in), csv.writer(text_out)
    header = next(rows, None)
    if header is None or "path" not in header or "review" not in header:
        raise ReviewMarkError("it is not a scan report with a review column")
    at_path, at_review, marked = header.index("path"), header.index("review"), 0
    writer.writerow(header)
    for row in rows:
        if len(row) == len(header) and row[at_path] in marks:
            row[at_review] = marks[row[at_path]]
            marked += 1
        writer.writerow(row)
    text_out.detach()
    text_in.detach()
    return marked


def _jsonl_rows(raw, out, marks: dict[str, str]) -> int:
    marked = 0
    for line in raw:
        if line.strip():
            row = json.loads(line)
            path = row.get("path") if isinstance(row, dict) else None
            if isinstance(path, str) and path in marks:
                row["review"] = marks[row["path"]]
                line = (_encode(row) + "\n").encode("ascii")
                marked += 1
        out.write(line)
    return marked

