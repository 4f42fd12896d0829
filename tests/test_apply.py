"""`imgclean apply`: a saved report replays the moves of the scan that wrote it, re-checking
every file against its record, and never acts on a row that is not sound."""
import csv
import itertools
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import journal_view, make_incoming_folder, ood_image, quarantined, tree_snapshot, write_png
from imgclean.cli import EXIT_LOCKED, EXIT_REJECTED, EXIT_SKIPPED, EXIT_TERMINATED, app
from imgclean.reports.records import read_report

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [os.fsdecode(a) if isinstance(a, (bytes, os.PathLike)) else str(a) for a in args])


def twin_folders(tmp_path: Path) -> tuple[Path, Path]:
    """Two identical copies of an incoming folder (sub-folders and an awkward name included)."""
    a = tmp_path / "a"
    make_incoming_folder(a)
    rng = np.random.default_rng(7)
    write_png(a / "sub" / "deep" / "odd name 'x'.png", ood_image(rng))
    write_png(a / "sub" / "odd tab\t.png", ood_image(rng))
    b = tmp_path / "b"
    shutil.copytree(a, b)
    return a, b


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_apply_of_a_report_moves_what_a_moving_scan_moves(model_dir, tmp_path, fmt):
    a, b = twin_folders(tmp_path)
    report = tmp_path / f"r.{fmt}"
    result = invoke("scan", a, "-m", model_dir, "--report", report, "-q", "--no-cache")
    assert result.exit_code == 0, result.output
    before = tree_snapshot(a)
    qa, qb = tmp_path / "qa", tmp_path / "qb"
    applied = invoke("apply", report, "--move-to", qa, "--json")
    assert applied.exit_code == 0, applied.output
    scanned = invoke("scan", b, "-m", model_dir, "--move-to", qb, "--json", "--no-cache")
    assert scanned.exit_code == 0, scanned.output
    sa, sb = json.loads(applied.stdout), json.loads(scanned.stdout)
    for key in ("scanned", "ok", "ood", "unreadable", "rejected", "moved", "changed", "move_errors"):
        assert sa[key] == sb[key], key
    assert sa["moved"] >= 5 and sa["invalid"] == 0 and sa["duplicates"] == 0 and sa["root"] == os.path.realpath(a)
    assert quarantined(qa) == quarantined(qb)
    assert journal_view(qa, Path(os.path.realpath(a))) == journal_view(qb, Path(os.path.realpath(b)))
    assert tree_snapshot(a) == tree_snapshot(b)  # the same files stayed
    assert set(before) == set(tree_snapshot(a)) | set(quarantined(qa))

    again = invoke("apply", report, "--move-to", qa, "--json")  # files are gone: nothing moves
    assert again.exit_code == 0, again.output
    s2 = json.loads(again.stdout)
    assert s2["moved"] == 0 and s2["changed"] == sa["moved"]
    assert quarantined(qa) == quarantined(qb)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_apply_dry_run_plans_what_scan_dry_run_plans_and_changes_nothing(model_dir, tmp_path, fmt):
    a, _ = twin_folders(tmp_path)
    report = tmp_path / f"r.{fmt}"
    assert invoke("scan", a, "-m", model_dir, "--report", report, "-q").exit_code == 0
    before = tree_snapshot(a)
    q = tmp_path / "q"
    applied = invoke("apply", report, "--move-to", q, "--dry-run", "--json")
    scanned = invoke("scan", a, "-m", model_dir, "--move-to", q, "--dry-run", "--json")
    assert applied.exit_code == scanned.exit_code == 0, applied.output + scanned.output
    plan_a, plan_s = json.loads(applied.stdout)["plan"], json.loads(scanned.stdout)["plan"]
    assert plan_a == plan_s and len(plan_a) >= 5
    assert tree_snapshot(a) == before and not q.exists()
    human = invoke("apply", report, "--move-to", q, "--dry-run")
    assert human.exit_code == 0 and "would move 'odd_00.png'" in human.stdout


def test_a_file_edited_between_scan_and_apply_is_left_in_place_as_changed(model_dir, tmp_path):
    a, _ = twin_folders(tmp_path)
    report = tmp_path / "r.jsonl"
    assert invoke("scan", a, "-m", model_dir, "--report", report, "-q").exit_code == 0
    edited, replaced = a / "odd_00.png", a / "odd_01.png"
    with open(edited, "ab") as fh:
        fh.write(b"more")
    content = edited.read_bytes()
    tmp = a / "new.tmp"  # another program replaces odd_01 (write temp + rename): a new inode
    tmp.write_bytes(replaced.read_bytes())
    st = replaced.stat()
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.rename(tmp, replaced)
    q = tmp_path / "q"
    result = invoke("apply", report, "--move-to", q, "--json", "--report", tmp_path / "out.csv")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["changed"] == 2 and summary["moved"] >= 3
    assert edited.read_bytes() == content and replaced.exists()
    assert not (q / "odd_00.png").exists() and not (q / "odd_01.png").exists()
    rows = {r["path"]: r for r in csv.DictReader((tmp_path / "out.csv").open())}
    assert rows["odd_00.png"]["status"] == "changed" and rows["odd_00.png"]["action"] == "changed"
    assert rows["odd_02.png"]["action"] == "moved" and rows["odd_02.png"]["root"] == os.path.realpath(a)
    assert invoke("apply", report, "--move-to", tmp_path / "q2", "--fail-on-skip", "-q").exit_code == EXIT_SKIPPED


def test_bad_rows_are_reported_and_the_report_moves_nothing(model_dir, tmp_path):
    a, _ = twin_folders(tmp_path)
    report = tmp_path / "r.jsonl"
    assert invoke("scan", a, "-m", model_dir, "--report", report, "-q").exit_code == 0
    victim = tmp_path / "victim.png"  # beside the folder: `..` must never reach it
    write_png(victim, ood_image(np.random.default_rng(1)))
    good = json.loads(report.read_text().splitlines()[0])
    st = victim.stat()
    bad = [
        {**good, "path": "../victim.png", "status": "ood", "size": st.st_size, "mtime_ns": st.st_mtime_ns,
         "dev": st.st_dev, "ino": st.st_ino},
        {**good, "path": os.fspath(victim), "status": "ood"},
        {**good, "path": "sub/../../victim.png", "status": "ood"},
        {**good, "status": "weird"},
        {**good, "path": "x.png", "size": "big"},
        {**good, "path": "y.png", "size": -3},
        {**good, "path": "z.png", "score": "high"},
        {**good, "path": "w.png", "root": "relative/root"},
    ]
    with open(report, "a") as fh:
        for row in bad:
            fh.write(json.dumps(row) + "\n")
        fh.write("{not json\n")
        fh.write("[1, 2]\n")
    rows = list(read_report(report))
    errors = [r.error for r in rows if r.record is None]
    assert len(errors) == len(bad) + 2
    for text in ("climbs out of the root", "is absolute", "unknown status 'weird'", "size 'big'", "size -3",
                 "score 'high'", "root 'relative/root'", "not JSON", "not a JSON object"):
        assert any(text in e for e in errors), text
    q = tmp_path / "q"
    before = tree_snapshot(a)
    result = invoke("apply", report, "--move-to", q, "--json")
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    # a report with a bad row is refused whole: the sound rows above and below it move nothing
    assert summary["invalid"] == len(bad) + 2 and summary["moved"] == 0 and summary["refused"]
    assert summary["rows"] == len(rows) and "nothing was applied" in summary["error"]
    assert victim.exists() and not q.exists() and tree_snapshot(a) == before
    assert "line" in result.stderr and "not applied" in result.stderr and "Traceback" not in result.output


def test_duplicate_records_move_a_file_once(model_dir, tmp_path):
    a, _ = twin_folders(tmp_path)
    report = tmp_path / "r.jsonl"
    assert invoke("scan", a, "-m", model_dir, "--report", report, "-q").exit_code == 0
    lines = report.read_text().splitlines()
    report.write_text("\n".join(lines + lines) + "\n")
    result = invoke("apply", report, "--move-to", tmp_path / "q", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["duplicates"] == len(lines) and summary["scanned"] == len(lines) and summary["changed"] == 0


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_names_that_are_not_utf8_round_trip(model_dir, tmp_path, fmt):
    a = tmp_path / "a"
    a.mkdir()
    name = b"caf\xe9 \xff.png"
    write_png(Path(os.fsdecode(os.path.join(os.fsencode(a), name))), ood_image(np.random.default_rng(2)))
    report = tmp_path / f"r.{fmt}"
    assert invoke("scan", a, "-m", model_dir, "--report", report, "-q").exit_code == 0
    if fmt == "jsonl":
        assert "\\udce9" in report.read_text()
    [row] = list(read_report(report))
    assert os.fsencode(row.record.path) == name
    q = tmp_path / "q"
    result = invoke("apply", report, "--move-to", q, "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["moved"] == 1, result.output
    assert os.listdir(os.fsencode(q)).count(name) == 1 and not os.path.lexists(os.path.join(os.fsencode(a), name))


def test_root_override_for_a_folder_mounted_elsewhere(model_dir, tmp_path):
    a, _ = twin_folders(tmp_path)
    report = tmp_path / "r.csv"
    assert invoke("scan", a, "-m", model_dir, "--report", report, "-q").exit_code == 0
    moved_there = tmp_path / "elsewhere"
    os.rename(a, moved_there)
    result = invoke("apply", report, "--move-to", tmp_path / "q")
    assert result.exit_code == 2 and "--root" in result.output
    result = invoke("apply", report, "--move-to", tmp_path / "q", "--root", moved_there, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["moved"] >= 5 and (tmp_path / "q" / "odd_00.png").exists()


def test_a_report_from_an_older_imgclean_moves_nothing(model_dir, tmp_path):
    a, _ = twin_folders(tmp_path)
    report = tmp_path / "r.csv"
    assert invoke("scan", a, "-m", model_dir, "--report", report, "-q").exit_code == 0
    old = ("path", "status", "predicted", "nearest", "score", "action", "destination", "message")
    rows = list(csv.DictReader(report.open()))
    with open(tmp_path / "old.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=old, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    before = tree_snapshot(a)
    for root in ((), ("--root", a)):  # its rows are refused before any folder is chosen
        result = invoke("apply", tmp_path / "old.csv", "--move-to", tmp_path / "q", *root, "--json")
        assert result.exit_code == 1 and "scan again" in result.stderr
        assert json.loads(result.stdout)["moved"] == 0 and tree_snapshot(a) == before
    ok_rows = tmp_path / "ok.csv"  # no rejected row, so nothing to refuse, and no folder named
    with open(ok_rows, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=old, extrasaction="ignore")
        w.writeheader()
        w.writerows(r for r in rows if r["status"] == "ok")
    result = invoke("apply", ok_rows, "--move-to", tmp_path / "q")
    assert result.exit_code == 2 and "--root" in result.output
    # the review page still reads both kinds of report
    for r in (report, tmp_path / "old.csv"):
        assert invoke("report", r, "-o", tmp_path / "page.html", "--root", a).exit_code == 0


@pytest.mark.parametrize("where", ["same", "parent"])
def test_move_to_the_folder_or_above_it_is_refused(model_dir, tmp_path, where):
    a, _ = twin_folders(tmp_path)
    report = tmp_path / "r.jsonl"
    assert invoke("scan", a, "-m", model_dir, "--report", report, "-q").exit_code == 0
    result = invoke("apply", report, "--move-to", a if where == "same" else tmp_path)
    assert result.exit_code == 2 and "--move-to" in result.output


def test_usage_errors(model_dir, tmp_path):
    a, _ = twin_folders(tmp_path)
    report = tmp_path / "r.jsonl"
    assert invoke("scan", a, "-m", model_dir, "--report", report, "-q").exit_code == 0
    assert invoke("apply", tmp_path / "none.jsonl", "--move-to", tmp_path / "q").exit_code == 2
    (tmp_path / "r.txt").write_text("x")
    assert invoke("apply", tmp_path / "r.txt", "--move-to", tmp_path / "q").exit_code == 2
    result = invoke("apply", report, "--move-to", tmp_path / "q", "--report", report)
    assert result.exit_code == 2 and "overwrite" in result.output
    assert invoke("apply", report, "--move-to", tmp_path / "q", "--root", tmp_path / "none").exit_code == 2
    (tmp_path / "empty.csv").write_text("")
    result = invoke("apply", tmp_path / "empty.csv", "--move-to", tmp_path / "q", "--root", a)
    assert result.exit_code == 1 and "not an imgclean scan report" in result.output


def test_fail_on_reject_and_an_interrupted_apply(model_dir, tmp_path, monkeypatch):
    from imgclean import cli

    a, _ = twin_folders(tmp_path)
    report = tmp_path / "r.jsonl"
    assert invoke("scan", a, "-m", model_dir, "--report", report, "-q").exit_code == 0
    assert invoke("apply", report, "--move-to", tmp_path / "q", "--dry-run", "--fail-on-reject", "-q").exit_code == EXIT_REJECTED
    monkeypatch.setattr(cli.StopFlag, "__call__", lambda self: True)  # as if SIGTERM came at once
    before = tree_snapshot(a)
    result = invoke("apply", report, "--move-to", tmp_path / "q", "--json")
    assert result.exit_code == EXIT_TERMINATED, result.output
    summary = json.loads(result.stdout)  # stopped while the report was being checked: nothing applied
    assert summary["interrupted"] and summary["scanned"] == 0 and tree_snapshot(a) == before
    rows = len(report.read_text().splitlines())
    calls = itertools.count()
    monkeypatch.setattr(cli.StopFlag, "__call__", lambda self: next(calls) >= rows)  # SIGTERM once checked
    result = invoke("apply", report, "--move-to", tmp_path / "q", "--json")
    assert result.exit_code == EXIT_TERMINATED, result.output
    summary = json.loads(result.stdout)
    assert summary["interrupted"] and summary["scanned"] == 1


def test_apply_on_a_folder_another_run_holds_exits_at_once(model_dir, tmp_path):
    from imgclean.quarantine.locking import ScanLock

    a, _ = twin_folders(tmp_path)
    report = tmp_path / "r.jsonl"
    assert invoke("scan", a, "-m", model_dir, "--report", report, "-q").exit_code == 0
    before = tree_snapshot(a)
    with ScanLock(Path(os.path.realpath(a))):
        result = invoke("apply", report, "--move-to", tmp_path / "q")
    assert result.exit_code == EXIT_LOCKED and "another imgclean run" in result.output
    assert tree_snapshot(a) == before
