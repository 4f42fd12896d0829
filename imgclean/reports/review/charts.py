"""Score histograms for the review page, as inline SVG with the threshold (score = 1) marked."""
from __future__ import annotations

import math
from typing import Iterable

from .text import num, text
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
    caption = f"{num(n)} scored, {num(over)} over the threshold"
    return "".join(parts), caption


