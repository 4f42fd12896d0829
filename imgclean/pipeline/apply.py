"""Applying records: every rejected record becomes a move through the quarantine.

A scan scores files into records (pipeline/scan.py) and feeds each one to an :class:`Applier`;
`imgclean apply` feeds it the records of a saved report instead (:func:`run_apply`). Either way
the move re-checks the file against its record (size, mtime, device and inode) right before it
happens, so a file changed or replaced since it was scored stays in place ("changed"), and a
file that is gone is "missing". Only quarantine.moves touches files.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from .. import data
from ..errors import ImgcleanError
from ..reports.record_blocks import RecordBlock
from ..reports.records import CHANGED, OOD, STATUSES, UNDECODABLE, ReportRow, ScanRecord, is_rejected

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
    """A scan's summary for the records of a report, plus the rows that could not be used."""

    report: str = ""
    invalid: int = 0  # rows that are not sound records (reported, never acted on)
    duplicates: int = 0  # later records for a path already seen (ignored: a path moves at most once)

    def to_dict(self) -> dict:
        out = super().to_dict()
        out.update(invalid=self.invalid, duplicates=self.duplicates, report=self.report)
        return out


class Applier:
    """Turns records into moves through `quarantine` (moves.Quarantine; opened by the caller
    unless `dry_run`), counting them in `summary`. Called once per record; returns it with its
    `action` (and `destination`) set. `check_device` False checks the inode but not the device
    number (records made where the folder is mounted from another device, e.g. another machine).
    """

    def __init__(self, root: Path, quarantine, summary: ScanSummary, keep_unreadable: bool = False,
                 dry_run: bool = False, check_device: bool = True):
        self.root = Path(root)
        self.quarantine = quarantine
        self.summary = summary
        self.keep_unreadable = keep_unreadable
        self.dry_run = dry_run
        self.check_device = check_device

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


def run_apply(
    rows: Iterable[ReportRow],
    root: Path,
    summary: ApplySummary,
    quarantine=None,
    dry_run: bool = False,
    keep_unreadable: bool = False,
    recorded_root: str | None = None,
    on_record: Callable[[ScanRecord], None] | None = None,
    on_invalid: Callable[[ReportRow], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> ApplySummary:
    """Apply the rows of a report (reports.records.read_report) to the folder `root` (resolved).

    `recorded_root`: the folder the report names; rows naming another one are invalid. None
    (the caller gave the root, e.g. a folder mounted elsewhere) takes every row as relative to
    `root` and checks inodes without device numbers. A row that is not a sound record, or a
    rejected record without the identity to check the file against (a report from an older
    imgclean), is passed to `on_invalid` and counted, never acted on. A path moves at most once.
    """
    applier = Applier(root, quarantine, summary, keep_unreadable, dry_run, check_device=recorded_root is not None)
    seen: set[str] = set()
    started = time.perf_counter()
    for row in rows:
        record = row.record
        if record is not None and recorded_root is not None and row.root not in (None, recorded_root):
            row = ReportRow(row.line, None, row.root, f"recorded for another folder ({row.root}), not {recorded_root}", record.path)
        elif record is not None and is_rejected(record, keep_unreadable) and None in (record.size, record.mtime_ns, record.ino):
            row = ReportRow(row.line, None, row.root, "no size, mtime_ns or ino to check the file against "
                            "(a report from an older imgclean); scan again", record.path)
        if row.record is None:
            summary.invalid += 1
            if on_invalid is not None:
                on_invalid(row)
        elif record.path in seen:
            summary.duplicates += 1
        else:
            seen.add(record.path)
            record.action, record.destination = "", None  # what this run does, not what an earlier one did
            applier(record)
            if on_record is not None:
                on_record(record)
        if should_stop():
            summary.interrupted = True
            break
    summary.seconds = time.perf_counter() - started
    return summary
