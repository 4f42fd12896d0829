"""Every structured input of the CLI met with a depth bomb, a huge line or field, a NUL or bytes
that are not UTF-8: a report given to `report`, a quarantine's journal (restore, and a scan
moving into it), a model's config.json and safetensors header (`info`, `scan`), an audit report,
and the check that a folder is a model before `fit --force` replaces it. Each is a one-line
error or a reported, ignored record: never a traceback, never a file touched."""
import json
import os
import struct
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import make_incoming_folder, quarantined, tree_snapshot
from imgclean.cli import app
from imgclean.quarantine.journal import MANIFEST_NAME, fold
from imgclean.structured import StructuredInputError

runner = CliRunner()
BOMB = "[" * 30_000 + "]" * 30_000  # 60 KB; json.loads raises RecursionError on it


def invoke(*args):
    return runner.invoke(app, [os.fsdecode(a) if isinstance(a, os.PathLike) else str(a) for a in args])


def no_traceback(result):
    text = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert "Traceback" not in text and "RecursionError" not in text, text
    assert not isinstance(result.exception, RecursionError), result.exception
    return text


@pytest.mark.parametrize("damage", ["bomb", "long", "latin1", "nul"])
@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_the_review_page_of_a_damaged_report_is_one_error_naming_the_line(model_dir, incoming, tmp_path, damage, fmt):
    root, _ = incoming
    report = tmp_path / f"r.{fmt}"
    assert invoke("scan", root, "-m", model_dir, "--report", report, "-q").exit_code == 0
    lines = report.read_bytes().splitlines(keepends=True)
    bad = {
        "bomb": BOMB.encode() + b"\n",
        "long": b'"' + b"x" * (9 << 20) + b'",ok\n' if fmt == "csv" else b'{"path": "' + b"x" * (9 << 20) + b'"}\n',
        "latin1": b'{"path": "caf\xe9.png", "status": "ok"}\n' if fmt == "jsonl" else None,
        "nul": b"a\x00.png,ok\n" if fmt == "csv" else b'{"path": "a\x00.png", "status": "ok"}\n',
    }[damage]
    if bad is None:
        pytest.skip("a CSV report keeps names that are not UTF-8 as they are (surrogate-escaped)")
    if fmt == "csv" and damage == "bomb":
        bad = b'"' + BOMB.encode() + b'",ok\n'  # CSV is flat: the bomb is a plain (long) name here
    report.write_bytes(b"".join(lines[:3] + [bad] + lines[3:]))
    result = invoke("report", report, "-o", tmp_path / "page.html")
    text = no_traceback(result)
    if fmt == "csv" and damage == "bomb":
        assert result.exit_code == 0, text  # a name of 60,000 brackets is just a name
        return
    assert result.exit_code == 1, text
    assert "line 4" in text, text


def make_quarantine(model_dir, incoming, tmp_path) -> tuple[Path, Path]:
    root, _ = incoming
    q = tmp_path / "q"
    result = invoke("scan", root, "-m", model_dir, "--move-to", q, "-q", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["moved"] >= 3, result.output
    return root, q


@pytest.mark.parametrize("damage", [BOMB.encode(), b'{"op": "move", "x": "' + b"y" * (5 << 20) + b'"}',
                                    b'{"op": "move", "id": "caf\xe9"}', b'{"op": "m\x00ve"}',
                                    b'{"op": "move", "size": ' + b"9" * 5000 + b"}"])
def test_a_damaged_journal_line_is_reported_and_never_stops_restore_or_a_scan_into_it(model_dir, incoming, tmp_path, damage):
    root, q = make_quarantine(model_dir, incoming, tmp_path)
    manifest = q / MANIFEST_NAME
    lines = manifest.read_bytes().splitlines(keepends=True)
    manifest.write_bytes(b"".join(lines[:2] + [damage + b"\n"] + lines[2:]))
    journal = fold(q)
    assert [bad.line for bad in journal.invalid] == [3] and len(journal.moves()) >= 3
    moved = quarantined(q)

    # another scan moves into the same quarantine: the damaged line is ignored, not fatal
    (root / "more").mkdir()
    make_incoming_folder(root / "more", normal=1, ood=2, seed=5)
    result = invoke("scan", root / "more", "-m", model_dir, "--move-to", q, "-q", "--json")
    no_traceback(result)
    assert result.exit_code == 0 and json.loads(result.stdout)["moved"] >= 1, result.output
    # restore puts back every sound move and reports the damaged line
    result = invoke("restore", q, "--json")
    no_traceback(result)
    statuses = [f["status"] for f in json.loads(result.stdout)["files"]]
    assert result.exit_code == 1 and statuses.count("invalid") == 1, result.output
    assert not quarantined(q) and all((root / name).exists() for name in moved)


def damaged_config(model: Path, text: bytes) -> None:
    os.chmod(model / "config.json", 0o644)
    (model / "config.json").write_bytes(text)


@pytest.mark.parametrize("content", [
    BOMB.encode(), b'{"format_version": 1, "x": ' + BOMB.encode() + b"}", b'{"format_version": 1, "arch": "a\x00"}',
    b'{"format_version": 1, "arch": "\xff"}', b'{"format_version": ' + b"9" * 5000 + b"}",
])
def test_a_damaged_config_json_is_a_one_line_refusal_for_info_and_scan(model_copy, incoming, tmp_path, content):
    damaged_config(model_copy, content)
    root, _ = incoming
    before = tree_snapshot(root)
    for args in (("info", model_copy), ("scan", root, "-m", model_copy, "--move-to", tmp_path / "q", "-q")):
        result = invoke(*args)
        text = no_traceback(result)
        assert result.exit_code == 1 and "config.json" in text and "damaged" in text, text
    assert tree_snapshot(root) == before and not (tmp_path / "q").exists()


def test_a_depth_bomb_in_a_safetensors_header_is_refused(model_copy, incoming):
    header = BOMB.encode()
    weights = model_copy / "weights.safetensors"
    os.chmod(weights, 0o644)
    weights.write_bytes(struct.pack("<Q", len(header)) + header)
    result = invoke("scan", incoming[0], "-m", model_copy, "-q")
    text = no_traceback(result)
    assert result.exit_code == 1 and "weights.safetensors" in text and "deeper than" in text, text


def test_the_model_directory_check_reads_config_json_bounded(model_copy):
    from imgclean.store.artifact import ModelError, check_replaceable

    damaged_config(model_copy, BOMB.encode())
    (model_copy / "notes.txt").write_text("mine")
    with pytest.raises(ModelError, match="not an imgclean model directory"):
        check_replaceable(model_copy, force=True)


def test_a_damaged_audit_report_is_a_value_error_naming_the_line(tmp_path):
    from imgclean.reports.audit_records import read_audit

    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text('{"path": "a.png", "issue": "ok"}\n' + BOMB + "\n")
    with pytest.raises(StructuredInputError, match="a.jsonl line 2: nested deeper"):
        read_audit(jsonl)
    csv_file = tmp_path / "a.csv"
    csv_file.write_text("path,issue,score\na.png,ok,high\n")
    with pytest.raises(StructuredInputError, match="a.csv line 2: score is not a number"):
        read_audit(csv_file)
    csv_file.write_text("path,issue,score\na.png,ok," + "1" * 200_000 + "\n")
    assert read_audit(csv_file)[0]["score"] > 1  # over csv's default field limit: still read


def test_a_bomb_settings_file_is_a_usage_error(tmp_path):
    settings = tmp_path / "s.yaml"
    settings.write_text("scan:\n  model: " + "[" * 20_000 + "]" * 20_000 + "\n")
    result = invoke("scan", tmp_path, "--config", settings)
    text = no_traceback(result)
    assert result.exit_code == 2 and "deeperthan" in "".join(text.replace("│", "").split()), text


def test_journal_lines_are_read_bounded_and_never_through_a_link_or_a_fifo(tmp_path):
    from imgclean.quarantine.journal import iter_lines, read_lines

    good = {"op": "move", "id": "a1", "state": "done"}
    journal = tmp_path / MANIFEST_NAME
    journal.write_bytes(json.dumps(good).encode() + b"\n" + BOMB.encode() + b"\n" + b'{"x": "\xff"}\n'
                        + b'{"op": "m' + b"o" * (5 << 20))  # a torn last line, too long: dropped
    lines = read_lines(journal)
    assert [n for n, _ in lines] == [1, 2, 3] and lines[0][1] == good
    assert "deeper than" in str(lines[1][1]) and "not UTF-8" in str(lines[2][1])
    assert all(isinstance(v, ValueError) for _, v in lines[1:])
    link = tmp_path / "link" / MANIFEST_NAME
    link.parent.mkdir()
    os.symlink(journal, link)
    with pytest.raises(OSError):
        read_lines(link)  # a quarantine's own journal is never read through a link
    assert len(read_lines(link, follow_links=True)) == 3  # a file the user names for the review page may be
    fifo = tmp_path / "fifo" / MANIFEST_NAME
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="not a regular file"):
        list(iter_lines(fifo))  # at once: a FIFO never hangs the reader
