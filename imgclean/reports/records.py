"""Scan records and their files: the record type, CSV or JSON lines chosen by the file's
extension, a writer and a validating reader. Makes no decisions.

A record carries what applying it later needs (`imgclean apply`, pipeline/apply.py): the path
relative to the scanned folder, the folder itself (`root`, one per row so a report stays a
stream), and the identity the file had when it was scored (size, mtime_ns, dev, ino), so the
move re-checks it exactly as a scan does.

Names that are not UTF-8 round-trip: CSV is written and read with surrogateescape (the bytes go
into the file as they are), JSON lines write them as \\udcXX escapes (ensure_ascii).

A `.json` file is read as JSON lines (older scans wrote JSON lines there) but never
written: a report streams one record per line, which a `.json` file's readers would take for
one broken document. The writer asks for `.jsonl` instead.
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

from .. import data
from ..errors import ImgcleanError

OOD = "ood"
CHANGED = "changed"
# Statuses of files that could not be scored; moved too unless keep_unreadable.
UNDECODABLE = (data.UNREADABLE, data.TOO_LARGE, data.UNSUPPORTED)
STATUSES = (data.OK, OOD, *UNDECODABLE, data.SKIPPED, CHANGED)


@dataclass
class ScanRecord:
    """One file's outcome. `score`: higher = more out-of-distribution, > 1 = rejected.

    size, mtime_ns, dev and ino: the file as it was when scored (0/None when not known, e.g. a
    skipped file); a move re-checks them and leaves a file that differs in place."""

    path: str  # relative to the scanned folder
    status: str
    predicted: str | None = None
    nearest: str | None = None
    score: float | None = None
    message: str = ""
    action: str = ""  # "", "moved", "would move", "kept", "changed", "missing", "move failed"
    destination: str | None = None
    size: int | None = 0  # None: not recorded (a report written by an older imgclean)
    mtime_ns: int | None = 0
    dev: int | None = None
    ino: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def is_rejected(record: ScanRecord, keep_unreadable: bool) -> bool:
    if record.status == OOD:
        return True
    return record.status in UNDECODABLE and not keep_unreadable


# The first eight columns are those of older reports, in their order; the rest were added for
# `imgclean apply`. Readers find columns by name.
FIELDS = ("path", "status", "predicted", "nearest", "score", "action", "destination", "message",
          "size", "mtime_ns", "dev", "ino", "root")
_RECORD_FIELDS = tuple(f for f in FIELDS if f != "root")  # root is the last column; the writer adds it
_json_encode = json.JSONEncoder(ensure_ascii=True).encode
_BUFFER = 2**20
_NEEDS_QUOTES = re.compile('["\r\n]').search  # (or a comma) what makes csv.writer quote a field (excel dialect)
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}


class ReportError(ImgcleanError, ValueError):
    """A report file cannot be read as one (missing, not CSV/JSON lines, no path/status columns)."""


def report_format(path: Path, write: bool = False) -> str:
    """'csv' or 'jsonl' from the extension; ValueError naming the accepted ones otherwise.

    write=True refuses `.json` (see the module docstring) with a message naming `.jsonl`.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if write and suffix == ".json":
        raise ReportError(
            f"report file {path}: a report is JSON lines (one record per line), not one JSON document; "
            f"name it {path.with_suffix('.jsonl').name} (or .csv)"
        )
    fmt = FORMATS.get(suffix)
    if fmt is None:
        raise ReportError(f"report file {path} must end in .csv or .jsonl (JSON lines)")
    return fmt


class RecordWriter:
    """Streams records to a report file as they come; a context manager. `root`: the scanned
    folder the records' paths are relative to (written in every row)."""

    def __init__(self, path: Path, root: str | os.PathLike | None = None):
        self.path = Path(path)
        self.root = os.fsdecode(root) if root is not None else None
        self.format = report_format(self.path, write=True)
        self._fh = None
        self._csv = None

    def __enter__(self) -> "RecordWriter":
        # A large buffer: rows go to the disk in 1 MB writes, not one system call per 8 KB.
        self._fh = open(self.path, "w", encoding="utf-8", newline="", errors="surrogateescape", buffering=_BUFFER)
        if self.format == "csv":
            self._csv = csv.writer(self._fh)  # what csv.DictWriter writes, without a dict per row
            self._csv.writerow(FIELDS)
            root = "" if self.root is None else self.root
            # The root's cell and the line's end, when the root needs no quoting (else csv.writer writes every row).
            self._csv_end = None if _NEEDS_QUOTES(root) or "," in root or not root else root + "\r\n"
        return self

    def write(self, record: ScanRecord) -> None:
        d = record.__dict__
        try:
            if self.format == "csv":
                # What csv.writer writes, formatted here when no field needs quoting (the line then
                # holds exactly 12 commas and no quote, CR or LF before the root); else csv.writer.
                r, end = record, self._csv_end
                line = (
                    f"{r.path},{r.status},{'' if r.predicted is None else r.predicted},"
                    f"{'' if r.nearest is None else r.nearest},{'' if r.score is None else r.score},{r.action},"
                    f"{'' if r.destination is None else r.destination},{r.message},{'' if r.size is None else r.size},"
                    f"{'' if r.mtime_ns is None else r.mtime_ns},{'' if r.dev is None else r.dev},"
                    f"{'' if r.ino is None else r.ino},"
                )
                if end is None or line.count(",") != 12 or _NEEDS_QUOTES(line) or r.__class__ is not ScanRecord:
                    self._csv.writerow([d[k] for k in _RECORD_FIELDS] + [self.root])
                else:
                    self._fh.write(line + end)
            else:
                row = {k: d[k] for k in _RECORD_FIELDS}
                row["root"] = self.root
                # ensure_ascii keeps one record per line whatever the file name holds
                self._fh.write(_json_encode(row) + "\n")
        except OSError as e:  # e.g. a full disk: name the report, not just the errno
            raise OSError(e.errno, f"cannot write the report ({e.strerror})", os.fspath(self.path)) from None

    def write_block(self, block) -> None:
        """write() for each record of a block (record_blocks.RecordBlock), as one write when the
        rows need no quoting."""
        text = block.csv_text(self._csv_end) if self.format == "csv" and self._csv_end is not None else None
        if text is None:
            self.write_many(block.records())
            return
        try:
            self._fh.write(text)
        except OSError as e:
            raise OSError(e.errno, f"cannot write the report ({e.strerror})", os.fspath(self.path)) from None

    def write_many(self, records) -> None:
        """write() for each record, in order (one sink call for a batch)."""
        for record in records:
            self.write(record)

    __call__ = write  # a record sink

    def __exit__(self, *exc) -> None:
        if self._fh is not None:
            fh, self._fh = self._fh, None
            try:
                fh.flush()
                os.fsync(fh.fileno())
            except OSError as e:
                raise OSError(e.errno, f"cannot write the report ({e.strerror})", os.fspath(self.path)) from None
            finally:
                try:
                    fh.close()
                except OSError:
                    pass


# ----------------------------------------------------------------------------- reading


@dataclass
class ReportRow:
    """One row of a report: a valid `record` and its `root`, or an `error` saying what is wrong
    (then `record` is None and `path` is the row's path as written, when there is one)."""

    line: int  # line number in the file (CSV: of the row's first line)
    record: ScanRecord | None
    root: str | None = None
    error: str = ""
    path: str = ""


class _Bad(ValueError):
    pass


def _count(value: Any, key: str) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    if type(value) is int and value >= 0:
        return value
    raise _Bad(f"{key} {value!r} is not a non-negative integer")


def _text(value: Any, key: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _Bad(f"{key} {value!r} is not a string")
    return value


def check_relative(path: Any) -> str:
    """A record's path: relative, normalised, no `..`, no NUL; else _Bad saying which."""
    if not isinstance(path, str) or not path:
        raise _Bad("the path is missing")
    if "\x00" in path:
        raise _Bad("the path holds a NUL character")
    if os.path.isabs(path):
        raise _Bad(f"the path {path!r} is absolute; a report's paths are relative to its root")
    if ".." in path.split(os.sep):
        raise _Bad(f"the path {path!r} climbs out of the root with '..'")
    if os.path.normpath(path) != path:
        raise _Bad(f"the path {path!r} is not normalised")
    return path


def parse_row(row: Any) -> tuple[ScanRecord, str | None]:
    """(record, root) from one row (a CSV dict of strings or a JSON object); _Bad if not valid."""
    if not isinstance(row, dict):
        raise _Bad("not a JSON object")
    path = check_relative(row.get("path"))
    status = row.get("status")
    if status not in STATUSES:
        raise _Bad(f"unknown status {status!r} (expected one of {', '.join(STATUSES)})")
    score = row.get("score")
    if score is None or score == "":
        score = None
    else:
        try:
            if isinstance(score, bool):
                raise ValueError
            score = float(score)
        except (TypeError, ValueError):
            raise _Bad(f"score {score!r} is not a number") from None
        if math.isnan(score):
            score = None
    root = _text(row.get("root"), "root")
    if root is not None and ("\x00" in root or not os.path.isabs(root)):
        raise _Bad(f"root {root!r} is not an absolute path")
    counts = {k: _count(row.get(k), k) for k in ("size", "mtime_ns", "dev", "ino")}
    record = ScanRecord(
        path=path, status=status, predicted=_text(row.get("predicted"), "predicted"),
        nearest=_text(row.get("nearest"), "nearest"), score=score,
        message=_text(row.get("message"), "message") or "", action=_text(row.get("action"), "action") or "",
        destination=_text(row.get("destination"), "destination"),
        size=counts["size"], mtime_ns=counts["mtime_ns"], dev=counts["dev"], ino=counts["ino"],
    )
    return record, root


def _raw_rows(path: Path, fh) -> Iterator[tuple[int, Any]]:
    """(line, row dict or a ValueError) per row; ReportError when the file is not a report."""
    if report_format(path) == "csv":
        reader = csv.DictReader(fh)
        missing = {"path", "status"} - set(reader.fieldnames or ())
        if missing:
            raise ReportError(f"{path} is not an imgclean scan report (no {', '.join(sorted(missing))} column)")
        line = reader.line_num + 1
        for row in reader:
            yield line, row
            line = reader.line_num + 1
        return
    for n, text in enumerate(fh, 1):
        if not text.strip():
            continue
        try:
            yield n, json.loads(text)
        except ValueError as e:
            yield n, e


def read_report(path: Path) -> Iterator[ReportRow]:
    """Stream and validate the rows of a `scan --report` file (.csv, or JSON lines).

    A bad row (unknown status, bad numbers, a path that is absolute or climbs out with `..`, a
    line that is not JSON) becomes a ReportRow with an `error`; the others still come. Raises
    ReportError (one line) when the file cannot be read as a report at all.
    """
    path = Path(path)
    report_format(path)
    try:
        with open(path, encoding="utf-8", newline="", errors="surrogateescape") as fh:
            for n, row in _raw_rows(path, fh):
                shown = row.get("path") if isinstance(row, dict) and isinstance(row.get("path"), str) else ""
                if isinstance(row, ValueError):
                    yield ReportRow(n, None, error=f"not JSON ({row})")
                    continue
                try:
                    record, root = parse_row(row)
                except _Bad as e:
                    yield ReportRow(n, None, error=str(e), path=shown)
                    continue
                yield ReportRow(n, record, root)
    except csv.Error as exc:
        raise ReportError(f"{path} is not a readable CSV report ({exc})") from None
    except OSError as exc:
        raise ReportError(f"cannot read {path}: {exc.strerror or exc}") from None


def report_root(path: Path) -> str | None:
    """The scanned folder recorded in a report (its first valid row that names one), or None."""
    for row in read_report(path):
        if row.record is not None and row.root is not None:
            return row.root
    return None
