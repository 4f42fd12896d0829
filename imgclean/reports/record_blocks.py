"""A block of scan records known all at once (a scan cache's run snapshot, a batch just scored),
and the CSV rows such a block writes in one piece."""
from __future__ import annotations

import os

from .records import OOD, UNDECODABLE, ScanRecord


class RecordBlock:
    """The records of files known all at once (a scan cache's snapshot of an unchanged run of a
    folder, or a batch just scored): `entries` (walk.FileEntry tuples) and their `outcomes` (status, predicted,
    nearest, score, message), with `rel` naming a path relative to the scanned folder. Sinks that
    know blocks take one whole (RecordWriter.write_block); `records()` gives the ScanRecords,
    built once, to the others.

    `rows`, when given: csv_rows(entries, outcomes, start) with the names' start in the entries'
    paths (all in `folder`), kept with the snapshot so a rescan does not format them again.
    `stored`: the block is a run snapshot the cache answered whole (else a batch scored now)."""

    __slots__ = ("entries", "outcomes", "rel", "folder", "rows", "stored", "_records", "_counts")

    def __init__(self, entries: list, outcomes: list[tuple], rel, folder: str | bytes = "", rows: str | None = None,
                 stored: bool = False):
        self.entries = entries
        self.outcomes = outcomes
        self.rel = rel
        self.folder = folder
        self.rows = rows
        self.stored = stored
        self._records: list[ScanRecord] | None = None
        self._counts: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.entries)

    def records(self) -> list[ScanRecord]:
        if self._records is None:
            rel, cut, record = self.rel, getattr(self.rel, "cut", None), ScanRecord
            self._records = [
                record(e.fspath[cut:] if cut else rel(e.fspath), o[0], o[1], o[2], o[3], o[4], "", None, e.size, e.mtime_ns,
                       e.dev, e.ino)
                for e, o in zip(self.entries, self.outcomes, strict=True)
            ]
        return self._records

    def built_records(self) -> list[ScanRecord] | None:
        """The records given out by records() (perhaps applied since), or None if never asked for."""
        return self._records

    def status_counts(self) -> dict[str, int]:
        """How many records have each status."""
        if self._counts is None:
            counts: dict[str, int] = {}
            for o in self.outcomes:
                counts[o[0]] = counts.get(o[0], 0) + 1
            self._counts = counts
        return self._counts

    def rejected(self, keep_unreadable: bool) -> int:
        """How many of its records records.is_rejected counts as rejected."""
        counts = self.status_counts()
        return counts.get(OOD, 0) + (0 if keep_unreadable else sum(counts.get(s, 0) for s in UNDECODABLE))

    def csv_text(self, end: str) -> str | None:
        """Every record's CSV line (what RecordWriter.write writes, `end` being the root cell and
        the line's end), or None when some field would need quoting (then write them one by one)."""
        cut = getattr(self.rel, "cut", None)
        if not cut or self._records is not None:  # records given out may have been changed since
            return None
        n = len(self.entries)
        head = self.folder if self.folder.__class__ is not str or self.folder.endswith(os.sep) else self.folder + os.sep
        if self.rows is not None and head.__class__ is str and self.entries[0].fspath.startswith(head) and len(head) >= cut:
            prefix = head[cut:]  # the folder, relative to the root
            rows = self.rows
        else:
            prefix, rows = "", csv_rows(self.entries, self.outcomes, cut)
        if rows.count("\0") != n:
            return None
        text = prefix + rows.replace("\0", end + prefix)
        if prefix:
            text = text[: -len(prefix)]
        if text.count(",") != 12 * n or text.count("\n") != n or text.count("\r") != n or '"' in text:
            return None
        return text


def csv_rows(entries: list, outcomes: list[tuple], start: int) -> str:
    """The CSV lines of records made of (entry, outcome) pairs, as RecordWriter.write formats them
    when no field needs quoting, without the root cell and line end (a NUL instead, which no path
    holds), each path from its `start`."""
    return "".join([
        f"{e.fspath[start:]},{o[0]},{'' if o[1] is None else o[1]},{'' if o[2] is None else o[2]},"
        f"{'' if o[3] is None else o[3]},,,{o[4]},{e.size},{e.mtime_ns},{'' if e.dev is None else e.dev},"
        f"{'' if e.ino is None else e.ino},\0"
        for e, o in zip(entries, outcomes, strict=True)
    ])
