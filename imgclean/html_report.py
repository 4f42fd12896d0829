"""The review page's public names, kept importable here (the code lives in imgclean/review/)."""
from .review.charts import histogram_svg
from .review.collector import (
    DEFAULT_BORDERLINE,
    DEFAULT_MAX_ROWS,
    REASONS,
    SECTION_TITLES,
    SECTIONS,
    STATUS_ORDER,
    ReviewCollector,
    ReviewInputError,
    ReviewItem,
)
from .review.inputs import iter_report, load_input, manifest_records
from .review.page import DEFAULT_GRID_AFTER, DEFAULT_MAX_THUMBNAILS, PAGE_SIZE, render_html, write_html
from .review.text import restore_command, shell_quote, text
from .review.thumbs import THUMB_SIZE, thumbnail_data_uri

__all__ = [
    "DEFAULT_BORDERLINE", "DEFAULT_GRID_AFTER", "DEFAULT_MAX_ROWS", "DEFAULT_MAX_THUMBNAILS", "PAGE_SIZE",
    "REASONS", "SECTIONS", "SECTION_TITLES", "STATUS_ORDER", "THUMB_SIZE",
    "ReviewCollector", "ReviewInputError", "ReviewItem", "histogram_svg", "iter_report", "load_input",
    "manifest_records", "render_html", "restore_command", "shell_quote", "text", "thumbnail_data_uri", "write_html",
]
