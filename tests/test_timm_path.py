"""The timm path: any timm model behind the same interface, and --weights from a local file."""
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from imgclean.cli import app

runner = CliRunner()
ARCH = "mobilenetv3_small_050"  # small, and its output width differs from num_features


@pytest.fixture(scope="module")
def colour_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("rgb")
    rng = np.random.default_rng(0)
    for name, tint in (("red", (150, 20, 20)), ("blue", (20, 20, 150))):
        (root / name).mkdir()
        for i in range(8):
            pixels = rng.random((40, 40, 3)) * 80 + np.array(tint)
            Image.fromarray(pixels.astype("uint8")).save(root / name / f"{i}.jpg")
    return root


def fit(folder, out, *extra):
    result = runner.invoke(app, ["fit", str(folder), "-o", str(out), "--arch", ARCH, "--input-size", "32",
                                 "--epochs", "1", "--min-steps", "2", "--batch-size", "8", "--json", *map(str, extra)])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_timm_model_fits_saves_and_scans(colour_folder, tmp_path):
    summary = fit(colour_folder, tmp_path / "m")
    assert (summary["arch"], summary["input_size"], summary["channels"]) == (ARCH, 32, 3)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["feature_dim"] == 1024  # the conv head's width, not num_features (576)
    result = runner.invoke(app, ["scan", str(colour_folder), "-m", str(tmp_path / "m"), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["scanned"] == 16 and out["unreadable"] == 0


def test_weights_file_initialises_the_backbone(colour_folder, tmp_path):
    from safetensors.torch import load_file, save_file

    fit(colour_folder, tmp_path / "a")
    state = load_file(str(tmp_path / "a" / "weights.safetensors"))
    backbone = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    save_file(backbone, str(tmp_path / "backbone.safetensors"))
    # Zero epochs of change is not possible, but the first conv must start from the file's values:
    from imgclean.nn.models import build_model

    model = build_model(ARCH, 2, 3, 32, weights=tmp_path / "backbone.safetensors")
    first = next(k for k in backbone if k.endswith("conv_stem.weight"))
    assert (model.backbone.state_dict()[first] == backbone[first]).all()


def test_unknown_architecture_and_bad_weights_are_clear_errors(colour_folder, tmp_path):
    result = runner.invoke(app, ["fit", str(colour_folder), "-o", str(tmp_path / "m"), "--arch", "no_such_net"])
    assert result.exit_code == 1 and "unknown architecture" in result.output
    (tmp_path / "w.safetensors").write_bytes(b"garbage")
    result = runner.invoke(app, ["fit", str(colour_folder), "-o", str(tmp_path / "m"), "--arch", ARCH,
                                 "--input-size", "32", "--weights", str(tmp_path / "w.safetensors")])
    assert result.exit_code == 1 and "cannot read weights" in result.output
    assert "Traceback" not in result.output


def test_photo_model_weights_make_grayscale_data_colour():
    from pathlib import Path

    from imgclean.config import FitConfig
    from imgclean.pipeline.fit.fit_model import resolve_architecture

    assert resolve_architecture(FitConfig(arch=ARCH, weights=Path("w.safetensors")), 28, 1)[2] == 3
    assert resolve_architecture(FitConfig(arch=ARCH, pretrained=True), 28, 1)[2] == 3
    assert resolve_architecture(FitConfig(arch=ARCH), 28, 1)[2] == 1
    assert resolve_architecture(FitConfig(arch="lenet", weights=Path("w.safetensors")), 28, 1)[2] == 1


def test_photo_models_train_with_timms_training_transform():
    """timm's random resized crop and flip for photo models; evaluation stays the deterministic decode."""
    from imgclean.nn.models import build_model, timm_train_transform

    model = build_model(ARCH, 2, 3, 32)
    transform = timm_train_transform(model.backbone, 32, 3, [0.5] * 3, [0.25] * 3, "bicubic")
    names = repr(transform)
    assert "RandomResizedCrop" in names and "RandomHorizontalFlip" in names
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    out = transform(image)
    assert out.shape == (3, 32, 32) and out.dtype.is_floating_point
    grey = timm_train_transform(model.backbone, 24, 1, [0.5], [0.25], "bilinear")(image.convert("L"))
    assert grey.shape == (1, 24, 24)
