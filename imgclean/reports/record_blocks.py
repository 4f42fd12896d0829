"""A block of scan records known all at once (a scan cache's run snapshot, a batch just scored),
and the fast paths of the report formats (reports/formats.py): a block's CSV or JSON-lines rows
formatted in one piece, a single record's CSV line formatted directly. Each gives exactly the
text the format's own writer would write, or None when it cannot (then the writer writes it).
"""
from __future__ import annotations

import os
import re
from json.encoder import encode_basestring_ascii as _json_string
from operator import itemgetter

from .scan_record import OOD, UNDECODABLE, ScanRecord


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

    def plain_rows(self) -> tuple[str, str] | None:
        """(prefix, rows): the block's csv_rows from its names' start (a NUL after each row) and
        the folder, relative to the root, that goes before each; None when the block cannot be
        formatted whole (no cut, or records given out, which may have been changed since)."""
        cut = getattr(self.rel, "cut", None)
        if not cut or self._records is not None:
            return None
        head = self.folder if self.folder.__class__ is not str or self.folder.endswith(os.sep) else self.folder + os.sep
        if self.rows is not None and head.__class__ is str and self.entries[0].fspath.startswith(head) and len(head) >= cut:
            return head[cut:], self.rows
        return "", csv_rows(self.entries, self.outcomes, cut)

    def csv_text(self, end: str) -> str | None:
        """Every record's CSV line (what RecordWriter.write writes, `end` being the root cell and
        the line's end), or None when some field would need quoting (then write them one by one)."""
        plain = self.plain_rows()
        if plain is None:
            return None
        prefix, rows = plain
        n = len(self.entries)
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


# ----------------------------------------------------------------------------- fast paths

_NEEDS_QUOTES = re.compile('["\r\n]').search  # (or a comma) what makes csv.writer quote a field (excel dialect)


class CsvText:
    """The CSV format's fast path (formats.CSV.fast): what csv.writer writes for a scan record
    (or a block's records) of a report whose `root` needs no quoting, formatted directly."""

    def __init__(self, root: str | None):
        plain = bool(root) and not _NEEDS_QUOTES(root) and "," not in root
        # What ends a row after its ino cell: the root's cell and the line's end for a block's rows
        # (RecordBlock.csv_text), the root's cell, an empty review cell and the line's end for one row.
        self._block_end = root + "\r\n" if plain else None
        self._line_end = root + ",\r\n" if plain else None

    def line(self, r: ScanRecord) -> str | None:
        """The record's line, when no field needs quoting and its review cell is empty (the line
        then holds exactly 12 commas and no quote, CR or LF before the root)."""
        if self._line_end is None or r.review or r.__class__ is not ScanRecord:
            return None
        line = (
            f"{r.path},{r.status},{'' if r.predicted is None else r.predicted},"
            f"{'' if r.nearest is None else r.nearest},{'' if r.score is None else r.score},{r.action},"
            f"{'' if r.destination is None else r.destination},{r.message},{'' if r.size is None else r.size},"
            f"{'' if r.mtime_ns is None else r.mtime_ns},{'' if r.dev is None else r.dev},"
            f"{'' if r.ino is None else r.ino},"
        )
        if line.count(",") != 12 or _NEEDS_QUOTES(line):
            return None
        return line + self._line_end

    def block(self, block: RecordBlock) -> str | None:
        if self._block_end is None:
            return None
        text = block.csv_text(self._block_end)
        # Each row's empty review cell. csv_text promised one CR and one LF a row, both in its
        # line end, so every "\r\n" in the text is a line end. (A block's records have no review:
        # a record given a review was built, and a built block never comes as text.)
        return None if text is None else text.replace("\r\n", ",\r\n")


# A JSON line as json.JSONEncoder(ensure_ascii=True) writes a report row (reports/formats.py):
# the text before each of csv_rows' cells it takes (action and destination, cells 5 and 6, are
# empty in a block: "" and null), then the root's and the review's.
_JSON_HEADS = ('{"path": "', '", "status": "', '", "predicted": "', '", "nearest": "', '", "score": ',
               ', "action": "", "destination": null, "message": "', '", "size": ', ', "mtime_ns": ',
               ', "dev": ', ', "ino": ')
_JSON_CELLS = (0, 1, 2, 3, 4, 7, 8, 9, 10, 11)
_JSON_WIDTH = 2 * len(_JSON_CELLS) + 1  # pieces a line: each head and its cell, then the tail
# An empty cell is None there: null. The cells that may be empty (by their index in the heads),
# and whether the heads quote them (then a column with an empty cell is quoted cell by cell).
_JSON_NULLABLE = ((2, True), (3, True), (4, False), (8, False), (9, False))
_PREDICTED, _NEAREST = itemgetter(1), itemgetter(2)


class JsonLinesText:
    """The JSON-lines format's fast path (formats.JSON_LINES.fast): a block's lines made from its
    CSV rows (stored with a run snapshot, or formatted once) without a record or a dict per file.

    JSON's ASCII escaping works character by character, so the whole block's rows are escaped
    in one call and cut at their commas (csv_rows' 12 a row: a block with a comma in a field is
    written row by row); the cells go between constant pieces with slice assignments. Cells
    csv_rows writes differently from JSON (a NaN or infinite score, an empty class name, a None
    it spells "None") send the block row by row."""

    def __init__(self, root: str | None):
        self._tail = f', "root": {"null" if root is None else _json_string(root)}, "review": ""}}\n'

    def line(self, record: ScanRecord) -> None:
        return None  # one record: the format's writer (json's C encoder)

    def block(self, block: RecordBlock) -> str | None:
        plain = block.plain_rows()
        if plain is None:
            return None
        prefix, rows = plain
        n, end = len(block.entries), 12 * len(block.entries)
        if rows.count("\0") != n:
            return None  # a NUL in a field
        cells = _json_string(rows.replace("\0", ""))[1:-1].split(",")
        if len(cells) != end + 1:
            return None  # a comma in a field
        columns = [cells[k:end:12] for k in range(12)]
        scores = columns[4]
        if ("nan" in scores or "inf" in scores or "-inf" in scores or columns[5].count("") != n
                or columns[6].count("") != n or "None" in columns[7] or "None" in columns[8] or "None" in columns[9]):
            return None
        if ("" in columns[2] and "" in map(_PREDICTED, block.outcomes)) or ("" in columns[3] and "" in map(_NEAREST, block.outcomes)):
            return None  # an empty class name: its empty cell would read as None
        heads = [_JSON_HEADS[0] + _json_string(prefix)[1:-1], *_JSON_HEADS[1:]]
        picked = [columns[cell] for cell in _JSON_CELLS]
        for k, quoted in _JSON_NULLABLE:
            if "" in picked[k]:
                if quoted:  # the quotes go with the cells: "name", or null
                    heads[k], heads[k + 1] = heads[k][:-1], heads[k + 1][1:]
                    picked[k] = ['"' + c + '"' if c else "null" for c in picked[k]]
                else:
                    picked[k] = [c or "null" for c in picked[k]]
        out: list = [None] * (_JSON_WIDTH * n)
        for k, head in enumerate(heads):
            out[2 * k::_JSON_WIDTH] = [head] * n
            out[2 * k + 1::_JSON_WIDTH] = picked[k]
        out[_JSON_WIDTH - 1::_JSON_WIDTH] = [self._tail] * n
        return "".join(out)


_TSV_ESCAPED = re.compile("[\t\n\r\\\\]").search  # (or a NUL) what the TSV writer escapes in a cell


class TsvText:
    """The TSV format's fast path (formats.TSV.fast): a block's CSV rows with their commas made
    tabs, when no cell holds what TSV escapes (a tab, a line break, a backslash, a NUL) and the
    rows hold no None (csv_rows spells it "None", TSV as an empty cell)."""

    def __init__(self, root: str | None):
        root = "" if root is None else root
        # What ends a row after its ino cell's tab: the root's cell, an empty review cell, the line's end.
        self._end = None if _TSV_ESCAPED(root) or "\0" in root else root + "\t\n"

    def line(self, record: ScanRecord) -> None:
        return None  # one record: the format's writer

    def block(self, block: RecordBlock) -> str | None:
        plain = None if self._end is None else block.plain_rows()
        if plain is None:
            return None
        prefix, rows = plain
        n = len(block.entries)
        if (rows.count("\0") != n or rows.count(",") != 12 * n or _TSV_ESCAPED(rows) or _TSV_ESCAPED(prefix)
                or "\0" in prefix or ",None," in rows):
            return None
        text = prefix + rows.replace(",", "\t").replace("\0", self._end + prefix)
        return text[: -len(prefix)] if prefix else text
