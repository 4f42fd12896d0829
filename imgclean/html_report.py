"""The review page: one self-contained HTML file showing what a scan rejected, and why.

Makes no decisions and never prints. Records stream into a :class:`ReviewCollector` (from a
running scan, a ``--report`` CSV / JSON-lines file, or a quarantine manifest); it keeps the
counts, every scored record's (nearest class, score) for the histograms, and only the top rows
of each rejection reason, so memory stays bounded on huge scans. :func:`render_html` turns it
into one HTML string: thumbnails are inlined as ``data:`` URIs, charts are inline SVG, there is
no JavaScript and nothing is fetched, so the file opens offline and can be mailed around.

Every string from a record (paths may hold quotes, ``<``, ``&``, newlines or undecodable bytes)
goes through :func:`text` before it reaches the page.
"""
from __future__ import annotations

import base64
import csv
import heapq
import html
import io
import json
import math
import os
import stat
import tempfile
import warnings
from array import array
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from . import __version__

# Sections of rejected files, in page order; "changed" files were rejected but left in place.
REASONS = ("ood", "unreadable", "too_large", "unsupported")
SECTIONS = (*REASONS, "changed")
SECTION_TITLES = {
    "ood": "Out of distribution",
    "unreadable": "Unreadable",
    "too_large": "Too large",
    "unsupported": "Unsupported format",
    "changed": "Changed before it could be moved (left in place)",
}
STATUS_ORDER = ("ok", *REASONS, "skipped", "changed")
REPORT_FIELDS = ("path", "status", "predicted", "nearest", "score", "action", "destination", "message")

DEFAULT_MAX_THUMBNAILS = 500
DEFAULT_MAX_ROWS = 5000  # per section; the rest are counted, and the --report file has them all
THUMB_SIZE = 96
PAGE_SIZE = 100  # rows per collapsible block
_MAX_PREVIEW_BYTES = 512 * 1024 * 1024


class ReviewInputError(ValueError):
    """An input file is missing, unreadable or not an imgclean report / manifest."""


# ----------------------------------------------------------------------------- text


def text(value: Any) -> str:
    """`value` as HTML-escaped text that is always valid UTF-8 and shows control characters.

    Undecodable bytes (surrogate escapes from os.fsdecode) show as \\xNN, lone surrogates as
    \\uXXXX, newlines/tabs/other control characters as \\n, \\t, \\xNN.
    """
    if value is None:
        return ""
    s = str(value)
    out = []
    for ch in s:
        o = ord(ch)
        if 0xDC80 <= o <= 0xDCFF:
            out.append(f"\\x{o - 0xDC00:02x}")
        elif 0xD800 <= o <= 0xDFFF:
            out.append(f"\\u{o:04x}")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif o < 0x20 or 0x7F <= o < 0xA0 or o in (0x2028, 0x2029):
            out.append(f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}")
        else:
            out.append(ch)
    return html.escape("".join(out), quote=True)


def _num(n: int) -> str:
    return f"{n:,}"


# ----------------------------------------------------------------------------- records


@dataclass
class ReviewItem:
    """One rejected file as the page shows it."""

    path: str  # as shown: relative to the scanned folder when known
    status: str
    predicted: str | None = None
    nearest: str | None = None
    score: float | None = None
    action: str = ""
    destination: str | None = None
    message: str = ""
    location: str | None = None  # where the file is now (for its thumbnail); None: unknown


def _get(record: Any, key: str, default: Any = None) -> Any:
    if isinstance(record, Mapping):
        return record.get(key, default)
    return getattr(record, key, default)


def _score(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ReviewInputError(f"score {value!r} is not a number") from None
    return None if math.isnan(f) else f


def _str_or_none(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


class ReviewCollector:
    """Collects what the review page needs from a stream of scan records, in bounded memory.

    `root`: the scanned folder, to find files that were not moved (their `path` is relative to
    it). Without it only moved files get thumbnails. Keeps, per section, the `max_rows` rows
    with the highest scores (ood) or the first ones (others); the rest are only counted.
    """

    def __init__(self, root: str | os.PathLike | None = None, max_rows: int = DEFAULT_MAX_ROWS):
        self.root = os.fspath(root) if root is not None else None
        self.max_rows = max(0, int(max_rows))
        self.counts: dict[str, int] = {}
        self.actions: dict[str, int] = {}
        self.class_scores: dict[str, array] = {}
        self.omitted: dict[str, int] = {s: 0 for s in SECTIONS}
        self._rows: dict[str, list] = {s: [] for s in SECTIONS}
        self._seq = 0

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def add(self, record: Any) -> None:
        """Take one record: a ScanRecord, or a mapping with the --report fields."""
        status = str(_get(record, "status") or "")
        if not status:
            raise ReviewInputError("a record has no status")
        score = _score(_get(record, "score"))
        nearest = _str_or_none(_get(record, "nearest"))
        action = str(_get(record, "action") or "")
        self.counts[status] = self.counts.get(status, 0) + 1
        if action:
            self.actions[action] = self.actions.get(action, 0) + 1
        if score is not None and nearest is not None:
            self.class_scores.setdefault(nearest, array("d")).append(score)
        if status not in SECTIONS:
            return
        path = str(_get(record, "path") or "")
        destination = _str_or_none(_get(record, "destination"))
        location = _get(record, "location")
        if location is None:
            if action == "moved" and destination and os.path.isabs(destination):
                location = destination
            elif self.root is not None and path:
                location = os.path.join(self.root, path)
            elif path and os.path.isabs(path):
                location = path
        item = ReviewItem(
            path=path, status=status, predicted=_str_or_none(_get(record, "predicted")), nearest=nearest,
            score=score, action=action, destination=destination,
            message=str(_get(record, "message") or ""), location=location,
        )
        self._keep(status, item)

    def _keep(self, section: str, item: ReviewItem) -> None:
        rows = self._rows[section]
        self._seq += 1
        if item.score is not None or section == "ood":
            # min-heap on (score, -seq): the lowest score (latest on ties) is the one to drop
            entry = (item.score if item.score is not None else -math.inf, -self._seq, item)
            if len(rows) < self.max_rows:
                heapq.heappush(rows, entry)
            elif self.max_rows and entry[:2] > rows[0][:2]:
                heapq.heapreplace(rows, entry)
                self.omitted[section] += 1
            else:
                self.omitted[section] += 1
        elif len(rows) < self.max_rows:
            rows.append((None, -self._seq, item))
        else:
            self.omitted[section] += 1

    def rows(self, section: str) -> list[ReviewItem]:
        """The kept rows of a section: highest score first, then in arrival order."""
        entries = self._rows[section]

        def key(e):
            return (0 if e[0] is not None else 1, -(e[0] if e[0] is not None else 0.0), -e[1])

        return [e[2] for e in sorted(entries, key=key)]

    def section_count(self, section: str) -> int:
        return self.counts.get(section, 0)


# ----------------------------------------------------------------------------- inputs


def _check_fields(path: Path, fields: Iterable[str] | None) -> None:
    missing = {"path", "status"} - set(fields or ())
    if missing:
        raise ReviewInputError(
            f"{path} is not an imgclean scan report (no {', '.join(sorted(missing))} column); "
            "give a file written by `imgclean scan --report` or an imgclean-manifest.jsonl"
        )


def iter_report(path: Path) -> Iterator[dict]:
    """Stream the records of a `scan --report` file (.csv, or JSON lines)."""
    from .report import report_format

    path = Path(path)
    try:
        fmt = report_format(path)
    except ValueError as exc:
        raise ReviewInputError(str(exc)) from None
    try:
        with open(path, encoding="utf-8", newline="", errors="surrogateescape") as fh:
            if fmt == "csv":
                reader = csv.DictReader(fh)
                _check_fields(path, reader.fieldnames)
                for row in reader:
                    yield row
                return
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    raise ReviewInputError(f"{path} line {n} is not JSON; is this an imgclean report?") from None
                if not isinstance(row, dict):
                    raise ReviewInputError(f"{path} line {n} is not a JSON object; is this an imgclean report?")
                _check_fields(path, row.keys())
                yield row
    except csv.Error as exc:
        raise ReviewInputError(f"{path} is not a readable CSV report ({exc})") from None


def _journal_records(path: Path) -> list[dict]:
    """The records of a quarantine journal; a torn (crash-cut) last line is skipped."""
    from .moves import MANIFEST_NAME, read_manifest

    if path.name == MANIFEST_NAME:
        return read_manifest(path.parent)
    lines = path.read_bytes().split(b"\n")
    records = []
    for i, line in enumerate(lines):
        if line.strip():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                records.append(rec)
    return records


def manifest_records(path: Path) -> tuple[list[dict], list[str]]:
    """Scan-record-shaped dicts for every move in a quarantine journal, and the scanned folders.

    `action` says where each file is now: "moved" (in the quarantine), "restored" (back at its
    path), or how the move ended ("changed", "missing", "rolled back", "unfinished").
    """
    path = Path(path)
    moves: dict[str, dict] = {}
    order: list[str] = []
    restore_of: dict[str, str] = {}
    for rec in _journal_records(path):
        op, rid, state = rec.get("op"), rec.get("id"), rec.get("state")
        if op == "move":
            if state == "started":
                moves[rid] = dict(rec)
                order.append(rid)
            elif rid in moves:
                moves[rid]["state"] = state
                if isinstance(rec.get("destination"), str):
                    moves[rid]["destination"] = rec["destination"]
        elif op == "restore":
            if state == "started":
                restore_of[rid] = rec.get("move_id")
            elif state == "done" and restore_of.get(rid) in moves:
                moves[restore_of[rid]]["restored"] = True
    if not moves:
        raise ReviewInputError(f"{path} records no moves; is it an imgclean-manifest.jsonl?")
    roots: list[str] = []
    out = []
    names = {"done": "moved", "rolled_back": "rolled back", "started": "unfinished", "retarget": "unfinished"}
    for rid in order:
        m = moves[rid]
        details = m.get("details") if isinstance(m.get("details"), dict) else {}
        source, dest = str(m.get("source") or ""), m.get("destination")
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
        action = "restored" if m.get("restored") else names.get(m.get("state"), str(m.get("state") or ""))
        location = dest if action == "moved" else source if action in ("restored", "changed", "rolled back") else None
        out.append({
            "path": shown, "status": str(m.get("reason") or "ood"),
            "predicted": details.get("predicted"), "nearest": details.get("nearest"),
            "score": details.get("score"), "message": details.get("message") or m.get("message") or "",
            "action": action, "destination": dest if isinstance(dest, str) else None, "location": location,
        })
    return out, roots


def load_input(path: Path, root: Path | None = None, max_rows: int = DEFAULT_MAX_ROWS) -> tuple[ReviewCollector, dict]:
    """A collector filled from a `scan --report` file, a manifest, or a quarantine folder.

    Returns (collector, info) where info has "kind" and "roots". Raises ReviewInputError with a
    message for the user for anything that is not one of those.
    """
    from .moves import MANIFEST_NAME

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
        is_manifest = path.name == MANIFEST_NAME or _looks_like_journal(path)
        if is_manifest:
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
        for line in fh:
            if line.strip():
                try:
                    rec = json.loads(line)
                except ValueError:
                    return False
                return isinstance(rec, dict) and "op" in rec and "state" in rec
    return False


def _has_header(path: Path) -> bool:
    with open(path, "rb") as fh:
        return bool(fh.read(1))


# ----------------------------------------------------------------------------- thumbnails


def thumbnail_data_uri(path: str | os.PathLike, size: int = THUMB_SIZE) -> tuple[str | None, str]:
    """(data: URI of a small PNG/JPEG thumbnail, "") or (None, why there is none).

    Opens only regular files (no symlinks, FIFOs or devices), with the same format allow-list
    and pixel limit as scanning, and never raises for a bad file.
    """
    from PIL import Image, ImageOps

    from . import data

    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None, "file not found"
    except OSError as exc:
        return None, f"cannot open ({exc.strerror or exc})"
    try:
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                return None, "not a regular file"
            if st.st_size > _MAX_PREVIEW_BYTES:
                return None, "file too large to preview"
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(fh, formats=data.ALLOWED_FORMATS)
                w, h = img.size
                if w * h > data.MAX_PIXELS:
                    return None, "too large to preview"
                if img.format == "JPEG":
                    img.draft("RGB", (size, size))
                img.load()
                img = ImageOps.exif_transpose(img)
                gray = img.mode in ("1", "L", "LA", "La", "I", "F") or img.mode.startswith("I;16")
                img = data._to_mode(img, 1 if gray else 3)
                small = max(img.size) <= size
                if not small:
                    img.thumbnail((size, size), Image.BILINEAR)
                buf = io.BytesIO()
                if small:
                    img.save(buf, format="PNG", optimize=True)
                    mime = "image/png"
                else:
                    img.save(buf, format="JPEG", quality=82)
                    mime = "image/jpeg"
    except Exception as exc:  # a broken file gets a placeholder, never a crash
        return None, f"no preview ({type(exc).__name__})"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}", ""


# ----------------------------------------------------------------------------- histograms


def _bin_width(xmax: float) -> float:
    for w in (0.05, 0.1, 0.2, 0.25, 0.5, 1.0):
        if xmax / w <= 40:
            return w
    return 1.0


def histogram_svg(scores: Iterable[float], label: str, width: int = 300, height: int = 150) -> tuple[str, str]:
    """(inline SVG histogram of scores with the threshold (score = 1) marked, a caption)."""
    values = sorted(s for s in scores if not math.isnan(s))
    n = len(values)
    over = sum(1 for s in values if s > 1.0)
    finite = [s for s in values if math.isfinite(s)]
    if finite:
        p99 = finite[min(len(finite) - 1, int(0.99 * len(finite)))]
        xmax = min(40.0, max(2.0, math.ceil(p99 * 2) / 2))
    else:
        xmax = 2.0
    w = _bin_width(xmax)
    nbins = int(round(xmax / w))
    counts = [0] * (nbins + 1)  # last: overflow (>= xmax)
    for s in values:
        i = int(s // w) if s < xmax else nbins
        counts[max(0, min(i, nbins))] += 1
    left, right, top, bottom = 34, 10, 8, 26
    pw, ph = width - left - right, height - top - bottom
    slots = nbins + 1
    bw = pw / slots
    cmax = max(counts) or 1
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="hist" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="score histogram of {text(label)}">',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="plot"/>',
        f'<rect x="{left + nbins * bw:.1f}" y="{top}" width="{bw:.1f}" height="{ph}" class="ovf">'
        f'<title>scores of {xmax:g} and more</title></rect>',
    ]
    for i, c in enumerate(counts):
        if not c:
            continue
        bh = ph * c / cmax
        x = left + i * bw
        lo = i * w
        rng = f"&#8805; {xmax:g}" if i == nbins else f"{lo:.2f}&#8211;{lo + w:.2f}"
        cls = "bar over" if lo >= 1.0 else "bar"
        parts.append(
            f'<rect class="{cls}" x="{x + 0.5:.1f}" y="{top + ph - bh:.1f}" width="{max(bw - 1, 1):.1f}" '
            f'height="{bh:.1f}"><title>score {rng}: {c}</title></rect>'
        )
    tx = left + (1.0 / w) * bw
    parts.append(f'<line class="thr" x1="{tx:.1f}" y1="{top - 4}" x2="{tx:.1f}" y2="{top + ph}"/>')
    parts.append(f'<text class="thr-label" x="{tx + 3:.1f}" y="{top + 8}">threshold</text>')
    for value, x in ((0, left), (1, tx), (xmax, left + nbins * bw)):
        parts.append(f'<text class="tick" x="{x:.1f}" y="{top + ph + 13}" text-anchor="middle">{value:g}</text>')
    parts.append(f'<text class="tick" x="{left - 4}" y="{top + 9}" text-anchor="end">{cmax}</text>')
    parts.append(f'<text class="tick" x="{left - 4}" y="{top + ph}" text-anchor="end">0</text>')
    parts.append(f'<text class="axis" x="{left + pw / 2:.1f}" y="{height - 2}" text-anchor="middle">score (distance / threshold)</text>')
    parts.append("</svg>")
    caption = f"{_num(n)} scored, {_num(over)} over the threshold"
    return "".join(parts), caption


# ----------------------------------------------------------------------------- page

_CSS = """
:root{--fg:#1d232a;--muted:#5b6670;--line:#d9dee3;--bg:#f6f7f9;--card:#fff;--ok:#2f7d4f;--bad:#c0392b;--warn:#b9770e;--accent:#2c5d8f}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:var(--fg);background:var(--bg)}
header{background:#1f3347;color:#fff;padding:18px 28px}
header h1{margin:0 0 4px;font-size:22px;font-weight:600}
header .meta{color:#c9d6e2;font-size:13px;word-break:break-all}
header .meta b{color:#fff;font-weight:600}
main{padding:18px 28px 40px;max-width:1500px}
nav{margin:4px 0 18px;display:flex;flex-wrap:wrap;gap:8px}
nav a{color:var(--accent);text-decoration:none;border:1px solid var(--line);background:var(--card);border-radius:14px;padding:2px 11px;font-size:13px}
nav a:hover{background:#eaf1f8}
h2{font-size:18px;margin:26px 0 8px;padding-bottom:4px;border-bottom:2px solid var(--line)}
h2 .count{color:var(--muted);font-weight:400}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:8px 14px;min-width:108px}
.card .n{font-size:22px;font-weight:650;font-variant-numeric:tabular-nums}
.card .k{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.card.bad .n{color:var(--bad)} .card.good .n{color:var(--ok)} .card.warn .n{color:var(--warn)}
.note{color:var(--muted);margin:6px 0 10px}
.note.warn{color:var(--warn)}
table.rows{border-collapse:collapse;width:100%;background:var(--card);border:1px solid var(--line)}
table.rows th{text-align:left;font-size:12px;color:var(--muted);font-weight:600;text-transform:uppercase;letter-spacing:.03em;padding:6px 8px;border-bottom:1px solid var(--line);background:#fafbfc}
table.rows td{padding:6px 8px;border-bottom:1px solid #eceff2;vertical-align:top}
table.rows tr:last-child td{border-bottom:0}
table.rows{table-layout:fixed}
th.c-img{width:114px} th.c-cls{width:9%} th.c-score{width:170px} th.c-where{width:32%}
.thumb img{display:block;width:96px;height:96px;object-fit:contain;background:#20262c;border-radius:4px}
.thumb img.px{image-rendering:pixelated}
.ph{width:96px;height:96px;border-radius:4px;background:repeating-linear-gradient(45deg,#eef0f3,#eef0f3 6px,#e3e7eb 6px,#e3e7eb 12px);color:var(--muted);font-size:11px;display:flex;align-items:center;justify-content:center;text-align:center;padding:4px}
.path{font-family:ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:13px;overflow-wrap:anywhere}
.sub{color:var(--muted);font-size:12px;overflow-wrap:anywhere}
.score{font-variant-numeric:tabular-nums;white-space:nowrap;font-weight:600}
.score.over{color:var(--bad)} .score.under{color:var(--ok)}
.meter{height:5px;background:#e8ebee;border-radius:3px;margin-top:4px;width:110px;position:relative;overflow:hidden}
.meter span{position:absolute;left:0;top:0;bottom:0;background:#5b8fc7}
.over+.meter span{background:var(--bad)}
.meter i{position:absolute;top:0;bottom:0;width:2px;background:#333}
.action{white-space:nowrap}
details.page{margin:0 0 10px}
details.page>summary{cursor:pointer;color:var(--accent);margin:4px 0 8px;font-weight:600}
.hists{display:flex;flex-wrap:wrap;gap:12px}
.hcard{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:8px 10px}
.hcard h3{margin:0 0 2px;font-size:14px;word-break:break-all}
.hcard .sub{margin-bottom:2px}
svg.hist .plot{fill:#fafbfc;stroke:#e1e5e9}
svg.hist .ovf{fill:#eceff3}
svg.hist .bar{fill:#5b8fc7}
svg.hist .bar.over{fill:#d9534f}
svg.hist .thr{stroke:#222;stroke-width:1.5;stroke-dasharray:4 3}
svg.hist text{font:10px system-ui,sans-serif;fill:#5b6670}
svg.hist .thr-label{fill:#222}
footer{color:var(--muted);font-size:12px;margin-top:30px}
"""


def _card(label: str, n: int, cls: str = "") -> str:
    return f'<div class="card {cls}"><div class="n">{_num(n)}</div><div class="k">{text(label)}</div></div>'


def _score_cell(score: float | None) -> str:
    if score is None:
        return '<span class="sub">no score</span>'
    cls = "over" if score > 1.0 else "under"
    shown = f"{score:.2f}" if abs(score) < 1000 else f"{score:.3g}"
    if shown == "1.00" and score != 1.0:  # do not show a reject as "1.00" (or a keeper as 1.00)
        shown = f"{score:.4f}".rstrip("0")
    fill = max(0.0, min(score / 2.0, 1.0)) * 100  # the bar spans 0..2; the tick is the threshold
    return (
        f'<div class="score {cls}" title="score {score:.6g}: distance to the nearest class / its threshold; '
        f'over 1 = rejected">{text(shown)} &#215; threshold</div>'
        f'<div class="meter" aria-hidden="true"><span style="width:{fill:.0f}%"></span>'
        f'<i style="left:50%"></i></div>'
    )


def _action_cell(item: ReviewItem) -> str:
    action = item.action or ("reported" if item.status in SECTIONS else "")
    out = f'<div class="action">{text(action)}</div>'
    if item.destination and item.action in ("moved", "would move"):
        label = "to" if item.action == "moved" else "planned"
        out += f'<div class="sub">{label}: <span class="path">{text(item.destination)}</span></div>'
    return out


def _thumb_cell(item: ReviewItem, budget: list[int], size: int) -> str:
    reason = {"too_large": "too large: not decoded", "unsupported": "unsupported format", "unreadable": "unreadable"}
    why = reason.get(item.status, "")
    if not why:
        if item.location is None:
            why = "location unknown (give --root)"
        elif budget[0] <= 0:
            why = "thumbnail cap reached"
        else:
            budget[0] -= 1
            uri, why = thumbnail_data_uri(item.location, size)
            if uri is not None:
                return (
                    f'<img src="{uri}" loading="lazy" decoding="async" width="{size}" height="{size}" '
                    f'class="px" alt="{text(os.path.basename(item.path))}">'
                )
    return f'<div class="ph">{text(why)}</div>'


def _section(section: str, collector: ReviewCollector, budget: list[int], size: int) -> str:
    rows = collector.rows(section)
    total = collector.section_count(section)
    title = SECTION_TITLES[section]
    parts = [f'<section id="{section}"><h2>{text(title)} <span class="count">({text(section)}: {_num(total)})</span></h2>']
    if section == "ood":
        parts.append('<p class="note">Sorted by score, highest first. A score is the distance to the nearest '
                     'class divided by that class&#8217;s threshold: over 1 means rejected.</p>')
    if collector.omitted.get(section):
        parts.append(f'<p class="note warn">{_num(collector.omitted[section])} more not listed here '
                     f'(the page lists at most {_num(collector.max_rows)} per section); the --report file has every record.</p>')
    head = ("<table class=\"rows\"><thead><tr><th class=\"c-img\">image</th><th>file</th>"
            "<th class=\"c-cls\">predicted</th><th class=\"c-cls\">nearest</th>"
            "<th class=\"c-score\">score</th><th class=\"c-where\">where it is</th></tr></thead><tbody>")
    for start in range(0, len(rows), PAGE_SIZE):
        chunk = rows[start:start + PAGE_SIZE]
        opened = " open" if start == 0 else ""
        parts.append(f'<details class="page"{opened}><summary>{_num(start + 1)}&#8211;{_num(start + len(chunk))} '
                     f'of {_num(len(rows))}</summary>{head}')
        for item in chunk:
            msg = f'<div class="sub">{text(item.message)}</div>' if item.message else ""
            parts.append(
                "<tr>"
                f'<td class="thumb">{_thumb_cell(item, budget, size)}</td>'
                f'<td><div class="path">{text(item.path)}</div>{msg}</td>'
                f"<td>{text(item.predicted or '')}</td>"
                f"<td>{text(item.nearest or '')}</td>"
                f"<td>{_score_cell(item.score)}</td>"
                f"<td>{_action_cell(item)}</td>"
                "</tr>"
            )
        parts.append("</tbody></table></details>")
    parts.append("</section>")
    return "".join(parts)


def render_html(
    collector: ReviewCollector,
    *,
    title: str = "imgclean review",
    summary: Mapping[str, Any] | None = None,
    source: str = "",
    max_thumbnails: int = DEFAULT_MAX_THUMBNAILS,
    thumb_size: int = THUMB_SIZE,
    note: str = "",
) -> str:
    """The whole page as a string. `summary`: ScanSummary.to_dict() of a live scan, if any."""
    summary = dict(summary or {})
    counts = collector.counts
    rejected = sum(counts.get(s, 0) for s in REASONS)
    meta = []
    if summary.get("root"):
        meta.append(f"folder <b>{text(summary['root'])}</b>")
    if summary.get("model"):
        meta.append(f"model <b>{text(summary['model'])}</b>")
    if source:
        meta.append(f"from <b>{text(source)}</b>")
    meta.append(f"written {text(datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC'))} by imgclean {text(__version__)}")

    cards = [_card("files", collector.total), _card("ok", counts.get("ok", 0), "good"), _card("rejected", rejected, "bad" if rejected else "")]
    for status in STATUS_ORDER[1:]:
        if counts.get(status):
            cards.append(_card(status, counts[status], "warn" if status in ("skipped", "changed") else "bad"))
    for status in sorted(set(counts) - set(STATUS_ORDER)):
        cards.append(_card(status, counts[status]))
    for action in ("moved", "would move", "move failed", "restored"):
        if collector.actions.get(action):
            cards.append(_card(action, collector.actions[action], "bad" if action == "move failed" else ""))

    scored_ood = [s for s in SECTIONS if collector.section_count(s)]
    nav = [f'<a href="#{s}">{text(SECTION_TITLES[s])} ({_num(collector.section_count(s))})</a>' for s in scored_ood]
    if collector.class_scores:
        nav.append('<a href="#histograms">Score histograms</a>')

    budget = [max(0, int(max_thumbnails))]
    body = []
    thumbable = sum(len(collector.rows(s)) for s in ("ood", "changed"))
    if thumbable > budget[0]:
        body.append(f'<p class="note warn">Thumbnails are inlined for the {_num(budget[0])} highest-scoring '
                    f'rejects only; {_num(thumbable - budget[0])} more are listed without one.</p>')
    if not scored_ood:
        body.append('<p class="note">Nothing was rejected.</p>')
    for section in scored_ood:
        body.append(_section(section, collector, budget, thumb_size))

    if collector.class_scores:
        body.append('<section id="histograms"><h2>Score histograms by nearest class</h2>'
                    '<p class="note">Every scored image, grouped by its nearest class. The dashed line is the '
                    'threshold (score = 1); red bars are rejected. The last bar gathers everything past the axis.</p>'
                    '<div class="hists">')
        for name in sorted(collector.class_scores):
            svg, caption = histogram_svg(collector.class_scores[name], name)
            body.append(f'<div class="hcard"><h3>{text(name)}</h3><div class="sub">{caption}</div>{svg}</div>')
        body.append("</div></section>")

    extra = f'<p class="note">{text(note)}</p>' if note else ""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">"
        f"<title>{text(title)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>{text(title)}</h1><div class=\"meta\">{' &#183; '.join(meta)}</div></header><main>"
        f"<div class=\"cards\">{''.join(cards)}</div>{extra}<nav>{''.join(nav)}</nav>{''.join(body)}"
        "<footer>Scores: higher = more out-of-distribution; a score over 1 (distance over the nearest "
        "class&#8217;s threshold) means rejected. Self-contained page: no scripts, nothing fetched.</footer>"
        "</main></body></html>\n"
    )


def write_html(path: str | os.PathLike, page: str) -> Path:
    """Write the page atomically (temporary file beside it, then rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".imgclean-html-", suffix=".tmp", dir=path.parent if str(path.parent) else ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as fh:
            fh.write(page)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path
