"""Scan records and their files: the record type, CSV or JSON lines chosen by the file's
extension, a writer and a validating reader. Makes no decisions.

A record carries what applying it later needs (`imgclean apply`, pipeline/apply/applier.py): the path
relative to the scanned folder, the folder itself (`root`, one per row so a report stays a
stream), and the identity the file had when it was scored (size, mtime_ns, dev, ino), so the
move re-checks it exactly as a scan does.

Names that are not UTF-8 round-trip: CSV is written and read with surrogateescape (the bytes go
into the file as they are), JSON lines write them as \\udcXX escapes (ensure_ascii).

A `.json` file is read as JSON lines (older scans wrote JSON lines there) but never
written: a report streams one record per line, which a `.json` file's readers would take for
one broken document. The writer asks for `.jsonl` instead.

Longer than 400 lines: the writer and the validating reader of each format stay side by side,
so that what one writes the other reads back.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

from .. import data
from ..errors import ImgcleanError
from ..structured import CsvRows, Limits, StructuredInputError, json_lines
from .cells import RowError, check_relative, count_cell, number_cell, preview, root_cell, text_cell

OOD = "ood"
CHANGED = "changed"
# A file the scan would reject but a person accepted (quarantine.decision_check): left in place.
# Never rejected, never skipped; and never a verdict of the scan itself, so never cached as one.
ACCEPTED = "accepted"
# Statuses of files that could not be scored; moved too unless keep_unreadable.
UNDECODABLE = (data.UNREADABLE, data.TOO_LARGE, data.UNSUPPORTED)
# What a scan itself says of a file (what the scan cache may keep), and every status a record may have.
VERDICTS = (data.OK, OOD, *UNDECODABLE, data.SKIPPED, CHANGED)
STATUSES = (*VERDICTS, ACCEPTED)
# A record's `review`: empty, or why the scan put the file in its review sample (a short label).
MAX_REVIEW = 200


class Verdict(NamedTuple):
    """What the scan itself said of a file whose status a person's decision replaced."""

    status: str
    message: str


@dataclass
class ScanRecord:
    """One file's outcome. `score`: higher = more out-of-distribution, > 1 = rejected.

    size, mtime_ns, dev and ino: the file as it was when scored (0/None when not known, e.g. a
    skipped file); a move re-checks them and leaves a file that differs in place.

    `review`: empty, or why the scan chose the file for its review sample (a report column).
    `verdict`: what the scan said of a file before a person's decision replaced its status
    (status `accepted`, see :func:`mark_accepted`); None otherwise. Kept for the scan cache,
    which stores verdicts, never decisions; not a report column."""

    path: str  # relative to the scanned folder
    status: str
    predicted: str | None = None
    nearest: str | None = None
    score: float | None = None
    message: str = ""
    action: str = ""  # "", "moved", "would move", "kept", "changed", "missing", "move failed"
    destination: str | None = None
    size: int | None = 0  # None: not recorded (a report written by an older imgclean)
    mtime_ns: int | None = 0
    dev: int | None = None
    ino: int | None = None
    review: str = ""
    verdict: Verdict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def mark_accepted(record: ScanRecord, message: str) -> None:
    """Give `record` (one the scan would reject) the status `accepted`, keeping its verdict and
    saying who accepted it (`message`) before what the scan said of it."""
    record.verdict = Verdict(record.status, record.message)
    record.status = ACCEPTED
    record.message = f"{message}; {record.message}" if record.message else message


def is_rejected(record: ScanRecord, keep_unreadable: bool) -> bool:
    if record.status == OOD:
        return True
    return record.status in UNDECODABLE and not keep_unreadable


# The first eight columns are those of older reports, in their order; size..root were added for
# `imgclean apply`, review for the review sample. New columns go at the end: readers find
# columns by name, so an older imgclean reads a newer report (it ignores columns it does not know).
FIELDS = ("path", "status", "predicted", "nearest", "score", "action", "destination", "message",
          "size", "mtime_ns", "dev", "ino", "root", "review")
_RECORD_FIELDS = FIELDS[: FIELDS.index("root")]  # the record's own columns before root; the writer adds root
_json_encode = json.JSONEncoder(ensure_ascii=True).encode
_BUFFER = 2**20
_NEEDS_QUOTES = re.compile('["\r\n]').search  # (or a comma) what makes csv.writer quote a field (excel dialect)
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}


class ReportError(ImgcleanError, ValueError):
    """A report file cannot be read as one (missing, not CSV/JSON lines, no path/status columns)."""


def report_format(path: Path, write: bool = False) -> str:
    """'csv' or 'jsonl' from the extension; ValueError naming the accepted ones otherwise.

    write=True refuses `.json` (see the module docstring) with a message naming `.jsonl`.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if write and suffix == ".json":
        raise ReportError(
            f"report file {path}: a report is JSON lines (one record per line), not one JSON document; "
            f"name it {path.with_suffix('.jsonl').name} (or .csv)"
        )
    fmt = FORMATS.get(suffix)
    if fmt is None:
        raise ReportError(f"report file {path} must end in .csv or .jsonl (JSON lines)")
    return fmt


class RecordWriter:
    """Streams records to a report file as they come; a context manager. `root`: the scanned
    folder the records' paths are relative to (written in every row). An existing file is
    refused unless `overwrite` (report_files.open_report)."""

    def __init__(self, path: Path, root: str | os.PathLike | None = None, overwrite: bool = False):
        self.path = Path(path)
        self.overwrite = overwrite
        self.root = os.fsdecode(root) if root is not None else None
        self.format = report_format(self.path, write=True)
        self._fh = None
        self._csv = None
        self.created = False  # this writer created the file (not an existing one overwritten)
        self.written: tuple[int, int, int, int] | None = None  # (dev, ino, size, mtime_ns) once closed whole

    def __enter__(self) -> "RecordWriter":
        # A large buffer: rows go to the disk in 1 MB writes, not one system call per 8 KB.
        from .report_files import open_new_report

        self._fh, self.created = open_new_report(self.path, self.overwrite, encoding="utf-8", newline="",
                                                 errors="surrogateescape", buffering=_BUFFER)
        if self.format == "csv":
            self._csv = csv.writer(self._fh)  # what csv.DictWriter writes, without a dict per row
            self._csv.writerow(FIELDS)
            root = "" if self.root is None else self.root
            # What ends a row after its ino cell when the root needs no quoting (else csv.writer
            # writes every row): the root's cell and the line's end for a block's rows
            # (RecordBlock.csv_text), the root's cell, an empty review cell and the line's end for one row.
            self._block_end = None if _NEEDS_QUOTES(root) or "," in root or not root else root + "\r\n"
            self._csv_end = None if self._block_end is None else root + ",\r\n"
        return self

    def write(self, record: ScanRecord) -> None:
        d = record.__dict__
        try:
            if self.format == "csv":
                # What csv.writer writes, formatted here when no field needs quoting and the review
                # cell is empty (the line then holds exactly 12 commas and no quote, CR or LF before
                # the root); else csv.writer.
                r, end = record, self._csv_end
                line = (
                    f"{r.path},{r.status},{'' if r.predicted is None else r.predicted},"
                    f"{'' if r.nearest is None else r.nearest},{'' if r.score is None else r.score},{r.action},"
                    f"{'' if r.destination is None else r.destination},{r.message},{'' if r.size is None else r.size},"
                    f"{'' if r.mtime_ns is None else r.mtime_ns},{'' if r.dev is None else r.dev},"
                    f"{'' if r.ino is None else r.ino},"
                )
                if (end is None or r.review or line.count(",") != 12 or _NEEDS_QUOTES(line)
                        or r.__class__ is not ScanRecord):
                    self._csv.writerow([d[k] for k in _RECORD_FIELDS] + [self.root, r.review])
                else:
                    self._fh.write(line + end)
            else:
                row = {k: d[k] for k in _RECORD_FIELDS}
                row["root"] = self.root
                row["review"] = record.review
                # ensure_ascii keeps one record per line whatever the file name holds
                self._fh.write(_json_encode(row) + "\n")
        except OSError as e:  # e.g. a full disk: name the report, not just the errno
            raise OSError(e.errno, f"cannot write the report ({e.strerror})", os.fspath(self.path)) from None

    def write_block(self, block) -> None:
        """write() for each record of a block (record_blocks.RecordBlock), as one write when the
        rows need no quoting."""
        text = block.csv_text(self._block_end) if self.format == "csv" and self._block_end is not None else None
        if text is None:
            self.write_many(block.records())
            return
        # Each row's empty review cell. csv_text promised one CR and one LF a row, both in its
        # line end, so every "\r\n" in the text is a line end. (A block's records have no review:
        # a record given a review was built, and a built block never comes as text.)
        text = text.replace("\r\n", ",\r\n")
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
# Every report is read through the bounded readers of imgclean.structured: a line or field longer
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
        self.format = report_format(self.path)
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
        while chunk := os.pread(self._fd, _BUFFER, offset):
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
            if self.format == "csv":
                fh = open(fd, encoding="utf-8", newline="", errors="surrogateescape", buffering=_BUFFER)
            else:
                fh = open(fd, "rb", buffering=_BUFFER)
        except BaseException:
            os.close(fd)
            raise
        with fh:
            try:
                if self.format == "csv":
                    yield from _csv_rows(self.path, fh, check or _checked, required)
                else:
                    yield from _jsonl_rows(self.path, fh, check or _checked)
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
        if self.format == "csv" and isinstance(first, _Header):
            return AUDIT if "issue" in first.names else SCAN
        return AUDIT if isinstance(first, dict) and "issue" in first else SCAN


SCAN, AUDIT = "scan", "audit"


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class _Header:
    """What a CSV report's rows start with when no columns are required: its column names."""

    def __init__(self, names):
        self.names = frozenset(names)


def _csv_rows(path: Path, fh, check: Callable[[int, Any], Any], required: tuple[str, ...]) -> Iterator:
    try:
        rows = CsvRows(fh, path, REPORT_LIMITS)
    except StructuredInputError as exc:
        raise ReportError(f"{exc}; is it an imgclean scan report?") from None
    if not required:
        yield _Header(rows.fieldnames)
    missing = set(required) - set(rows.fieldnames)
    if missing:
        raise ReportError(f"{path} is not an imgclean {'audit' if 'issue' in required else 'scan'} report "
                          f"(no {', '.join(sorted(missing))} column)")
    try:
        for n, row in rows:
            yield check(n, row)
    except StructuredInputError as exc:  # csv cannot go on after a broken row: the rest is unread
        yield ReportRow(exc.line or 0, None, error=f"{exc.problem}; the rest of the file was not read")


def _jsonl_rows(path: Path, fh, check: Callable[[int, Any], Any]) -> Iterator:
    for n, value in json_lines(fh, path, REPORT_LIMITS):
        if isinstance(value, StructuredInputError):
            yield ReportRow(n, None, error=value.problem)
        else:
            yield check(n, value)


def read_report(path: Path) -> Iterator[ReportRow]:
    """Stream and validate the rows of a `scan --report` file (.csv, or JSON lines).

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
