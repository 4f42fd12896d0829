"""fit, scan, info and restore through the real CLI (typer's CliRunner) on tiny generated folders."""
import csv
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import tree_snapshot
from imgclean import __version__
from imgclean.cli import EXIT_LOCKED, EXIT_REJECTED, app
from imgclean.detectors import registry

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def all_files(*roots):
    names = []
    for root in roots:
        for p in Path(root).rglob("*"):
            if p.is_file() and not p.name.startswith(".") and p.suffix == ".png":
                names.append(p.name)
    return sorted(names)


def test_version_and_help():
    result = invoke("--version")
    assert result.exit_code == 0 and __version__ in result.output
    result = invoke("-h")
    assert result.exit_code == 0
    for command in ("fit", "scan", "info", "restore"):
        assert command in result.output


def test_fit_writes_a_model_and_refuses_to_overwrite(train_dir, tmp_path):
    out = tmp_path / "m"
    result = invoke("fit", train_dir, "-o", out, "--epochs", "2", "--min-steps", "0", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["classes"] == ["checker", "stripes_h", "stripes_v"]
    assert summary["arch"] == "lenet" and summary["input_size"] == 16 and summary["channels"] == 1
    fitted = {cls.state_file for cls in registry.unsupervised()}  # every detector fit fits, from the registry
    assert {"detector.npz", "detector-energy.npz", "detector-knn.npz"} <= fitted
    assert {p.name for p in out.iterdir()} == {"config.json", "weights.safetensors", *fitted}
    before = tree_snapshot(out)
    result = invoke("fit", train_dir, "-o", out, "--epochs", "1")
    assert result.exit_code == 2 and "--force" in result.output
    assert tree_snapshot(out) == before
    result = invoke("fit", train_dir, "-o", out, "--epochs", "1", "--min-steps", "0", "--force", "--seed", "3", "-q")
    assert result.exit_code == 0, result.output
    assert tree_snapshot(out) != before


def test_fit_is_deterministic_on_cpu(train_dir, tmp_path):
    for name in ("a", "b"):
        assert invoke("fit", train_dir, "-o", tmp_path / name, "--epochs", "2", "--min-steps", "0", "-q").exit_code == 0
    a = (tmp_path / "a" / "weights.safetensors").read_bytes()
    assert a == (tmp_path / "b" / "weights.safetensors").read_bytes()


def test_fit_errors_name_the_problem(tmp_path, train_dir):
    result = invoke("fit", tmp_path / "nope", "-o", tmp_path / "m")
    assert result.exit_code == 2 and "does not exist" in result.output
    bad = tmp_path / "bad"
    (bad / "cats").mkdir(parents=True)
    (bad / "dogs").mkdir()
    (bad / "dogs" / "x.png").write_bytes(b"not an image")
    (bad / "cats" / "y.png").write_bytes(b"")
    result = invoke("fit", bad, "-o", tmp_path / "m")
    assert result.exit_code == 1
    assert "'cats'" in result.output and "'dogs'" in result.output
    assert "Traceback" not in result.output


def test_info_shows_classes_and_settings(model_dir):
    result = invoke("info", model_dir)
    assert result.exit_code == 0, result.output
    for text in ("checker", "stripes_h", "lenet", "center_weight"):
        assert text in result.output
    data = json.loads(invoke("info", model_dir, "--json").stdout)
    assert data["class_names"] == ["checker", "stripes_h", "stripes_v"] and len(data["thresholds"]) == 3


def test_info_on_a_missing_model_is_a_clear_error(tmp_path):
    result = invoke("info", tmp_path / "none")
    assert result.exit_code == 1 and "no model" in result.output


def test_scan_reports_every_file_with_a_status(model_dir, incoming, tmp_path):
    root, kinds = incoming
    before = tree_snapshot(root)
    report = tmp_path / "r.csv"
    result = invoke("scan", root, "-m", model_dir, "--json", "--report", report)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    for key in ("scanned", "ok", "ood", "unreadable", "moved", "model"):
        assert key in summary
    assert summary["scanned"] == len(kinds) and summary["moved"] == 0 and summary["unreadable"] == 1
    rows = {r["path"]: r for r in csv.DictReader(report.open())}
    assert set(rows) == set(kinds)
    assert rows["broken.png"]["status"] == "unreadable"
    for name, kind in kinds.items():
        if kind == "ood":
            assert rows[name]["status"] == "ood" and float(rows[name]["score"]) > 1
    assert tree_snapshot(root) == before  # no --move-to: nothing changes


def test_scan_jsonl_report(model_dir, incoming, tmp_path):
    root, kinds = incoming
    report = tmp_path / "r.jsonl"
    assert invoke("scan", root, "-m", model_dir, "--report", report, "-q").exit_code == 0
    lines = report.read_text().splitlines()
    assert len(lines) == len(kinds)
    assert {"path", "status", "score", "predicted", "nearest"} <= set(json.loads(lines[0]))


def test_dry_run_changes_nothing_and_prints_the_plan(model_dir, incoming, tmp_path):
    root, _ = incoming
    quarantine = tmp_path / "q"
    before = tree_snapshot(root)
    result = invoke("scan", root, "-m", model_dir, "--move-to", quarantine, "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["moved"] == 0 and summary["would_move"] == len(summary["plan"]) >= 5
    assert {p["source"] for p in summary["plan"]} >= {"broken.png", "odd_00.png"}
    assert tree_snapshot(root) == before
    assert not quarantine.exists()
    human = invoke("scan", root, "-m", model_dir, "--move-to", quarantine, "--dry-run")
    assert "would move 'broken.png'" in human.stdout


def test_move_to_quarantines_rejects_and_keeps_every_file_once(model_dir, incoming, tmp_path):
    root, kinds = incoming
    quarantine = tmp_path / "q"
    result = invoke("scan", root, "-m", model_dir, "--move-to", quarantine, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["moved"] == summary["rejected"] >= 5
    moved = set(all_files(quarantine))
    assert {n for n, k in kinds.items() if k != "normal"} <= moved
    assert sorted(all_files(root, quarantine)) == sorted(kinds)  # every file exactly once
    manifest = (quarantine / "imgclean-manifest.jsonl").read_text().splitlines()
    assert sum(json.loads(line).get("state") == "done" for line in manifest) == summary["moved"]
    # A rerun finds nothing more to move.
    again = json.loads(invoke("scan", root, "-m", model_dir, "--move-to", quarantine, "--json").stdout)
    assert again["moved"] == 0 and again["scanned"] == len(kinds) - summary["moved"]


def test_a_move_never_overwrites(model_dir, incoming, tmp_path):
    root, _ = incoming
    quarantine = tmp_path / "q"
    quarantine.mkdir()
    (quarantine / "broken.png").write_bytes(b"precious")
    result = invoke("scan", root, "-m", model_dir, "--move-to", quarantine, "-q")
    assert result.exit_code == 0, result.output
    assert (quarantine / "broken.png").read_bytes() == b"precious"
    assert (quarantine / "broken (1).png").read_bytes().startswith(b"\x89PNG")


def test_restore_round_trips(model_dir, incoming, tmp_path):
    root, _ = incoming
    before = tree_snapshot(root)
    quarantine = tmp_path / "q"
    assert invoke("scan", root, "-m", model_dir, "--move-to", quarantine, "-q").exit_code == 0
    assert tree_snapshot(root) != before
    dry = invoke("restore", quarantine, "--dry-run")
    assert dry.exit_code == 0 and "would restore" in dry.stdout
    result = invoke("restore", quarantine, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["counts"]["restored"] >= 5
    after = tree_snapshot(root)
    assert {k: v[::2] for k, v in after.items()} == {k: v[::2] for k, v in before.items()}  # size + content
    assert all_files(quarantine) == []


def test_restore_never_overwrites_a_file_that_reappeared(model_dir, incoming, tmp_path):
    root, _ = incoming
    quarantine = tmp_path / "q"
    assert invoke("scan", root, "-m", model_dir, "--move-to", quarantine, "-q").exit_code == 0
    (root / "broken.png").write_bytes(b"new file")
    result = invoke("restore", quarantine)
    assert result.exit_code == 1 and "not restored" in result.output
    assert (root / "broken.png").read_bytes() == b"new file"
    assert (quarantine / "broken.png").exists()


def test_fail_on_reject_exit_code(model_dir, incoming):
    root, _ = incoming
    assert invoke("scan", root, "-m", model_dir, "--fail-on-reject", "-q").exit_code == EXIT_REJECTED


def test_fail_on_reject_is_zero_when_clean(model_dir, tmp_path, train_dir):
    clean = tmp_path / "clean"
    clean.mkdir()
    result = invoke("scan", clean, "-m", model_dir, "--fail-on-reject", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["scanned"] == 0


@pytest.mark.parametrize("case", ["missing_folder", "same_as_root", "parent_of_root", "dry_run_alone", "bad_report"])
def test_usage_errors_exit_2(model_dir, incoming, tmp_path, case):
    root, _ = incoming
    args = {
        "missing_folder": ("scan", tmp_path / "nope", "-m", model_dir),
        "same_as_root": ("scan", root, "-m", model_dir, "--move-to", root),
        "parent_of_root": ("scan", root, "-m", model_dir, "--move-to", root.parent),
        "dry_run_alone": ("scan", root, "-m", model_dir, "--dry-run"),
        "bad_report": ("scan", root, "-m", model_dir, "--report", tmp_path / "r.txt"),
    }[case]
    before = tree_snapshot(root)
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert tree_snapshot(root) == before


def test_quarantine_inside_the_scanned_folder_is_excluded(model_dir, incoming):
    root, kinds = incoming
    quarantine = root / "rejected"
    first = json.loads(invoke("scan", root, "-m", model_dir, "--move-to", quarantine, "--json").stdout)
    second = json.loads(invoke("scan", root, "-m", model_dir, "--move-to", quarantine, "--json").stdout)
    assert second["scanned"] == len(kinds) - first["moved"] and second["moved"] == 0


def test_missing_model_is_exit_1(incoming, tmp_path):
    root, _ = incoming
    result = invoke("scan", root, "-m", tmp_path / "none")
    assert result.exit_code == 1 and "no model" in result.output


def test_second_scan_on_a_locked_folder_exits_at_once(model_dir, incoming, tmp_path):
    from imgclean.quarantine.locking import ScanLock

    root, _ = incoming
    with ScanLock(root):
        result = invoke("scan", root, "-m", model_dir, "--move-to", tmp_path / "q", "--json")
    assert result.exit_code == EXIT_LOCKED
    assert f"pid {os.getpid()}" in result.output


def test_fail_on_skip_exit_code(model_dir, incoming):
    from imgclean.cli import EXIT_SKIPPED

    root, _ = incoming
    clean = invoke("scan", root, "-m", model_dir, "--fail-on-skip", "--json")
    assert clean.exit_code == 0 and json.loads(clean.stdout)["skipped"] == 0
    (root / "link.png").symlink_to(root / "broken.png")
    result = invoke("scan", root, "-m", model_dir, "--fail-on-skip", "--json")
    assert result.exit_code == EXIT_SKIPPED, result.output
    assert json.loads(result.stdout)["skipped"] == 1
    assert invoke("scan", root, "-m", model_dir, "--json").exit_code == 0  # opt-in only


def test_fit_force_never_replaces_a_folder_that_is_not_a_model(train_dir, tmp_path):
    precious = tmp_path / "photos"
    precious.mkdir()
    (precious / "holiday.jpg").write_bytes(b"irreplaceable")
    result = invoke("fit", train_dir, "-o", precious, "--force", "--epochs", "1")
    assert result.exit_code == 1 and "not an imgclean model directory" in result.output
    assert (precious / "holiday.jpg").read_bytes() == b"irreplaceable"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]  # no temp folder left behind
