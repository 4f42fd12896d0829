"""The review page of an audit: one self-contained HTML file, a section per issue.

Label issues show the folder label beside the suggested class; duplicates show the copy and its
original side by side; outliers their detector score; unreadable files why. Built from the scan
page's pieces (style.CSS/CSP/SCRIPT, text.text for every string, thumbs.thumbnail_data_uri,
page.write_html), with a few rules of its own added after the scan page's stylesheet, so the
scan page itself is unchanged. Makes no decisions and never prints.
"""
from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

from ... import __version__
from .style import CSP, CSS, SCRIPT
from .text import num, restore_command, text
from .thumbs import THUMB_SIZE, thumbnail_data_uri

DEFAULT_MAX_THUMBNAILS = 500
DEFAULT_MAX_ROWS = 1000  # rows listed per issue; the report file has every record

SECTIONS = {
    "label_issue": ("Wrong labels?", "Filed under one class, confidently judged another by a model that never "
                    "saw the image (confident learning). Relabel the file, or move it."),
    "outlier": ("Foreign pictures", "Out-of-distribution for every class, scored out of sample; a score over 1 "
                "is over the detector's threshold."),
    "duplicate": ("Duplicates", "A later copy beside its original (the first file in sorted path order); "
                  "only the copy is flagged and ever moved."),
    "unreadable": ("Unreadable files", "Files fit cannot use: they cannot be decoded, are too large, of an "
                   "unsupported format, or are links and other files a walk does not open."),
}
AUDIT_CSS = """
.pair{display:flex;gap:6px}
.pair figure{margin:0}
.pair figcaption{font-size:11px;color:var(--muted);text-align:center}
.lbl{font-weight:600} .arrow{color:var(--muted)} .sugg{font-weight:600;color:var(--bad)}
th.c-img2{width:214px}
"""


def _get(record, key: str):
    return record.get(key) if isinstance(record, Mapping) else getattr(record, key, None)


def _thumb(path: str | None, budget: list[int], caption: str = "") -> str:
    if path is None:
        body = '<div class="ph">no file</div>'
    elif budget[0] <= 0:
        body = '<div class="ph">thumbnail cap reached</div>'
    else:
        budget[0] -= 1
        uri, why = thumbnail_data_uri(path, THUMB_SIZE)
        body = (f'<img src="{uri}" loading="lazy" decoding="async" width="{THUMB_SIZE}" height="{THUMB_SIZE}" '
                f'class="px" alt="{text(os.path.basename(path))}">' if uri else f'<div class="ph">{text(why)}</div>')
    if caption:
        return f"<figure>{body}<figcaption>{text(caption)}</figcaption></figure>"
    return body


def _where(record, root: Path) -> str | None:
    """Where the file is now: its quarantine destination once moved, else its place in the folder."""
    if _get(record, "action") == "moved" and _get(record, "destination"):
        return _get(record, "destination")
    return os.path.join(root, _get(record, "path"))


def _action(record, quarantine) -> str:
    action = _get(record, "action") or "reported"
    out = f'<div class="action">{text(action)}</div>'
    dest = _get(record, "destination")
    if dest and action in ("moved", "would move"):
        out += f'<div class="sub">{"to" if action == "moved" else "planned"}: <span class="path">{text(dest)}</span></div>'
    if action == "moved" and dest and quarantine is not None:
        cmd = restore_command(os.fspath(quarantine), dest)
        out += (f'<div class="restore"><code class="cmd" title="puts this file back">{text(cmd)}</code>'
                '<button type="button" class="copy" title="copy the restore command">copy</button></div>')
    return out


def _detail(issue: str, record) -> str:
    label, sugg = _get(record, "label"), _get(record, "suggested")
    score = _get(record, "score")
    if issue == "label_issue":
        conf = _get(record, "label_confidence")
        return (f'<span class="lbl">{text(label)}</span> <span class="arrow">&#8594;</span> '
                f'<span class="sugg">{text(sugg)}</span><div class="sub">p(label) '
                f'{text(f"{conf:.3f}" if conf is not None else "?")}, margin {text(f"{score:.3f}" if score is not None else "?")}</div>')
    if issue == "outlier":
        return f'<span class="score over">{text(f"{score:.2f}" if score is not None else "?")} &#215; threshold</span>' \
               f'<div class="sub">folder {text(label)}</div>'
    if issue == "duplicate":
        return f'<div class="sub">of</div><div class="path">{text(_get(record, "duplicate_of"))}</div>'
    return f'<span class="lbl">{text(_get(record, "status"))}</span>'


def _section(issue: str, rows: list, root: Path, quarantine, budget: list[int], max_rows: int) -> str:
    title, note = SECTIONS[issue]
    parts = [f'<section id="{issue}" class="files"><h2>{text(title)} <span class="count">({text(issue)}: '
             f'{num(len(rows))})</span></h2><p class="note">{text(note)}</p>']
    if len(rows) > max_rows:
        parts.append(f'<p class="note warn">{num(len(rows) - max_rows)} more not listed here; the --report file has every record.</p>')
    img_head = '<th class="c-img2">copy / original</th>' if issue == "duplicate" else '<th class="c-img">image</th>'
    parts.append(f'<table class="rows"><thead><tr>{img_head}<th>file</th><th class="c-score">finding</th>'
                 '<th class="c-where">action</th></tr></thead><tbody>')
    for r in rows[:max_rows]:
        if issue == "unreadable":
            cell = f'<div class="ph">{text(_get(r, "status"))}</div>'
        elif issue == "duplicate":
            original = os.path.join(root, _get(r, "duplicate_of"))
            cell = f'<div class="pair">{_thumb(_where(r, root), budget, "copy")}{_thumb(original, budget, "original")}</div>'
        else:
            cell = _thumb(_where(r, root), budget)
        msg = _get(r, "message")
        parts.append(
            f'<tr><td class="thumb">{cell}</td>'
            f'<td title="{text(_get(r, "path"))}"><div class="path">{text(_get(r, "path"))}</div>'
            f'{f"<div class=sub>{text(msg)}</div>" if msg else ""}</td>'
            f"<td>{_detail(issue, r)}</td><td class=\"wide\">{_action(r, quarantine)}</td></tr>"
        )
    parts.append("</tbody></table></section>")
    return "".join(parts)


def render_audit_html(records: Sequence, summary: Mapping[str, Any], *, root: str | os.PathLike,
                      quarantine: str | os.PathLike | None = None, title: str = "imgclean audit",
                      max_thumbnails: int = DEFAULT_MAX_THUMBNAILS, max_rows: int = DEFAULT_MAX_ROWS) -> str:
    """The whole page as a string. `records`: AuditRecords (or their dicts); `summary`:
    AuditSummary.to_dict(). Label issues are listed by margin, outliers by score, highest first."""
    root = Path(root)
    quarantine = Path(os.path.abspath(quarantine)) if quarantine is not None else None
    by_issue: dict[str, list] = {k: [] for k in SECTIONS}
    for r in records:
        if _get(r, "issue") in by_issue:
            by_issue[_get(r, "issue")].append(r)
    for issue in ("label_issue", "outlier"):
        by_issue[issue].sort(key=lambda r: -(_get(r, "score") or 0.0))
    cards = [("files", summary.get("images", len(records)), ""), ("ok", summary.get("ok", 0), "good")]
    cards += [(k, len(v), "bad" if v else "") for k, v in by_issue.items()]
    for key in ("moved", "would_move", "move_errors"):
        if summary.get(key):
            cards.append((key.replace("_", " "), summary[key], "bad" if key == "move_errors" else ""))
    card_html = "".join(f'<div class="card {c}"><div class="n">{num(int(n))}</div><div class="k">{text(k)}</div></div>'
                        for k, n, c in cards)
    nav = "".join(f'<a href="#{k}">{text(SECTIONS[k][0])} ({num(len(v))})</a>' for k, v in by_issue.items() if v)
    meta = [f"folder <b>{text(os.fspath(root))}</b>"]
    if summary.get("folds"):
        acc = summary.get("held_out_accuracy")
        meta.append(f"{text(summary['folds'])} folds, out-of-sample accuracy <b>{text(f'{acc:.4f}' if acc is not None else 'n/a')}</b>")
    if summary.get("settings_from"):
        meta.append(f"settings from <b>{text(summary['settings_from'])}</b>")
    meta.append(f"written {text(datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC'))} by imgclean {text(__version__)}")
    budget = [max(0, int(max_thumbnails))]
    body = [_section(k, v, root, quarantine, budget, max_rows) for k, v in by_issue.items() if v]
    if not body:
        body.append('<p class="note">Nothing was found: the folder looks clean.</p>')
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">"
        f"<title>{text(title)}</title><style>{CSS}{AUDIT_CSS}</style><script>{SCRIPT}</script></head><body>"
        f"<header><h1>{text(title)}</h1><div class=\"meta\">{' &#183; '.join(meta)}</div></header><main>"
        f"<div class=\"cards\">{card_html}</div><nav>{nav}</nav>{''.join(body)}"
        "<footer>One issue per file: unreadable, then duplicate, then outlier, then label issue. Every judgement "
        "comes from a model that never trained on the image. Self-contained page: nothing is fetched; its one "
        "script only copies restore commands.</footer></main></body></html>\n"
    )
