"""`fit --epochs 1` says so when --min-steps trains longer (issue 9 item 7, contract 5)."""
import json
import logging
import math

import pytest

from imgclean.store.artifact import save_model
from imgclean.config import FitConfig, TrainSettings
from imgclean.pipeline.fit import fit_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_raised_epochs_are_warned_reported_and_recorded(train_dir, tmp_path, caplog):
    settings = TrainSettings(epochs=1, min_steps=9, batch_size=16, val_fraction=0.0, augment=False)
    with caplog.at_level(logging.WARNING, logger="imgclean"):
        bundle, report = fit_model(train_dir, FitConfig(device="cpu", train=settings))
    steps = math.ceil(sum(report.images_per_class) / settings.batch_size)
    expected = math.ceil(settings.min_steps / steps)
    assert expected > 1
    assert (report.epochs_requested, report.epochs_trained) == (1, expected)
    assert len(report.history) == expected
    warned = [r.getMessage() for r in caplog.records if "raising epochs" in r.getMessage()]
    assert warned == [f"raising epochs from 1 to {expected} to reach --min-steps 9 batches "
                      f"({steps} batch(es) an epoch); pass --min-steps 0 to train exactly --epochs"]
    config = json.loads((save_model(bundle, tmp_path / "m") / "config.json").read_text())
    assert config["training"]["epochs"] == 1 and config["training"]["epochs_trained"] == expected


def test_epochs_as_asked_say_nothing(train_dir, caplog):
    settings = TrainSettings(epochs=2, min_steps=0, batch_size=32, val_fraction=0.0, augment=False)
    with caplog.at_level(logging.WARNING, logger="imgclean"):
        bundle, report = fit_model(train_dir, FitConfig(device="cpu", train=settings))
    assert report.epochs_requested == report.epochs_trained == 2
    assert bundle.config["training"]["epochs_trained"] == 2
    assert not [r for r in caplog.records if "raising epochs" in r.getMessage()]
