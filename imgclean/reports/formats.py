"""The one table of record-file formats: scan reports and audit reports are written and read
through an entry of FORMATS, chosen by the file's extension (:func:`format_for`). An extension
no entry names is one ReportError, never a guess.

An entry gives:
- `extensions` it is written and read under (the first is the one messages suggest), and
  `read_only` ones it is read under but never written (with `never_written`: why);
- `writer(fh, fields)`: a row writer on a text file (`WRITE_OPTIONS`); it writes any header at
  once, then `row(dict)` one row (None: an empty cell; a header format writes `fields` in order);
- `reader(fh, where, limits)`: the rows of a file opened by :meth:`RecordFormat.open_rows`
  (binary, or text whose lines end at `line_end`: open()'s newline),
  bounded as imgclean.structured bounds every input: `fieldnames` (the header, or None when each
  row names its own fields) and (line, dict) per row, or (line, StructuredInputError) for a bad
  row the reader can go on after; a StructuredInputError raised means the rest is unreadable.
  Header formats give every cell as a string (the cells are checked by reports/cells.py, which
  takes strings and JSON values alike);
- `fast`: optionally, `fast(root)` for scan records: `line(record)` and `block(RecordBlock)`
  give the text `writer` would write for them, formatted directly, or None (then `writer`).

Names that are not UTF-8 round-trip in every format: text formats write the bytes as they are
(surrogateescape) and read them back the same way; JSON lines write them as \\udcXX escapes.

A `.json` file is read as JSON lines (older scans wrote JSON lines there) but never written: a
report streams one record per line, which a `.json` file's readers would take for one broken
document.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Sequence

from ..errors import ImgcleanError

# How every report file is opened for writing (report_files.open_report): text, UTF-8, the bytes
# of names that are not UTF-8 as they are, no newline translation.
WRITE_OPTIONS = {"encoding": "utf-8", "newline": "", "errors": "surrogateescape"}
BUFFER = 2**20  # reports are read and written in 1 MB pieces


class ReportError(ImgcleanError, ValueError):
    """A report file cannot be read or written as one (an unknown extension, not a report of
    the format its name says, no path/status columns, unreadable)."""


class RecordFormat:
    """One record-file format (see the module docstring). A plain class: the CLI reads the table
    for its help at start-up, where a dataclass's creation would cost more than the rest."""

    __slots__ = ("name", "label", "extensions", "binary", "writer", "reader", "read_only", "never_written", "fast",
                 "line_end")

    def __init__(self, name: str, label: str, extensions: tuple[str, ...], *, binary: bool,
                 writer: Callable[[IO[str], Sequence[str]], Any], reader: Callable[[IO, object, Any], Any],
                 read_only: tuple[str, ...] = (), never_written: str = "", fast: Callable[[str | None], Any] | None = None,
                 line_end: str = ""):
        self.name, self.label, self.extensions, self.binary = name, label, extensions, binary
        self.writer, self.reader, self.fast = writer, reader, fast
        self.read_only, self.never_written = read_only, never_written
        self.line_end = line_end  # what ends a line for a text reader: open()'s newline ("": any of \n, \r, \r\n)

    def __repr__(self) -> str:
        return f"RecordFormat({self.name!r})"

    def open_rows(self, fd: int) -> IO:
        """The file object to give `reader`, on the descriptor `fd` (which it then owns)."""
        if self.binary:
            return open(fd, "rb", buffering=BUFFER)
        return open(fd, buffering=BUFFER, **{**WRITE_OPTIONS, "newline": self.line_end})


# ----------------------------------------------------------------------------- CSV


class _CsvWriter:
    def __init__(self, fh: IO[str], fields: Sequence[str]):
        import csv

        self._writerow = csv.writer(fh).writerow  # the excel dialect: what csv.DictWriter writes
        self._fields = tuple(fields)
        self._writerow(self._fields)

    def row(self, row: dict) -> None:
        self._writerow([row.get(k) for k in self._fields])


def _csv_reader(fh: IO[str], where: object, limits):
    from ..structured import CsvRows

    return CsvRows(fh, where, limits)


# ----------------------------------------------------------------------------- JSON lines

_json_encode = json.JSONEncoder(ensure_ascii=True).encode  # ensure_ascii: one record per line, whatever a name holds


class _JsonLinesWriter:
    def __init__(self, fh: IO[str], fields: Sequence[str]):
        self._write = fh.write

    def row(self, row: dict) -> None:
        self._write(_json_encode(row) + "\n")


class _JsonLinesRows:
    fieldnames = None  # each line names its own fields

    def __init__(self, fh: IO[bytes], where: object, limits):
        self._fh, self._where, self._limits = fh, where, limits

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        from ..structured import json_lines

        return json_lines(self._fh, self._where, self._limits)


# ----------------------------------------------------------------------------- TSV
# Tab-separated values: the column names on the first line, then one row a line ("\n"), cells
# between tabs. A cell's backslash, tab, line feed, carriage return and NUL are written as \\,
# \t, \n, \r and \0, so any file name stays one cell of one line; everything else is written as
# it is (a name that is not UTF-8 as its bytes). Read back: a backslash before anything else, a
# row with another number of cells than the header, a carriage return inside a line (lines end
# at "\n" only, after an optional "\r") make the row an error (the next rows are still read).

_TSV_ESCAPE = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\0": "\\0"})
_TSV_CHARS = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r", "0": "\0"}
_TSV_ESCAPED = re.compile(r"\\(.?)", re.DOTALL)


def _tsv_cell(value: Any) -> str:
    if value is None:
        return ""
    if value.__class__ is not str:  # numbers as Python writes them (a numpy float too: its float's repr)
        value = float.__repr__(value) if isinstance(value, float) else int.__repr__(value) if isinstance(value, int) else str(value)
    return value.translate(_TSV_ESCAPE)


def _tsv_char(match: re.Match) -> str:
    char = _TSV_CHARS.get(match.group(1))
    if char is None:
        raise ValueError(f"a backslash before {match.group(1)!r} (a cell may hold \\\\, \\t, \\n, \\r, \\0)")
    return char


def _tsv_cells(line: str) -> list[str]:
    """The cells of one line (read up to its "\n"), unescaped; ValueError saying what is wrong."""
    if line.endswith("\n"):
        line = line[:-2] if line.endswith("\r\n") else line[:-1]
    if "\r" in line:
        raise ValueError("a carriage return inside a line")
    return [_TSV_ESCAPED.sub(_tsv_char, cell) if "\\" in cell else cell for cell in line.split("\t")]


class _TsvWriter:
    def __init__(self, fh: IO[str], fields: Sequence[str]):
        self._write, self._fields = fh.write, tuple(fields)
        self._write("\t".join(map(_tsv_cell, self._fields)) + "\n")

    def row(self, row: dict) -> None:
        get = row.get
        self._write("\t".join([_tsv_cell(get(k)) for k in self._fields]) + "\n")


class _TsvRows:
    def __init__(self, fh: IO[str], where: object, limits):
        from ..structured import StructuredInputError, bounded_lines

        self._where, self._count = where, [0]
        self._lines = bounded_lines(fh, where, limits, self._count)
        header = next(self._lines, None)
        try:
            self.fieldnames = [] if header is None else _tsv_cells(header)
        except ValueError as exc:
            raise StructuredInputError(where, f"not a TSV header ({exc})", 1) from None

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        from ..structured import StructuredInputError

        names = self.fieldnames
        for line in self._lines:
            n = self._count[0]
            try:
                cells = _tsv_cells(line)
            except ValueError as exc:
                yield n, StructuredInputError(self._where, str(exc), n)
                continue
            if cells == [""]:
                continue  # a blank line
            if len(cells) != len(names):
                yield n, StructuredInputError(self._where, f"{len(cells)} cells where the header names {len(names)}", n)
            else:
                yield n, dict(zip(names, cells))


# ----------------------------------------------------------------------------- fast paths
# (imported when a report is written: the table itself is read by the CLI's help, at start-up)


def _csv_fast(root: str | None):
    from .record_blocks import CsvText

    return CsvText(root)


def _json_lines_fast(root: str | None):
    from .record_blocks import JsonLinesText

    return JsonLinesText(root)


def _tsv_fast(root: str | None):
    from .record_blocks import TsvText

    return TsvText(root)


# ----------------------------------------------------------------------------- the table

CSV = RecordFormat("csv", "CSV", (".csv",), binary=False, writer=_CsvWriter, reader=_csv_reader, fast=_csv_fast)
JSON_LINES = RecordFormat(
    "jsonl", "JSON lines", (".jsonl", ".ndjson"), binary=True, writer=_JsonLinesWriter, reader=_JsonLinesRows,
    read_only=(".json",), never_written="a report is JSON lines (one record per line), not one JSON document",
    fast=_json_lines_fast,
)
TSV = RecordFormat("tsv", "tab-separated values", (".tsv", ".tab"), binary=False, writer=_TsvWriter, reader=_TsvRows,
                   line_end="\n", fast=_tsv_fast)
FORMATS: tuple[RecordFormat, ...] = (CSV, JSON_LINES, TSV)


def extensions_text() -> str:
    """The extensions a report may be written under, for messages and help: '.csv, .jsonl ...'."""
    names = [f"{f.extensions[0]}" + ("" if f.label.lower() == f.extensions[0][1:] else f" ({f.label})") for f in FORMATS]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def format_for(path: str | os.PathLike, write: bool = False) -> RecordFormat:
    """The entry for `path`'s extension (case-insensitive); ReportError naming the extensions
    otherwise. `write`: refuse the extensions an entry only reads."""
    path = Path(path)
    suffix = path.suffix.lower()
    for fmt in FORMATS:
        if suffix in fmt.extensions:
            return fmt
        if suffix in fmt.read_only:
            if write:
                raise ReportError(f"report file {path}: {fmt.never_written}; name it "
                                  f"{path.with_suffix(fmt.extensions[0]).name} (or another of {extensions_text()})")
            return fmt
    raise ReportError(f"report file {path} must end in {extensions_text()}")
