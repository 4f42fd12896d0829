"""Applying records: every rejected record becomes a move through the quarantine.

A scan scores files into records (pipeline/scan/scanner.py) and feeds each one to an :class:`Applier`;
`imgclean apply` feeds it the records of a saved report instead (pipeline/apply/report.py).
Either way the move re-checks the file against its record (size, mtime, device and inode) right
before it happens, so a file changed or replaced since it was scored stays in place ("changed"),
and a file that is gone is "missing". Only quarantine.moves touches files.

A person's decision comes last, after the scan cache: a record the run would reject whose file
a person accepted (`imgclean restore`, `imgclean accept`; quarantine.decision_check) gets the
status `accepted` and stays where it is, in every run (scan or apply, moving or not, dry or
not), whatever model or quarantine the run uses, as long as the file's content is the one
accepted. The scan's verdict is kept beside it (ScanRecord.verdict) for the cache.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ... import data
from ...errors import ImgcleanError
from ...reports.record_blocks import RecordBlock
from ...reports.records import (
    ACCEPTED, CHANGED, OOD, STATUSES, UNDECODABLE, ScanRecord, is_rejected, mark_accepted,
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
    review_sample: int = 0  # accepted files chosen for review after the scan (pipeline/scan/sample_pass.py)
    decoded: int = 0  # files decoded and scored by the model
    unlisted: int = 0  # folders inside the scan that could not be listed (skipped records; their files unscanned)

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
            "unlisted": self.unlisted,
            "changed": c[CHANGED],
            "accepted": c[ACCEPTED],
            "rejected": self.rejected,
            "moved": self.moved,
            "would_move": self.would_move,
            "review_sample": self.review_sample,
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

    A record it would reject whose file a person accepted becomes `accepted` (module docstring),
    with or without a quarantine: the decisions of `root`'s tree are read once per Applier, at
    the first record that needs them.
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
        self._accepted = None  # quarantine.decision_check.AcceptedFiles, made at first use
        self._found: dict[tuple, object] = {}  # acceptances take_block found, for __call__ (not asked twice)

    @property
    def accepted_files(self):
        """The run's AcceptedFiles (made at the first record that needs it)."""
        if self._accepted is None:
            from ...quarantine.decision_check import AcceptedFiles

            self._accepted = AcceptedFiles(self.root)
        return self._accepted

    def acceptance(self, record: ScanRecord):
        """The acceptance in force for the file the record describes (decision_check.Acceptance), or None."""
        key = (record.path, record.size, record.mtime_ns, record.dev, record.ino)
        found = self._found.pop(key, None)
        if found is not None:
            return found
        if record.size is None or record.mtime_ns is None:
            return None  # (an older report's row: nothing to check the file against)
        dev = record.dev if self.check_device else None
        return self.accepted_files.accepted(record.path, record.size, record.mtime_ns, dev, record.ino)

    def request(self, record: ScanRecord):
        from ...quarantine.moves import MoveRequest

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
        """Count a block's records at once when none of them is to be moved or accepted (no
        reject in it; or no quarantine and no reject in it that a person accepted) and say so;
        False (nothing counted): apply its records one by one. A block the cache answered is
        checked the same way: a decision is never part of a cached verdict."""
        rejected = block.rejected(self.keep_unreadable)
        if rejected and (self.quarantine is not None or self._accepted_in(block)):
            return False
        total = self.summary.counts
        for status, n in block.status_counts().items():
            total[status] += n
        return True

    def _accepted_in(self, block: RecordBlock) -> bool:
        """Whether a person accepted a file of the block that the run would reject (its
        acceptance is kept for __call__). Files are hashed only where an acceptance of a
        picture of their size applies (decision_check.AcceptedFiles)."""
        keep, rel, files = self.keep_unreadable, block.rel, self.accepted_files
        found = False
        for e, o in zip(block.entries, block.outcomes, strict=True):
            if o[0] == OOD or (not keep and o[0] in UNDECODABLE):
                path = rel(e[0])
                acceptance = files.accepted(path, e[1], e[2], e[4] if self.check_device else None, e[5])
                if acceptance is not None:
                    self._found[(path, e[1], e[2], e[4], e[5])] = acceptance
                    found = True
        return found

    def __call__(self, record: ScanRecord) -> ScanRecord:
        summary = self.summary
        summary.counts[record.status] += 1
        if not is_rejected(record, self.keep_unreadable):
            return record
        acceptance = self.acceptance(record)
        if acceptance is not None:
            summary.counts[record.status] -= 1
            summary.counts[ACCEPTED] += 1
            mark_accepted(record, acceptance.message)
            return record
        if self.quarantine is None:
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
