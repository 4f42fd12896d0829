"""The features a moving run keeps of each moved file (pipeline/scan/move_features.py), and learn
using them for files the reviewer deleted (pipeline/learn/step.py)."""
import json
import os
from pathlib import Path

import pytest

from conftest import CLASSES
from test_learn_cli import _small_networks, invoke, make_night  # noqa: F401  (_small_networks: an autouse fixture)
from imgclean.quarantine import features_log
from imgclean.quarantine.journal import fold

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def moved_ids(q: Path) -> set[str]:
    return {jid for jid, op in fold(q).ops.items() if op["op"] == "move" and op["state"] == "done"}


def fingerprint(model: Path) -> str:
    return json.loads((model / "config.json").read_text())["fingerprint"]


@pytest.fixture
def scanned(model_copy, tmp_path):
    folder, q = tmp_path / "incoming", tmp_path / "q"
    make_night(folder, 12, 30, seed=3)
    result = invoke("scan", folder, "-m", model_copy, "--move-to", q, "--json", "--quiet", "--no-cache")
    assert result.exit_code in (0, 3), result.output
    return model_copy, folder, q


def test_scan_move_to_writes_one_record_per_moved_file(scanned):
    model, folder, q = scanned
    ids = moved_ids(q)
    assert ids
    log = features_log.read_log(q, ids)
    assert log.problems == []
    assert {jid for jid, _ in log.records} == ids and len(log.records) == len(ids)
    record = log.get(next(iter(ids)), fingerprint(model))
    assert record is not None and record.features.ndim == 1 and record.logits.size == len(CLASSES)


def review(folder: Path, q: Path, deletions: int = 5) -> list[Path]:
    """Restore the in-class pictures the scan moved, accept the others, delete some blobs."""
    moved = sorted(q.rglob("*.png"))
    normals = [p for p in moved if p.name.startswith("normal_")]
    if normals:
        assert invoke("restore", q, *normals).exit_code == 0
    assert invoke("accept", *sorted(folder.glob("normal_*.png"))).exit_code == 0
    deleted = [p for p in moved if p.name.startswith("odd_")][:deletions]
    for p in deleted:
        p.unlink()
    return deleted


def learn_json(q: Path, model: Path) -> dict:
    result = invoke("learn", q, "-m", model, "--json")
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    return json.loads(result.stdout)


def test_a_deleted_file_teaches_through_its_logged_features(scanned):
    model, folder, q = scanned
    review(folder, q)
    doc = learn_json(q, model)
    assert doc["usable"]["deleted"] == 5 and doc["from_log"]["deleted"] == 5 and doc["unusable"]["deleted"] == 0, doc
    assert doc["embedded"]["deleted"] == 0 and doc["from_log"]["left"] == 0  # files still there are embedded now
    assert doc["problems"] == []
    # the learned model has another fingerprint: the old features are not its own, so they never teach it
    assert doc["changed"]
    again = learn_json(q, model)
    assert again["usable"]["deleted"] == 0 and again["unusable"]["deleted"] == 5, again


def test_without_the_features_file_deleted_files_stay_unusable(scanned):
    model, folder, q = scanned
    (q / features_log.FEATURES_NAME).unlink()
    review(folder, q)
    doc = learn_json(q, model)
    assert doc["usable"]["deleted"] == 0 and doc["unusable"]["deleted"] == 5, doc


def test_a_hostile_features_file_is_reported_and_not_used(scanned):
    model, folder, q = scanned
    os.chmod(q / features_log.FEATURES_NAME, 0o666)
    review(folder, q)
    doc = learn_json(q, model)
    assert doc["usable"]["deleted"] == 0 and doc["unusable"]["deleted"] == 5, doc
    assert any("writable by group or others" in p for p in doc["problems"])


def test_dry_run_and_rescan_write_no_features(model_copy, tmp_path):
    folder, q = tmp_path / "incoming", tmp_path / "q"
    make_night(folder, 2, 4, seed=5)
    dry = invoke("scan", folder, "-m", model_copy, "--move-to", q, "--dry-run", "--quiet", "--no-cache")
    assert dry.exit_code in (0, 3) and not (q / features_log.FEATURES_NAME).exists()
    assert invoke("scan", folder, "-m", model_copy, "--move-to", q, "--quiet", "--no-cache").exit_code in (0, 3)
    first = (q / features_log.FEATURES_NAME).read_bytes()
    assert len(features_log.read_log(q, moved_ids(q)).records) == len(moved_ids(q)) > 0
    assert invoke("scan", folder, "-m", model_copy, "--move-to", q, "--quiet", "--no-cache").exit_code in (0, 3)
    assert (q / features_log.FEATURES_NAME).read_bytes() == first  # nothing moved: nothing appended


def test_a_features_file_that_cannot_be_written_is_a_warning_not_a_failed_scan(model_copy, tmp_path):
    folder, q = tmp_path / "incoming", tmp_path / "q"
    make_night(folder, 2, 4, seed=5)
    q.mkdir()
    (q / features_log.FEATURES_NAME).symlink_to(tmp_path / "target.bin")
    result = invoke("scan", folder, "-m", model_copy, "--move-to", q, "--json", "--no-cache")
    assert result.exit_code in (0, 3) and "Traceback" not in result.output
    assert json.loads(result.stdout)["moved"] > 0 and "symbolic link" in result.output
    assert not (tmp_path / "target.bin").exists()


def test_reject_with_a_model_keeps_the_features_of_what_it_moved(model_copy, tmp_path):
    folder, q = tmp_path / "incoming", tmp_path / "q"
    make_night(folder, 3, 0, seed=6)
    missed = sorted(folder.glob("*.png"))
    plain = invoke("reject", missed[0], "--move-to", q, "--root", folder)
    assert plain.exit_code == 0, plain.output
    assert not (q / features_log.FEATURES_NAME).exists()  # no --model: no features
    first = moved_ids(q)
    result = invoke("reject", missed[1], missed[2], "--move-to", q, "--root", folder, "-m", model_copy)
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    log = features_log.read_log(q, moved_ids(q))
    assert log.problems == [] and {jid for jid, _ in log.records} == moved_ids(q) - first and len(log.records) == 2
    bad = invoke("reject", folder / "nothing.png", "--move-to", q, "--root", folder, "-m", tmp_path / "no-model")
    assert bad.exit_code != 0 and "Traceback" not in bad.output
