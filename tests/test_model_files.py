"""Every Models case of RELIABILITY.md: hostile, damaged and mismatched model files, kill -9
during save, and training folders that cannot make a model.

A model file must never run code; every refusal is one clear line that names the file or the
mismatch, with no traceback.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import class_image, make_incoming_folder, write_png
from imgclean.store import artifact
from imgclean.store.artifact import CONFIG_FILE, DETECTOR_FILE, FORMAT_VERSION, WEIGHTS_FILE, ModelError, load_model
from imgclean.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [os.fspath(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


class Payload:
    """Unpickling this writes a marker file: the proof that a loader ran pickled code."""

    def __init__(self, marker: Path):
        self.marker = os.fspath(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def test_the_payload_is_live(tmp_path):
    """Control: unpickling the payload really does write the marker (else the tests below prove nothing)."""
    marker = tmp_path / "control"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.read_text() == "pwned"


def evil_torch_file(path: Path, marker: Path) -> Path:
    # A state dict with a real tensor, plus an object whose unpickling runs code.
    torch.save({"features.0.weight": torch.zeros(6, 1, 5, 5), "extra": Payload(marker)}, path)
    return path


# ----------------------------------------------------------------------------- code in model files
@pytest.mark.parametrize("name", ["evil.pt", "evil.pth", "evil.bin", "evil.safetensors"])
def test_fit_weights_whose_pickle_runs_code_is_refused(train_dir, tmp_path, name):
    marker = tmp_path / "marker"
    weights = evil_torch_file(tmp_path / name, marker)
    result = invoke("fit", train_dir, "-o", tmp_path / "m", "--epochs", "1", "--weights", weights)
    assert result.exit_code == 1, result.output
    assert "cannot read weights" in result.output and name in result.output
    assert not marker.exists()
    assert not (tmp_path / "m").exists()


def test_detector_npz_with_a_pickled_object_is_refused(model_copy, incoming, tmp_path):
    marker = tmp_path / "marker"
    with np.load(model_copy / DETECTOR_FILE) as arrays:
        fields = dict(arrays)
    for key in ("means", "thresholds"):  # np.savez pickles object arrays
        fields[key] = np.array([Payload(marker)], dtype=object)
    np.savez(model_copy / DETECTOR_FILE, **fields)
    with pytest.raises(Exception):  # control: the file is a real pickle payload...
        with np.load(model_copy / DETECTOR_FILE, allow_pickle=True) as arrays:
            arrays["means"]
            raise RuntimeError("loaded")
    assert marker.exists()  # ...which runs when pickles are allowed
    marker.unlink()
    root, _ = incoming
    for args in (("scan", root, "-m", model_copy), ("info", model_copy)):
        result = invoke(*args)
        assert result.exit_code == 1, result.output
        assert DETECTOR_FILE in result.output
    assert not marker.exists()


def test_weights_safetensors_replaced_by_a_pickle_is_refused(model_copy, incoming, tmp_path):
    marker = tmp_path / "marker"
    evil_torch_file(model_copy / WEIGHTS_FILE, marker)
    result = invoke("scan", incoming[0], "-m", model_copy)
    assert result.exit_code == 1 and WEIGHTS_FILE in result.output and "damaged" in result.output
    assert not marker.exists()


# ----------------------------------------------------------------------------- damaged files
@pytest.mark.parametrize("name", [CONFIG_FILE, WEIGHTS_FILE, DETECTOR_FILE])
@pytest.mark.parametrize("damage", ["empty", "truncated", "missing"])
def test_damaged_model_files_are_clear_refusals(model_copy, incoming, name, damage):
    path = model_copy / name
    if damage == "missing":
        path.unlink()
    else:
        raw = path.read_bytes()
        path.write_bytes(b"" if damage == "empty" else raw[: len(raw) // 2])
    result = invoke("scan", incoming[0], "-m", model_copy)
    assert result.exit_code == 1, result.output
    assert name in result.output
    assert result.output.count("\n") <= 3  # one clear line (rich may wrap it), not a dump


def test_library_load_raises_model_error_not_anything_else(model_copy):
    (model_copy / DETECTOR_FILE).write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ModelError, match=DETECTOR_FILE):
        load_model(model_copy)


@pytest.mark.parametrize("version, text", [(FORMAT_VERSION + 1, "newer"), (0, "unknown model format"), ("1", "no valid format_version"), (None, "no valid format_version")])
def test_format_version_is_checked(model_copy, incoming, version, text):
    config = json.loads((model_copy / CONFIG_FILE).read_text())
    config["format_version"] = version
    (model_copy / CONFIG_FILE).write_text(json.dumps(config))
    result = invoke("scan", incoming[0], "-m", model_copy)
    assert result.exit_code == 1 and text in result.output, result.output
    if text == "newer":
        assert "upgrade imgclean" in result.output


def test_config_that_is_not_an_object_or_lacks_keys(model_copy, incoming):
    (model_copy / CONFIG_FILE).write_text("[1, 2, 3]")
    assert "not a JSON object" in invoke("scan", incoming[0], "-m", model_copy).output
    (model_copy / CONFIG_FILE).write_text(json.dumps({"format_version": 1, "arch": "lenet"}))
    result = invoke("scan", incoming[0], "-m", model_copy)
    assert result.exit_code == 1 and "lacks" in result.output and "class_names" in result.output


# ----------------------------------------------------------------------------- mismatches
def edit_config(model: Path, **changes) -> None:
    config = json.loads((model / CONFIG_FILE).read_text())
    config.update(changes)
    (model / CONFIG_FILE).write_text(json.dumps(config))


@pytest.fixture(scope="module")
def two_class_model(train_dir, tmp_path_factory):
    from imgclean.config import FitConfig, TrainSettings
    from imgclean.pipeline.fit.fit_model import fit_model

    data = tmp_path_factory.mktemp("two")
    for cls in ("checker", "stripes_h"):
        shutil.copytree(train_dir / cls, data / cls)
    bundle, _ = fit_model(data, FitConfig(device="cpu", train=TrainSettings(epochs=1, batch_size=16)))
    return artifact.save_model(bundle, tmp_path_factory.mktemp("models2") / "m")


def test_detector_with_the_wrong_class_count(model_copy, two_class_model, incoming):
    shutil.copy(two_class_model / DETECTOR_FILE, model_copy / DETECTOR_FILE)
    result = invoke("scan", incoming[0], "-m", model_copy)
    assert result.exit_code == 1
    assert "2 classes" in result.output and "3 classes" in result.output


def test_weights_from_a_model_with_other_classes(model_copy, two_class_model, incoming):
    shutil.copy(two_class_model / WEIGHTS_FILE, model_copy / WEIGHTS_FILE)
    result = invoke("scan", incoming[0], "-m", model_copy)
    # A mixed directory: the weights do not match the fingerprint that config.json records.
    assert result.exit_code == 1 and "does not match the fingerprint" in result.output, result.output
    assert WEIGHTS_FILE in result.output
    # With the fingerprint forged to match, the network itself still refuses the weights.
    config = json.loads((model_copy / CONFIG_FILE).read_text())
    theirs = json.loads((two_class_model / CONFIG_FILE).read_text())
    config["files"][WEIGHTS_FILE] = theirs["files"][WEIGHTS_FILE]
    config["fingerprint"] = artifact.fingerprint_of(config["files"])
    (model_copy / CONFIG_FILE).write_text(json.dumps(config))
    result = invoke("scan", incoming[0], "-m", model_copy)
    assert result.exit_code == 1 and "does not fit the architecture" in result.output
    assert "classifier.weight" in result.output


@pytest.mark.parametrize("change, text", [
    ({"class_names": ["a", "b", "c", "d"]}, "4 classes"),
    ({"input_size": 32}, "does not fit the architecture"),
    ({"channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3}, "does not fit the architecture"),
    ({"channels": 3}, "mean must be a list of 3"),
    ({"feature_dim": 10}, "10 features"),
    ({"arch": "no_such_architecture_xyz"}, "no_such_architecture_xyz"),
])
def test_config_that_does_not_fit_the_files(model_copy, incoming, change, text):
    edit_config(model_copy, **change)
    result = invoke("scan", incoming[0], "-m", model_copy)
    assert result.exit_code == 1, result.output
    assert text in result.output


def test_fit_weights_with_mismatched_shapes(train_dir, tmp_path):
    from imgclean.nn.models import LeNet

    # the right names, every shape one larger
    state = {k: torch.zeros(*(n + 1 for n in v.shape)) for k, v in LeNet(1, 16).state_dict().items()}
    torch.save(state, tmp_path / "other.pt")
    result = invoke("fit", train_dir, "-o", tmp_path / "m", "--epochs", "1", "--weights", tmp_path / "other.pt")
    assert result.exit_code == 1
    assert "no tensor" in result.output and "shapes" in result.output
    assert not (tmp_path / "m").exists()


def test_fit_weights_with_some_mismatched_shapes_warns_and_names_them(train_dir, tmp_path):
    from imgclean.nn.models import LeNet

    torch.save(LeNet(3, 16).state_dict(), tmp_path / "partly.pt")  # only the first conv differs
    result = invoke("fit", train_dir, "-o", tmp_path / "m", "--epochs", "1", "--weights", tmp_path / "partly.pt")
    assert result.exit_code == 0, result.output
    assert "features.0.weight" in result.output and "shape" in result.output


def test_fit_weights_that_are_not_a_state_dict(train_dir, tmp_path):
    torch.save([torch.zeros(3)], tmp_path / "list.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    for name, text in (("list.pt", "state dict"), ("empty.pt", "cannot read weights"), ("nope.pt", "does not exist")):
        result = invoke("fit", train_dir, "-o", tmp_path / "m", "--epochs", "1", "--weights", tmp_path / name)
        assert result.exit_code in (1, 2) and text in result.output, (name, result.output)


# ----------------------------------------------------------------------------- kill -9 during save
SAVE_AND_DIE = r"""
import os, signal, sys
from pathlib import Path
from imgclean.store import artifact
target, when = Path(sys.argv[1]), sys.argv[2]
bundle = artifact.load_model(target)
bundle.config["metrics"] = {"marker": "new"}
real_rename = os.rename
calls = []
def rename(a, b):
    calls.append((a, b))
    if when == "before_renames" or (when == "between_renames" and len(calls) == 2):
        os.kill(os.getpid(), signal.SIGKILL)
    return real_rename(a, b)
artifact.os.rename = rename
if when == "while_writing":
    from imgclean.store import detector_state
    real_savez = detector_state.np.savez
    def savez(*a, **k):
        real_savez(*a, **k)
        os.kill(os.getpid(), signal.SIGKILL)
    detector_state.np.savez = savez
artifact.save_model(bundle, target, force=True)
print("survived")
"""


@pytest.mark.parametrize("when", ["while_writing", "before_renames", "between_renames"])
def test_kill_9_during_save_keeps_the_old_model(model_copy, incoming, when):
    old = load_model(model_copy)
    old_fingerprint = old.fingerprint
    proc = subprocess.run(
        [sys.executable, "-c", SAVE_AND_DIE, os.fspath(model_copy), when], capture_output=True, text=True,
        timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == -signal.SIGKILL, (proc.stdout, proc.stderr)
    if when == "between_renames":
        assert not model_copy.exists()  # the worst moment: only the backup name holds the model
    survivor = load_model(model_copy)  # recovers an interrupted save first
    assert survivor.fingerprint == old_fingerprint and "marker" not in survivor.config["metrics"]
    x = np.stack([class_image("checker", np.random.default_rng(0))[:, :, None]] * 2)
    from imgclean.pipeline.scan.scanner import Scorer

    _, _, scores = Scorer(survivor).score_arrays(x)
    assert np.isfinite(scores).all()
    result = invoke("scan", incoming[0], "-m", model_copy, "--json")
    assert result.exit_code == 0, result.output
    leftovers = [p.name for p in model_copy.parent.iterdir() if p.name.startswith(f".{model_copy.name}.old-")]
    assert leftovers == []


# ----------------------------------------------------------------------------- training folders
def small_train(root: Path, per_class: dict[str, int], seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for name, n in per_class.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            write_png(root / name / f"{i:03d}.png", class_image(name, rng))
    return root


def test_fit_with_an_empty_class_names_it(tmp_path):
    data = small_train(tmp_path / "d", {"checker": 5, "stripes_h": 5})
    (data / "empty_one").mkdir()
    (data / "empty_one" / "notes.txt").write_text("no images here")
    result = invoke("fit", data, "-o", tmp_path / "m", "--epochs", "1")
    assert result.exit_code == 1 and "'empty_one'" in result.output
    assert "'checker'" not in result.output
    assert not (tmp_path / "m").exists()


def test_fit_with_a_class_of_unreadable_images_names_it(tmp_path):
    data = small_train(tmp_path / "d", {"checker": 5, "stripes_h": 5})
    (data / "broken").mkdir()
    for i in range(3):
        (data / "broken" / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(30))
    (data / "broken" / "3.jpg").write_bytes(b"")
    result = invoke("fit", data, "-o", tmp_path / "m", "--epochs", "1")
    assert result.exit_code == 1 and "'broken'" in result.output and "unreadable" in result.output
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("per_class", [{"checker": 1, "stripes_h": 6, "stripes_v": 6}, {"checker": 3, "stripes_h": 4, "stripes_v": 5}])
def test_tiny_classes_give_finite_scores_and_a_warning(tmp_path, per_class):
    data = small_train(tmp_path / "d", per_class)
    model = tmp_path / "m"
    result = invoke("fit", data, "-o", model, "--epochs", "2")
    assert result.exit_code == 0, result.output
    assert "feature dimensions" in result.output and "shrinkage" in result.output  # the warning
    bundle = load_model(model)
    assert np.isfinite(bundle.detector.thresholds_).all() and (bundle.detector.thresholds_ > 0).all()
    folder = tmp_path / "in"
    make_incoming_folder(folder)
    report = tmp_path / "r.jsonl"
    result = invoke("scan", folder, "-m", model, "--json", "--report", report)
    assert result.exit_code == 0, result.output
    scores = [json.loads(line)["score"] for line in report.read_text().splitlines()]
    scored = [s for s in scores if s is not None]
    assert len(scored) == len(scores) - 1 and all(math.isfinite(s) for s in scored)
