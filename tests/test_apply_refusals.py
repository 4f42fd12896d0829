"""`imgclean apply` refuses what a scan could never have reported, and applies a report whole or
not at all (issue 23, items 4 and 5).

- A bad row anywhere (a field over csv's old limit, a depth bomb, bytes that are not UTF-8, a
  NUL) moves nothing, with or without -q/--json/the progress bar: one clear error, exit 1, and a
  complete JSON summary.
- A row naming a file of an older quarantine inside the folder, its manifest, a hidden file, a
  file reached through a symbolic link, or another folder than the other rows, is refused.
- The folder is the one the user names (--root), or the one the report records only when the
  report is the user's own and nobody else can write it.
"""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import make_incoming_folder, ood_image, quarantined, tree_snapshot, write_png
from imgclean.cli import app
from imgclean.cli import common as cli_common

runner = CliRunner()
BOMB = "[" * 30_000 + "]" * 30_000


def invoke(*args):
    return runner.invoke(app, [os.fsdecode(a) if isinstance(a, os.PathLike) else str(a) for a in args])


def scanned(model_dir, tmp_path: Path, fmt: str = "jsonl") -> tuple[Path, Path]:
    root = tmp_path / "a"
    make_incoming_folder(root)
    write_png(root / "sub" / "odd_deep.png", ood_image(np.random.default_rng(3)))
    report = tmp_path / f"r.{fmt}"
    result = invoke("scan", root, "-m", model_dir, "--report", report, "-q")
    assert result.exit_code == 0, result.output
    return root, report


def bad_line(kind: str, fmt: str, root: Path) -> bytes:
    """One bad row of `kind` in format `fmt` (None: the kind does not exist in that format)."""
    if fmt == "csv":
        return {
            "csv-field": b'odd_77.png,ood,,,2.0,,,' + b"m" * 200_000 + b',1,1,1,1,' + os.fsencode(root) + b"\r\n",
            "huge-field": b'"' + b"x" * (9 << 20) + b'",ood\r\n',
            "nul": b"odd_\x00.png,ood,,,2.0,,,,1,1,1,1," + os.fsencode(root) + b"\r\n",
        }.get(kind)
    row = {"path": "odd_77.png", "status": "ood", "size": 1, "mtime_ns": 1, "dev": 1, "ino": 1, "root": str(root)}
    return {
        "bomb": BOMB.encode() + b"\n",
        "utf8": json.dumps(row).replace("odd_77", "caf\\u00e9").encode().replace(b"caf\\u00e9", b"caf\xe9") + b"\n",
        "nul": json.dumps(row).encode().replace(b"odd_77", b"odd_\x00") + b"\n",
        "huge-field": b'{"path": "' + b"x" * (9 << 20) + b'"}\n',
    }.get(kind)


def with_bad_row(report: Path, bad: bytes, where: str, fmt: str) -> Path:
    lines = report.read_bytes().splitlines(keepends=True)
    head, body = (lines[:1], lines[1:]) if fmt == "csv" else ([], lines)
    at = {"start": 0, "middle": len(body) // 2, "end": len(body)}[where]
    out = report.with_name(f"bad-{where}.{fmt}")
    out.write_bytes(b"".join(head + body[:at] + [bad] + body[at:]))
    return out


@pytest.mark.parametrize("fmt, kind", [("csv", "csv-field"), ("csv", "huge-field"), ("csv", "nul"),
                                       ("jsonl", "bomb"), ("jsonl", "utf8"), ("jsonl", "nul"), ("jsonl", "huge-field")])
def test_a_bad_row_anywhere_moves_nothing_whatever_the_output_flags(model_dir, tmp_path, monkeypatch, fmt, kind):
    root, report = scanned(model_dir, tmp_path, fmt)
    before = tree_snapshot(root)
    bad = bad_line(kind, fmt, root)
    for where in ("start", "middle", "end"):
        damaged = with_bad_row(report, bad, where, fmt)
        for flags in ((), ("-q",), ("--json",)):
            q = tmp_path / "q"
            with monkeypatch.context() as m:
                if not flags:  # the progress bar drawn (it once read the report ahead: nothing moved)
                    m.setattr(cli_common.err, "is_terminal", True, raising=False)
                result = invoke("apply", damaged, "--move-to", q, *flags)
            case = (kind, where, flags, result.output)
            assert result.exit_code == 1, case
            assert "Traceback" not in result.output and not isinstance(result.exception, RecursionError), case
            assert tree_snapshot(root) == before and not q.exists(), case  # nothing moved, no quarantine made
            assert "line" in result.stderr and result.stderr.count("error:") == 1, case
            if "--json" in flags:
                summary = json.loads(result.stdout)
                assert summary["refused"] and summary["moved"] == 0 and summary["invalid"] >= 1, case
                assert "nothing was applied" in summary["error"] or "not read" in result.stderr, case
    # the same report without the bad row moves its rejects: the refusals above were the bad row's
    result = invoke("apply", report, "--move-to", tmp_path / "q", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["moved"] >= 3, result.output


def test_a_report_that_cannot_be_read_at_all_still_prints_a_json_summary(model_dir, tmp_path):
    root, report = scanned(model_dir, tmp_path, "csv")
    report.write_bytes(b'"' + b"h" * (9 << 20) + b'"\r\n' + report.read_bytes())  # a header over the limit
    result = invoke("apply", report, "--move-to", tmp_path / "q", "--root", root, "--json")
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    summary = json.loads(result.stdout)
    assert summary["refused"] and summary["moved"] == 0 and "longer than" in summary["error"]


def add_rows(report: Path, rows: list[dict]) -> None:
    with open(report, "a") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")


def row_for(root: Path, rel: str, status: str = "ood") -> dict:
    st = os.lstat(root / rel)
    return {"path": rel, "status": status, "score": 3.0, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "dev": st.st_dev, "ino": st.st_ino, "root": os.path.realpath(root)}


def test_an_older_quarantine_inside_the_folder_is_never_moved(model_dir, tmp_path):
    """A report edited to name an older quarantine's files and journal (their identity is there
    for anyone to stat): refused whole; the old quarantine stays one and still restores."""
    root = tmp_path / "a"
    make_incoming_folder(root)
    old = root / "old-q"
    result = invoke("scan", root, "-m", model_dir, "--move-to", old, "-q", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["moved"] >= 3, result.output
    make_incoming_folder(root / "new", normal=2, ood=2, seed=4)
    report = tmp_path / "r.jsonl"
    assert invoke("scan", root, "-m", model_dir, "--report", report, "-q").exit_code == 0
    assert "old-q/" not in report.read_text()  # the walk skipped the quarantine
    held = sorted(quarantined(old))
    add_rows(report, [row_for(root, f"old-q/{held[0]}"), row_for(root, "old-q/imgclean-manifest.jsonl")])
    before = tree_snapshot(root)
    for args in ((), ("--root", root)):
        result = invoke("apply", report, "--move-to", tmp_path / "q2", "--json", *args)
        assert result.exit_code == 1, result.output
        assert "an imgclean quarantine" in result.stderr and "quarantine's journal" in result.stderr
        assert json.loads(result.stdout)["invalid"] == 2 and tree_snapshot(root) == before
    restored = invoke("restore", old, "--json")
    assert restored.exit_code == 0 and json.loads(restored.stdout)["counts"] == {"restored": len(held)}


def test_rows_no_scan_reports_are_refused(model_dir, tmp_path):
    root, report = scanned(model_dir, tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    write_png(outside / "x.png", ood_image(np.random.default_rng(9)))
    os.symlink(outside, root / "link")
    os.symlink(root / "odd_00.png", root / "alias.png")
    write_png(root / ".hidden" / "h.png", ood_image(np.random.default_rng(10)))
    write_png(root / ".dot.png", ood_image(np.random.default_rng(11)))
    (root / "notes.txt").write_text("not an image")
    open(root / ".imgclean.lock", "w").close()
    cases = {
        "link/x.png": "symbolic link", "alias.png": "symbolic link", ".hidden/h.png": "hidden folder",
        ".dot.png": "hidden file", "notes.txt": "not name an image", ".imgclean.lock": "hidden file",
    }
    add_rows(report, [row_for(root, rel) for rel in cases])
    before, outside_before = tree_snapshot(root), tree_snapshot(outside)
    result = invoke("apply", report, "--move-to", tmp_path / "q", "--json")
    assert result.exit_code == 1, result.output
    for rel, why in cases.items():
        assert any(rel in line and why in line for line in result.stderr.splitlines()), (rel, result.stderr)
    assert json.loads(result.stdout)["invalid"] == len(cases)
    assert tree_snapshot(root) == before and tree_snapshot(outside) == outside_before


def test_rows_recording_another_folder_are_refused_even_with_root(model_dir, tmp_path):
    root, report = scanned(model_dir, tmp_path)
    other = tmp_path / "other"
    shutil.copytree(root, other)
    add_rows(report, [row_for(other, "odd_01.png")])
    before = tree_snapshot(root)
    result = invoke("apply", report, "--move-to", tmp_path / "q", "--root", root, "--json")
    assert result.exit_code == 1 and "recorded for another folder" in result.stderr, result.output
    assert tree_snapshot(root) == before


def test_the_recorded_folder_is_trusted_only_from_a_report_no_one_else_can_write(model_dir, tmp_path):
    root, report = scanned(model_dir, tmp_path)
    before = tree_snapshot(root)
    os.chmod(report, 0o666)
    result = invoke("apply", report, "--move-to", tmp_path / "q")
    assert result.exit_code == 2 and "--root" in result.output and "0666" in result.output, result.output
    if os.geteuid() == 0:
        os.chmod(report, 0o644)
        os.chown(report, 65534, 65534)  # nobody's report
        result = invoke("apply", report, "--move-to", tmp_path / "q")
        assert result.exit_code == 2 and "another user" in result.output, result.output
    assert tree_snapshot(root) == before and not (tmp_path / "q").exists()
    result = invoke("apply", report, "--move-to", tmp_path / "q", "--root", root, "--json")  # named: applied
    assert result.exit_code == 0 and json.loads(result.stdout)["moved"] >= 3, result.output


def test_a_folder_inside_a_quarantine_is_refused_as_root(model_dir, tmp_path):
    root, report = scanned(model_dir, tmp_path)
    q = tmp_path / "q"
    assert invoke("scan", root, "-m", model_dir, "--move-to", q, "-q").exit_code == 0
    (q / "sub").mkdir(exist_ok=True)
    result = invoke("apply", report, "--move-to", tmp_path / "q2", "--root", q / "sub")
    assert result.exit_code == 2 and "imgclean quarantine" in result.output, result.output


def test_a_folder_swapped_for_a_link_after_the_check_is_refused_at_the_move(model_dir, tmp_path, monkeypatch):
    """The check before the first move found a real folder; right before the move it is a link to
    the same files (same inodes: the record still matches). The move refuses it."""
    import imgclean.pipeline.apply.report as pipeline_apply

    root, report = scanned(model_dir, tmp_path)
    checked = pipeline_apply.check_report

    def check_then_swap(*args, **kwargs):
        result = checked(*args, **kwargs)
        os.rename(root / "sub", root / "real-sub")
        os.symlink("real-sub", root / "sub")
        return result

    monkeypatch.setattr(pipeline_apply, "check_report", check_then_swap)
    result = invoke("apply", report, "--move-to", tmp_path / "q", "--json")
    assert result.exit_code == 1, result.output
    assert (root / "real-sub" / "odd_deep.png").exists() and not list((tmp_path / "q").rglob("odd_deep.png"))
    assert json.loads(result.stdout)["move_errors"] == 1


@pytest.mark.parametrize("kept", [True, False])
def test_a_report_edited_after_its_check_never_applies_the_edit(model_dir, tmp_path, monkeypatch, kept):
    """A report short enough to keep is applied from the records its check kept (the edit is not
    read at all); a longer one is read again and stops at the change, before moving anything."""
    import imgclean.pipeline.apply.report as pipeline_apply

    root, report = scanned(model_dir, tmp_path)
    if not kept:
        monkeypatch.setattr(pipeline_apply, "KEEP_ROWS", 0)
    checked = pipeline_apply.check_report
    victim = root / "sub" / "odd_deep.png"

    def check_then_edit(*args, **kwargs):
        result = checked(*args, **kwargs)
        lines = report.read_text().splitlines(keepends=True)
        report.write_text("".join(line for line in lines if "odd_deep" not in line) + BOMB + "\n")
        return result

    monkeypatch.setattr(pipeline_apply, "check_report", check_then_edit)
    before = tree_snapshot(root)
    result = invoke("apply", report, "--move-to", tmp_path / "q", "--json")
    summary = json.loads(result.stdout)
    if kept:
        assert result.exit_code == 0 and summary["moved"] >= 3 and not victim.exists(), result.output
    else:
        assert result.exit_code == 1 and "changed while it was checked" in result.stderr, result.output
        assert summary["moved"] == 0 and tree_snapshot(root) == before


def test_a_long_report_read_again_applies_what_a_kept_one_does(model_dir, tmp_path, monkeypatch):
    import imgclean.pipeline.apply.report as pipeline_apply

    root, report = scanned(model_dir, tmp_path)
    copy = tmp_path / "b"
    shutil.copytree(root, copy)
    report_b = tmp_path / "b.jsonl"
    assert invoke("scan", copy, "-m", model_dir, "--report", report_b, "-q").exit_code == 0
    kept = invoke("apply", report, "--move-to", tmp_path / "qa", "--json")
    monkeypatch.setattr(pipeline_apply, "KEEP_ROWS", 2)
    again = invoke("apply", report_b, "--move-to", tmp_path / "qb", "--json")
    assert kept.exit_code == again.exit_code == 0, kept.output + again.output
    a, b = json.loads(kept.stdout), json.loads(again.stdout)
    assert a["moved"] == b["moved"] >= 3 and a["rows"] == b["rows"] and a["scanned"] == b["scanned"]
    assert sorted(quarantined(tmp_path / "qa").values()) == sorted(quarantined(tmp_path / "qb").values())


def test_many_bad_rows_are_counted_and_the_first_ones_named(model_dir, tmp_path):
    from imgclean.cli.apply_audit import SHOWN_BAD_ROWS

    root, report = scanned(model_dir, tmp_path)
    with open(report, "a") as fh:
        fh.write("[1]\n" * (SHOWN_BAD_ROWS + 10))
    result = invoke("apply", report, "--move-to", tmp_path / "q", "--json")
    assert result.exit_code == 1 and json.loads(result.stdout)["invalid"] == SHOWN_BAD_ROWS + 10
    named = [line for line in result.stderr.splitlines() if "not a JSON object" in line]
    assert len(named) == SHOWN_BAD_ROWS and "more bad rows" in result.stderr


def test_the_api_refuses_a_report_with_a_bad_row_the_same_way(model_dir, tmp_path):
    from imgclean import api
    from imgclean.reports.records import ReportError

    root, report = scanned(model_dir, tmp_path)
    before = tree_snapshot(root)
    with open(report, "a") as fh:
        fh.write(BOMB + "\n")
    result = api.apply(report, tmp_path / "q")
    assert result.summary.refused and result.summary.moved == 0 and len(result.invalid) == 1
    assert "deeper than" in result.invalid[0].error and tree_snapshot(root) == before and not (tmp_path / "q").exists()
    broken = tmp_path / "broken.csv"
    broken.write_text("path,verdict\na.png,ood\n")  # not a scan report at all: no status column
    with pytest.raises(ReportError, match="no status column"):
        api.apply(broken, tmp_path / "q", root=root)
