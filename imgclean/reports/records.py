"""Writing scan records: CSV or JSON lines, chosen by the file's extension. Makes no decisions.

A `.json` file is read as JSON lines (older scans wrote JSON lines there) but never
written: a report streams one record per line, which a `.json` file's readers would take for
one broken document. The writer asks for `.jsonl` instead.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from ..pipeline.scan import ScanRecord

FIELDS = ("path", "status", "predicted", "nearest", "score", "action", "destination", "message")
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}


def report_format(path: Path, write: bool = False) -> str:
    """'csv' or 'jsonl' from the extension; ValueError naming the accepted ones otherwise.

    write=True refuses `.json` (see the module docstring) with a message naming `.jsonl`.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if write and suffix == ".json":
        raise ValueError(
            f"report file {path}: a report is JSON lines (one record per line), not one JSON document; "
            f"name it {path.with_suffix('.jsonl').name} (or .csv)"
        )
    fmt = FORMATS.get(suffix)
    if fmt is None:
        raise ValueError(f"report file {path} must end in .csv or .jsonl (JSON lines)")
    return fmt


class RecordWriter:
    """Streams records to a report file as they come; a context manager."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.format = report_format(self.path, write=True)
        self._fh = None
        self._csv = None

    def __enter__(self) -> "RecordWriter":
        self._fh = open(self.path, "w", encoding="utf-8", newline="", errors="surrogateescape")
        if self.format == "csv":
            self._csv = csv.DictWriter(self._fh, fieldnames=FIELDS, extrasaction="ignore")
            self._csv.writeheader()
        return self

    def write(self, record: ScanRecord) -> None:
        row = {k: getattr(record, k) for k in FIELDS}
        try:
            if self.format == "csv":
                self._csv.writerow(row)
            else:
                # ensure_ascii keeps one record per line whatever the file name holds
                self._fh.write(json.dumps(row, ensure_ascii=True) + "\n")
        except OSError as e:  # e.g. a full disk: name the report, not just the errno
            raise OSError(e.errno, f"cannot write the report ({e.strerror})", os.fspath(self.path)) from None

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
