"""The review page: one self-contained HTML string from a ReviewCollector, and its atomic write.

Thumbnails are inlined as data: URIs, charts are inline SVG; the one script (copy buttons, and
gathering the decisions picked per file into one script of imgclean commands: script.py) is
inline and pinned by a CSP hash, nothing is fetched, so the file opens offline and can be
mailed around. Every string from a record goes through text.text() (or, inside an attribute,
html.escape) before it reaches the page.
"""
from __future__ import annotations

import html
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from ... import __version__
from .charts import histogram_svg
from .collector import REASONS, SECTION_TITLES, SECTIONS, STATUS_ORDER, ReviewCollector, ReviewItem
from .script import ReviewScript, choices
from .style import CSP, CSS, SCRIPT
from .text import num, restore_command, text
from .thumbs import THUMB_SIZE, thumbnail_data_uri

DEFAULT_MAX_THUMBNAILS = 500
DEFAULT_GRID_AFTER = 100  # more listed rejects than this: the page opens in the grid view
PAGE_SIZE = 100  # rows per collapsible block

EXPLAIN_CLASSES = (
    "<b>Predicted</b> is the class the classifier picks; <b>nearest</b> is the class whose "
    "Mahalanobis distance, divided by that class&#8217;s threshold, is smallest. That ratio is "
    "the score, so the nearest class decides whether a file is rejected (score over 1)."
)
_NO_THUMB = {"too_large": "too large: not decoded", "unsupported": "unsupported format", "unreadable": "unreadable"}


def _card(label: str, n: int, cls: str = "") -> str:
    return f'<div class="card {cls}"><div class="n">{num(n)}</div><div class="k">{text(label)}</div></div>'


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


def _action_cell(item: ReviewItem, collector: ReviewCollector) -> str:
    action = item.action or ("kept" if item.status == "ok" else "reported" if item.status in SECTIONS else "")
    out = f'<div class="action">{text(action)}</div>'
    if item.destination and item.action in ("moved", "would move"):
        label = "to" if item.action == "moved" else "planned"
        out += f'<div class="sub">{label}: <span class="path">{text(item.destination)}</span></div>'
    if item.action == "moved" and item.destination and os.path.isabs(item.destination):
        quarantine = collector.quarantine_for(item)
        if quarantine is not None:
            cmd = restore_command(quarantine, item.destination)
            out += (f'<div class="restore"><code class="cmd" title="puts this file back">{text(cmd)}</code>'
                    '<button type="button" class="copy" title="copy the restore command">copy</button></div>')
    elif item.action == "restored":
        out += '<div class="sub">back at its original place</div>'
    elif item.action == "discarded":
        out += '<div class="sub">deleted from the quarantine by the reviewer</div>'
    return out


def _thumb_cell(item: ReviewItem, budget: list[int], size: int) -> str:
    why = _NO_THUMB.get(item.status, "")
    if item.action == "discarded":
        why = "discarded (deleted from the quarantine)"
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


_HEAD = (
    '<table class="rows"><thead><tr><th class="c-img">image</th><th>file</th>'
    '<th class="c-cls" title="the class the classifier picks">predicted</th>'
    '<th class="c-cls" title="the class with the smallest distance / threshold: it decides the score">nearest</th>'
    '<th class="c-score">score</th><th class="c-where">where it is</th></tr></thead><tbody>'
)
_CHOICE_TEXT = {"restore": "restore (it belongs)", "accept": "accept (it belongs)", "reject": "reject (move it)"}


class _Page:
    """What the rows of one page share: the thumbnail budget and size, the commands of the
    decisions script, and a counter naming each file's group of choices."""

    def __init__(self, collector: ReviewCollector, max_thumbnails: int, size: int, title: str):
        self.collector = collector
        self.budget = [max(0, int(max_thumbnails))]
        self.size = size
        self.script = ReviewScript(title)
        self.groups = 0

    def decide_cell(self, item: ReviewItem, sample: bool) -> str:
        """The file's choices (radio buttons, each carrying its command), or '' when none."""
        if not item.checked:
            return ""
        quarantine = item.quarantine
        if quarantine is None and item.action == "moved":
            quarantine = self.collector.quarantine_for(item)
        offered = choices(self.script, status=item.status, action=item.action, path=item.path,
                          destination=item.destination, root=item.root, quarantine=quarantine or self.collector.quarantine,
                          sample=sample)
        if not offered:
            return ""
        self.groups += 1
        name = f"d{self.groups}"
        buttons = [f'<label><input type="radio" class="choice" name="{name}" value="" checked>undecided</label>']
        for c in offered:
            buttons.append(f'<label><input type="radio" class="choice" name="{name}" value="{c.action}" '
                           f'data-cmd="{html.escape(c.command, quote=True)}">{text(_CHOICE_TEXT[c.action])}</label>')
        return f'<fieldset class="choices" title="your decision">{"".join(buttons)}</fieldset>'


def _badges(item: ReviewItem) -> str:
    out = '<span class="badge">accepted by a person</span>' if item.status == "accepted" else ""
    if item.review:
        out += f'<span class="badge review" title="why the scan chose it for review">review: {text(item.review)}</span>'
    return out


def _rows(items: list[ReviewItem], page: _Page, sample: bool = False) -> list[str]:
    parts = []
    for start in range(0, len(items), PAGE_SIZE):
        chunk = items[start:start + PAGE_SIZE]
        opened = " open" if start == 0 else ""
        parts.append(f'<details class="page"{opened}><summary>{num(start + 1)}&#8211;{num(start + len(chunk))} '
                     f'of {num(len(items))}</summary>{_HEAD}')
        for item in chunk:
            msg = f'<div class="sub">{text(item.message)}</div>' if item.message else ""
            parts.append(
                "<tr>"
                f'<td class="thumb">{_thumb_cell(item, page.budget, page.size)}</td>'
                f'<td title="{text(item.path)}"><div class="path">{text(item.path)}</div>{_badges(item)}{msg}'
                f"{page.decide_cell(item, sample)}</td>"
                f'<td class="wide">{text(item.predicted or "")}</td>'
                f'<td class="wide">{text(item.nearest or "")}</td>'
                f"<td>{_score_cell(item.score)}</td>"
                f'<td class="wide">{_action_cell(item, page.collector)}</td>'
                "</tr>"
            )
        parts.append("</tbody></table></details>")
    return parts


def _section(section: str, page: _Page) -> str:
    collector = page.collector
    total = collector.section_count(section)
    parts = [f'<section id="{section}" class="files"><h2>{text(SECTION_TITLES[section])} '
             f'<span class="count">({text(section)}: {num(total)})</span></h2>']
    if section == "ood":
        parts.append('<p class="note">Sorted by score, highest first. A score is the distance to the nearest '
                     'class divided by that class&#8217;s threshold: over 1 means rejected.</p>')
    if section == "accepted":
        parts.append('<p class="note">The scan would reject these, but a person accepted them (`imgclean restore` '
                     'or `imgclean accept`): they stay where they are while their content is unchanged.</p>')
    if collector.omitted.get(section):
        parts.append(f'<p class="note warn">{num(collector.omitted[section])} more not listed here '
                     f'(the page lists at most {num(collector.max_rows)} per section); the --report file has every record.</p>')
    parts += _rows(collector.rows(section), page)
    parts.append("</section>")
    return "".join(parts)


def _borderline(page: _Page) -> str:
    items = page.collector.borderline()
    return "".join([
        '<section id="borderline" class="files"><h2>Borderline: accepted, highest scores '
        f'<span class="count">({num(len(items))} of {num(page.collector.section_count("ok"))} ok)</span></h2>'
        '<p class="note">The accepted files closest to the threshold, highest score first: '
        'look here for rejects the model missed.</p>',
        *_rows(items, page, sample=True), "</section>",
    ])


def _sample(page: _Page) -> str:
    items = page.collector.sample()
    more = page.collector.omitted_sample
    return "".join([
        f'<section id="sample" class="files"><h2>Review sample <span class="count">({num(len(items) + more)})</span></h2>'
        '<p class="note">Files the scan kept and chose for you to check (the badge says why): accept the ones that '
        'belong, reject the ones it missed. Your answers teach `imgclean learn` the most.</p>',
        f'<p class="note warn">{num(more)} more not listed here; the --report file marks them all.</p>' if more else "",
        *_rows(items, page, sample=True), "</section>",
    ])


def _decisions(page: _Page) -> str:
    """The box the picked decisions gather in (shown only where scripts run)."""
    if not page.groups:
        return ""
    head = html.escape(page.script.head(), quote=True).replace("\n", "&#10;")
    return (
        '<section id="decisions"><h2>Your decisions: <span id="script-count">0</span> command(s)</h2>'
        '<p class="note">Pick restore, accept or reject beside the files below; the commands gather here as one '
        f'script. Copy it and run it with {text("bash")} (or paste it into bash or zsh) where imgclean runs. '
        'Restoring or accepting a file keeps it out of every later scan; rejecting one moves it into the '
        'quarantine, restorable. Nothing is done until you run it.</p>'
        f'<div class="scriptbox"><textarea id="script" readonly wrap="off" spellcheck="false" rows="8" '
        f'aria-label="imgclean commands" data-head="{head}"></textarea>'
        '<button type="button" class="copy" title="copy the script">copy</button></div></section>'
    )


def _cards(collector: ReviewCollector) -> str:
    counts = collector.counts
    rejected = sum(counts.get(s, 0) for s in REASONS)
    cards = [_card("files", collector.total), _card("ok", counts.get("ok", 0), "good"), _card("rejected", rejected, "bad" if rejected else "")]
    for status in STATUS_ORDER[1:]:
        if counts.get(status):
            kind = "warn" if status in ("skipped", "changed") else "good" if status == "accepted" else "bad"
            cards.append(_card(status, counts[status], kind))
    for status in sorted(set(counts) - set(STATUS_ORDER)):
        cards.append(_card(status, counts[status]))
    for action in ("moved", "would move", "move failed", "restored", "discarded"):
        if collector.actions.get(action):
            cards.append(_card(action, collector.actions[action], "bad" if action == "move failed" else ""))
    return "".join(cards)


def _histograms(collector: ReviewCollector) -> str:
    if not collector.class_scores:
        return ""
    parts = ['<section id="histograms"><h2>Score histograms by nearest class</h2>'
             '<p class="note">Every scored image, grouped by its nearest class. The dashed line is the '
             'threshold (score = 1); red bars are rejected. The last bar gathers everything past the axis.</p>'
             '<div class="hists">']
    for name in sorted(collector.class_scores):
        svg, caption = histogram_svg(collector.class_scores[name], name)
        parts.append(f'<div class="hcard"><h3>{text(name)}</h3><div class="sub">{caption}</div>{svg}</div>')
    parts.append("</div></section>")
    return "".join(parts)


def _meta(summary: Mapping[str, Any], source: str) -> str:
    meta = []
    if summary.get("root"):
        meta.append(f"folder <b>{text(summary['root'])}</b>")
    if summary.get("model"):
        meta.append(f"model <b>{text(summary['model'])}</b>")
    if source:
        meta.append(f"from <b>{text(source)}</b>")
    meta.append(f"written {text(datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC'))} by imgclean {text(__version__)}")
    return " &#183; ".join(meta)


def render_html(
    collector: ReviewCollector,
    *,
    title: str = "imgclean review",
    summary: Mapping[str, Any] | None = None,
    source: str = "",
    max_thumbnails: int = DEFAULT_MAX_THUMBNAILS,
    thumb_size: int = THUMB_SIZE,
    note: str = "",
    grid_after: int = DEFAULT_GRID_AFTER,
) -> str:
    """The whole page as a string. `summary`: ScanSummary.to_dict() of a live scan, if any.

    The page opens in the compact grid view when more than `grid_after` rejects are listed
    (a switch at the top changes the view, without scripts).
    """
    summary = dict(summary or {})
    listed = [s for s in SECTIONS if collector.section_count(s)]
    borderline, sample = collector.borderline(), collector.sample()
    nav = [f'<a href="#{s}">{text(SECTION_TITLES[s])} ({num(collector.section_count(s))})</a>' for s in listed]
    if sample:
        nav.append(f'<a href="#sample">Review sample ({num(len(sample) + collector.omitted_sample)})</a>')
    if borderline:
        nav.append(f'<a href="#borderline">Borderline ({num(len(borderline))})</a>')
    if collector.class_scores:
        nav.append('<a href="#histograms">Score histograms</a>')

    shown = sum(len(collector.rows(s)) for s in listed)
    grid = shown > grid_after
    switch = ""
    if listed or borderline or sample:
        switch = ('<div class="viewsw">View: <label for="view-list">table</label> <label for="view-grid">grid</label>'
                  f'{f" (grid: more than {num(grid_after)} rejects)" if grid else ""}</div>'
                  f'<p class="note explain">{EXPLAIN_CLASSES}</p>')

    page = _Page(collector, max_thumbnails, thumb_size, title)
    body = []
    thumbable = sum(len(collector.rows(s)) for s in ("ood", "changed"))
    if thumbable > page.budget[0]:
        body.append(f'<p class="note warn">Thumbnails are inlined for the {num(page.budget[0])} highest-scoring '
                    f'rejects only; {num(thumbable - page.budget[0])} more are listed without one.</p>')
    if not any(collector.section_count(s) for s in REASONS):
        body.append('<p class="note">Nothing was rejected.</p>')
    body += [_section(section, page) for section in listed]
    if sample:
        body.append(_sample(page))
    if borderline:
        body.append(_borderline(page))
    body.append(_histograms(collector))
    decisions = _decisions(page)  # after the rows: the script's header names the folders they use

    extra = f'<p class="note">{text(note)}</p>' if note else ""
    views = (f'<input type="radio" name="view" id="view-list" class="view"{"" if grid else " checked"}>'
             f'<input type="radio" name="view" id="view-grid" class="view"{" checked" if grid else ""}>')
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">"
        f"<title>{text(title)}</title><style>{CSS}</style><script>{SCRIPT}</script></head><body>"
        f"<header><h1>{text(title)}</h1><div class=\"meta\">{_meta(summary, source)}</div></header><main>{views}"
        f"<div class=\"cards\">{_cards(collector)}</div>{extra}<nav>{''.join(nav)}</nav>{switch}{decisions}{''.join(body)}"
        "<footer>Scores: higher = more out-of-distribution; a score over 1 (distance over the nearest "
        "class&#8217;s threshold) means rejected. Self-contained page: nothing is fetched; its one script "
        "only copies commands and gathers the decisions you pick into one script; it runs nothing.</footer>"
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
