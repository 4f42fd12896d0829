"""fit --epochs 0 with --weights (or --pretrained): the frozen backbone's features, no training."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from imgclean.cli import app

runner = CliRunner()
ARCH = "mobilenetv3_small_050"


@pytest.fixture(scope="module")
def colour_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("rgb")
    rng = np.random.default_rng(0)
    for name, tint in (("red", (150, 20, 20)), ("blue", (20, 20, 150)), ("green", (20, 150, 20))):
        (root / name).mkdir()
        for i in range(10):
            pixels = rng.random((40, 40, 3)) * 80 + np.array(tint)
            Image.fromarray(pixels.astype("uint8")).save(root / name / f"{i}.jpg")
    return root


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """A local backbone weights file, made here (no network): a timm model's own initial weights."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(123)
    backbone = timm.create_model(ARCH, pretrained=False, num_classes=0)
    path = tmp_path_factory.mktemp("w") / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in backbone.state_dict().items()}, str(path))
    return path


def test_epochs_0_fits_the_detectors_on_the_frozen_backbone(colour_folder, weights_file, tmp_path):
    from safetensors.torch import load_file

    from imgclean.store.artifact import load_model

    out = tmp_path / "m"
    result = runner.invoke(app, ["fit", str(colour_folder), "-o", str(out), "--arch", ARCH, "--input-size", "32",
                                 "--weights", str(weights_file), "--epochs", "0", "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["epochs_trained"] == 0 and summary["backbone_trained"] is False
    config = json.loads((out / "config.json").read_text())
    assert config["backbone_trained"] is False and config["logits"] == "gaussian"
    assert config["training"]["backbone_trained"] is False and config["training"]["epochs_trained"] == 0

    bundle = load_model(out, device="cpu")
    frozen = load_file(str(weights_file))
    for key, value in bundle.model.backbone.state_dict().items():  # the backbone is the file's, untouched
        if key in frozen and value.dtype.is_floating_point:
            assert torch.equal(value, frozen[key]), key

    # the predicted class is the nearest class by (tied) Mahalanobis distance
    from imgclean import data
    from imgclean.nn.runtime import predict_arrays
    from imgclean.pipeline.decode import DecodeSettings, decode_many

    files = sorted(colour_folder.rglob("*.jpg"))
    images = np.stack([d.array for d in decode_many(files, DecodeSettings.from_model(bundle))])
    logits, feats = predict_arrays(bundle.model, images, bundle.config["mean"], bundle.config["std"], "cpu")
    assert np.array_equal(logits.argmax(1), bundle.detector.distances(feats).argmin(1))
    truth = np.array([bundle.config["class_names"].index(f.parent.name) for f in files])
    assert np.mean(logits.argmax(1) == truth) > 0.9  # tinted classes: any features separate them

    info = runner.invoke(app, ["info", str(out)])
    assert info.exit_code == 0 and "backbone_trained" in info.output and "False" in info.output
    scan = runner.invoke(app, ["scan", str(colour_folder / "red"), "-m", str(out), "--json"])
    assert scan.exit_code in (0, 1), scan.output


def test_epochs_0_without_weights_is_refused(colour_folder, tmp_path):
    result = runner.invoke(app, ["fit", str(colour_folder), "-o", str(tmp_path / "m"), "--arch", ARCH,
                                 "--input-size", "32", "--epochs", "0"])
    assert result.exit_code == 1 and "--pretrained or --weights" in result.output
