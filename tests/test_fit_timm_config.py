"""timm models bring their own data configuration (issue 9 item 4).

Input size, interpolation, crop and normalisation default to timm's data config for the created
model, explicit settings override them, config.json records them, and every decode of the
model's inputs (fit, fit-head, evaluate) uses them. Uses timm's tiny test_* models, no network.
"""
import json

import numpy as np
import pytest
from PIL import Image

from imgclean import data
from imgclean.store.artifact import load_model, save_model
from imgclean.config import FitConfig, TrainSettings
from imgclean.pipeline.fit.fit_model import FitError, fit_model
from imgclean.nn.training import channel_stats

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUICK = dict(epochs=1, min_steps=1, batch_size=8, val_fraction=0.0, augment=False)
RECORDED = ("input_size", "interpolation", "crop_pct", "mean", "std")


@pytest.fixture(scope="module")
def colour_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("rgb")
    rng = np.random.default_rng(0)
    for name, tint in (("red", (150, 20, 20)), ("blue", (20, 20, 150))):
        (root / name).mkdir()
        for i in range(4):
            pixels = rng.random((40, 48, 3)) * 80 + np.array(tint)
            Image.fromarray(pixels.astype("uint8")).save(root / name / f"{i}.png")
    return root


def quick_fit(folder, **settings):
    return fit_model(folder, FitConfig(device="cpu", train=TrainSettings(**QUICK), **settings))


def timm_own(arch):
    import timm
    from timm.data import resolve_model_data_config

    return resolve_model_data_config(timm.create_model(arch, num_classes=0))


def test_defaults_come_from_timm_data_config_of_the_model(colour_folder):
    # test_vit3 has a fixed 160 px position embedding: the old 224 default crashed on it.
    bundle, report = quick_fit(colour_folder, arch="test_vit3")
    own = timm_own("test_vit3")
    config = bundle.config
    assert config["input_size"] == own["input_size"][-1] == report.input_size
    assert config["interpolation"] == own["interpolation"]
    assert config["crop_pct"] == pytest.approx(own["crop_pct"])
    assert config["mean"] == pytest.approx(list(own["mean"])) and config["std"] == pytest.approx(list(own["std"]))
    assert {k: report.preprocessing[k] for k in RECORDED} == {k: config[k] for k in RECORDED}


def test_fixed_size_model_is_built_for_an_explicit_size_and_reloads(colour_folder, tmp_path):
    bundle, _ = quick_fit(colour_folder, arch="test_vit3", input_size=48)
    assert bundle.config["input_size"] == 48
    path = save_model(bundle, tmp_path / "m")
    assert json.loads((path / "config.json").read_text())["input_size"] == 48
    loaded = load_model(path)  # rebuilds the network for 48 px from (arch, input_size) alone
    from imgclean.nn.runtime import predict_arrays

    images = np.zeros((2, 48, 48, 3), dtype=np.uint8)
    _, feats = predict_arrays(loaded.model, images, loaded.config["mean"], loaded.config["std"], "cpu")
    assert feats.shape == (2, bundle.config["feature_dim"])


def test_explicit_settings_override_timm_and_are_recorded(colour_folder, tmp_path):
    bundle, _ = quick_fit(colour_folder, arch="test_resnet", input_size=32, interpolation="nearest",
                          crop_pct=1.0, mean=[0.4, 0.3, 0.2], std=[0.25])
    assert timm_own("test_resnet")["crop_pct"] != 1.0  # so the override is visible
    config = json.loads((save_model(bundle, tmp_path / "m") / "config.json").read_text())
    assert config["input_size"] == 32 and config["interpolation"] == "nearest" and config["crop_pct"] == 1.0
    assert config["mean"] == pytest.approx([0.4, 0.3, 0.2]) and config["std"] == pytest.approx([0.25] * 3)


@pytest.mark.parametrize("settings, words", [
    (dict(crop_pct=0.0), "crop_pct"),
    (dict(crop_pct=1.5), "crop_pct"),
    (dict(interpolation="cubic-ish"), "interpolation"),
    (dict(mean=[0.5, 0.5]), "mean needs 3"),
    (dict(std=[0.2, 0.0, 0.2]), "std must be"),
])
def test_bad_overrides_are_one_line_errors(colour_folder, settings, words):
    with pytest.raises(FitError, match=words) as err:
        quick_fit(colour_folder, arch="test_resnet", input_size=32, **settings)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("arch, size, words", [
    ("no_such_net", None, "unknown architecture 'no_such_net'"),
    ("resnet18.nonsense", None, "resnet18.nonsense"),
    ("test_coatnet", 20, "test_coatnet cannot take 20x20"),
])
def test_models_that_cannot_be_built_are_one_line_fit_errors(colour_folder, arch, size, words):
    with pytest.raises(FitError, match=words) as err:
        quick_fit(colour_folder, arch=arch, input_size=size)
    assert "\n" not in str(err.value)


def test_cli_fit_with_a_fixed_size_timm_model(colour_folder, tmp_path):
    from typer.testing import CliRunner

    from imgclean.cli import app

    result = CliRunner().invoke(app, ["fit", str(colour_folder), "-o", str(tmp_path / "m"), "--arch", "test_vit3",
                                      "--epochs", "1", "--min-steps", "1", "--batch-size", "8", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["input_size"] == timm_own("test_vit3")["input_size"][-1]
    result = CliRunner().invoke(app, ["fit", str(colour_folder), "-o", str(tmp_path / "x"), "--arch", "no_such_net"])
    assert result.exit_code == 1 and "no_such_net" in result.output and "Traceback" not in result.output


def test_lenet_keeps_bilinear_no_crop_and_data_statistics(train_dir):
    bundle, report = fit_model(train_dir, FitConfig(device="cpu", train=TrainSettings(**QUICK)))
    config = bundle.config
    assert config["arch"] == "lenet"
    assert (config["interpolation"], config["crop_pct"]) == ("bilinear", 1.0)
    names, files = data.list_image_folder(train_dir)
    from imgclean.pipeline.fit.fit_model import decode_classes

    images, _, _ = decode_classes(names, files, config["input_size"], config["channels"])
    mean, std = channel_stats(images)
    assert config["mean"] == pytest.approx(mean) and config["std"] == pytest.approx(std)


def test_every_decode_uses_the_model_settings(colour_folder, tmp_path, monkeypatch):
    """fit, fit --reject-dir, fit-head and evaluate all decode with the model's interpolation and crop."""
    from imgclean.pipeline.evaluate import evaluate
    from imgclean.pipeline.fit.headfit import fit_head

    calls = []
    real = data.decode_image

    def spy(path, size, channels, interpolation="bilinear", crop_pct=1.0):
        calls.append((interpolation, crop_pct))
        return real(path, size, channels, interpolation, crop_pct)

    monkeypatch.setattr(data, "decode_image", spy)
    rejects = tmp_path / "rejects"
    rejects.mkdir()
    for i in range(3):
        Image.fromarray(np.full((30, 30, 3), 60 * i, dtype=np.uint8)).save(rejects / f"{i}.png")
    settings = dict(arch="test_resnet", input_size=32, interpolation="bicubic", crop_pct=0.8)
    bundle, _ = fit_model(colour_folder, FitConfig(device="cpu", train=TrainSettings(**QUICK), **settings),
                          reject_dir=rejects)
    assert len(calls) == 8 + 3
    path = save_model(bundle, tmp_path / "m")
    fit_head(load_model(path), rejects)
    evaluate(load_model(path), colour_folder, rejects)
    assert len(calls) == 2 * (8 + 3) + (8 + 3)
    assert set(calls) == {("bicubic", 0.8)}


def test_settings_are_checked_before_any_model_is_built(colour_folder):
    with pytest.raises(FitError, match="crop_pct"):  # not "unknown architecture": nothing was built
        quick_fit(colour_folder, arch="no_such_net", crop_pct=2.0)
