"""imgclean learn (and --rollback, info's versions, scan's default method) through the CLI, on a
tiny generated folder scanned into a real quarantine and reviewed with the real commands."""
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import CLASSES, class_image, ood_image, write_png
from imgclean.cli import app

pytestmark = pytest.mark.usefixtures("one_torch_thread")
runner = CliRunner()


@pytest.fixture(autouse=True)
def _small_networks(monkeypatch):
    """The learned rule's networks small and few steps (learn_synthetic.FAST): seconds, not a minute."""
    from learn_synthetic import FAST

    from imgclean.pipeline.learn import step as learn_step

    monkeypatch.setattr(learn_step, "SETTINGS", FAST)


def invoke(*args):
    import logging

    saved = logging.getLogger().handlers[:]
    try:
        return runner.invoke(app, [os.fspath(a) for a in args])
    finally:
        logging.getLogger().handlers[:] = saved


def as_json(result) -> dict:
    assert "Traceback" not in result.output, result.output
    return json.loads(result.stdout)


def files_of(folder: Path) -> dict[str, str]:
    """Every file below folder -> sha256 (bit-for-bit comparisons)."""
    out = {}
    for dirpath, _, names in os.walk(folder):
        for name in names:
            path = Path(dirpath) / name
            out[os.fspath(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def make_night(root: Path, normal: int, ood: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for i in range(normal):
        write_png(root / f"normal_{i:02d}.png", class_image(CLASSES[i % len(CLASSES)], rng))
    for i in range(ood):
        write_png(root / f"odd_{i:02d}.png", ood_image(rng))


@pytest.fixture
def scanned(model_copy, tmp_path):
    """A folder of 12 in-class pictures and 30 blobs, scanned into a quarantine: (model, folder, quarantine)."""
    folder, q = tmp_path / "incoming", tmp_path / "q"
    make_night(folder, 12, 30, seed=3)
    result = invoke("scan", folder, "-m", model_copy, "--move-to", q, "--json", "--quiet", "--no-cache")
    assert result.exit_code in (0, 3), result.output
    return model_copy, folder, q


def review(folder: Path, q: Path, deletions: int = 5) -> None:
    """Restore the in-class pictures the scan moved, accept the others, delete some blobs."""
    moved = sorted(p for p in q.rglob("*.png"))
    normals = [p for p in moved if p.name.startswith("normal_")]
    if normals:
        assert invoke("restore", q, *normals).exit_code == 0
    kept = sorted(folder.glob("normal_*.png"))
    assert invoke("accept", *kept).exit_code == 0
    for p in [p for p in moved if p.name.startswith("odd_")][:deletions]:
        p.unlink()


def test_a_handful_of_decisions_says_why_and_changes_nothing(scanned):
    model, folder, q = scanned
    before = files_of(model)
    result = invoke("learn", q, "-m", model, "--json")
    assert result.exit_code == 0, result.output
    doc = as_json(result)
    assert doc["changed"] is False and "too few decisions" in doc["reason"]
    assert files_of(model) == before and not (model / "versions").exists()


def test_only_restores_teach_nothing_yet(scanned):
    model, folder, q = scanned
    before = files_of(model)
    moved = sorted(q.rglob("*.png"))[:12]
    assert invoke("restore", q, *moved).exit_code == 0  # a reviewer who restores, nothing else
    (q / "imgclean-features.bin").unlink()  # (without it the deleted files below cannot teach either)
    for p in q.rglob("*.png"):
        p.unlink()  # ... and empties the quarantine without deciding about it file by file
    result = invoke("learn", q, "-m", model)
    assert result.exit_code == 0 and "too few" in result.output and "nothing changed" in result.output
    assert files_of(model) == before


def test_learn_saves_a_version_and_rollback_is_bit_for_bit(scanned):
    model, folder, q = scanned
    review(folder, q)
    original = files_of(model)
    result = invoke("learn", q, "-m", model, "--json")
    assert result.exit_code == 0, result.output
    doc = as_json(result)
    assert doc["changed"] is True and doc["version_kept"] == 1 and doc["usable"]["accepted"] + doc["usable"]["restored"] == 12, doc
    assert doc["usable"]["deleted"] == doc["from_log"]["deleted"] == 5  # deleted: taught by their move's features
    config = json.loads((model / "config.json").read_text())
    assert config["learned"]["decisions"] == doc["usable"] and config["default_method"] in ("mahalanobis", "reviewed")
    assert "reviewed" in config["detectors"]
    assert files_of(model / "versions" / "1") == original  # the previous version, byte for byte

    info = invoke("info", model, "--json")
    assert info.exit_code == 0
    listed = as_json(info)
    assert [v["version"] for v in listed["model_versions"]] == [1] and listed["learned"]["decisions"]

    learned = as_json(invoke("learn", "--rollback", "-m", model, "--json"))
    assert learned["rolled_back_to"]["version"] == 1
    assert {k: v for k, v in files_of(model).items() if not k.startswith("versions")} == original
    assert not (model / "versions" / "1").exists()
    again = invoke("learn", "--rollback", "-m", model)
    assert again.exit_code == 1 and "no earlier version" in again.output


def test_learning_twice_in_a_row_keeps_both_previous_versions(scanned):
    model, folder, q = scanned
    review(folder, q)
    first = as_json(invoke("learn", q, "-m", model, "--json"))
    after_first = {k: v for k, v in files_of(model).items() if not k.startswith("versions")}
    second = as_json(invoke("learn", q, "-m", model, "--json"))
    assert first["changed"] and second["changed"] and (first["version_kept"], second["version_kept"]) == (1, 2)
    assert files_of(model / "versions" / "2") == after_first
    config = json.loads((model / "config.json").read_text())
    # the second learn compares with the label-free rule, not with its own previous self
    assert config["learned"]["compared_with"] == "mahalanobis"
    assert as_json(invoke("learn", "--rollback", "-m", model, "--json"))["rolled_back_to"]["version"] == 2
    assert {k: v for k, v in files_of(model).items() if not k.startswith("versions")} == after_first


def test_scan_without_method_uses_the_default_the_model_records(scanned, tmp_path):
    from imgclean.store.artifact import load_model, save_model

    model, folder, q = scanned
    review(folder, q)
    assert as_json(invoke("learn", q, "-m", model, "--json"))["changed"]
    bundle = load_model(model)
    bundle.config = {**bundle.config, "default_method": "reviewed"}
    save_model(bundle, model, force=True)
    night = tmp_path / "night2"
    make_night(night, 3, 3, seed=9)
    report = tmp_path / "r.jsonl"
    by_default = invoke("scan", night, "-m", model, "--report", report, "--json", "--quiet", "--no-cache")
    asked = invoke("scan", night, "-m", model, "--method", "reviewed", "--report", tmp_path / "r2.jsonl", "--json",
                   "--quiet", "--no-cache")
    plain = invoke("scan", night, "-m", model, "--method", "mahalanobis", "--report", tmp_path / "r3.jsonl", "--json",
                   "--quiet", "--no-cache")
    scores = [[json.loads(line)["score"] for line in p.read_text().splitlines()]
              for p in (report, tmp_path / "r2.jsonl", tmp_path / "r3.jsonl")]
    assert by_default.exit_code in (0, 3) and asked.exit_code in (0, 3) and plain.exit_code in (0, 3)
    assert scores[0] == scores[1] != scores[2]


def test_decided_files_that_are_gone_or_changed_never_teach(scanned):
    model, folder, q = scanned
    review(folder, q)
    kept = sorted(folder.glob("normal_*.png"))
    kept[0].unlink()
    kept[1].write_bytes(kept[1].read_bytes() + b"x")  # changed after it was accepted: no longer decided
    doc = as_json(invoke("learn", q, "-m", model, "--json"))
    belongs = doc["usable"]["accepted"] + doc["usable"]["restored"]
    assert belongs == len(kept) - 2 and doc["unusable"]["accepted"] + doc["unusable"]["restored"] == 2, doc


def test_hostile_journal_and_decision_records_are_reported_and_never_used(scanned, tmp_path):
    model, folder, q = scanned
    review(folder, q)
    outside = tmp_path / "secret.png"
    write_png(outside, class_image(CLASSES[0], np.random.default_rng(0)))
    sha = hashlib.sha256(outside.read_bytes()).hexdigest()
    size = outside.stat().st_size
    with open(q / "imgclean-manifest.jsonl", "a") as fh:
        fh.write("{not json\n")
        fh.write(json.dumps({"op": "move", "id": "evil", "state": "started", "source": os.fspath(outside),
                             "destination": os.fspath(outside), "size": size, "mtime_ns": 0, "sha256": sha,
                             "scan_root": os.fspath(folder), "reason": "ood"}) + "\n")
        fh.write(json.dumps({"op": "move", "id": "evil", "state": "done"}) + "\n")
    with open(folder / ".imgclean-decisions.jsonl", "a") as fh:
        fh.write(json.dumps({"format": 1, "id": "x1", "kind": "accepted", "path": "../secret.png", "root": "/",
                             "size": size, "sha256": sha, "time": "2026-01-01T00:00:00+00:00", "uid": os.getuid(),
                             "user": "me", "source": "accept"}) + "\n")
        fh.write("[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\n")
    result = invoke("learn", q, "-m", model, "--json")
    doc = as_json(result)
    assert result.exit_code == 0
    assert len(doc["problems"]) >= 3  # the line that is not JSON, the move outside the quarantine, the bad decisions
    assert doc["usable"]["accepted"] + doc["usable"]["restored"] == 12  # the planted acceptance of a file outside the folder is not among them


def test_rollback_refuses_a_damaged_version_and_changes_nothing(scanned):
    model, folder, q = scanned
    review(folder, q)
    assert as_json(invoke("learn", q, "-m", model, "--json"))["changed"]
    (model / "versions" / "1" / "weights.safetensors").write_bytes(b"not the weights")
    before = files_of(model)
    result = invoke("learn", "--rollback", "-m", model)
    assert result.exit_code == 1 and "Traceback" not in result.output and "fingerprint" in result.output
    assert files_of(model) == before


def test_usage_errors_are_one_line(tmp_path, model_copy):
    assert invoke("learn", "-m", model_copy).exit_code == 2
    assert invoke("learn", tmp_path / "nowhere", "-m", model_copy).exit_code == 2
    (tmp_path / "plain").mkdir()
    result = invoke("learn", tmp_path / "plain", "-m", model_copy)
    assert result.exit_code == 1 and "not an imgclean quarantine" in result.output
    assert invoke("learn", tmp_path / "plain", "--rollback", "-m", model_copy).exit_code == 2


def test_only_rejects_learn_against_the_training_folder(scanned):
    model, folder, q = scanned
    misses = sorted(folder.glob("*.png"))[:10]  # the reviewer calls ten kept files misses
    assert invoke("reject", *misses, "--move-to", q).exit_code == 0
    doc = as_json(invoke("learn", q, "-m", model, "--json"))
    assert doc["changed"] is True, doc
    assert doc["usable"]["rejected"] == 10 and doc["usable"]["accepted"] == doc["usable"]["restored"] == 0
    config = json.loads((model / "config.json").read_text())
    assert config["learned"]["decisions"]["rejected"] == 10


def test_a_missing_model_is_one_line(scanned, tmp_path):
    _, _, q = scanned
    for args in (("learn", q, "-m", tmp_path / "no-model"), ("learn", "--rollback", "-m", tmp_path / "no-model")):
        result = invoke(*args)
        assert result.exit_code == 1 and "Traceback" not in result.output and "no-model" in result.output
    result = invoke("learn", "--rollback", "-m", q)  # not a model: refused, nothing created in it
    assert result.exit_code == 1 and not (q / "versions").exists()
