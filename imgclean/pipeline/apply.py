"""Applying records: every rejected record becomes a move through the quarantine.

A scan scores files into records (pipeline/scan.py) and feeds each one to an :class:`Applier`;
`imgclean apply` feeds it the records of a saved report instead (:func:`run_apply`). Either way
the move re-checks the file against its record (size, mtime, device and inode) right before it
happens, so a file changed or replaced since it was scored stays in place ("changed"), and a
file that is gone is "missing". Only quarantine.moves touches files.

A report is applied whole or not at all: every row is read and checked before the first move
(what apply may move from which folder: apply_sources.py), and a report with a bad row moves
nothing, whatever the output options.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .. import data
from ..errors import ImgcleanError
from ..reports.record_blocks import RecordBlock
from ..reports.records import (
    CHANGED, OOD, STATUSES, UNDECODABLE, ReportError, ReportFile, ReportRow, ScanRecord, is_rejected,
)

# The fields of a record the journal keeps beside each move.
DETAILS = ("predicted", "nearest", "score", "message")


class QuarantinePlacementError(ImgcleanError, ValueError):
    """The quarantine folder is the scanned folder or contains it."""


def quarantine_exclusion(folder: Path, move_to: Path) -> tuple[Path, ...]:
    """What a scan of `folder` must not walk so that it never reads its own quarantine: the
    quarantine when it lies inside the folder, else nothing. A quarantine equal to or above the
    folder is refused (its moves would land inside the scanned tree)."""
    root = Path(os.path.realpath(folder))
    target = Path(os.path.realpath(move_to))
    if target == root or root.is_relative_to(target):
        raise QuarantinePlacementError(
            f"--move-to {os.fsdecode(move_to)} is the scanned folder or contains it; choose a folder outside {os.fsdecode(folder)}"
        )
    return (target,) if target.is_relative_to(root) else ()


@dataclass
class ScanSummary:
    root: str
    model: str
    counts: dict[str, int] = field(default_factory=lambda: {s: 0 for s in STATUSES})
    moved: int = 0
    would_move: int = 0
    move_errors: int = 0
    interrupted: bool = False
    seconds: float = 0.0
    cached: int = 0  # results reused from the scan cache (not decoded)
    decoded: int = 0  # files decoded and scored by the model

    @property
    def scanned(self) -> int:
        return sum(self.counts.values())

    @property
    def rejected(self) -> int:
        return self.counts[OOD] + sum(self.counts[s] for s in UNDECODABLE)

    def to_dict(self) -> dict:
        c = self.counts
        return {
            "scanned": self.scanned,
            "ok": c[data.OK],
            "ood": c[OOD],
            "unreadable": c[data.UNREADABLE],
            "too_large": c[data.TOO_LARGE],
            "unsupported": c[data.UNSUPPORTED],
            "skipped": c[data.SKIPPED],
            "changed": c[CHANGED],
            "rejected": self.rejected,
            "moved": self.moved,
            "would_move": self.would_move,
            "move_errors": self.move_errors,
            "interrupted": self.interrupted,
            "cached": self.cached,
            "decoded": self.decoded,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.scanned / self.seconds, 1) if self.seconds > 0 else None,
            "root": self.root,
            "model": self.model,
        }


@dataclass
class ApplySummary(ScanSummary):
    """A scan's summary for the records of a report, plus the rows that could not be used.

    `rows`: rows the check of the whole report read; `refused`: the report had a bad row, so
    nothing was applied (`invalid` counts them); `error`: why the apply refused or stopped."""

    report: str = ""
    invalid: int = 0  # rows that are not sound records (reported, never acted on)
    duplicates: int = 0  # later records for a path already seen (ignored: a path moves at most once)
    rows: int = 0
    refused: bool = False
    error: str = ""

    def to_dict(self) -> dict:
        out = super().to_dict()
        out.update(invalid=self.invalid, duplicates=self.duplicates, report=self.report, rows=self.rows,
                   refused=self.refused, error=self.error)
        return out


class Applier:
    """Turns records into moves through `quarantine` (moves.Quarantine; opened by the caller
    unless `dry_run`), counting them in `summary`. Called once per record; returns it with its
    `action` (and `destination`) set. `check_device` False checks the inode but not the device
    number (records made where the folder is mounted from another device, e.g. another machine).
    """

    def __init__(self, root: Path, quarantine, summary: ScanSummary, keep_unreadable: bool = False,
                 dry_run: bool = False, check_device: bool = True,
                 source_check: Callable[[str], str] | None = None):
        self.root = Path(root)
        self.quarantine = quarantine
        self.summary = summary
        self.keep_unreadable = keep_unreadable
        self.dry_run = dry_run
        self.check_device = check_device
        self.source_check = source_check  # records from a report: why a path may not move ('' if it may)

    def request(self, record: ScanRecord):
        from ..quarantine.moves import MoveRequest

        return MoveRequest(
            source=Path(os.path.join(self.root, record.path)),
            scan_root=self.root,
            reason=record.status,
            size=record.size,
            mtime_ns=record.mtime_ns,
            dev=record.dev if self.check_device else None,
            ino=record.ino,
            details={k: getattr(record, k) for k in DETAILS},
        )

    def take_block(self, block: RecordBlock) -> bool:
        """Count a block's records at once when none of them is to be moved (no quarantine, or
        no reject in it) and say so; False (nothing counted): apply its records one by one."""
        if self.quarantine is not None and block.rejected(self.keep_unreadable):
            return False
        total = self.summary.counts
        for status, n in block.status_counts().items():
            total[status] += n
        return True

    def __call__(self, record: ScanRecord) -> ScanRecord:
        summary = self.summary
        summary.counts[record.status] += 1
        if self.quarantine is None or not is_rejected(record, self.keep_unreadable):
            return record
        refused = self.source_check(record.path) if self.source_check is not None else ""
        if refused:  # checked right before the move: the folder changed since the report was checked
            record.action, record.message = "move failed", f"not moved: {refused}"
            summary.move_errors += 1
            return record
        request = self.request(record)
        if self.dry_run:
            record.action = "would move"
            record.destination = os.fsdecode(self.quarantine.plan_destination(request))
            summary.would_move += 1
            return record
        result = self.quarantine.move(request)
        if result.status == "moved":
            record.action = "moved"
            record.destination = os.fsdecode(result.destination)
            summary.moved += 1
        elif result.status in (CHANGED, "missing"):
            record.action = result.status
            record.message = result.message or "changed after it was scored; left in place"
            summary.counts[record.status] -= 1
            summary.counts[CHANGED] += 1
            record.status = CHANGED
        else:
            record.action = "move failed"
            record.message = result.message
            summary.move_errors += 1
        return record


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
    from .apply_sources import SourceCheck

    started = time.perf_counter()
    summary.rows = checked.rows
    try:
        if checked.interrupted:
            summary.interrupted = True
        elif checked.invalid or checked.error:
            summary.invalid, summary.refused = max(checked.invalid, 1), True
            summary.error = checked.error or (f"{checked.invalid} bad row(s) in {report.path}; nothing was applied "
                                              "(a report is applied only when every row is sound)")
        else:
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
    from .apply_sources import SourceCheck

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


def _excluded(quarantine) -> tuple[Path, ...]:
    return (quarantine.root,) if quarantine is not None else ()
