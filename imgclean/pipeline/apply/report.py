"""Applying a saved scan report (`imgclean apply`): check every row, then apply them all or none.

A report is applied whole or not at all: every row is read and checked before the first move
(:func:`check_report`; what apply may move from which folder: apply_sources.py), and a report
with a bad row moves nothing, whatever the output options. The records then go through the same
:class:`imgclean.pipeline.apply.applier.Applier` a scan uses (each move re-checks its file; a file a
person accepted stays).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ...reports.records import ReportError, ReportFile, ReportRow, ScanRecord, is_rejected
from .applier import Applier, ApplySummary


# A report of at most this many rows is applied from the records its check kept (a second read
# would double the cost of reading it); a longer one is read again, in bounded memory.
KEEP_ROWS = 100_000


def run_apply(report: ReportFile, root: Path | None, summary: ApplySummary, quarantine=None, *, checked: ReportCheck,
              dry_run: bool = False, keep_unreadable: bool = False, recorded_root: str | None = None,
              check_device: bool = False, on_record: Callable[[ScanRecord], None] | None = None,
              should_stop: Callable[[], bool] = lambda: False) -> ApplySummary:
    """Apply an open report (reports.records.ReportFile) to the folder `root` (resolved), after
    :func:`check_report` has read and checked all of it (`checked`).

    The rule: a report is applied whole or not at all. A report with any bad row (or that could
    not be read) is refused (`summary.refused`, `summary.error`) and nothing moves. Otherwise
    the records the check kept are applied; a report too long to keep (KEEP_ROWS) is read again
    from the same open file, which must not have changed since the check (its stat before each
    move, its sha256 at the end): if it did, the apply stops there with `summary.error`. A path
    moves at most once; each move checks its file against the record and its path against the
    walk's rules (apply_sources.SourceCheck) right before it happens. `recorded_root`: the root
    every row must record (None: any); `check_device`: compare device numbers too (the folder is
    the one the report records, not one mounted elsewhere).
    """
    from .sources import SourceCheck

    started = time.perf_counter()
    summary.rows = checked.rows
    try:
        if not stopped_or_refused(summary, checked, report.path):
            moving = quarantine is not None and not dry_run
            sources = SourceCheck(root, _excluded(quarantine)) if moving else None  # (a dry run: checked just now)
            applier = Applier(root, quarantine, summary, keep_unreadable, dry_run, check_device, sources)
            records = checked.kept if checked.kept is not None else _read_again(
                report, checked, summary, recorded_root, keep_unreadable, moving)
            _apply_records(records, applier, summary, on_record, should_stop)
    finally:
        summary.seconds = time.perf_counter() - started
    return summary


@dataclass
class ReportCheck:
    """What checking a whole report found: `rows` read, `invalid` bad ones, the report's sha256,
    `error` when it could not be read at all, `interrupted` when a stop came first, and `kept`:
    the records in order when there are at most KEEP_ROWS of them (else None)."""

    rows: int = 0
    invalid: int = 0
    digest: str = ""
    error: str = ""
    interrupted: bool = False
    kept: list[ScanRecord] | None = field(default_factory=list)


def check_report(report: ReportFile, root: Path | None, recorded_root: str | None, keep_unreadable: bool = False,
                 on_invalid: Callable[[ReportRow], None] | None = None,
                 should_stop: Callable[[], bool] = lambda: False, excluded: tuple[Path, ...] = ()) -> ReportCheck:
    """Read every row of `report` and check it as applying it would (:func:`_row_problem`, and
    for rows to move the walk's rules: apply_sources.SourceCheck, unless `root` is None: no
    folder chosen yet), touching nothing."""
    from .sources import SourceCheck

    result = ReportCheck()
    sources = SourceCheck(root, excluded, remember=True) if root is not None else None
    try:
        for row in report.rows():
            result.rows += 1
            row = _row_problem(row, recorded_root, keep_unreadable, sources)
            if row.record is None:
                result.invalid += 1
                if on_invalid is not None:
                    on_invalid(row)
            elif result.kept is not None:
                result.kept.append(row.record)
                if len(result.kept) > KEEP_ROWS:
                    result.kept = None  # too many to keep: applying reads the report again
            if should_stop():
                result.interrupted = True
                return result
    except ReportError as exc:
        result.error = str(exc)
        return result
    if result.kept is None:
        result.digest = report.digest()
    return result


def _row_problem(row: ReportRow, recorded_root: str | None, keep_unreadable: bool,
                 sources: Callable[[str], str] | None) -> ReportRow:
    """`row`, or a row with the error that makes it unusable: recorded for another folder, a
    rejected record without the identity to check its file against, or (with `sources`) a path
    apply may not move."""
    record = row.record
    if record is None:
        return row
    problem = ""
    if recorded_root is not None and row.root not in (None, recorded_root):
        problem = f"recorded for another folder ({row.root}), not {recorded_root}"
    elif is_rejected(record, keep_unreadable):
        if None in (record.size, record.mtime_ns, record.ino):
            problem = "no size, mtime_ns or ino to check the file against (a report from an older imgclean); scan again"
        elif sources is not None:
            problem = sources(record.path)
            problem = f"refused: {problem}" if problem else ""
    return ReportRow(row.line, None, row.root, problem, record.path) if problem else row


def _apply_records(records: Iterable[ScanRecord], applier: Applier, summary: ApplySummary,
                   on_record: Callable[[ScanRecord], None] | None, should_stop: Callable[[], bool]) -> None:
    seen: set[str] = set()
    for record in records:
        if record.path in seen:
            summary.duplicates += 1
        else:
            seen.add(record.path)
            record.action, record.destination = "", None  # what this run does, not what an earlier one did
            applier(record)
            if on_record is not None:
                on_record(record)
        if should_stop():
            summary.interrupted = True
            return


def _read_again(report: ReportFile, checked: ReportCheck, summary: ApplySummary, recorded_root: str | None,
                keep_unreadable: bool, moving: bool) -> Iterator[ScanRecord]:
    """The records of a report too long to keep, read again; ends early, with summary.error,
    when the report is not the one checked (a changed stat before a move, a bad row, another
    count of rows or sha256 at the end)."""
    if not report.unchanged():
        return _changed(summary, report, "while it was checked")
    rows = 0
    try:
        for row in report.rows():
            rows += 1
            record = _row_problem(row, recorded_root, keep_unreadable, None).record
            if record is None or (moving and is_rejected(record, keep_unreadable) and not report.unchanged()):
                return _changed(summary, report, "while it was applied")
            yield record
    except ReportError as exc:
        summary.invalid += 1
        summary.error = f"{exc}; stopped after {summary.moved} move(s)"
        return
    if rows != checked.rows or not report.unchanged() or report.digest() != checked.digest:
        _changed(summary, report, "while it was applied")


def _changed(summary: ApplySummary, report: ReportFile, when: str) -> None:
    summary.invalid += 1
    summary.error = (f"{report.path} changed {when}; stopped after {summary.moved} move(s) "
                     f"({summary.would_move} planned); apply it again")


def stopped_or_refused(summary, checked, report_name) -> bool:
    """The whole-or-nothing rule, for scan and audit reports alike: True (and `summary` says why)
    when the check was interrupted, or found any bad row or could not read the report."""
    if checked.interrupted:
        summary.interrupted = True
        return True
    if checked.invalid or checked.error:
        summary.invalid, summary.refused = max(checked.invalid, 1), True
        summary.error = checked.error or (f"{checked.invalid} bad row(s) in {report_name}; nothing was applied "
                                          "(a report is applied only when every row is sound)")
        return True
    return False


def _excluded(quarantine) -> tuple[Path, ...]:
    return (quarantine.root,) if quarantine is not None else ()
