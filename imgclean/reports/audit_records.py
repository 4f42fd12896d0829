"""Audit records and their report file (any format of reports/formats.py, chosen by the extension
as for scans).

One record per file of the audited training folder, with exactly one `issue`:

    unreadable > duplicate > outlier > label_issue > ok   (first match wins)

- unreadable: the file cannot be used (`status` says why: unreadable, too_large, unsupported,
  or skipped for links and other files a walk does not open);
- duplicate: a copy of another file (`duplicate_of`); in each group of copies the original is
  the oldest file (the earliest mtime, ties broken by path: pipeline.audit.duplicates.sort_key) and is
  never a duplicate;
- outlier: out-of-distribution for every class (out-of-sample detector score > 1);
- label_issue: the out-of-sample classifier confidently prefers another class (`suggested`).

Findings that lost to a stronger issue are named in `message`. Makes no decisions and never prints.

A report is read back for `imgclean apply` by :func:`audit_row` (one row, checked cell by cell as
scan rows are: reports/cells.py), through reports.records.ReportFile.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from ..structured import StructuredInputError
from .cells import RowError, check_relative, count_cell, number_cell, preview, root_cell, text_cell
from .formats import WRITE_OPTIONS, format_for
from .records import REPORT_LIMITS, ReportRow

OK, LABEL_ISSUE, OUTLIER, DUPLICATE, UNREADABLE = "ok", "label_issue", "outlier", "duplicate", "unreadable"
ISSUES = (LABEL_ISSUE, OUTLIER, DUPLICATE, UNREADABLE)
PRECEDENCE = (UNREADABLE, DUPLICATE, OUTLIER, LABEL_ISSUE)  # strongest first
# An audited file's decode status (data.OK and the statuses of files that cannot be used).
DECODE_STATUSES = ("ok", "unreadable", "too_large", "unsupported", "skipped")


@dataclass
class AuditRecord:
    """One file's audit. Scores, by issue: label_issue: the margin p(suggested) - p(label) of
    the out-of-sample class probabilities (0..1); outlier: the detector's normalised score (> 1);
    duplicate: the similarity to the original (1 for the same bytes or pixels, else the cosine of
    the deep features); ok: the outlier score. `label_confidence` is p(label), `outlier_score`
    the detector's score, for every decoded file. size/mtime_ns/dev/ino: the file as the audit saw
    it (a move re-checks them)."""

    path: str  # relative to the audited folder
    issue: str
    status: str = "ok"  # decode status: ok, unreadable, too_large, unsupported, skipped
    label: str | None = None  # the class folder
    suggested: str | None = None  # the class the out-of-sample classifier prefers
    score: float | None = None
    duplicate_of: str | None = None
    message: str = ""
    label_confidence: float | None = None
    outlier_score: float | None = None
    action: str = ""  # "", "moved", "would move", "changed", "missing", "move failed"
    destination: str | None = None
    size: int | None = 0
    mtime_ns: int | None = 0
    dev: int | None = None
    ino: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


FIELDS = ("path", "issue", "label", "suggested", "score", "duplicate_of", "message", "status",
          "label_confidence", "outlier_score", "action", "destination", "size", "mtime_ns", "dev", "ino", "root")


class AuditWriter:
    """Writes audit records to a report file in the format its extension names; a context
    manager (`root` in every row)."""

    def __init__(self, path: Path, root: str | os.PathLike, overwrite: bool = False):
        self.path = Path(path)
        self.overwrite = overwrite  # an existing file is refused unless set (report_files.open_report)
        self.root = os.fsdecode(root)
        self.report_format = format_for(self.path, write=True)
        self.format = self.report_format.name
        self._fh = None
        self._rows = None

    def __enter__(self) -> "AuditWriter":
        from .report_files import open_report

        self._fh = open_report(self.path, self.overwrite, **WRITE_OPTIONS)
        self._rows = self.report_format.writer(self._fh, FIELDS)
        return self

    def write(self, record: AuditRecord) -> None:
        self._rows.row({**record.to_dict(), "root": self.root})

    def __exit__(self, *exc) -> None:
        fh, self._fh = self._fh, None
        if fh is None:
            return
        try:
            fh.flush()
            os.fsync(fh.fileno())
        finally:
            fh.close()


def read_audit(path: Path) -> list[dict]:
    """The rows of an audit report as dicts (numbers parsed back from the cells of a format with a
    header); for tests and tools.

    Read through the table's bounded readers; a row that cannot be read or whose numbers are not
    numbers raises StructuredInputError (a ValueError) naming its line."""
    path = Path(path)
    fmt = format_for(path)
    with fmt.open_rows(os.open(path, os.O_RDONLY | os.O_CLOEXEC)) as fh:
        reader = fmt.reader(fh, path, REPORT_LIMITS)
        rows = []
        for n, row in reader:
            if isinstance(row, StructuredInputError):
                raise row
            if not isinstance(row, dict):
                raise StructuredInputError(path, "not a JSON object", n)
            rows.append(row if reader.fieldnames is None else _parsed(path, n, row))
        return rows


def _parsed(path: Path, line: int, row: dict) -> dict:
    """A row of text cells with its numbers and empty cells as the JSON-lines form has them."""
    try:
        for key in ("score", "label_confidence", "outlier_score"):
            row[key] = float(row[key]) if row.get(key) else None
        for key in ("size", "mtime_ns", "dev", "ino"):
            row[key] = int(row[key]) if row.get(key) else None
    except (TypeError, ValueError) as exc:
        raise StructuredInputError(path, f"{key} is not a number ({str(exc)[:80]})", line) from None
    for key in ("label", "suggested", "duplicate_of", "destination"):
        row[key] = row.get(key) or None
    return row


# ----------------------------------------------------------------------------- reading back


def parse_audit_row(row) -> tuple[AuditRecord, str | None]:
    """(record, root) from one row of an audit report (a CSV dict of strings or a JSON object);
    RowError saying what is wrong otherwise."""
    if not isinstance(row, dict):
        raise RowError("not a JSON object")
    get = row.get
    path = check_relative(get("path"))
    issue, status = get("issue"), get("status")
    if issue not in (OK, *ISSUES):
        raise RowError(f"unknown issue {preview(issue)} (expected one of {', '.join((OK, *ISSUES))})")
    if status not in DECODE_STATUSES:
        raise RowError(f"unknown status {preview(status)} (expected one of {', '.join(DECODE_STATUSES)})")
    original = get("duplicate_of") or None
    if original is not None:
        original = check_relative(original, "duplicate_of")
        if original == path:
            raise RowError("duplicate_of names the file itself")
    elif issue == DUPLICATE:
        raise RowError("a duplicate without duplicate_of (the original it copies)")
    record = AuditRecord(
        path=path, issue=issue, status=status, label=text_cell(get("label"), "label"),
        suggested=text_cell(get("suggested"), "suggested"), score=number_cell(get("score"), "score"),
        duplicate_of=original, message=text_cell(get("message"), "message") or "",
        label_confidence=number_cell(get("label_confidence"), "label_confidence"),
        outlier_score=number_cell(get("outlier_score"), "outlier_score"),
        action=text_cell(get("action"), "action") or "", destination=text_cell(get("destination"), "destination"),
        size=count_cell(get("size"), "size"), mtime_ns=count_cell(get("mtime_ns"), "mtime_ns"),
        dev=count_cell(get("dev"), "dev"), ino=count_cell(get("ino"), "ino"),
    )
    return record, root_cell(get("root"))


def audit_row(line: int, row) -> ReportRow:
    """One row of an audit report as a ReportRow whose record is an AuditRecord (or its error);
    the `check` of reports.records.ReportFile.rows for audit reports."""
    try:
        record, root = parse_audit_row(row)
    except RowError as e:
        shown = row.get("path") if isinstance(row, dict) and isinstance(row.get("path"), str) else ""
        return ReportRow(line, None, error=str(e), path=shown[:4096])
    return ReportRow(line, record, root)


AUDIT_COLUMNS = ("path", "issue")  # what a CSV audit report must have to be read back
