"""The detectors beside Mahalanobis in a model directory and through the CLI: saved, checked on
load, missing from old models, chosen with --method, reported by evaluate and info. The lists of
detectors come from the registry, so a new detector is covered here as soon as it is registered."""
import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import make_incoming_folder
from imgclean.cli import app
from imgclean.detectors import registry
from imgclean.store import artifact
from imgclean.store.artifact import CONFIG_FILE, DETECTOR_FILE, WEIGHTS_FILE, ModelError, load_model, save_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")
runner = CliRunner()
ENERGY, KNN = "detector-energy.npz", "detector-knn.npz"
FITTED = [c.name for c in registry.unsupervised()]  # what `fit` saves, in registry order
NEWER = [n for n in FITTED if n != registry.DEFAULT_METHOD]  # listed under config["detectors"]
NEWER_FILES = [registry.DETECTORS[n].state_file for n in NEWER]


def invoke(*args):
    result = runner.invoke(app, [os.fspath(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def refusal(model: Path) -> str:
    with pytest.raises(ModelError) as info:
        load_model(model, lazy=True)
    message = str(info.value)
    assert "\n" not in message
    return message


def make_old(model: Path) -> None:
    """Turn a model into one saved before the newer detectors existed (format 1 as it was)."""
    for name in NEWER_FILES:
        (model / name).unlink()
    config = json.loads((model / CONFIG_FILE).read_text())
    del config["detectors"]
    for name in NEWER_FILES:
        del config["files"][name]
    suffixes, prefixes = tuple(f"_{n}" for n in NEWER), tuple(f"{n}_" for n in NEWER)
    for key in [k for k in config["metrics"] if k.endswith(suffixes) or k.startswith(prefixes)]:
        del config["metrics"][key]
    config["fingerprint"] = artifact.fingerprint_of(config["files"])
    (model / CONFIG_FILE).write_text(json.dumps(config))


def rewrite(model: Path, name: str, **changes) -> None:
    with np.load(model / name) as npz:
        arrays = dict(npz)
    arrays.update(changes)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    (model / name).write_bytes(buf.getvalue())


def test_fit_saves_every_unsupervised_detector_and_the_fingerprint_covers_them(model_dir):
    config = json.loads((model_dir / CONFIG_FILE).read_text())
    assert list(config["detectors"]) == NEWER and {"energy", "knn"} <= set(NEWER)
    assert all(config["detectors"][n]["file"] == f for n, f in zip(NEWER, NEWER_FILES))
    assert config["detectors"]["knn"]["settings"]["k"] >= 1
    assert set(config["files"]) == {WEIGHTS_FILE, DETECTOR_FILE, *NEWER_FILES}
    digests = {n: hashlib.sha256((model_dir / n).read_bytes()).hexdigest() for n in config["files"]}
    assert digests == config["files"]
    order = (WEIGHTS_FILE, DETECTOR_FILE, *NEWER_FILES)
    assert config["fingerprint"] == hashlib.sha256("".join(digests[n] for n in order).encode()).hexdigest()[:16]
    assert "val_rejected_fraction_knn" in config["metrics"] and "energy_threshold_shift" in config["metrics"]
    bundle = load_model(model_dir, lazy=True)
    assert list(bundle.detectors) == FITTED
    assert bundle.available_methods() == FITTED


def test_save_load_round_trip_gives_identical_scores(model_dir, tmp_path):
    bundle = load_model(model_dir)
    again = load_model(save_model(bundle, tmp_path / "m"))
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(20, bundle.config["feature_dim"]))
    logits = rng.normal(size=(20, len(bundle.class_names))) * 5
    for name, det in bundle.detectors.items():
        assert np.array_equal(det.score(features=feats, logits=logits), again.detectors[name].score(features=feats, logits=logits)), name
    assert again.fingerprint == bundle.fingerprint  # the same bytes


@pytest.mark.parametrize("name, changes, text", [
    (KNN, {"bank": np.full((5, 3), np.nan, np.float32)}, "bank"),
    (KNN, {"k": np.array(10_000)}, "k is 10000"),
    (KNN, {"threshold": np.array(np.inf)}, "threshold is not finite"),
    (KNN, {"bank": np.zeros((4, 120), np.float64)}, "float32"),
    (ENERGY, {"spread": np.array(-1.0)}, "spread must be above 0"),
    (ENERGY, {"classes": np.array(7)}, "7 classes"),
    (ENERGY, {"temperature": np.array("hot")}, "dtype"),
])
def test_damaged_detector_files_are_one_line_refusals(model_copy, name, changes, text):
    rewrite(model_copy, name, **changes)
    message = refusal(model_copy)
    assert name in message and text in message and "imgclean fit" in message


@pytest.mark.parametrize("name", NEWER_FILES)
def test_a_detector_file_that_is_missing_or_not_an_npz_is_refused(model_copy, name):
    (model_copy / name).write_bytes(b"PK\x03\x04 not a zip")
    assert f"{name} is not a valid detector file" in refusal(model_copy)
    (model_copy / name).unlink()
    message = refusal(model_copy)
    assert name in message and "imgclean fit" in message


def test_a_detector_file_with_a_pickle_is_refused(model_copy):
    with np.load(model_copy / KNN) as npz:
        arrays = dict(npz)
    arrays["bank"] = np.array([{"x": 1}], dtype=object)
    np.savez(model_copy / KNN, **arrays)
    assert "Python objects" in refusal(model_copy)


def test_a_detector_file_from_another_model_breaks_the_fingerprint(model_copy):
    rewrite(model_copy, ENERGY, shift=np.array(0.5))  # still a valid file, but not this model's
    assert "detector-energy.npz does not match the fingerprint" in refusal(model_copy)


@pytest.mark.parametrize("entry, text", [
    ({"knn": {"file": "../elsewhere.npz"}}, "detectors.knn"),
    ({"mahalanobis": {"file": DETECTOR_FILE}}, "detectors.mahalanobis"),
    ({"isolation_forest": {"file": "detector-if.npz"}}, "upgrade imgclean"),
    ([1], "detectors must be an object"),
])
def test_the_detectors_entry_of_config_is_checked(model_copy, entry, text):
    config = json.loads((model_copy / CONFIG_FILE).read_text())
    config["detectors"] = entry
    (model_copy / CONFIG_FILE).write_text(json.dumps(config))
    assert text in refusal(model_copy)


def test_an_old_model_still_loads_and_names_fit_for_the_new_methods(model_copy, incoming):
    make_old(model_copy)
    bundle = load_model(model_copy)
    assert list(bundle.detectors) == ["mahalanobis"] and bundle.available_methods() == ["mahalanobis"]
    root, _ = incoming
    for method in NEWER:
        result = invoke("scan", root, "-m", model_copy, "--method", method)
        assert result.exit_code == 1, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and f"no {method} detector" in lines[0] and "imgclean fit" in lines[0], result.output
    assert invoke("scan", root, "-m", model_copy).exit_code == 0
    info = json.loads(invoke("info", model_copy, "--json").stdout)
    assert info["methods"] == ["mahalanobis"]


def test_saving_a_model_without_knn_over_one_with_it_drops_the_file(model_copy):
    bundle = load_model(model_copy)
    del bundle.detectors["knn"]
    save_model(bundle, model_copy, force=True)
    assert not (model_copy / KNN).exists() and (model_copy / ENERGY).exists()
    assert list(load_model(model_copy, lazy=True).detectors) == [n for n in FITTED if n != "knn"]


def test_scan_with_every_newer_detector(model_dir, tmp_path):
    root = tmp_path / "incoming"
    kinds = make_incoming_folder(root, normal=9, ood=6)
    for method in NEWER:
        report = tmp_path / f"{method}.jsonl"
        result = invoke("scan", root, "-m", model_dir, "--method", method, "--report", report, "--json")
        assert result.exit_code == 0, result.output
        records = [json.loads(line) for line in report.read_text().splitlines()]
        scored = [r for r in records if r["score"] is not None]
        assert len(scored) == 15
        for r in scored:
            assert (r["score"] > 1) == (r["status"] == "ood")
        if method == "knn":  # the blobs are nothing like the stripes in the normalised features
            odd = {r["path"] for r in scored if r["status"] == "ood"}
            assert odd >= {p for p, k in kinds.items() if k == "ood"}


def test_info_lists_the_detectors(model_dir):
    result = invoke("info", model_dir)
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    assert ", ".join(FITTED) in text
    assert all(f"detector.{n}" in text for n in NEWER)
    out = json.loads(invoke("info", model_dir, "--json").stdout)
    assert out["methods"] == FITTED
    assert out["detector_settings"]["knn"]["bank_rows"] > 0
