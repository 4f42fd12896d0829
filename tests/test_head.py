"""The supervised reject head: maths on numpy Gaussians, persistence, and fit / fit-head / scan --method via the CLI."""
import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file
from typer.testing import CliRunner

from conftest import make_incoming_folder, ood_image, write_png
from imgclean.store.artifact import load_model
from imgclean.cli import app
from imgclean.detectors import NotFittedError, RejectHead

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_torch_thread")

def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def gaussians(n_normal, n_reject, shift=4.0, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    x = np.vstack([rng.normal(0, 1, (n_normal, dim)), rng.normal(shift, 1, (n_reject, dim))])
    y = np.r_[np.ones(n_normal), np.zeros(n_reject)]
    return x, y


def test_separable_gaussians_are_separated_near_perfectly():
    x, y = gaussians(150, 150)
    head = RejectHead(min_steps=100).fit(x, y)
    xt, yt = gaussians(300, 300, seed=1)
    rejected = head.predict(xt)
    assert np.mean(rejected == (yt == 0)) > 0.98
    raw = head.raw_score(xt)
    assert raw[yt == 0].min() > raw[yt == 1].max() - 0.5  # higher = more OOD
    assert np.all((raw >= 0) & (raw <= 1))
    assert np.allclose(head.score(xt), raw / (1 - head.threshold))
    assert np.array_equal(head.score(xt) > 1, rejected)


def test_imbalance_is_handled():
    x, y = gaussians(500, 10, shift=3.0)
    head = RejectHead(min_steps=200).fit(x, y)
    assert head.pos_weight_ == pytest.approx(10 / 500)
    xt, yt = gaussians(500, 500, shift=3.0, seed=2)
    rejected = head.predict(xt)
    # 10 rejects among 500 are not drowned out: most new rejects are caught, few normals lost.
    assert rejected[yt == 0].mean() > 0.9
    assert rejected[yt == 1].mean() < 0.1


def test_not_fitted_and_bad_input():
    with pytest.raises(NotFittedError):
        RejectHead().score(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="both kinds"):
        RejectHead().fit(np.zeros((4, 3)), np.ones(4))
    with pytest.raises(ValueError, match="1 \\(belongs\\) or 0"):
        RejectHead().fit(np.zeros((4, 3)), np.array([0, 1, 2, 1]))
    with pytest.raises(ValueError, match="threshold"):
        RejectHead(threshold=1.5).fit(*gaussians(5, 5))
    head = RejectHead(min_steps=5).fit(*gaussians(20, 20))
    with pytest.raises(ValueError, match="dimensions"):
        head.score(np.zeros((2, 3)))


def test_state_round_trip_gives_identical_scores():
    x, y = gaussians(100, 30)
    head = RejectHead(min_steps=50, threshold=0.3).fit(x, y)
    again = RejectHead.from_state(head.to_arrays(), head.settings())
    assert again.threshold == 0.3
    assert np.array_equal(head.score(x), again.score(x))
    assert all(k.startswith("head.") and isinstance(v, np.ndarray) for k, v in head.to_arrays().items())


# ---- through the CLI ---------------------------------------------------------------------
@pytest.fixture
def rejects(reject_folder):
    return reject_folder


def test_fit_with_reject_dir_trains_and_saves_a_head(train_dir, rejects, tmp_path):
    out = tmp_path / "m"
    result = invoke("fit", train_dir, "-o", out, "--epochs", "3", "--reject-dir", rejects, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["head"]["reject_images"] == 12 and summary["head"]["normal_images"] == 72
    config = json.loads((out / "config.json").read_text())
    assert config["head"]["rejects_skipped"] == 1 and config["head"]["metrics"]["pos_weight"] == pytest.approx(12 / 72)
    assert (out / "head.safetensors").is_file()
    bundle = load_model(out)
    assert bundle.head is not None
    feats = np.random.default_rng(0).normal(size=(5, config["feature_dim"]))
    assert np.array_equal(bundle.head.score(feats), load_model(out).head.score(feats))


def test_fit_head_adds_a_head_without_touching_the_backbone(model_copy, rejects, train_dir):
    before_weights = load_file(str(model_copy / "weights.safetensors"))
    before_detector = (model_copy / "detector.npz").read_bytes()
    assert load_model(model_copy).head is None
    result = invoke("fit-head", "--reject-dir", rejects, "-m", model_copy, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["head"]["reject_images"] == 12
    after = load_file(str(model_copy / "weights.safetensors"))
    assert before_weights.keys() == after.keys()
    assert all(np.array_equal(before_weights[k], after[k]) for k in after)
    assert (model_copy / "detector.npz").read_bytes() == before_detector
    head = load_model(model_copy).head
    assert head is not None
    assert not list(model_copy.parent.glob(".model.*"))  # no temporary folders left behind
    # Replacing it works too (same directory, force semantics).
    result = invoke("fit-head", "--reject-dir", rejects, "-m", model_copy, "--train-dir", train_dir, "-q")
    assert result.exit_code == 0, result.output


def test_fit_head_needs_the_training_folder(model_copy, rejects, tmp_path, train_dir):
    config = json.loads((model_copy / "config.json").read_text())
    config["data"]["train_dir"] = str(tmp_path / "gone")
    (model_copy / "config.json").write_text(json.dumps(config))
    result = invoke("fit-head", "--reject-dir", rejects, "-m", model_copy)
    assert result.exit_code == 1 and "--train-dir" in result.output and "gone" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = invoke("fit-head", "--reject-dir", empty, "-m", model_copy, "--train-dir", train_dir)
    assert result.exit_code == 1 and "no readable images" in result.output
    assert "Traceback" not in result.output


def test_scan_method_head_without_a_head_is_a_clear_error(model_dir, incoming):
    root, _ = incoming
    for method in ("head", "both"):
        result = invoke("scan", root, "-m", model_dir, "--method", method, "--json")
        assert result.exit_code == 1
        assert "fit-head" in result.output and "Traceback" not in result.output


def test_scan_both_rejects_the_union(model_with_head, tmp_path):
    model_copy = model_with_head
    root = tmp_path / "incoming"
    make_incoming_folder(root, normal=9, ood=6)
    report = {}
    for method in ("mahalanobis", "head", "both"):
        result = invoke("scan", root, "-m", model_copy, "--method", method, "--report", tmp_path / f"{method}.jsonl", "--json")
        assert result.exit_code == 0, result.output
        lines = (tmp_path / f"{method}.jsonl").read_text().splitlines()
        report[method] = {r["path"]: r for r in map(json.loads, lines)}
    ood = {m: {p for p, r in recs.items() if r["status"] == "ood"} for m, recs in report.items()}
    assert ood["both"] == ood["mahalanobis"] | ood["head"]
    assert ood["head"]  # the head learned the blobs
    for path, rec in report["both"].items():
        if rec["score"] is not None:
            assert rec["score"] == pytest.approx(max(report["mahalanobis"][path]["score"], report["head"][path]["score"]))
            assert (rec["score"] > 1) == (rec["status"] == "ood")


def test_fit_with_an_empty_reject_dir_fails_before_training(train_dir, tmp_path):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "imgclean-manifest.jsonl").write_text("{}\n")
    result = invoke("fit", train_dir, "-o", tmp_path / "m", "--epochs", "1", "--reject-dir", empty)
    assert result.exit_code == 1 and "no readable images" in result.output
    assert not (tmp_path / "m").exists()
    result = invoke("fit", train_dir, "-o", tmp_path / "m", "--reject-dir", tmp_path / "nope")
    assert result.exit_code == 2 and "--reject-dir" in result.output
