"""The one format table of record files (reports/formats.py): every writer and reader of scan and
audit reports goes through it, every entry round-trips hostile records and is read with the
validation, and an extension no entry names is one clear error everywhere (exit 2 from the CLI).

Parametrised over the table itself, so a new entry is covered by these tests at once."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from imgclean.cli import app
from imgclean.reports.audit_records import AUDIT_COLUMNS, AuditRecord, AuditWriter, audit_row, read_audit
from imgclean.reports.formats import FORMATS, JSON_LINES, ReportError, extensions_text, format_for
from imgclean.reports.records import (
    AUDIT, FIELDS, SCAN, STATUSES, RecordWriter, ReportFile, ScanRecord, read_report, report_format,
)
from imgclean.reports.review.collector import ReviewInputError
from imgclean.reports.review.inputs import load_input
from imgclean.reports.review_marks import mark_report

WRITTEN = [(fmt, ext) for fmt in FORMATS for ext in fmt.extensions]
IDS = [ext[1:] for _, ext in WRITTEN]
ROOT = "/data/in\u00e7oming"

# Names a report must carry whole whatever its format: separators of every format, quotes,
# backslashes, line breaks, non-ASCII, an astral character, bytes that are not UTF-8.
HOSTILE = ["plain.png", "sub/comma,name.png", 'q"uote.png', "tab\there.png", "new\nline.png", "cr\rname.png",
           "back\\slash.png", "back\\tnot-a-tab.png", "trailing\\", "caf\u00e9.png", "emoji\U0001f600.png",
           "bad\udcff\udce9.png", " lead and trail .png", "{\"json\": 1}.png", "\\n\\t\\\\.png"]


def hostile_records() -> list[ScanRecord]:
    out = []
    for i, name in enumerate(HOSTILE):
        status = STATUSES[i % len(STATUSES)]
        out.append(ScanRecord(
            name, status, predicted=None if i % 3 == 0 else f"cl\u00e4ss{i % 2}", nearest="tab\tclass" if i % 4 == 1 else None,
            score=None if i % 5 == 0 else (i - 7) / 3, message=["", "decode failed: a, b", 'said "no"\nthen\\yes', name][i % 4],
            action="would move" if i % 6 == 1 else "", destination=f"/q/{name}" if i % 6 == 1 else None,
            size=10 + i, mtime_ns=1_600_000_000_000_000_000 + i, dev=None if i % 7 == 3 else 2049,
            ino=None if i % 7 == 3 else 100 + i, review="boundary" if i % 5 == 2 else "",
        ))
    return out


def compare(record: ScanRecord, back: ScanRecord) -> None:
    """A record read back: the same fields (a text format spells None and '' alike: empty)."""
    for key in FIELDS:
        if key in ("root",):
            continue
        want, got = getattr(record, key), getattr(back, key)
        assert (want or None) == (got or None) if isinstance(want, str) or want is None else want == got, key


@pytest.mark.parametrize("fmt, ext", WRITTEN, ids=IDS)
def test_scan_reports_round_trip_hostile_records(tmp_path, fmt, ext):
    records = hostile_records()
    path = tmp_path / f"r{ext}"
    with RecordWriter(path, ROOT) as writer:
        for record in records:
            writer(record)
    assert report_format(path) == fmt.name
    rows = list(read_report(path))
    assert [row.error for row in rows] == [""] * len(records)
    assert [row.root for row in rows] == [ROOT] * len(records)
    for record, row in zip(records, rows, strict=True):
        compare(record, row.record)
    with ReportFile(path) as report:
        assert report.kind() == SCAN


@pytest.mark.parametrize("fmt, ext", WRITTEN, ids=IDS)
def test_audit_reports_round_trip_in_every_format(tmp_path, fmt, ext):
    path = tmp_path / f"audit{ext}"
    records = [AuditRecord(name, "ok" if i % 2 else "outlier", label=f"cl\u00e4ss\t{i}", score=None if i % 3 else 1.5,
                           message='a "message", with\nlines', size=i, mtime_ns=10**18 + i, dev=1, ino=i + 1)
               for i, name in enumerate(HOSTILE)]
    with AuditWriter(path, ROOT) as writer:
        for record in records:
            writer.write(record)
    with ReportFile(path) as report:
        assert report.kind() == AUDIT
        rows = list(report.rows(audit_row, AUDIT_COLUMNS))
    assert [row.error for row in rows] == [""] * len(records)
    for record, row in zip(records, rows, strict=True):
        assert (row.record.path, row.record.issue, row.record.label, row.record.message, row.record.score, row.root) == (
            record.path, record.issue, record.label, record.message, record.score, ROOT)
    assert [row["path"] for row in read_audit(path)] == HOSTILE
    assert [row["ino"] for row in read_audit(path)] == [r.ino for r in records]  # numbers, whatever the format


@pytest.mark.parametrize("fmt, ext", WRITTEN, ids=IDS)
def test_review_marks_rewrite_a_report_in_its_own_format(tmp_path, fmt, ext):
    records = [ScanRecord(name, "ok", score=0.5, size=1, mtime_ns=2, dev=3, ino=4 + i) for i, name in enumerate(HOSTILE)]
    path = tmp_path / f"r{ext}"
    with RecordWriter(path, ROOT) as writer:
        for record in records:
            writer(record)
    before = path.read_bytes()
    assert mark_report(path, writer.written, {}) == 0
    assert path.read_bytes() == before  # every row written again exactly as it was
    st = os.stat(path)
    marks = {HOSTILE[3]: "boundary", HOSTILE[11]: "random"}
    assert mark_report(path, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns), marks) == 2
    rows = list(read_report(path))
    assert {row.record.path: row.record.review for row in rows if row.record.review} == marks
    assert [row.record.path for row in rows] == HOSTILE


@pytest.mark.parametrize("fmt, ext", WRITTEN, ids=IDS)
def test_the_review_page_reads_every_format_with_the_validation(tmp_path, fmt, ext):
    path = tmp_path / f"r{ext}"
    with RecordWriter(path, ROOT) as writer:
        for record in hostile_records():
            writer(record)
    collector, info = load_input(path)
    assert collector.total == len(HOSTILE) and fmt.label in info["kind"]
    bad = tmp_path / f"bad{ext}"
    with open(bad, "w", **{"encoding": "utf-8", "newline": "", "errors": "surrogateescape"}) as fh:
        rows = fmt.writer(fh, FIELDS)
        rows.row({"path": "ok.png", "status": "ok", "root": ROOT})
        rows.row({"path": "../outside.png", "status": "ood", "root": ROOT})
    with pytest.raises(ReviewInputError, match=r"climbs out"):
        load_input(bad)


def test_the_table_names_each_extension_once_and_lists_them_all():
    seen = [ext for fmt in FORMATS for ext in (*fmt.extensions, *fmt.read_only)]
    assert len(seen) == len(set(seen)) and all(ext == ext.lower() and ext.startswith(".") for ext in seen)
    text = extensions_text()
    assert all(fmt.extensions[0] in text for fmt in FORMATS)
    for fmt, ext in WRITTEN:
        assert format_for(Path(f"x{ext.upper()}")) is fmt
    assert format_for("old.json") is JSON_LINES
    with pytest.raises(ReportError, match=r"not one JSON document.*new\.jsonl"):
        format_for("new.json", write=True)


UNKNOWN = ["r.xyz", "r", "r.csv.bak", "r.txt"]


@pytest.mark.parametrize("name", UNKNOWN)
def test_an_unknown_extension_is_one_error_for_every_reader_and_writer(tmp_path, name):
    path = tmp_path / name
    for make in (lambda: RecordWriter(path, ROOT), lambda: AuditWriter(path, ROOT)):
        with pytest.raises(ReportError) as caught:
            make()
        assert "\n" not in str(caught.value) and extensions_text() in str(caught.value)
    assert not path.exists()  # never written, not even empty
    path.write_text('{"path": "a.png", "status": "ood"}\n')
    for read in (lambda: ReportFile(path), lambda: list(read_report(path)), lambda: read_audit(path),
                 lambda: mark_report(path, (0, 0, 0, 0), {})):
        with pytest.raises(ValueError, match="must end in"):
            read()
    with pytest.raises(ReviewInputError, match="must end in"):
        load_input(path)


runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [os.fsdecode(a) if isinstance(a, os.PathLike) else str(a) for a in args])


@pytest.mark.parametrize("name", UNKNOWN[:2])
def test_the_cli_refuses_an_unknown_extension_with_exit_2(tmp_path, name):
    folder = tmp_path / "in"
    folder.mkdir()
    existing = tmp_path / name
    existing.write_text('{"path": "a.png", "status": "ood"}\n')
    fresh = tmp_path / "out" / name
    fresh.parent.mkdir()
    model = tmp_path / "model"
    model.mkdir()
    for args in (("scan", folder, "-m", model, "--report", fresh), ("audit", folder, "--report", fresh),
                 ("apply", existing, "--move-to", tmp_path / "q"), ("report", existing, "-o", tmp_path / "p.html")):
        result = invoke(*args)
        assert result.exit_code == 2, (args[0], result.output)
        assert "must end in" in result.output and extensions_text() in " ".join(result.output.split()), args[0]
        assert not fresh.exists() and not (tmp_path / "p.html").exists()


HOSTILE_FILES = ("tab\tname.png", "new\nline.png", 'q"uote, comma.png', "back\\slash.png", "caf\u00e9.png",
                 os.fsdecode(b"bad\xff.png"))


@pytest.mark.parametrize("fmt, ext", WRITTEN, ids=IDS)
def test_scan_writes_it_and_apply_and_the_review_page_read_it(model_dir, tmp_path, fmt, ext):
    import json

    import numpy as np
    from conftest import make_incoming_folder, ood_image, write_png

    folder = tmp_path / "in"
    make_incoming_folder(folder)
    rng = np.random.default_rng(3)
    for name in HOSTILE_FILES:
        write_png(folder / name, ood_image(rng))
    report = tmp_path / f"r{ext}"
    result = invoke("scan", folder, "-m", model_dir, "--report", report, "-q", "--no-cache")
    assert result.exit_code == 0, result.output
    rows = list(read_report(report))
    assert [row.error for row in rows] == [""] * len(rows)
    assert sorted(row.record.path for row in rows) == sorted(os.listdir(folder))
    assert {row.root for row in rows} == {os.path.realpath(folder)}
    page = invoke("report", report, "-o", tmp_path / "page.html")
    assert page.exit_code == 0 and (tmp_path / "page.html").is_file(), page.output
    applied = invoke("apply", report, "--move-to", tmp_path / "q", "--json")
    assert applied.exit_code == 0, applied.output
    rejected = {row.record.path for row in rows if row.record.status in ("ood", "unreadable")}
    assert json.loads(applied.stdout)["moved"] == len(rejected) >= len(HOSTILE_FILES)
    left = [name for name in os.listdir(folder) if not name.startswith(".")]  # (the folder's lock file)
    assert sorted(left) == sorted({row.record.path for row in rows} - rejected)
