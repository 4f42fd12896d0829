"""The scan cache's run snapshots (store/cache.py) in a scan: written as its records come out,
and read back file by file where a run changed.

A run of the walk (walk.walk_runs) answered file by file is snapshot once every record of it has
been yielded and applied, so the snapshot holds what the next walk of an unchanged folder will
see: a file moved to the quarantine has left the run. The files it scored are then cached by the
snapshot alone; a run that cannot be snapshot (a racy file, a transient failure, a failed move,
a scan stopped in the middle of it) stores them as per-file rows instead, except the racy and
transient ones (ScanCache.storable), which are decoded again by the next scan.

A run whose snapshot differs (a file added, removed, touched or replaced) is answered file by
file: first from the folder's stored snapshots (StoredRuns), then from the per-file rows; either
answers a file only for its path and its whole identity (walk.FileEntry.identity).
"""
from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass, field

from ... import data
from ...reports.record_blocks import RecordBlock, csv_rows
from ...reports.records import CHANGED, VERDICTS, ScanRecord

# Cached statuses a scan may reuse (a skipped or changed result is never reused; a person's
# decision, status accepted, is never a verdict: the record's verdict is stored instead).
CACHEABLE = frozenset(VERDICTS) - {data.SKIPPED, CHANGED}
# The statuses a run snapshot may hold: a skipped file's record is its entry's skip reason.
SNAPSHOT_STATUSES = CACHEABLE | {data.SKIPPED}


class RunSnapshots:
    """Writes the cache snapshot of each walk run answered file by file (store/cache.py), from
    its records in walk order once each has been applied: a moved file leaves the run (the next
    walk will not see it); any outcome that is not cacheable (a skipped file's is: it follows
    from the entry alone), a move that failed or a file found changed keeps the run unstored,
    and its files' results are then stored as per-file rows."""

    def __init__(self, cache):
        self.cache = cache
        self.runs: deque[CollectedRun] = deque()

    def expect(self, folder, ordinal: int, n: int, span: list | None = None, positions: list[int] | None = None) -> None:
        self.runs.append(CollectedRun(folder, ordinal, n, [], span, positions))

    def saw(self, entry: data.FileEntry, record: ScanRecord) -> None:
        """The next record of the oldest expected run, as applied."""
        run = self.runs[0]
        _add(run, entry, record)
        if run.to_come == 0:
            self.runs.popleft()
            self._store(run)

    def saw_block(self, block: RecordBlock) -> None:
        """The next records, a block: taken whole (nothing in it applied one by one), its entries
        and outcomes go to their runs as they are; else record by record."""
        records = block.built_records()
        if records is not None:
            for entry, record in zip(block.entries, records, strict=True):
                self.saw(entry, record)
            return
        entries, outcomes = block.entries, block.outcomes
        i, n = 0, len(entries)
        rows = block.rows.split("\0") if block.rows is not None else ()
        if len(rows) != n + 1:  # (csv_rows ends each row with a NUL)
            rows = None
        while i < n:
            run = self.runs[0]
            k = min(run.to_come, n - i)
            run.entries += entries[i : i + k]
            run.outcomes += outcomes[i : i + k]
            if run.rows is not None:
                if rows is not None:
                    run.rows += rows[i : i + k]
                else:
                    run.rows = None
            run.to_come -= k
            i += k
            if run.to_come == 0:
                self.runs.popleft()
                self._store(run)

    def close(self) -> None:
        """A scan ending before its runs did (stopped, interrupted, failed): what they found so
        far is kept as per-file rows."""
        while self.runs:
            run = self.runs.popleft()
            self.cache.put_many(*_reusable(run.entries, run.outcomes))

    def after_block(self, block: RecordBlock, folder, ordinal: int, span: list | None = None,
                    positions: list[int] | None = None) -> None:
        """A stored block whose records were applied one by one: snapshot the run again if a
        file of it moved."""
        records = block.built_records()
        if records is None or not any(r.action == "moved" for r in records):
            return
        run = CollectedRun(folder, ordinal, len(records), None, span, positions)
        for entry, record in zip(block.entries, records, strict=True):
            _add(run, entry, record)
        self._store(run)

    def _store(self, run: "CollectedRun") -> None:
        folder, entries, outcomes, rows = run.folder, run.entries, run.outcomes, run.rows
        if run.storable and not all(e.skip_reason for e in entries) and all(
            (o[0] == data.SKIPPED) if e.skip_reason else (o[0] in CACHEABLE) for e, o in zip(entries, outcomes)
        ):  # (a run of skipped entries only, a folder that could not be listed say, needs no snapshot)
            # The report rows, formatted once for the rescans (RecordBlock.csv_text): the scored
            # blocks' own when they came whole
            if folder.__class__ is not str:
                rows = None
            elif rows is not None and len(rows) == len(entries):
                rows = "\0".join(rows) + "\0"
            else:
                rows = csv_rows(entries, outcomes, len(folder) if folder.endswith(os.sep) else len(folder) + 1)
            if self.cache.put_run(folder, run.ordinal, entries, outcomes, rows, run.span, run.positions):
                return  # the snapshot answers for every file of the run
        self.cache.put_many(*_reusable(entries, outcomes))


@dataclass(slots=True)
class CollectedRun:
    """A walk run being collected for its snapshot: its folder and ordinal, how many records
    are still to come, their report rows (csv_rows, one string a file; None: formatted at the
    end), the listing stretch the walk's run covered (walk.Run.span, .positions), and so far its
    entries, their verdicts (status, predicted, nearest, score, message) and whether it may be
    stored at all."""

    folder: object
    ordinal: int
    to_come: int
    rows: list | None
    span: list | None
    positions: list | None
    entries: list = field(default_factory=list)
    outcomes: list = field(default_factory=list)
    storable: bool = True


def _add(run: CollectedRun, entry: data.FileEntry, record: ScanRecord) -> None:
    """One applied record into a run being collected: a moved file leaves it; any action but
    none or a dry run's makes the run unstorable (its other files still get per-file rows)."""
    action = record.action
    run.rows = None  # rows formatted at the end
    if action != "moved":
        run.entries.append(entry)
        status, message = record.verdict or (record.status, record.message)  # the scan's own, never a decision
        run.outcomes.append((status, record.predicted, record.nearest, record.score, message))
        if action and action != "would move":
            run.storable = False
    run.to_come -= 1


def _reusable(entries: list, outcomes: list) -> tuple[list, list]:
    """(entries, outcomes) of a run's files whose status may be reused: what goes to the cache's
    per-file rows (which then keep only the storable ones)."""
    kept = [(e, o) for e, o in zip(entries, outcomes, strict=True) if not e.skip_reason and o[0] in CACHEABLE]  # o[0]: status
    return [e for e, _ in kept], [o for _, o in kept]


class StoredRuns:
    """Per-file answers from a folder's run snapshots, for the files of a run whose own snapshot
    differs (a file added or removed shifts every later run of the folder).

    The walk gives a folder's files in name order, and its snapshots, by ordinal, hold them in
    the same order: one pass over the snapshots, one in memory at a time, finds each file that
    is still there. A file is answered when its path and identity (size, mtime_ns, dev, ino,
    ctime_ns) are the snapshot's (what the per-file rows promise) and its stored outcome may be
    reused; any other file is left to the per-file rows. Snapshots left out of order (a folder that shrank keeps its later ones)
    only cost hits, never give a wrong answer."""

    def __init__(self, cache):
        self.cache = cache
        self.folder = None
        self.ordinals: list[int] = []
        self.found: dict = {}  # path -> (identity, outcome) of the snapshot in memory
        self.last = None  # its last path

    def look_up(self, folder, entries: list) -> list[tuple | None]:
        """The stored outcome (status, predicted, nearest, score, message) of each entry, or None."""
        if folder != self.folder:
            self.folder, self.ordinals, self.found, self.last = folder, self.cache.run_ordinals(folder)[::-1], {}, None
        out: list[tuple | None] = []
        for e in entries:
            path = e.fspath
            while (self.last is None or path > self.last) and self.ordinals:
                self._load(self.ordinals.pop())
            hit = self.found.get(path)
            out.append(hit[1] if hit is not None and hit[0] == e.identity and not e.skip_reason else None)
        hits = len(out) - out.count(None)
        self.cache.hits += hits
        return out

    def _load(self, ordinal: int) -> None:
        stored = self.cache.load_run(self.folder, ordinal)
        if stored is None or not stored[0]:
            self.found, self.last = {}, None
            return
        entries, outcomes, _ = stored
        if entries[-1].fspath.__class__ is not self.folder.__class__:  # walked as bytes then, as str now (or back)
            self.found, self.last = {}, None
            return
        self.found = {e.fspath: (e.identity, o) for e, o in zip(entries, outcomes) if not e.skip_reason and o[0] in CACHEABLE}
        self.last = entries[-1].fspath
