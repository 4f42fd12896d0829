"""The review page: one self-contained HTML file showing what a scan rejected, and why.

Makes no decisions and never prints. Records stream into a ReviewCollector (collector.py) from
a running scan, a ``--report`` CSV / JSON-lines file or a quarantine manifest (inputs.py); it
keeps the counts, every scored record's (nearest class, score) for the histograms, the top rows
of each rejection reason and the highest-scoring accepted files, so memory stays bounded on huge
scans. page.render_html turns it into one HTML string (thumbs.py, charts.py, style.py);
text.py escapes every name and quotes the restore commands.
"""
from .collector import ReviewCollector, ReviewInputError, ReviewItem
from .inputs import load_input
from .page import render_html, write_html

__all__ = ["ReviewCollector", "ReviewInputError", "ReviewItem", "load_input", "render_html", "write_html"]
