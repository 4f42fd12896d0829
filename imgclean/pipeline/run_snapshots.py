"""Writing the scan cache's run snapshots (store/cache.py) as a scan's records come out.

A run of the walk (walk.walk_runs) answered file by file is snapshot once every record of it has
been yielded and applied, so the snapshot holds what the next walk of an unchanged folder will
see: a file moved to the quarantine has left the run.
"""
from __future__ import annotations

import os
from collections import deque

from .. import data
from ..reports.record_blocks import RecordBlock, csv_rows
from ..reports.records import CHANGED, STATUSES, ScanRecord

# Cached statuses a scan may reuse (a skipped or changed result is never reused).
CACHEABLE = frozenset(STATUSES) - {data.SKIPPED, CHANGED}
# The statuses a run snapshot may hold: a skipped file's record is its entry's skip reason.
SNAPSHOT_STATUSES = CACHEABLE | {data.SKIPPED}


class RunSnapshots:
    """Writes the cache snapshot of each walk run answered file by file (store/cache.py), from
    its records in walk order once each has been applied: a moved file leaves the run (the next
    walk will not see it); any outcome that is not cacheable (a skipped file's is: it follows
    from the entry alone), a move that failed or a file found changed keeps the run unstored."""

    def __init__(self, cache):
        self.cache = cache
        self.runs: deque = deque()  # [folder, ordinal, entries, outcomes or None when not storable, left]

    def expect(self, folder, ordinal: int, n: int) -> None:
        self.runs.append([folder, ordinal, [], [], n])

    def saw(self, entry: data.FileEntry, record: ScanRecord) -> None:
        """The next record of the oldest expected run."""
        run = self.runs[0]
        self._add(run, entry, record)
        if run[4] == 0:
            self.runs.popleft()
            self._store(run)

    def after_block(self, folder, ordinal: int, block: RecordBlock) -> None:
        """A block whose records were applied one by one: snapshot the run again if a file of it moved."""
        records = block.built_records()
        if records is None or not any(r.action == "moved" for r in records):
            return
        run = [folder, ordinal, [], [], len(records)]
        for entry, record in zip(block.entries, records, strict=True):
            self._add(run, entry, record)
        self._store(run)

    @staticmethod
    def _add(run: list, entry: data.FileEntry, record: ScanRecord) -> None:
        if run[3] is not None:
            status, action = record.status, record.action
            if action == "moved":
                pass
            elif (status in CACHEABLE if not entry[3] else status == data.SKIPPED) and action in ("", "would move"):
                run[2].append(entry)
                run[3].append((status, record.predicted, record.nearest, record.score, record.message))
            else:
                run[3] = None
        run[4] -= 1

    def _store(self, run: list) -> None:
        folder, ordinal, entries, outcomes, _ = run
        if outcomes is None or not entries:
            return
        rows = None
        if folder.__class__ is str:  # the report rows, formatted once for the rescans (RecordBlock.csv_text)
            rows = csv_rows(entries, outcomes, len(folder) if folder.endswith(os.sep) else len(folder) + 1)
        self.cache.put_run(folder, ordinal, entries, outcomes, rows)
