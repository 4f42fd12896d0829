"""One consistent snapshot of the model per load: the lazily built network comes from the bytes
read at load time, files that do not match each other are refused, and a directory replaced
while it is being read is read once more."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import class_image, tree_snapshot
from imgclean.store import artifact
from imgclean.store.artifact import CONFIG_FILE, DETECTOR_FILE, WEIGHTS_FILE, ModelError, load_model, save_model
from imgclean.cli import app


@pytest.fixture(scope="module")
def other_model(model_dir, tmp_path_factory) -> Path:
    """The same architecture and classes as model_dir, with other weights and thresholds."""
    bundle = load_model(model_dir)
    with torch.no_grad():
        for p in bundle.model.parameters():
            p.mul_(1.5)
    bundle.detector.set_threshold_scale(2.0)
    return save_model(bundle, tmp_path_factory.mktemp("other") / "m")


def images() -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.stack([class_image(c, rng)[:, :, None] for c in ("checker", "stripes_h", "stripes_v")])


def outputs(bundle) -> np.ndarray:
    from imgclean.nn.runtime import predict_arrays

    logits, _ = predict_arrays(bundle.model, images(), bundle.config["mean"], bundle.config["std"], "cpu")
    return np.asarray(logits)


def swap(target: Path, replacement: Path) -> None:
    """What `fit --force` does to a model directory: two renames (the old one then goes away)."""
    aside = target.with_name(target.name + ".aside")
    os.rename(target, aside)
    shutil.copytree(replacement, target)
    shutil.rmtree(aside)


def test_a_lazy_network_comes_from_the_snapshot_not_the_directory(model_copy, other_model):
    expected = outputs(load_model(model_copy))
    assert not np.allclose(expected, outputs(load_model(other_model)))  # control: the models differ
    bundle = load_model(model_copy, lazy=True)
    swap(model_copy, other_model)
    assert not bundle.model_loaded
    np.testing.assert_allclose(outputs(bundle), expected, rtol=1e-6)
    assert bundle.fingerprint != load_model(model_copy).fingerprint


@pytest.mark.parametrize("foreign", [WEIGHTS_FILE, DETECTOR_FILE])
def test_a_mixed_directory_is_refused(model_copy, other_model, foreign):
    shutil.copy(other_model / foreign, model_copy / foreign)
    for lazy in (True, False):
        with pytest.raises(ModelError, match=f"{foreign} does not match the fingerprint"):
            load_model(model_copy, lazy=lazy)


def test_a_mixed_directory_moves_nothing(model_copy, other_model, incoming, tmp_path):
    shutil.copy(other_model / WEIGHTS_FILE, model_copy / WEIGHTS_FILE)
    root = incoming[0]
    before = tree_snapshot(root)
    result = CliRunner().invoke(app, ["scan", str(root), "-m", str(model_copy), "--move-to", str(tmp_path / "q")])
    assert result.exit_code == 1 and "fingerprint" in result.output, result.output
    assert tree_snapshot(root) == before and not (tmp_path / "q").exists()


def test_a_directory_replaced_while_being_read_is_read_again(model_copy, other_model, monkeypatch):
    real_read = artifact.read_model_file
    reads = []

    def read_then_swap(fd, where, name):
        data = real_read(fd, where, name)
        reads.append(name)
        if reads == [CONFIG_FILE]:  # the first read: replace the directory under the reader
            swap(model_copy, other_model)
        return data

    monkeypatch.setattr(artifact, "read_model_file", read_then_swap)
    bundle = load_model(model_copy, lazy=True)
    assert reads.count(CONFIG_FILE) == 2  # the first attempt failed and was repeated
    assert bundle.fingerprint == json.loads((other_model / CONFIG_FILE).read_text())["fingerprint"]
    np.testing.assert_allclose(outputs(bundle), outputs(load_model(other_model)), rtol=1e-6)


def test_files_changed_during_both_reads_are_refused(model_copy, other_model, monkeypatch):
    real_read = artifact.read_model_file

    def read_then_mix(fd, where, name):
        data = real_read(fd, where, name)
        if name == CONFIG_FILE:  # every time: the weights change after config.json was read
            shutil.copy(other_model / WEIGHTS_FILE, model_copy / WEIGHTS_FILE)
        return data

    monkeypatch.setattr(artifact, "read_model_file", read_then_mix)
    with pytest.raises(ModelError, match="fingerprint"):
        load_model(model_copy, lazy=True)


def test_the_lazy_bundle_never_reads_the_directory_again(model_copy):
    bundle = load_model(model_copy, lazy=True)
    shutil.rmtree(model_copy)
    assert outputs(bundle).shape == (3, 3) and bundle.model_loaded


def test_interpolation_and_crop_defaults_and_values(model_copy):
    bundle = load_model(model_copy, lazy=True)
    assert (bundle.interpolation, bundle.crop_pct) == ("bilinear", 1.0)
    config = json.loads((model_copy / CONFIG_FILE).read_text())
    config.update(interpolation="bicubic", crop_pct=0.875)
    (model_copy / CONFIG_FILE).write_text(json.dumps(config))
    bundle = load_model(model_copy, lazy=True)
    assert (bundle.interpolation, bundle.crop_pct) == ("bicubic", 0.875)
