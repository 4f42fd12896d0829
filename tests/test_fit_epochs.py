"""--min-steps raising the epochs (issue 9 item 7, contract 5; issue 25): said once, as data.

The library reports the epochs trained (FitReport, config.json) and logs nothing; `fit` prints a
note only when the user gave --epochs; `api.fit` writes nothing to stderr.
"""
import json
import logging
import math
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from imgclean.cli import app
from imgclean.config import FitConfig, TrainSettings
from imgclean.pipeline.fit.fit_model import fit_model
from imgclean.store.artifact import save_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")
runner = CliRunner()


def test_raised_epochs_are_reported_and_recorded_not_logged(train_dir, tmp_path, caplog):
    settings = TrainSettings(epochs=1, min_steps=9, batch_size=16, val_fraction=0.0, augment=False)
    with caplog.at_level(logging.DEBUG):
        bundle, report = fit_model(train_dir, FitConfig(device="cpu", train=settings))
    steps = math.ceil(sum(report.images_per_class) / settings.batch_size)
    expected = math.ceil(settings.min_steps / steps)
    assert expected > 1
    assert (report.epochs_requested, report.epochs_trained, report.steps_per_epoch) == (1, expected, steps)
    assert report.epochs_raised and len(report.history) == expected
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "epoch" in r.getMessage()]
    config = json.loads((save_model(bundle, tmp_path / "m") / "config.json").read_text())
    assert config["training"]["epochs"] == 1 and config["training"]["epochs_trained"] == expected
    assert config["training"]["steps_per_epoch"] == steps


def test_epochs_as_asked_say_nothing(train_dir):
    settings = TrainSettings(epochs=2, min_steps=0, batch_size=32, val_fraction=0.0, augment=False)
    bundle, report = fit_model(train_dir, FitConfig(device="cpu", train=settings))
    assert report.epochs_requested == report.epochs_trained == 2 and not report.epochs_raised
    assert bundle.config["training"]["epochs_trained"] == 2


def fit_cli(train_dir, out, *extra):
    return runner.invoke(app, ["fit", str(train_dir), "-o", str(out), "--device", "cpu", "--batch-size", "16",
                               "--no-augment", "--min-steps", "9", *extra])  # a later --min-steps wins


def test_cli_says_it_once_as_a_note_only_when_epochs_were_given(train_dir, tmp_path):
    given = fit_cli(train_dir, tmp_path / "a", "--epochs", "1")
    assert given.exit_code == 0, given.output
    lines = [line for line in given.stderr.splitlines() if "epochs" in line and not line.startswith("epoch ")]
    assert len(lines) == 1 and lines[0].startswith("note: trained 2 epochs instead of the 1 asked for"), lines

    # the default 15 epochs of 5 batches raised by --min-steps 100: no note, no warning; the
    # summary line shows the epochs trained
    default = fit_cli(train_dir, tmp_path / "b", "--min-steps", "100")
    assert default.exit_code == 0, default.output
    assert "raising epochs" not in default.output and "instead of the" not in default.output
    trained = json.loads((tmp_path / "b" / "config.json").read_text())["training"]["epochs_trained"]
    assert trained > 15 and f"{trained} epochs" in default.stdout


def test_api_fit_writes_nothing_to_stderr_and_returns_the_epochs(train_dir, tmp_path):
    code = (
        "import sys, json; from imgclean import api; "
        "m = api.fit(sys.argv[1], epochs=1, min_steps=9, batch_size=16, augment=False, device='cpu'); "
        "t = m.config['training']; "
        "print(json.dumps([t['epochs'], t['epochs_trained'], m.config['fit_warnings']]))"
    )
    import imgclean

    root = os.path.dirname(os.path.dirname(imgclean.__file__))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code, str(train_dir)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    asked, trained, warned = json.loads(proc.stdout)
    assert asked == 1 and trained == 2
    assert any("calibration" in w for w in warned)  # 72 images: too few held out, said as data
