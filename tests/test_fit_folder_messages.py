"""fit's messages about the training folder (issue 25): images left beside the class folders are
named, one exit-code rule for a folder that is not a training folder, and the calibration's
shortfall is said in fit's summary, fit --json, `info` and the API's result."""
import json
import logging
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import class_image, write_png
from imgclean.cli import app

pytestmark = pytest.mark.usefixtures("one_torch_thread")
runner = CliRunner()
FAST = ["--epochs", "1", "--min-steps", "0", "--no-augment", "--device", "cpu"]


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


@pytest.fixture
def with_strays(train_dir, tmp_path):
    root = tmp_path / "train"
    shutil.copytree(train_dir, root)
    rng = np.random.default_rng(3)
    write_png(root / "forgotten.png", class_image("checker", rng))
    write_png(root / "also_here.png", class_image("checker", rng))
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(b"")
    return root


def test_images_beside_the_class_folders_are_named_by_fit(with_strays, tmp_path):
    result = invoke("fit", with_strays, "-o", tmp_path / "m", *FAST)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if "top of" in line]
    assert len(lines) == 1 and lines[0].startswith("WARNING: 2 image file(s) at the top of"), result.stderr
    assert "'also_here.png'" in lines[0] and "not used" in lines[0]
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert any("2 image file(s)" in w for w in config["fit_warnings"])
    assert sum(config["data"]["images_per_class"]) == 72  # the strays were not trained on


def test_images_beside_the_class_folders_are_named_by_audit(with_strays, train_dir, caplog):
    from imgclean.pipeline.audit.auditor import _walk_classes

    with caplog.at_level(logging.WARNING, logger="imgclean"):
        _walk_classes(with_strays)
    assert [r.getMessage() for r in caplog.records if "top of" in r.getMessage()] == [
        f"2 image file(s) at the top of {with_strays} (e.g. 'also_here.png') are in no class folder and are not "
        "used; move each into the folder of its class"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="imgclean"):
        _walk_classes(train_dir)
    assert not [r for r in caplog.records if "top of" in r.getMessage()]


def test_a_folder_that_is_not_a_training_folder_is_a_usage_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "flat").mkdir()
    write_png(tmp_path / "flat" / "a.png", class_image("checker", np.random.default_rng(0)))
    (tmp_path / "file.png").write_bytes(b"x")
    for folder, text in ((tmp_path / "missing", "does not exist"), (tmp_path / "empty", "no class sub-folders"),
                         (tmp_path / "flat", "no class sub-folders"), (tmp_path / "file.png", "not a folder")):
        result = invoke("fit", folder, "-o", tmp_path / "m", *FAST)
        assert result.exit_code == 2 and text in result.output, (folder, result.output)
        lines = [line for line in result.output.splitlines() if line.strip()]
        # one plain error line, then the usage hint
        assert len(lines) == 2 and lines[0].startswith("imgclean fit: error:"), result.output
        assert lines[1].strip() == "try 'imgclean fit -h'", result.output
    # what is wrong inside a class stays an error about the data (exit 1)
    (tmp_path / "classes" / "a").mkdir(parents=True)
    write_png(tmp_path / "classes" / "b" / "x.png", class_image("checker", np.random.default_rng(0)))
    result = invoke("fit", tmp_path / "classes", "-o", tmp_path / "m", *FAST)
    assert result.exit_code == 1 and "'a' has no image files" in result.output


def test_api_raises_the_same_error_for_an_empty_folder(tmp_path):
    from imgclean import api
    from imgclean.errors import ImgcleanError
    from imgclean.pipeline.fit.trainset import TrainingFolderError

    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainingFolderError, match="no class sub-folders") as err:
        api.fit(tmp_path / "empty", epochs=1)
    assert isinstance(err.value, ImgcleanError)


def test_too_few_images_for_the_calibration_is_said_everywhere(train_dir, tmp_path):
    out = tmp_path / "m"
    result = invoke("fit", train_dir, "-o", out, *FAST, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    calibration = summary["calibration"]
    # 72 images, 6 held out: the 97.5th percentile needs 39
    assert calibration["held_out_images"] == 6 and calibration["needed_held_out_images"] == 39
    assert calibration["enough"] is False and calibration["rank"] == 6
    assert calibration["expected_false_reject_rate"] == pytest.approx(1 / 7)
    low, high = calibration["false_reject_interval"]
    assert low < 1 / 7 < high
    assert "39 are needed" in calibration["warning"] and calibration["warning"] in summary["warnings"]
    assert "WARNING: calibration rests on too few images" in result.stderr  # --json: stdout only changes

    text = invoke("info", out)
    assert text.exit_code == 0, text.output
    assert "expected 14.3%" in text.stdout and "WARNING: calibration rests on too few images" in text.stdout
    info = json.loads(invoke("info", out, "--json").stdout)
    assert info["calibration"] == calibration and calibration["warning"] in info["fit_warnings"]

    human = invoke("fit", train_dir, "-o", tmp_path / "m2", *FAST)
    assert "false-reject rate on new in-distribution images: expected 14.3%" in human.stdout
    assert "calibrated on 6 held-out images; too few images: 39 held out are needed" in human.stdout


def test_info_reads_a_model_saved_before_calibration_was_recorded(model_dir, tmp_path):
    """A previous version's config.json has no calibration, fit_warnings or weights_mapping."""
    from imgclean.store.artifact import load_model, save_model

    bundle = load_model(model_dir)
    for key in ("calibration", "fit_warnings", "fit_notes", "weights_mapping"):
        bundle.config.pop(key, None)
    old = save_model(bundle, tmp_path / "old")
    result = invoke("info", old)
    assert result.exit_code == 0, result.output
    assert "calibration not recorded" in result.stdout and "WARNING" not in result.stdout
