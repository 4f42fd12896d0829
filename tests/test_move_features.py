"""The features a moving run keeps of each moved file (pipeline/move_features.py), and learn
using them for files the reviewer deleted (pipeline/learn_step.py)."""
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import CLASSES, class_image, ood_image, write_png
from imgclean.cli import app
from imgclean.quarantine import features_log
from imgclean.quarantine.journal import fold

pytestmark = pytest.mark.usefixtures("one_torch_thread")
runner = CliRunner()


@pytest.fixture(autouse=True)
def _small_networks(monkeypatch):
    from learn_synthetic import FAST

    from imgclean.pipeline import learn_step

    monkeypatch.setattr(learn_step, "SETTINGS", FAST)


def invoke(*args):
    import logging

    saved = logging.getLogger().handlers[:]
    try:
        return runner.invoke(app, [os.fspath(a) for a in args])
    finally:
        logging.getLogger().handlers[:] = saved


def make_night(root: Path, normal: int, ood: int, seed: int) -> None:
    import numpy as np

    rng = np.random.default_rng(seed)
    for i in range(normal):
        write_png(root / f"normal_{i:02d}.png", class_image(CLASSES[i % len(CLASSES)], rng))
    for i in range(ood):
        write_png(root / f"odd_{i:02d}.png", ood_image(rng))


def moved_ids(q: Path) -> set[str]:
    return {jid for jid, op in fold(q).ops.items() if op["op"] == "move" and op["state"] == "done"}


def fingerprint(model: Path) -> str:
    return json.loads((model / "config.json").read_text())["fingerprint"]


@pytest.fixture
def scanned(model_copy, tmp_path):
    folder, q = tmp_path / "incoming", tmp_path / "q"
    make_night(folder, 12, 30, seed=3)
    result = invoke("scan", folder, "-m", model_copy, "--move-to", q, "--json", "--quiet", "--no-cache")
    assert result.exit_code in (0, 3), result.output
    return model_copy, folder, q


def test_scan_move_to_writes_one_record_per_moved_file(scanned):
    model, folder, q = scanned
    ids = moved_ids(q)
    assert ids
    log = features_log.read_log(q, ids)
    assert log.problems == []
    assert {jid for jid, _ in log.records} == ids and len(log.records) == len(ids)
    record = log.get(next(iter(ids)), fingerprint(model))
    assert record is not None and record.features.ndim == 1 and record.logits.size == len(CLASSES)
