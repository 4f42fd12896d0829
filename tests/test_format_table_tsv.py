"""TSV, the format table's third entry (reports/formats.py): added as one entry, covered by the
table's parametrised tests (tests/test_format_table.py) and by these, on what is its own: any file
name stays one cell of one line (tabs, line breaks, backslashes escaped; bytes that are not UTF-8
written as they are), and a damaged row is an error of its own, never part of another row."""
from __future__ import annotations

import os

import pytest

from imgclean.reports.formats import TSV, ReportError, format_for
from imgclean.reports.records import FIELDS, RecordWriter, ReportFile, ScanRecord, read_report

ROOT = "/data/in"
NAMES = ["plain.png", "tab\there.png", "new\nline.png", "cr\rname.png", "crlf\r\n.png", "back\\slash.png",
         "back\\tnot-a-tab.png", "ends-with\\", "\\\\double.png", 'q"uote, comma.png', "caf\u00e9.png",
         "bad\udcff.png", "\t\n\\", "nul-free \u2028 \x85 line seps.png"]


def write(path, names, **fields):
    with RecordWriter(path, ROOT) as writer:
        for i, name in enumerate(names):
            writer(ScanRecord(name, "ood", "a", "b", 1.5, size=i, mtime_ns=i, dev=1, ino=i + 1, **fields))


def test_any_file_name_is_one_cell_of_one_line(tmp_path):
    path = tmp_path / "r.tsv"
    write(path, NAMES, message="a\tmessage\nwith \\ and\0 a NUL")
    data = path.read_bytes()
    lines = data.split(b"\n")
    assert lines[-1] == b"" and len(lines) == 1 + len(NAMES) + 1  # the header, a line a row, the final newline
    assert all(line.count(b"\t") == len(FIELDS) - 1 for line in lines[:-1])
    assert b"\r" not in data and b"\0" not in data
    assert b"bad\xff.png" in data  # the name's own bytes, as CSV writes them
    rows = list(read_report(path))
    assert [row.error for row in rows] == [""] * len(NAMES)
    assert [row.record.path for row in rows] == NAMES
    assert {row.record.message for row in rows} == {"a\tmessage\nwith \\ and\0 a NUL"}


def test_a_damaged_row_is_its_own_error_and_the_next_rows_are_read(tmp_path):
    path = tmp_path / "r.tsv"
    write(path, ["first.png", "second.png"])
    header, first, second = path.read_text().splitlines()
    cells = first.split("\t")
    damaged = [
        "\t".join(["bad\\escape.png", *cells[1:]]),  # a backslash before e
        "\t".join(["ends\\", *cells[1:]]) + "\\",  # a lone backslash at the end
        "\t".join(cells[:5]),  # too few cells (a row cut short)
        "\t".join([*cells, "extra"]),  # one cell too many
        "\t".join(["stray\rcr.png", *cells[1:]]),  # a carriage return inside a line
    ]
    path.write_bytes(("\n".join([header, *damaged, second, ""])).encode())
    rows = list(read_report(path))
    assert [row.line for row in rows] == list(range(2, 2 + len(damaged) + 1))  # a row a line, each line once
    assert [row.record is None for row in rows] == [True] * len(damaged) + [False]
    for row, problem in zip(rows, ("backslash before 'e'", "backslash before ''", "5 cells where the header names 14",
                                   "15 cells where the header names 14", "carriage return inside a line")):
        assert problem in row.error and "\n" not in row.error
    assert rows[-1].record.path == "second.png" and rows[-1].root == ROOT


def test_a_stray_carriage_return_never_makes_a_row_of_its_own(tmp_path):
    """A CR inside a line (never written: a cell's CR is escaped) makes the whole line an error:
    what follows it is not read as a row of its own, even a well-formed one."""
    path = tmp_path / "r.tsv"
    write(path, ["a.png"])
    header, row = path.read_text().splitlines()
    path.write_bytes(f"{header}\nx.png\tood\r{row}\n{row}\n".encode())
    rows = list(read_report(path))
    assert [(r.line, r.record is None) for r in rows] == [(2, True), (3, False)]
    assert "carriage return" in rows[0].error


def test_crlf_line_ends_are_read_and_a_tsv_needs_the_columns(tmp_path):
    path = tmp_path / "r.tsv"
    write(path, ["a.png", "b.png"])
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    assert [row.record.path for row in read_report(path)] == ["a.png", "b.png"]
    other = tmp_path / "other.tsv"
    other.write_text("name\tstatus\na.png\tood\n")
    with pytest.raises(ReportError, match="no path column"):
        list(read_report(other))
    with ReportFile(other) as report:
        assert report.kind() == "scan"


def test_tsv_is_one_entry_of_the_table(tmp_path):
    assert format_for(tmp_path / "r.TSV") is TSV and format_for("r.tab") is TSV
    write(tmp_path / "r.tsv", ["a.png"])
    with open(tmp_path / "r.tsv", "rb") as fh:
        assert fh.readline() == ("\t".join(FIELDS) + "\n").encode()
    assert os.path.getsize(tmp_path / "r.tsv") > 0
