"""Audit records and their report file (CSV or JSON lines, chosen by the extension as for scans).

One record per file of the audited training folder, with exactly one `issue`:

    unreadable > duplicate > outlier > label_issue > ok   (first match wins)

- unreadable: the file cannot be used (`status` says why: unreadable, too_large, unsupported,
  or skipped for links and other files a walk does not open);
- duplicate: a later copy of another file (`duplicate_of`; the first file in sorted path order
  is the original and is never a duplicate);
- outlier: out-of-distribution for every class (out-of-sample detector score > 1);
- label_issue: the out-of-sample classifier confidently prefers another class (`suggested`).

Findings that lost to a stronger issue are named in `message`. Makes no decisions and never prints.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from ..structured import CsvRows, StructuredInputError, json_lines
from .records import REPORT_LIMITS, report_format

OK, LABEL_ISSUE, OUTLIER, DUPLICATE, UNREADABLE = "ok", "label_issue", "outlier", "duplicate", "unreadable"
ISSUES = (LABEL_ISSUE, OUTLIER, DUPLICATE, UNREADABLE)
PRECEDENCE = (UNREADABLE, DUPLICATE, OUTLIER, LABEL_ISSUE)  # strongest first


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
    """Writes audit records to a .csv or .jsonl file; a context manager (`root` in every row)."""

    def __init__(self, path: Path, root: str | os.PathLike):
        self.path = Path(path)
        self.root = os.fsdecode(root)
        self.format = report_format(self.path, write=True)
        self._fh = None
        self._csv = None

    def __enter__(self) -> "AuditWriter":
        self._fh = open(self.path, "w", encoding="utf-8", newline="", errors="surrogateescape")
        if self.format == "csv":
            self._csv = csv.DictWriter(self._fh, fieldnames=FIELDS, extrasaction="ignore")
            self._csv.writeheader()
        return self

    def write(self, record: AuditRecord) -> None:
        row = {**record.to_dict(), "root": self.root}
        if self.format == "csv":
            self._csv.writerow(row)
        else:
            self._fh.write(json.dumps(row, ensure_ascii=True) + "\n")

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
    """The rows of an audit report as dicts (numbers parsed back from CSV); for tests and tools.

    Read through the bounded readers (imgclean.structured); a row that cannot be read or whose
    numbers are not numbers raises StructuredInputError (a ValueError) naming its line."""
    path = Path(path)
    if report_format(path) == "jsonl":
        with open(path, "rb") as fh:
            rows = []
            for n, row in json_lines(fh, path, REPORT_LIMITS):
                if isinstance(row, StructuredInputError):
                    raise row
                if not isinstance(row, dict):
                    raise StructuredInputError(path, "not a JSON object", n)
                rows.append(row)
            return rows
    with open(path, encoding="utf-8", newline="", errors="surrogateescape") as fh:
        return [_parsed(path, n, row) for n, row in CsvRows(fh, path, REPORT_LIMITS)]


def _parsed(path: Path, line: int, row: dict) -> dict:
    """A CSV row with its numbers and empty cells as the JSON-lines form has them."""
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
