"""Scan reports: the writer and the validating reader of scan records (the record type and its
columns: scan_record.py), in any format of the one table (reports/formats.py), which the file's
extension chooses. Makes no decisions.

Every report is read through the table's bounded readers (imgclean.structured's limits), and
every row is checked cell by cell (reports/cells.py): a bad row is a ReportRow with an error,
never a traceback; audit reports are read by the same ReportFile with their own row check
(audit_records.audit_row).
"""
from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from ..structured import Limits, StructuredInputError
from .cells import RowError, check_relative, count_cell, number_cell, preview, root_cell, text_cell
from .formats import BUFFER, WRITE_OPTIONS, RecordFormat, ReportError, format_for
from .scan_record import (  # noqa: F401  (re-exported: the record type and statuses used to live here)
    ACCEPTED, CHANGED, FIELDS, MAX_REVIEW, OOD, STATUSES, UNDECODABLE, VERDICTS, ScanRecord, Verdict, is_rejected,
    mark_accepted, report_row,
)


def report_format(path: Path, write: bool = False) -> str:
    """The name of `path`'s format in the table ('csv', 'jsonl', ...); ReportError (a ValueError)
    naming the accepted extensions otherwise. write=True refuses the extensions only read (.json)."""
    return format_for(path, write).name


class RecordWriter:
    """Streams records to a report file as they come, in the format its extension names; a
    context manager. `root`: the scanned folder the records' paths are relative to (written in
    every row). An existing file is refused unless `overwrite` (report_files.open_report)."""

    def __init__(self, path: Path, root: str | os.PathLike | None = None, overwrite: bool = False):
        self.path = Path(path)
        self.overwrite = overwrite
        self.root = os.fsdecode(root) if root is not None else None
        self.report_format: RecordFormat = format_for(self.path, write=True)
        self.format = self.report_format.name
        self._fh = None
        self._rows = None
        self._fast = None
        self.created = False  # this writer created the file (not an existing one overwritten)
        self.written: tuple[int, int, int, int] | None = None  # (dev, ino, size, mtime_ns) once closed whole

    def __enter__(self) -> "RecordWriter":
        # A large buffer: rows go to the disk in 1 MB writes, not one system call per 8 KB.
        from .report_files import open_new_report

        self._fh, self.created = open_new_report(self.path, self.overwrite, buffering=BUFFER, **WRITE_OPTIONS)
        fmt = self.report_format
        self._rows = fmt.writer(self._fh, FIELDS)
        self._fast = fmt.fast(self.root) if fmt.fast is not None else None
        return self

    def write(self, record: ScanRecord) -> None:
        try:
            line = self._fast.line(record) if self._fast is not None else None
            if line is None:
                self._rows.row(report_row(record, self.root))
            else:
                self._fh.write(line)
        except OSError as e:  # e.g. a full disk: name the report, not just the errno
            raise OSError(e.errno, f"cannot write the report ({e.strerror})", os.fspath(self.path)) from None

    def write_block(self, block) -> None:
        """write() for each record of a block (record_blocks.RecordBlock), as one write when the
        format's fast path can format the block whole."""
        text = self._fast.block(block) if self._fast is not None else None
        if text is None:
            self.write_many(block.records())
            return
        try:
            self._fh.write(text)
        except OSError as e:
            raise OSError(e.errno, f"cannot write the report ({e.strerror})", os.fspath(self.path)) from None

    def write_many(self, records) -> None:
        """write() for each record, in order (one sink call for a batch)."""
        for record in records:
            self.write(record)

    __call__ = write  # a record sink

    def __exit__(self, *exc) -> None:
        if self._fh is not None:
            fh, self._fh = self._fh, None
            try:
                fh.flush()
                os.fsync(fh.fileno())
                st = os.fstat(fh.fileno())
                self.written = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            except OSError as e:
                raise OSError(e.errno, f"cannot write the report ({e.strerror})", os.fspath(self.path)) from None
            finally:
                try:
                    fh.close()
                except OSError:
                    pass


# ----------------------------------------------------------------------------- reading
# Every report is read through the bounded readers of the format table: a line or field longer
# than the limit, nesting deeper than it, a NUL, a JSON line that is not UTF-8 are rows with an
# error (never a traceback); each cell is checked by reports/cells.py.
REPORT_LIMITS = Limits()


@dataclass
class ReportRow:
    """One row of a report: a valid `record` and its `root`, or an `error` saying what is wrong
    (then `record` is None and `path` is the row's path as written, when there is one)."""

    line: int  # line number in the file (CSV: of the row's first line)
    record: ScanRecord | None  # (an audit report's rows: reports.audit_records.AuditRecord)
    root: str | None = None
    error: str = ""
    path: str = ""


def parse_row(row: Any) -> tuple[ScanRecord, str | None]:
    """(record, root) from one row (a CSV dict of strings or a JSON object); RowError if not valid."""
    if not isinstance(row, dict):
        raise RowError("not a JSON object")
    get = row.get
    path = check_relative(get("path"))
    status = get("status")
    if status not in STATUSES:
        raise RowError(f"unknown status {preview(status)} (expected one of {', '.join(STATUSES)})")
    if "issue" in row:
        raise RowError("a row of an audit report (it has an issue) in a scan report")
    record = ScanRecord(
        path=path, status=status, predicted=text_cell(get("predicted"), "predicted"),
        nearest=text_cell(get("nearest"), "nearest"), score=number_cell(get("score"), "score"),
        message=text_cell(get("message"), "message") or "", action=text_cell(get("action"), "action") or "",
        destination=text_cell(get("destination"), "destination"), size=count_cell(get("size"), "size"),
        mtime_ns=count_cell(get("mtime_ns"), "mtime_ns"), dev=count_cell(get("dev"), "dev"),
        ino=count_cell(get("ino"), "ino"), review=_review(get("review")),
    )
    return record, root_cell(get("root"))


def _review(value: Any) -> str:
    """A row's review cell: empty (or absent: a report from before the column), or a short
    label of printable characters."""
    if value is None or value == "":
        return ""
    if not isinstance(value, str):
        raise RowError(f"review {preview(value)} is not a string")
    if len(value) > MAX_REVIEW or not value.isprintable():
        raise RowError(f"review {preview(value)} is not a short label (at most {MAX_REVIEW} printable characters)")
    return value


def _checked(n: int, row: Any) -> ReportRow:
    try:
        record, root = parse_row(row)
    except RowError as e:
        shown = row.get("path") if isinstance(row, dict) and isinstance(row.get("path"), str) else ""
        return ReportRow(n, None, error=str(e), path=shown[:4096])
    return ReportRow(n, record, root)


class ReportFile:
    """A report opened once and read in passes (`rows()`), each from the start of the same open
    file, so a pass that checks a report and a later one that applies it read the same file even
    if its name is given to another meanwhile. `unchanged()` says whether the open file is still
    as it was when opened (device, inode, size, mtime and ctime: any write changes the ctime);
    `digest()` is the sha256 of its bytes now. A context manager; ReportError when the path is
    not a readable regular file."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.report_format: RecordFormat = format_for(self.path)
        self.format = self.report_format.name
        try:  # O_NONBLOCK: a FIFO given as the report must not hang the open
            self._fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise ReportError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        st = os.fstat(self._fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(self._fd)
            raise ReportError(f"{self.path} is not a regular file")
        self.stat = st
        self.identity = _identity(st)

    def __enter__(self) -> "ReportFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def unchanged(self) -> bool:
        return _identity(os.fstat(self._fd)) == self.identity

    def digest(self) -> str:
        h, offset = hashlib.sha256(), 0
        while chunk := os.pread(self._fd, BUFFER, offset):
            h.update(chunk)
            offset += len(chunk)
        return h.hexdigest()

    def rows(self, check: Callable[[int, Any], Any] | None = None,
             required: tuple[str, ...] = ("path", "status")) -> Iterator[ReportRow]:
        """Stream and validate the rows, from the start of the file (see :func:`read_report`).
        `check(line, row)` makes each row's result (default: a scan report's ReportRow);
        `required`: the columns a CSV report must have."""
        os.lseek(self._fd, 0, os.SEEK_SET)
        fd = os.dup(self._fd)  # the reading file object closes its own descriptor
        try:
            fh = self.report_format.open_rows(fd)
        except BaseException:
            os.close(fd)
            raise
        with fh:
            try:
                yield from _format_rows(self.path, self.report_format, fh, check or _checked, required)
            except OSError as exc:
                raise ReportError(f"cannot read {self.path}: {exc.strerror or exc}") from None

    def kind(self) -> str:
        """AUDIT when the report is an `imgclean audit` report (it has an `issue` column, or its
        first JSON line an `issue` key), else SCAN."""
        rows = self.rows(lambda line, row: row, required=())
        try:
            first = next(rows, None)
        except ReportError:
            return SCAN  # (unreadable: the scan reader says why)
        finally:
            rows.close()
        if isinstance(first, _Header):
            return AUDIT if "issue" in first.names else SCAN
        return AUDIT if isinstance(first, dict) and "issue" in first else SCAN


SCAN, AUDIT = "scan", "audit"


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class _Header:
    """What the rows of a report with a header start with when no columns are required: its
    column names."""

    def __init__(self, names):
        self.names = frozenset(names)


def _format_rows(path: Path, fmt: RecordFormat, fh, check: Callable[[int, Any], Any],
                 required: tuple[str, ...]) -> Iterator:
    """check(line, row) for each row the format's reader gives; `required`: the columns a report
    with a header must have (none: its _Header comes first)."""
    try:
        rows = fmt.reader(fh, path, REPORT_LIMITS)
        names = rows.fieldnames
    except StructuredInputError as exc:
        raise ReportError(f"{exc}; is it an imgclean scan report?") from None
    if names is not None:
        if not required:
            yield _Header(names)
        missing = set(required) - set(names)
        if missing:
            raise ReportError(f"{path} is not an imgclean {'audit' if 'issue' in required else 'scan'} report "
                              f"(no {', '.join(sorted(missing))} column)")
    try:
        for n, value in rows:
            if isinstance(value, StructuredInputError):
                yield ReportRow(n, None, error=value.problem)
            else:
                yield check(n, value)
    except StructuredInputError as exc:  # the reader cannot go on after a broken row: the rest is unread
        yield ReportRow(exc.line or 0, None, error=f"{exc.problem}; the rest of the file was not read")


def read_report(path: Path) -> Iterator[ReportRow]:
    """Stream and validate the rows of a `scan --report` file (any format of reports/formats.py).

    A bad row (unknown status, bad numbers, a path that is absolute or climbs out with `..`, a
    line that is not JSON, too long, too deep, not UTF-8, with a NUL) becomes a ReportRow with an
    `error`; the others still come (a CSV row that csv cannot parse is the last one: see
    structured.CsvRows). Raises ReportError (one line) when the file cannot be read as a report
    at all.
    """
    with ReportFile(path) as report:
        yield from report.rows()


def report_root(path: Path | ReportFile, check: Callable[[int, Any], Any] | None = None,
                required: tuple[str, ...] = ("path", "status")) -> str | None:
    """The scanned folder recorded in a report (its first valid row that names one), or None.
    `check`, `required`: as for ReportFile.rows (an audit report: audit_records.audit_row)."""
    if not isinstance(path, ReportFile):
        with ReportFile(path) as report:
            return report_root(report, check, required)
    rows = path.rows(check, required)
    try:
        return next((row.root for row in rows if row.record is not None and row.root is not None), None)
    finally:
        rows.close()
