"""The fast paths of the format table (reports/record_blocks.py: CsvText, JsonLinesText) write
byte for byte what the formats' own writers write, on tricky records, and the validating reader
accepts it; blocks they cannot format whole go row by row, with the same bytes."""
from __future__ import annotations

import math

import pytest

from imgclean.reports import record_blocks
from imgclean.reports.formats import CSV, FORMATS, JSON_LINES, TSV, WRITE_OPTIONS
from imgclean.reports.record_blocks import RecordBlock, csv_rows
from imgclean.reports.records import FIELDS, STATUSES, RecordWriter, read_report, report_row
from imgclean.walk import FileEntry

OLD_NS = 1_600_000_000 * 10**9
NAMES = ["plain.png", "caf\u00e9.png", "emoji\U0001f600.png", "bad\udcff\udce9.png", 'q"uote.png', "back\\slash.png",
         "tab\t.png", "line\nbreak.png", "cr\r.png", "\\u0000.png", "ctrl\x01\x1f.png", "\u2028sep.png",
         '"predicted": "",.png'.replace(",", ";"), "None", "nan", "inf"]


class Rel:
    """What the scan's namer is to a block: the path from its `cut` on."""

    def __init__(self, root: str):
        self.cut = len(root) + 1

    def __call__(self, path: str) -> str:
        return path[self.cut:]


def block_of(root: str, sub: str, names, stored: bool, outcome=None) -> RecordBlock:
    folder = f"{root}/{sub}" if sub else root
    entries = [FileEntry(f"{folder}/{n}", 10 + i, OLD_NS + i, "" if i % 5 != 4 else "symbolic link (not followed)",
                         None if i % 5 == 4 else 2049, None if i % 5 == 4 else 100 + i, OLD_NS + i)
               for i, n in enumerate(names)]
    outcome = outcome or (lambda i: (STATUSES[i % len(STATUSES)], None if i % 3 == 0 else f"cl\u00e4ss {i % 2}",
                                     None if i % 4 == 0 else "n\u00e9arest", [None, 0.0, -0.0, 1 / 3, 1e-300, 12345.678,
                                     2.5e17][i % 7], ["", "decode failed: \u00e9", 'x "y" \\ z'][i % 3]))
    outcomes = [outcome(i) for i in range(len(entries))]
    rows = csv_rows(entries, outcomes, len(folder) + 1) if stored else None
    return RecordBlock(entries, outcomes, Rel(root), folder, rows, stored=stored)


def slow_text(fmt, block: RecordBlock, root) -> str:
    """What the format's writer writes for the block's records, one by one."""
    import io

    buf = io.StringIO(newline="")
    writer = fmt.writer(buf, FIELDS)
    start = len(buf.getvalue())
    for record in block.records():
        writer.row(report_row(record, root))
    return buf.getvalue()[start:]


ROOTS = ["/data/in", "/data/\u00e9t\u00e9", None, '/data/q"uote', "/data/bad\udcff"]


@pytest.mark.parametrize("root", ROOTS, ids=["plain", "non-ascii", "none", "quote", "surrogate"])
@pytest.mark.parametrize("sub", ["", "sub/d\u00e9\udcfe"])
@pytest.mark.parametrize("stored", [False, True], ids=["formatted", "stored-rows"])
def test_json_lines_blocks_equal_the_writer_byte_for_byte(root, sub, stored):
    base = "/data/in" if root is None else root
    fast = JSON_LINES.fast(root).block(block_of(base, sub, NAMES, stored))
    assert fast is not None  # the fast path took it: nothing here needs the slow one
    assert fast == slow_text(JSON_LINES, block_of(base, sub, NAMES, stored), root)


# Names every fast path takes (nothing CSV quotes, nothing TSV escapes).
PLAIN = ["plain.png", "caf\u00e9.png", "emoji\U0001f600.png", "bad\udcff\udce9.png", "sp ace.png", "None", "nan", "-inf",
         "'single'.png", "\u2028sep.png"]
FAST = [fmt for fmt in FORMATS if fmt.fast is not None]


def plain_outcome(i: int) -> tuple:
    return (STATUSES[i % len(STATUSES)], None if i % 3 == 0 else f"cl\u00e4ss {i % 2}", None if i % 4 == 0 else "n\u00e9arest",
            [None, 0.0, -0.0, 1 / 3, 1e-300, 12345.678, 2.5e17][i % 7], ["", "decode failed: \u00e9 'x'"][i % 2])


@pytest.mark.parametrize("fmt", FAST, ids=[f.name for f in FAST])
@pytest.mark.parametrize("root", ROOTS[:3], ids=["plain", "non-ascii", "none"])
@pytest.mark.parametrize("sub", ["", "sub/d\u00e9\udcfe"])
@pytest.mark.parametrize("stored", [False, True], ids=["formatted", "stored-rows"])
def test_every_fast_path_writes_what_its_writer_writes(fmt, root, sub, stored):
    base = "/data/in" if root is None else root
    fast = fmt.fast(root).block(block_of(base, sub, PLAIN, stored, plain_outcome))
    if root is None and fmt is CSV:
        assert fast is None  # (CSV's fast path wants a root)
        return
    assert fast is not None
    assert fast == slow_text(fmt, block_of(base, sub, PLAIN, stored, plain_outcome), root)


@pytest.mark.parametrize("fmt", FAST, ids=[f.name for f in FAST])
@pytest.mark.parametrize("stored", [False, True], ids=["formatted", "stored-rows"])
def test_hostile_blocks_write_what_their_records_write(tmp_path, fmt, stored):
    """Whatever a fast path does with a block it cannot format (a name with a tab, a quote, a
    line break...), the report holds the bytes its records written one by one give."""
    whole, each = tmp_path / f"whole{fmt.extensions[0]}", tmp_path / f"each{fmt.extensions[0]}"
    with RecordWriter(whole, "/data/in") as writer:
        writer.write_block(block_of("/data/in", "sub", NAMES, stored))
    with RecordWriter(each, "/data/in") as writer:
        for record in block_of("/data/in", "sub", NAMES, stored).records():
            writer.write(record)
    assert whole.read_bytes() == each.read_bytes()
    assert [row.record.path for row in read_report(whole)] == [f"sub/{n}" for n in NAMES]


@pytest.mark.parametrize("outcome, why", [
    (lambda i: ("ood", "a", "b", math.nan, ""), "NaN score"),
    (lambda i: ("ood", "a", "b", math.inf if i % 2 else -math.inf, ""), "infinite score"),
    (lambda i: ("ok", "" if i == 3 else "a", "b", 0.5, ""), "an empty class name"),
    (lambda i: ("ok", "a", "", 0.5, ""), "an empty nearest class"),
    (lambda i: ("ok", "a", "b", 0.5, None if i == 2 else ""), "a None message"),
    (lambda i: ("ok", "a", "b", 0.5, "with, a comma" if i == 5 else ""), "a comma"),
])
def test_json_lines_blocks_it_cannot_format_go_row_by_row(tmp_path, outcome, why):
    block = block_of("/data/in", "", NAMES, True, outcome)
    assert JSON_LINES.fast("/data/in").block(block) is None, why
    whole, each = tmp_path / "whole.jsonl", tmp_path / "each.jsonl"
    with RecordWriter(whole, "/data/in") as writer:
        writer.write_block(block_of("/data/in", "", NAMES, True, outcome))
    with RecordWriter(each, "/data/in") as writer:
        for record in block_of("/data/in", "", NAMES, True, outcome).records():
            writer.write(record)
    assert whole.read_bytes() == each.read_bytes()


@pytest.mark.parametrize("fmt", FORMATS, ids=[f.name for f in FORMATS])
@pytest.mark.parametrize("stored", [False, True], ids=["formatted", "stored-rows"])
def test_a_written_block_reads_back_as_its_records(tmp_path, fmt, stored):
    names = NAMES if fmt is JSON_LINES else PLAIN
    path = tmp_path / f"r{fmt.extensions[0]}"
    with RecordWriter(path, "/data/in") as writer:
        writer.write_block(block_of("/data/in", "sub", names, stored, plain_outcome))
    expected = block_of("/data/in", "sub", names, stored, plain_outcome).records()
    rows = list(read_report(path))
    assert [row.error for row in rows] == [""] * len(expected)
    for record, row in zip(expected, rows, strict=True):
        got = row.record
        assert (got.path, got.status, got.predicted, got.nearest, got.score, got.message or "", got.size, got.mtime_ns,
                got.dev, got.ino, row.root) == (record.path, record.status, record.predicted, record.nearest, record.score,
                                                record.message, record.size, record.mtime_ns, record.dev, record.ino,
                                                "/data/in")


def test_the_slow_path_is_what_the_reader_takes(tmp_path):
    """The reference the fast path is held to is the table's writer: its file reads back whole."""
    block = block_of("/data/in", "", NAMES, False)
    path = tmp_path / "r.jsonl"
    with open(path, "w", **WRITE_OPTIONS) as fh:
        fh.write(slow_text(JSON_LINES, block, "/data/in"))
    assert [row.record.path for row in read_report(path)] == NAMES


def test_blocks_whose_records_were_given_out_are_written_from_the_records():
    block = block_of("/data/in", "", NAMES[:3], True)
    block.records()[0].action = "moved"
    assert JSON_LINES.fast("/data/in").block(block) is None
    assert record_blocks.CsvText("/data/in").block(block) is None
    assert TSV.fast("/data/in").block(block) is None


@pytest.mark.parametrize("root", ["/data/tab\there", "/data/back\\slash", "/data/new\nline"])
def test_tsv_writes_a_root_it_must_escape_row_by_row(root):
    block = block_of(root, "", PLAIN, True)
    assert TSV.fast(root).block(block) is None
    assert slow_text(TSV, block, root).count("\n") == len(PLAIN)
