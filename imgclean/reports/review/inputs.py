"""Inputs of `imgclean report`: a `scan --report` file (any format of reports/formats.py) or a
quarantine manifest."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from ...structured import json_lines
from ..formats import JSON_LINES, ReportError, format_for
from ..records import ReportRow
from .collector import DEFAULT_MAX_ROWS, ReviewCollector, ReviewInputError


def iter_report(path: Path) -> Iterator[ReportRow]:
    """Stream the records of a `scan --report` file (any format of the table) as ScanRecords, read
    and validated by the report reader (reports.records: the bounded readers of
    imgclean.structured, then each cell checked as `imgclean apply` checks it): a row that is not
    sound stops the page with one error naming its line, so the page never shows, or puts into
    a command, a path that was not checked. Yields each row (reports.records.ReportRow: its
    `record`, and the `root` it records)."""
    from ..records import AUDIT, ReportFile

    path = Path(path)
    try:
        format_for(path)
    except ReportError as exc:
        raise ReviewInputError(str(exc)) from None
    try:
        with ReportFile(path) as report:
            if report.kind() == AUDIT:
                raise ReviewInputError(f"{path} is an audit report; `imgclean audit --html PAGE` writes its page")
            for row in report.rows():
                if row.record is None:
                    raise ReviewInputError(f"{path} line {row.line}: {row.error}; is this an imgclean scan report?")
                yield row
    except ReportError as exc:
        raise ReviewInputError(f"{exc}; give a file written by `imgclean scan --report` or an "
                               "imgclean-manifest.jsonl") from None


def _journal(path: Path, strict: bool = False):
    """The journal folded by the quarantine's own reader (quarantine.journal.fold): checking only
    each record's shape (the page shows a journal, it never acts on one), or with `strict` as
    restore checks it (for the commands the page offers). A manifest saved under another name is
    read the same way, without the checks that need its quarantine folder."""
    from ...quarantine.journal import MANIFEST_NAME, fold, iter_lines

    quarantine = path.parent if path.name == MANIFEST_NAME else None
    return fold(quarantine, iter_lines(path, follow_links=True), strict=strict)


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
    # The moves restore would act on: the page offers commands for those only (a journal under
    # another name has no quarantine to restore from, so none).
    sound = set(_journal(path, strict=True).ops) if quarantine is not None else set()
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
            "root": scan_root or None, "checked": m.get("id") in sound,
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
        trusted = _trusted(path)
        n = 0
        for n, row in enumerate(iter_report(path), 1):
            if collector.command_root is None and row.root is not None and trusted:
                collector.command_root = row.root  # the folder the report records, when --root names none
            collector.add(row.record)
        if n == 0 and not _has_header(path):
            raise ReviewInputError(f"{path} is empty; give a file written by `imgclean scan --report`")
        kind = f"scan report ({format_for(path).label})"
        roots = [os.fsdecode(root)] if root else [collector.command_root] if collector.command_root else []
        return collector, {"kind": kind, "roots": roots, "path": os.fsdecode(path)}
    except OSError as exc:
        raise ReviewInputError(f"cannot read {path}: {exc.strerror or exc}") from None


def _trusted(path: Path) -> bool:
    """Whether a report may name the folder its commands act on (as `imgclean apply` decides:
    a file of the user running imgclean or of root, that no other user can write)."""
    import stat

    try:
        st = os.stat(path)
    except OSError:
        return False
    return st.st_uid in (os.geteuid(), 0) and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _looks_like_journal(path: Path) -> bool:
    """Whether `path` is a quarantine journal under another name (JSON lines whose first record
    is a journal's)."""
    try:
        if format_for(path) is not JSON_LINES:
            return False
    except ReportError:
        return False
    with open(path, "rb") as fh:
        for _, rec in json_lines(fh, path):
            return isinstance(rec, dict) and "op" in rec and "state" in rec
    return False


def _has_header(path: Path) -> bool:
    with open(path, "rb") as fh:
        return bool(fh.read(1))
