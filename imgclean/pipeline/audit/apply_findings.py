"""Carrying out an audit's findings: `audit --move-to`, and `imgclean apply` of a saved (and
perhaps reviewed) audit report.

Flagged files move exactly as a scan's rejects do (pipeline.apply.applier.Applier: each file re-checked
against the size, mtime, device and inode the audit saw, journaled in the quarantine with its
issue as the reason, put back by `imgclean restore`); a file a person accepted stays. Of a group
of duplicates only the copies move, never the original (the oldest file: pipeline.duplicates),
and a copy moves only while its original stays in the folder: when the original is gone, or
moves itself for another issue in the same run, the copy is kept (action "kept"), so removing
duplicates never removes a picture's last copy.

A report is applied whole or not at all, as a scan report is (pipeline/apply/report.py): every
row is read and checked first (cells: reports.audit_records.parse_audit_row; the files to move
and each duplicate's original: the walk's rules, apply_sources.SourceCheck), and a report with a
bad row moves nothing. Only the rows to act on are kept in memory.

Wrong labels are moved to the quarantine like the other findings (their suggested class is kept
in the journal); they are never moved into another class folder: a move inside the training
folder would leave the quarantine's journal and could not be undone by `imgclean restore`.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable

from ... import data
from ...reports.audit_records import AUDIT_COLUMNS, DUPLICATE, ISSUES, UNREADABLE, AuditRecord, audit_row
from ...reports.records import ACCEPTED, OOD, ReportError, ReportFile, ReportRow, ScanRecord
from ..apply.applier import Applier, ScanSummary
from ..apply.report import stopped_or_refused
from ..apply.sources import SourceCheck, regular_file_below

MOVABLE = ISSUES  # what --move-to / --move-issues moves by default: every issue
MAX_FLAGGED = 1_000_000  # rows to act on that one apply keeps in memory; a larger report is refused


def acts_on(record: AuditRecord, issues: Iterable[str], keep_unreadable: bool) -> bool:
    """Whether a run moving `issues` moves this record's file (a skipped file never moves: the
    walk did not open it)."""
    if record.issue not in issues or record.status == data.SKIPPED:
        return False
    return not (keep_unreadable and record.issue == UNREADABLE)


class _AuditApplier(Applier):
    """An Applier whose journal reason is the audit's issue, with its findings as details."""

    current: AuditRecord | None = None

    def request(self, record):
        req = super().request(record)
        a = self.current
        details = {"issue": a.issue, "label": a.label, "suggested": a.suggested, "score": a.score,
                   "duplicate_of": a.duplicate_of, "message": a.message}
        return replace(req, reason=a.issue, details=details)


def _original_problem(root: Path, record: AuditRecord, moving: dict[str, str]) -> str:
    """Why a duplicate must stay ('' when it may move): its original moves too, or is gone."""
    original = record.duplicate_of
    if original in moving:
        return f"its original {original} moves too (as {moving[original]}), so this copy stays"
    if not regular_file_below(root, original):
        return f"its original {original} is not in the folder any more, so this copy stays"
    return ""


def apply_audit(records: Iterable[AuditRecord], root: Path, summary, quarantine=None, dry_run: bool = False,
                keep_unreadable: bool = False, issues: Iterable[str] = MOVABLE,
                on_record: Callable[[AuditRecord], None] | None = None,
                should_stop: Callable[[], bool] = lambda: False, check_device: bool = True,
                source_check: Callable[[str], str] | None = None):
    """Move (or, in a dry run, plan) every flagged file whose issue is in `issues` into
    `quarantine` (moves.Quarantine, opened by the caller; None: nothing moves), as the module
    docstring says. `summary`: an AuditSummary or AuditApplySummary, whose moved, would_move,
    move_errors, changed, kept, accepted and interrupted are set. `source_check`: for rows from
    a report, why a path may not move right now ('' when it may)."""
    records = list(records)
    issues = set(issues)
    root = Path(root)
    moving = {r.path: r.issue for r in records if acts_on(r, issues, keep_unreadable)}
    scan_summary = ScanSummary(root=os.fsdecode(root), model="")
    applier = _AuditApplier(root, quarantine, scan_summary, keep_unreadable, dry_run, check_device, source_check)
    for rec in records:
        if should_stop():
            summary.interrupted = True
            break
        if rec.path in moving:
            _apply_one(rec, applier, root, moving, summary, quarantine is not None)
        if on_record is not None:
            on_record(rec)
    summary.moved, summary.would_move = scan_summary.moved, scan_summary.would_move
    summary.move_errors, summary.changed = scan_summary.move_errors, scan_summary.counts["changed"]
    return summary


def _apply_one(rec: AuditRecord, applier: _AuditApplier, root: Path, moving: dict[str, str], summary,
               moves: bool) -> None:
    if moves and rec.issue == DUPLICATE:
        why = _original_problem(root, rec, moving)
        if why:
            rec.action, rec.message = "kept", f"kept: {why}; {rec.message}"
            summary.kept += 1
            return
    applier.current = rec
    scan_rec = ScanRecord(rec.path, OOD if rec.status == data.OK else rec.status, predicted=rec.suggested,
                          nearest=rec.label, score=rec.score, message=rec.message, size=rec.size,
                          mtime_ns=rec.mtime_ns, dev=rec.dev, ino=rec.ino)
    applier(scan_rec)
    if scan_rec.status == ACCEPTED:
        rec.action, rec.message = "kept", scan_rec.message
        summary.accepted += 1
        return
    if scan_rec.action:
        rec.action, rec.destination = scan_rec.action, scan_rec.destination
    if scan_rec.action in ("changed", "missing"):
        rec.message = f"{scan_rec.message}; {rec.message}"
    elif scan_rec.action == "move failed":
        rec.message = f"move failed: {scan_rec.message}; {rec.message}"


# ----------------------------------------------------------------------------- a saved report


@dataclass
class AuditApplySummary:
    """What `imgclean apply` did with an audit report. `issues`: the rows of each issue it acted
    on (those of --move-issues); `kept`: copies left because their original moves or is gone;
    `accepted`: files a person accepted, left in place. Read by cli.common.exit_code as a scan's
    summary is (`rejected`, `counts`)."""

    root: str = ""
    report: str = ""
    move_issues: tuple[str, ...] = MOVABLE
    rows: int = 0
    invalid: int = 0
    repeated: int = 0  # later rows for a path already seen (ignored: a path moves at most once)
    issues: dict[str, int] = field(default_factory=lambda: {i: 0 for i in ISSUES})
    moved: int = 0
    would_move: int = 0
    kept: int = 0
    accepted: int = 0
    changed: int = 0
    move_errors: int = 0
    refused: bool = False
    error: str = ""
    interrupted: bool = False
    seconds: float = 0.0

    @property
    def rejected(self) -> int:
        return self.moved + self.would_move

    @property
    def counts(self) -> dict[str, int]:
        return {data.SKIPPED: 0, "changed": self.changed}

    def to_dict(self) -> dict:
        return {
            "kind": "audit", "rows": self.rows, "move_issues": list(self.move_issues),
            "label_issues": self.issues["label_issue"], "outliers": self.issues["outlier"],
            "duplicates": self.issues["duplicate"], "unreadable": self.issues["unreadable"],
            "moved": self.moved, "would_move": self.would_move, "kept": self.kept, "accepted": self.accepted,
            "changed": self.changed, "move_errors": self.move_errors, "invalid": self.invalid,
            "repeated": self.repeated, "refused": self.refused, "error": self.error,
            "interrupted": self.interrupted, "seconds": round(self.seconds, 3), "root": self.root,
            "report": self.report,
        }


@dataclass
class AuditCheck:
    """What checking a whole audit report found: `rows` read, `invalid` bad ones, `error` when
    it could not be read at all, `interrupted`, and `flagged`: the rows to act on, in order."""

    rows: int = 0
    invalid: int = 0
    repeated: int = 0
    error: str = ""
    interrupted: bool = False
    flagged: list[AuditRecord] = field(default_factory=list)


def check_audit_report(report: ReportFile, root: Path | None, recorded_root: str | None, issues: Iterable[str],
                       keep_unreadable: bool = False, on_invalid: Callable[[ReportRow], None] | None = None,
                       should_stop: Callable[[], bool] = lambda: False,
                       excluded: tuple[Path, ...] = ()) -> AuditCheck:
    """Read every row of an audit report and check it as applying it would, touching nothing:
    its cells; its folder (`recorded_root`: the one every row must record); for the rows to act
    on, the identity to check the file against and the walk's rules on its path and, for a
    duplicate, on its original's (unless `root` is None: no folder chosen yet)."""
    issues = set(issues)
    result = AuditCheck()
    sources = SourceCheck(root, excluded, remember=True) if root is not None else None
    seen: set[str] = set()
    try:
        for row in report.rows(audit_row, AUDIT_COLUMNS):
            result.rows += 1
            row = _row_problem(row, recorded_root, issues, keep_unreadable, sources)
            if row.record is None:
                result.invalid += 1
                if on_invalid is not None:
                    on_invalid(row)
            elif acts_on(row.record, issues, keep_unreadable):
                if row.record.path in seen:
                    result.repeated += 1
                else:
                    seen.add(row.record.path)
                    result.flagged.append(row.record)
                    if len(result.flagged) > MAX_FLAGGED:
                        result.error = (f"{report.path} has more than {MAX_FLAGGED:,} findings to act on; "
                                        "apply it in parts (--move-issues), or audit the class folders one by one")
                        return result
            if should_stop():
                result.interrupted = True
                return result
    except ReportError as exc:
        result.error = str(exc)
    return result


def _row_problem(row: ReportRow, recorded_root: str | None, issues: set[str], keep_unreadable: bool,
                 sources: Callable[[str], str] | None) -> ReportRow:
    record = row.record
    if record is None:
        return row
    problem = ""
    if recorded_root is not None and row.root not in (None, recorded_root):
        problem = f"recorded for another folder ({row.root}), not {recorded_root}"
    elif acts_on(record, issues, keep_unreadable):
        if None in (record.size, record.mtime_ns, record.ino):
            problem = "no size, mtime_ns or ino to check the file against; audit again"
        elif sources is not None:
            problem = sources(record.path)
            if not problem and record.duplicate_of is not None:
                problem = sources(record.duplicate_of)
                problem = f"its original: {problem}" if problem else ""
            problem = f"refused: {problem}" if problem else ""
    return ReportRow(row.line, None, row.root, problem, record.path) if problem else row


def run_audit_apply(root: Path, summary: AuditApplySummary, checked: AuditCheck, quarantine=None, *,
                    dry_run: bool = False, keep_unreadable: bool = False, check_device: bool = False,
                    on_record: Callable[[AuditRecord], None] | None = None,
                    should_stop: Callable[[], bool] = lambda: False) -> AuditApplySummary:
    """Apply a checked audit report (:func:`check_audit_report`) to `root`: all of it, or
    nothing when any row was bad (`summary.refused`, `summary.error`)."""
    started = time.perf_counter()
    summary.rows, summary.repeated = checked.rows, checked.repeated
    for rec in checked.flagged:
        summary.issues[rec.issue] += 1
    try:
        if not stopped_or_refused(summary, checked, summary.report):
            moving = quarantine is not None and not dry_run
            sources = SourceCheck(root, (quarantine.root,)) if moving else None
            apply_audit(checked.flagged, root, summary, quarantine, dry_run, keep_unreadable, summary.move_issues,
                        on_record, should_stop, check_device, sources)
    finally:
        summary.seconds = time.perf_counter() - started
    return summary
