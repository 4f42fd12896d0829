"""`imgclean audit` end to end on a tiny generated folder with planted problems."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import class_image, flat, make_train_folder, ood_image, tree_snapshot, write_png
from imgclean.cli import EXIT_OK, EXIT_REJECTED, EXIT_USAGE, app
from imgclean.reports.audit_records import read_audit

runner = CliRunner()
FAST = ["--folds", "3", "--epochs", "15", "--batch-size", "16", "--min-steps", "0", "--no-near", "-q"]
HOSTILE = 'odd<b>&"name.png'


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


COPIES = ("stripes_v/zz_copy.png", "stripes_v/zz_pixels.bmp", f"checker/{HOSTILE}", "stripes_h/aa_copy.png")


def planted_folder(root: Path) -> Path:
    """16 images a class, plus: a stripes_v picture filed as stripes_h, a blob, a byte copy in
    another class, a pixel copy (same picture as BMP), a broken file, a copy with a hostile name,
    and a copy whose name sorts before its original's. Every copy is newer than its original."""
    make_train_folder(root, per_class=16, seed=3)
    rng = np.random.default_rng(11)
    write_png(root / "stripes_h" / "zz_wrong.png", class_image("stripes_v", rng))
    write_png(root / "checker" / "zz_blob.png", ood_image(rng))
    shutil.copyfile(root / "checker" / "checker_000.png", root / "stripes_v" / "zz_copy.png")
    Image.open(root / "stripes_v" / "stripes_v_001.png").save(root / "stripes_v" / "zz_pixels.bmp")
    (root / "checker" / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    shutil.copyfile(root / "checker" / "checker_002.png", root / "checker" / HOSTILE)
    shutil.copyfile(root / "stripes_h" / "stripes_h_005.png", root / "stripes_h" / "aa_copy.png")
    old = 1_600_000_000 * 10**9  # the originals a day before their copies (file systems stamp coarsely)
    for p in root.rglob("*"):
        os.utime(p, ns=(old, old))
    for copy in COPIES:
        os.utime(root / copy, ns=(old + 86_400 * 10**9,) * 2)
    return root


@pytest.fixture(scope="module")
def audited(tmp_path_factory, one_torch_thread):
    root = planted_folder(tmp_path_factory.mktemp("audit") / "train")
    out = tmp_path_factory.mktemp("audit-out")
    # Module-scoped, so set up before conftest's _restore_logging saves the logging set-up: put
    # it back here, or later tests would log to the stream CliRunner closed.
    import logging
    import warnings

    root_logger, ours = logging.getLogger(), logging.getLogger("imgclean")
    saved = (root_logger.handlers[:], root_logger.level, ours.level, warnings.formatwarning)
    try:
        result = invoke("audit", root, *FAST, "--report", out / "r.jsonl", "--html", out / "page.html", "--json")
    finally:
        root_logger.handlers[:], root_logger.level = saved[0], saved[1]
        ours.setLevel(saved[2])
        warnings.formatwarning = saved[3]
        logging.captureWarnings(False)
    rows = {r["path"]: r for r in read_audit(out / "r.jsonl")}
    return root, out, result, rows


def test_planted_problems_are_found(audited):
    root, _, result, rows = audited
    assert result.exit_code == EXIT_REJECTED, result.output
    wrong = rows["stripes_h/zz_wrong.png"]
    assert wrong["issue"] == "label_issue" and wrong["suggested"] == "stripes_v" and wrong["label"] == "stripes_h"
    assert rows["checker/zz_blob.png"]["issue"] == "outlier" and rows["checker/zz_blob.png"]["score"] > 1
    copy = rows["stripes_v/zz_copy.png"]
    assert copy["issue"] == "duplicate" and copy["duplicate_of"] == "checker/checker_000.png"
    assert "same bytes" in copy["message"]
    pixels = rows["stripes_v/zz_pixels.bmp"]
    assert pixels["issue"] == "duplicate" and pixels["duplicate_of"] == "stripes_v/stripes_v_001.png"
    assert "same pixels" in pixels["message"]
    assert rows["checker/checker_000.png"]["issue"] != "duplicate"  # the original
    # the oldest file is the original, not the first name
    first_name = rows["stripes_h/aa_copy.png"]
    assert first_name["issue"] == "duplicate" and first_name["duplicate_of"] == "stripes_h/stripes_h_005.png"
    assert rows["stripes_h/stripes_h_005.png"]["issue"] != "duplicate"
    broken = rows["checker/zz_broken.png"]
    assert broken["issue"] == "unreadable" and broken["status"] == "unreadable"
    assert all(r["root"] == str(root.resolve()) for r in rows.values())


def test_json_summary(audited):
    _, _, result, rows = audited
    summary = json.loads(result.stdout)
    for key in ("images", "label_issues", "outliers", "duplicates", "unreadable"):
        assert isinstance(summary[key], int), key
    assert summary["images"] == len(rows) == 3 * 16 + 7
    assert summary["duplicates"] >= 4 and summary["unreadable"] == 1 and summary["folds"] == 3
    counted = {k: sum(r["issue"] == k for r in rows.values()) for k in ("label_issue", "outlier", "duplicate")}
    assert (counted["label_issue"], counted["outlier"], counted["duplicate"]) == (
        summary["label_issues"], summary["outliers"], summary["duplicates"])


def test_html_page_escapes_names(audited):
    _, out, _, _ = audited
    page = (out / "page.html").read_text()
    assert "odd&lt;b&gt;&amp;&quot;name.png" in page and HOSTILE not in page
    assert "Duplicates" in page and "original" in page and "stripes_v/zz_copy.png" in page
    assert "Wrong labels?" in page and "zz_wrong.png" in page


def test_csv_report_and_restorable_moves(tmp_path, one_torch_thread):
    root = planted_folder(tmp_path / "train")
    before = tree_snapshot(root)
    q = tmp_path / "q"
    result = invoke("audit", root, *FAST, "--folds", "2", "--move-to", q, "--report", tmp_path / "r.csv")
    assert result.exit_code == EXIT_REJECTED, result.output
    rows = read_audit(tmp_path / "r.csv")
    moved = {r["path"] for r in rows if r["action"] == "moved"}
    kept = {r["path"]: r for r in rows if r["action"] == "kept"}
    flagged = {r["path"] for r in rows if r["issue"] != "ok"}
    assert moved | set(kept) == flagged and not moved & set(kept) and moved
    for r in kept.values():  # a copy stays only when its original moves (as something else than a copy)
        assert r["issue"] == "duplicate" and r["duplicate_of"] in moved and "moves too" in r["message"], r
    for r in rows:
        assert (root / r["path"]).exists() == (r["path"] not in moved), r
    by_path = {r["path"]: r for r in rows}
    assert by_path["checker/checker_000.png"]["issue"] != "duplicate"  # an original never moves as one
    restored = invoke("restore", q)
    assert restored.exit_code == EXIT_OK, restored.output
    assert tree_snapshot(root) == before


def test_dry_run_changes_nothing(tmp_path, one_torch_thread):
    root = planted_folder(tmp_path / "train")
    before = tree_snapshot(root)
    q = tmp_path / "q"
    result = invoke("audit", root, *FAST, "--move-to", q, "--dry-run", "--json", "--move-issues", "duplicate")
    assert result.exit_code == EXIT_REJECTED, result.output
    plan = json.loads(result.stdout)["plan"]
    assert {p["source"] for p in plan} == set(COPIES)
    assert tree_snapshot(root) == before and not q.exists()


def test_settings_from_a_model(train_dir, model_dir, tmp_path, one_torch_thread):
    result = invoke("audit", train_dir, "-m", model_dir, "--folds", "2", "--epochs", "2", "--min-steps", "0", "-q",
                    "--json", "--near-threshold", "0.9999")
    assert result.exit_code in (EXIT_OK, EXIT_REJECTED), result.output
    summary = json.loads(result.stdout)
    assert summary["settings_from"] == str(model_dir)
    assert summary["recipe"]["arch"] == "lenet" and summary["recipe"]["train"]["batch_size"] == 16
    assert summary["folds"] == 2 and len(summary["fold_stats"]) == 2


def test_clean_folder_exits_0(tmp_path, monkeypatch):
    from imgclean.pipeline.audit import auditor as audit_mod
    from imgclean.reports.audit_records import AuditRecord

    make_train_folder(tmp_path / "train", per_class=2)

    def clean(train_dir, options, **kwargs):
        summary = audit_mod.AuditSummary(root=str(train_dir), files=1, images=1, folds=2)
        summary.counts["ok"] = 1
        return audit_mod.AuditResult([AuditRecord("checker/checker_000.png", "ok", label="checker")], summary, ["checker"])

    monkeypatch.setattr(audit_mod, "run_audit", clean)
    result = invoke("audit", tmp_path / "train", "-q")
    assert result.exit_code == EXIT_OK, result.output


def test_a_class_with_one_image_is_a_clear_error(tmp_path):
    root = make_train_folder(tmp_path / "train", per_class=4)
    for p in list((root / "checker").iterdir())[1:]:
        p.unlink()
    result = invoke("audit", root, *FAST)
    assert result.exit_code == 1
    assert "'checker'" in flat(result.output) and "fewerthan2" in flat(result.output)


@pytest.mark.parametrize("args, words", [
    (["--dry-run"], "--dry-runshowsplannedmoves"),
    (["--move-to", "{root}/q", "--move-issues", "bogus"], "--move-issuestakes"),
    (["--move-to", "{root}/.."], "isthescannedfolderorcontainsit"),
    (["--report", "{root}/../r.json"], ".jsonl"),
])
def test_usage_errors(tmp_path, args, words):
    root = make_train_folder(tmp_path / "train", per_class=2)
    result = invoke("audit", root, *[a.format(root=root) for a in args])
    assert result.exit_code == EXIT_USAGE, result.output
    assert words in flat(result.output)


def test_apply_carries_out_a_real_audit_report(audited, tmp_path):
    """`imgclean apply` of the audit's own report plans every finding (never "0 ood, exit 0"),
    the copies and not their originals."""
    root, out, _, rows = audited
    before = tree_snapshot(root)
    result = invoke("apply", out / "r.jsonl", "--move-to", tmp_path / "q", "--dry-run", "--json")
    assert result.exit_code == EXIT_OK, result.output
    got = json.loads(result.stdout)
    flagged = {p for p, r in rows.items() if r["issue"] != "ok" and r["status"] != "skipped"}
    planned = {p["source"] for p in got["plan"]}
    assert got["kind"] == "audit" and got["would_move"] == len(planned) > 0
    assert got["would_move"] + got["kept"] == len(flagged) and planned <= flagged
    for path in flagged - planned:  # kept: copies whose original moves for an issue of its own
        assert rows[path]["issue"] == "duplicate" and rows[path]["duplicate_of"] in planned
    for r in rows.values():  # an original never moves as a copy
        assert r["duplicate_of"] is None or rows[r["duplicate_of"]]["issue"] != "duplicate"
    assert set(COPIES) <= flagged
    assert tree_snapshot(root) == before


def test_a_training_folder_inside_a_quarantine_is_refused(tmp_path):
    q = tmp_path / "q"
    make_train_folder(q / "train", per_class=4, seed=1)
    (q / "imgclean-manifest.jsonl").write_text("")
    before = tree_snapshot(q)
    for folder, text in ((q, "is an imgclean quarantine"), (q / "train", "inside the imgclean quarantine")):
        result = invoke("audit", folder, "--move-to", tmp_path / "q2", *FAST)
        assert result.exit_code == EXIT_USAGE and text in result.output, result.output
    assert tree_snapshot(q) == before and not (tmp_path / "q2").exists()
