"""audit's summary table keeps its headers whole at 80 columns (issue 25: `label_iss…`): its
counts go under a header row when that fits the width, else one row per count."""
import io
import re

import pytest
from rich.console import Console

from imgclean.cli import audit
from imgclean.cli.console import counts_table
from imgclean.pipeline.audit.auditor import AuditResult, AuditSummary

HEADERS = ("images", "ok", "label_issues", "outliers", "duplicates", "unreadable")
MOVES = ("moved", "would_move", "changed", "move_errors")


def audited(**moves) -> AuditResult:
    summary = AuditSummary(root="/data/train", settings_from="fit's defaults", files=1234, images=1234, folds=4,
                           held_out_accuracy=0.9, **moves)
    summary.counts.update({"ok": 1200, "label_issue": 12, "outlier": 9, "duplicate": 10, "unreadable": 3})
    return AuditResult(records=[], summary=summary, class_names=["a", "b"])


def printed(result: AuditResult, width: int, monkeypatch, dry_run: bool = False) -> str:
    buffer = io.StringIO()
    monkeypatch.setattr(audit, "out", Console(file=buffer, width=width, color_system=None))
    monkeypatch.setattr(audit, "err", Console(file=io.StringIO(), width=width, color_system=None))
    audit._print(result, result.summary, json_out=False, quiet=False, verbose=False, dry_run=dry_run, html=None)
    return buffer.getvalue()


@pytest.mark.parametrize("width", [80, 60])
def test_every_header_is_whole_at_80_columns_and_less(width, monkeypatch):
    text = printed(audited(moved=5, would_move=0, changed=2, move_errors=1), width, monkeypatch)
    assert "\u2026" not in text, text
    assert max(len(line) for line in text.splitlines()) <= width
    for name, value in (*zip(HEADERS, ("1234", "1200", "12", "9", "10", "3")), ("moved", "5"), ("changed", "2"),
                        ("move_errors", "1")):
        assert re.search(rf"\b{name}\b\W+{value}\b", text), (name, text)  # whole, beside its value
    assert "would_move" not in text  # a zero count of a move column is left out, as before


def test_a_table_that_fits_keeps_its_header_row(monkeypatch):
    text = printed(audited(), 80, monkeypatch)
    header = next(line for line in text.splitlines() if "label_issues" in line)
    assert all(name in header for name in HEADERS), text  # one row of headers, values under them


def test_counts_table_switches_layout_only_when_the_headers_would_not_fit():
    counts = {name: 1 for name in (*HEADERS, *MOVES)}
    for width in (40, 80, 200):
        buffer = io.StringIO()
        console = Console(file=buffer, width=width, color_system=None)
        console.print(counts_table("audit of /data", counts, width))
        text = buffer.getvalue()
        assert "\u2026" not in text and max(len(line) for line in text.splitlines()) <= width
        header_row = any(all(name in line for name in counts) for line in text.splitlines())
        assert header_row == (width == 200), (width, text)
        assert all(name in text for name in counts)
