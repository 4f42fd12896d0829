"""imgclean's own outputs never land in a quarantine; lock contention is one line, exit 4,
naming the folder that is busy (issue 10 items 6, 11, 12)."""
import os

import pytest
from typer.testing import CliRunner

from conftest import flat, tree_snapshot
from imgclean.cli import EXIT_LOCKED, EXIT_USAGE, app
from imgclean.quarantine.locking import ScanLock

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def filled_quarantine(model_dir, incoming, tmp_path):
    root, _ = incoming
    quarantine = tmp_path / "q"
    result = invoke("scan", root, "-m", model_dir, "--move-to", quarantine, "-q")
    assert result.exit_code == 0, result.output
    assert (quarantine / "imgclean-manifest.jsonl").is_file()
    return root, quarantine


@pytest.mark.parametrize("case", ["scan_report_manifest", "report_o_manifest", "scan_html_in_q", "scan_report_in_q_sub",
                                  "fit_o_in_q", "report_o_in_q", "manifest_name_elsewhere"])
def test_outputs_never_go_into_a_quarantine(model_dir, train_dir, filled_quarantine, tmp_path, case):
    root, q = filled_quarantine
    (q / "sub").mkdir(exist_ok=True)
    args = {
        "scan_report_manifest": ("scan", root, "-m", model_dir, "--report", q / "imgclean-manifest.jsonl"),
        "report_o_manifest": ("report", q, "-o", q / "imgclean-manifest.jsonl"),
        "scan_html_in_q": ("scan", root, "-m", model_dir, "--html", q / "page.html"),
        "scan_report_in_q_sub": ("scan", root, "-m", model_dir, "--report", q / "sub" / "r.csv"),
        "fit_o_in_q": ("fit", train_dir, "-o", q / "model", "--epochs", "1"),
        "report_o_in_q": ("report", q, "-o", q / "sub" / "page.html"),
        "manifest_name_elsewhere": ("scan", root, "-m", model_dir, "--report", tmp_path / "imgclean-manifest.jsonl"),
    }[case]
    before = tree_snapshot(q), tree_snapshot(root)
    result = invoke(*args)
    assert result.exit_code == EXIT_USAGE, result.output
    assert "quarantine" in result.output or "imgclean-manifest.jsonl" in result.output
    assert "Traceback" not in result.output
    assert (tree_snapshot(q), tree_snapshot(root)) == before
    assert not (tmp_path / "imgclean-manifest.jsonl").exists()


def test_outputs_inside_the_scans_own_move_to_folder_are_refused_before_it_exists(model_dir, incoming, tmp_path):
    root, _ = incoming
    q = tmp_path / "new-q"
    for option, name in (("--report", "r.csv"), ("--html", "page.html")):
        q.mkdir(exist_ok=True)
        result = invoke("scan", root, "-m", model_dir, "--move-to", q, option, q / name)
        assert result.exit_code == EXIT_USAGE, result.output
        assert "--move-to" in result.output
    assert list(q.iterdir()) == []  # nothing ran


def test_outputs_beside_a_quarantine_are_fine(model_dir, filled_quarantine, tmp_path):
    root, q = filled_quarantine
    report = tmp_path / "r.csv"
    result = invoke("report", q, "-o", tmp_path / "page.html")
    assert result.exit_code == 0, result.output
    assert invoke("scan", root, "-m", model_dir, "--report", report, "-q").exit_code == 0 and report.is_file()


def test_restore_while_the_quarantine_is_locked_is_one_line_and_exit_4(filled_quarantine):
    root, q = filled_quarantine
    before = tree_snapshot(q)
    with ScanLock(q):
        result = invoke("restore", q)
    assert result.exit_code == EXIT_LOCKED, result.output
    assert "Traceback" not in result.output
    assert str(q) in result.output and f"pid {os.getpid()}" in result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1
    assert tree_snapshot(q) == before


def test_a_scan_moving_into_a_busy_quarantine_names_the_quarantine(model_dir, incoming, tmp_path):
    root, _ = incoming
    q = tmp_path / "busy-q"
    q.mkdir()
    before = tree_snapshot(root)
    with ScanLock(q):
        result = invoke("scan", root, "-m", model_dir, "--move-to", q, "--json")
    assert result.exit_code == EXIT_LOCKED, result.output
    message = flat(result.output)
    assert flat(f"{q} is in use by another imgclean run") in message
    assert flat(f"{root} is in use") not in message  # the scanned folder is not the busy one
    assert tree_snapshot(root) == before
