"""The review page: one self-contained HTML file showing what a scan rejected, and why.

Makes no decisions and never prints. Records stream into a ReviewCollector (collector.py) from
a running scan, a ``--report`` CSV / JSON-lines file or a quarantine manifest (inputs.py); it
keeps the counts, every scored record's (nearest class, score) for the histograms, the top rows
of each rejection reason and the highest-scoring accepted files, so memory stays bounded on huge
scans. page.render_html turns it into one HTML string (thumbs.py, charts.py, style.py);
text.py escapes every name and quotes the restore commands.
"""
from .charts import histogram_svg
from .collector import (
    DEFAULT_BORDERLINE, DEFAULT_MAX_ROWS, REASONS, SECTION_TITLES, SECTIONS, STATUS_ORDER, ReviewCollector,
    ReviewInputError, ReviewItem,
)
from .inputs import iter_report, load_input, manifest_records
from .page import DEFAULT_GRID_AFTER, DEFAULT_MAX_THUMBNAILS, PAGE_SIZE, render_html, write_html
from .text import restore_command, shell_quote, text
from .thumbs import THUMB_SIZE, thumbnail_data_uri

__all__ = [
    "DEFAULT_BORDERLINE", "DEFAULT_GRID_AFTER", "DEFAULT_MAX_ROWS", "DEFAULT_MAX_THUMBNAILS", "PAGE_SIZE",
    "REASONS", "SECTIONS", "SECTION_TITLES", "STATUS_ORDER", "THUMB_SIZE",
    "ReviewCollector", "ReviewInputError", "ReviewItem", "histogram_svg", "iter_report", "load_input",
    "manifest_records", "render_html", "restore_command", "shell_quote", "text", "thumbnail_data_uri", "write_html",
]
