"""A scan's record of one file (ScanRecord), its statuses and its report columns; no file
formats here (reports/formats.py), no decisions.

A record carries what applying it later needs (`imgclean apply`, pipeline/apply/applier.py): the path
relative to the scanned folder, the folder itself (`root`, one per row so a report stays a
stream), and the identity the file had when it was scored (size, mtime_ns, dev, ino), so the
move re-checks it exactly as a scan does.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

from .. import data

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

# The first eight columns are those of older reports, in their order; size..root were added for
# `imgclean apply`, review for the review sample. New columns go at the end: readers find
# columns by name, so an older imgclean reads a newer report (it ignores columns it does not know).
FIELDS = ("path", "status", "predicted", "nearest", "score", "action", "destination", "message",
          "size", "mtime_ns", "dev", "ino", "root", "review")
RECORD_FIELDS = FIELDS[: FIELDS.index("root")]  # the record's own columns before root; a writer adds root


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


def report_row(record: ScanRecord, root: str | None) -> dict:
    """The record as a report row: its columns in FIELDS order, `root` the scanned folder."""
    d = record.__dict__
    row = {k: d[k] for k in RECORD_FIELDS}
    row["root"] = root
    row["review"] = record.review
    return row


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
