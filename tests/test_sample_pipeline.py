"""The README's main job on the shipped sample data: fit the digits, quarantine the rest."""
import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from imgclean.cli import app

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"


@pytest.mark.skipif(not (SAMPLE / "train").is_dir(), reason="sample_data/ is not in this checkout")
def test_fit_and_scan_the_sample_data(tmp_path):
    runner = CliRunner()
    model = tmp_path / "model"
    result = runner.invoke(app, ["fit", str(SAMPLE / "train"), "-o", str(model), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["metrics"]["val_accuracy"] > 0.8

    incoming, rejected = tmp_path / "incoming", tmp_path / "rejected"
    shutil.copytree(SAMPLE / "incoming", incoming)
    result = runner.invoke(app, ["scan", str(incoming), "-m", str(model), "--move-to", str(rejected), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)

    source = {r["filename"]: r["source"] for r in csv.DictReader((SAMPLE / "incoming_labels.csv").open())}
    moved = Counter(source[p.name] for p in rejected.iterdir() if p.name in source)
    kept = Counter(source[p.name] for p in incoming.iterdir() if not p.name.startswith("."))
    assert summary["moved"] == sum(moved.values()) and summary["unreadable"] == 1
    assert moved["broken"] == 1
    # Measured on this data (seed 0): all 40 digits kept and 12 of the 20 Fashion-MNIST images
    # moved. The thresholds are calibrated to reject 2.5% of new digits (split conformal on the 100
    # held-out digits, docs/method.md); the 8 Fashion images let through score between that cut
    # and the looser one of the previous rule, which moved all 20 but rejected 4% of held-out
    # digits. Other seeds keep 36-40 digits, so allow a little slack rather than pin one float.
    assert moved["fashion_mnist"] >= 10, moved
    assert kept["mnist"] >= 38, kept
    assert sum(moved.values()) + sum(kept.values()) == len(source)  # every file exactly once
