"""Inputs of `imgclean report`: a `scan --report` file (CSV / JSON lines) or a quarantine manifest."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator

from ...structured import CsvRows, StructuredInputError, json_lines
from .collector import DEFAULT_MAX_ROWS, ReviewCollector, ReviewInputError


def _check_fields(path: Path, fields: Iterable[str] | None) -> None:
    missing = {"path", "status"} - set(fields or ())
    if missing:
        raise ReviewInputError(
            f"{path} is not an imgclean scan report (no {', '.join(sorted(missing))} column); "
            "give a file written by `imgclean scan --report` or an imgclean-manifest.jsonl"
        )


def iter_report(path: Path) -> Iterator[dict]:
    """Stream the records of a `scan --report` file (.csv, or JSON lines), through the bounded
    readers (imgclean.structured): a line too long, too deep, not UTF-8 or with a NUL stops the
    page with one error naming the line."""
    from ..records import REPORT_LIMITS, report_format

    path = Path(path)
    try:
        fmt = report_format(path)
    except ValueError as exc:
        raise ReviewInputError(str(exc)) from None
    try:
        if fmt == "csv":
            with open(path, encoding="utf-8", newline="", errors="surrogateescape") as fh:
                rows = CsvRows(fh, path, REPORT_LIMITS)
                _check_fields(path, rows.fieldnames)
                for _, row in rows:
                    yield row
            return
        with open(path, "rb") as fh:
            for n, row in json_lines(fh, path, REPORT_LIMITS):
                if isinstance(row, StructuredInputError):
                    raise ReviewInputError(f"{row}; is this an imgclean report?")
                if not isinstance(row, dict):
                    raise ReviewInputError(f"{path} line {n} is not a JSON object; is this an imgclean report?")
                _check_fields(path, row.keys())
                yield row
    except StructuredInputError as exc:
        raise ReviewInputError(f"{exc}; is this an imgclean report?") from None


def _journal(path: Path):
    """The journal folded by the quarantine's own reader (quarantine.journal.fold), checking only
    each record's shape: the page shows a journal, it never acts on one. A manifest saved under
    another name is read the same way, without the checks that need its quarantine folder."""
    from ...quarantine.journal import MANIFEST_NAME, fold, iter_lines

    quarantine = path.parent if path.name == MANIFEST_NAME else None
    return fold(quarantine, iter_lines(path, follow_links=True), strict=False)


# How a move ended, as the page says it. "kept_both": recovery found the source edited after a
# crash and kept it beside the quarantined copy.
_ENDS = {
    "done": "moved", "kept_both": "kept both", "rolled_back": "rolled back",
    "started": "unfinished", "retarget": "unfinished",
}


def manifest_records(path: Path) -> tuple[list[dict], list[str]]:
    """Scan-record-shaped dicts for every move in a quarantine journal, and the scanned folders.

    `action` says where each file is now: "moved" (in the quarantine), "restored" (back at its
    source: the thumbnail comes from there), "discarded" (deleted from the quarantine by the
    reviewer), "restore unfinished" (a restore cut by a crash), or how the move ended
    ("kept both", "changed", "missing", "rolled back", "unfinished").
    """
    from ...quarantine.moves import MANIFEST_NAME

    path = Path(path)
    moves = _journal(path).moves()
    if not moves:
        raise ReviewInputError(f"{path} records no moves; is it an imgclean-manifest.jsonl?")
    quarantine = os.path.abspath(path.parent) if path.name == MANIFEST_NAME else None
    roots: list[str] = []
    out = []
    for m, restore in moves:
        details = m.get("details") if isinstance(m.get("details"), dict) else {}
        source, dest = str(m.get("source") or ""), m.get("destination")
        dest = dest if isinstance(dest, str) and dest else None
        scan_root = str(m.get("scan_root") or "")
        if scan_root and scan_root not in roots:
            roots.append(scan_root)
        shown = source
        if scan_root and source:
            try:
                shown = os.path.relpath(source, scan_root)
                if shown.startswith(".."):
                    shown = source
            except ValueError:
                shown = source
        # the latest restore of the move: done (the file is back at its source), unfinished (cut by
        # a crash), or another end (the file was found deleted from the quarantine, or stayed)
        action = "restored" if restore == "done" else _ENDS.get(m.get("state"), str(m.get("state") or ""))
        if restore in ("started", "retarget"):
            action = "restore unfinished"
        elif action == "moved" and dest is not None and not os.path.lexists(dest):
            action = "discarded"
        if action == "restore unfinished":
            location = source if source and os.path.lexists(source) else dest
        else:
            location = dest if action in ("moved", "kept both") else source if action in ("restored", "changed", "rolled back") else None
        out.append({
            "path": shown, "status": str(m.get("reason") or "ood"),
            "predicted": details.get("predicted"), "nearest": details.get("nearest"),
            "score": details.get("score"), "message": details.get("message") or m.get("message") or "",
            "action": action, "destination": dest, "location": location, "quarantine": quarantine,
        })  # fmt: skip
    return out, roots


def load_input(path: Path, root: Path | None = None, max_rows: int = DEFAULT_MAX_ROWS) -> tuple[ReviewCollector, dict]:
    """A collector filled from a `scan --report` file, a manifest, or a quarantine folder.

    Returns (collector, info) where info has "kind", "roots" and "path". Raises
    ReviewInputError with a message for the user for anything that is not one of those.
    """
    from ...quarantine.moves import MANIFEST_NAME

    path = Path(path)
    if path.is_dir():
        if not (path / MANIFEST_NAME).is_file():
            raise ReviewInputError(f"{path} is a folder without {MANIFEST_NAME}; give a report file or a quarantine folder")
        path = path / MANIFEST_NAME
    if not path.exists():
        raise ReviewInputError(f"{path} does not exist")
    if not path.is_file():
        raise ReviewInputError(f"{path} is not a regular file")
    try:
        if path.name == MANIFEST_NAME or _looks_like_journal(path):
            records, roots = manifest_records(path)
            collector = ReviewCollector(root=None, max_rows=max_rows)
            for rec in records:
                collector.add(rec)
            return collector, {"kind": "quarantine manifest", "roots": roots, "path": os.fsdecode(path)}
        collector = ReviewCollector(root=root, max_rows=max_rows)
        n = 0
        for n, rec in enumerate(iter_report(path), 1):
            try:
                collector.add(rec)
            except ReviewInputError as exc:
                raise ReviewInputError(f"{path} record {n}: {exc}") from None
        if n == 0 and not _has_header(path):
            raise ReviewInputError(f"{path} is empty; give a file written by `imgclean scan --report`")
        kind = "scan report (CSV)" if path.suffix.lower() == ".csv" else "scan report (JSON lines)"
        return collector, {"kind": kind, "roots": [os.fsdecode(root)] if root else [], "path": os.fsdecode(path)}
    except OSError as exc:
        raise ReviewInputError(f"cannot read {path}: {exc.strerror or exc}") from None


def _looks_like_journal(path: Path) -> bool:
    if path.suffix.lower() not in (".jsonl", ".json", ".ndjson"):
        return False
    with open(path, "rb") as fh:
        for _, rec in json_lines(fh, path):
            return isinstance(rec, dict) and "op" in rec and "state" in rec
    return False


def _has_header(path: Path) -> bool:
    with open(path, "rb") as fh:
        return bool(fh.read(1))
