"""Damaged and hostile model directories: every config field and detector array is checked on
load with a one-line error naming it, special files are refused at once (no hang), and a model
that does not load moves nothing."""
from __future__ import annotations

import io
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import tree_snapshot
from imgclean.store.artifact import CONFIG_FILE, DETECTOR_FILE, HEAD_FILE, WEIGHTS_FILE, ModelError, load_model, read_config
from imgclean.cli import app


@pytest.fixture(autouse=True)
def no_hangs():
    """A blocking open (a FIFO) fails the test after 20 s instead of hanging the suite."""

    def expired(signum, frame):
        raise TimeoutError("the model load blocked")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def edit_config(model: Path, **changes) -> None:
    config = json.loads((model / CONFIG_FILE).read_text())
    config.update(changes)
    (model / CONFIG_FILE).write_text(json.dumps(config))


def refusal(model: Path) -> str:
    with pytest.raises(ModelError) as info:
        load_model(model, lazy=True)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


@pytest.mark.parametrize("field, value", [
    ("input_size", 0), ("input_size", -5), ("input_size", 1e9), ("input_size", None), ("input_size", 10**9),
    ("input_size", 28.0), ("input_size", True),
    ("mean", []), ("mean", [float("nan")]), ("mean", ["0.5"]), ("std", None), ("std", [0.0]), ("std", [-1.0]),
    ("class_names", 5), ("class_names", []), ("class_names", ["a", "a", "b"]), ("class_names", ["a", "", "b"]),
    ("class_names", ["a", 2, "b"]),
    ("arch", 1), ("arch", ""), ("channels", 2), ("channels", "1"), ("feature_dim", 0), ("feature_dim", 2.5),
    ("percentile", 0), ("percentile", 150), ("percentile", "97.5"),
    ("interpolation", "cubic-spline"), ("interpolation", 3), ("crop_pct", 0), ("crop_pct", 1.5), ("crop_pct", "all"),
    ("fingerprint", None), ("training", [1, 2]),
])
def test_each_config_field_is_checked(model_copy, field, value):
    edit_config(model_copy, **{field: value})
    message = refusal(model_copy)
    assert field in message and CONFIG_FILE in message
    with pytest.raises(ModelError, match=field):
        read_config(model_copy)  # what `info` reads


def test_a_head_threshold_out_of_range_is_refused(model_with_head, tmp_path):
    import shutil

    model = shutil.copytree(model_with_head, tmp_path / "m")
    config = json.loads((model / CONFIG_FILE).read_text())
    config["head"]["settings"]["threshold"] = 1.5
    (model / CONFIG_FILE).write_text(json.dumps(config))
    assert "head.settings.threshold" in refusal(model)


@pytest.mark.parametrize("field, value", [("input_size", 0), ("input_size", 1e9), ("mean", []), ("class_names", 5)])
def test_a_model_that_does_not_load_moves_nothing(model_copy, incoming, tmp_path, field, value):
    edit_config(model_copy, **{field: value})
    root = incoming[0]
    before = tree_snapshot(root)
    result = CliRunner().invoke(app, ["scan", str(root), "-m", str(model_copy), "--move-to", str(tmp_path / "q")])
    assert result.exit_code == 1 and field in result.output, result.output
    assert "Traceback" not in result.output
    assert tree_snapshot(root) == before and not (tmp_path / "q").exists()


# ----------------------------------------------------------------------------- detector arrays
def rewrite_detector(model: Path, **changes) -> None:
    with np.load(model / DETECTOR_FILE) as npz:
        arrays = dict(npz)
    for key, change in changes.items():
        arrays[key] = change(arrays[key])
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    (model / DETECTOR_FILE).write_bytes(buf.getvalue())


def with_nan(a):
    a = a.copy()
    a.flat[0] = np.nan
    return a


@pytest.mark.parametrize("changes, text", [
    ({"thresholds": with_nan}, "thresholds holds NaN"),
    ({"thresholds": lambda a: -a}, "thresholds must be positive"),
    ({"thresholds": lambda a: a[:2]}, "thresholds has shape"),
    ({"precisions": lambda a: a[:, :5, :5]}, "precisions has shape"),
    ({"means": lambda a: a[0]}, "means must be classes x features"),
    ({"means": with_nan}, "means holds NaN"),
    ({"train_labels": lambda a: a + 100}, "train_labels"),
    ({"class_counts": lambda a: a.astype(np.float64)}, "class_counts has dtype"),
    ({"covariance": lambda a: np.array("diagonal")}, "covariance"),
    ({"percentile": lambda a: np.array([97.5, 1.0])}, "percentile"),
    ({"threshold_scale": lambda a: np.array(0.0)}, "threshold_scale"),
])
def test_detector_arrays_are_checked(model_copy, changes, text):
    rewrite_detector(model_copy, **changes)
    message = refusal(model_copy)
    assert DETECTOR_FILE in message and text in message


def test_a_detector_missing_an_array_is_refused(model_copy):
    with np.load(model_copy / DETECTOR_FILE) as npz:
        arrays = {k: v for k, v in npz.items() if k != "train_distances"}
    np.savez(model_copy / DETECTOR_FILE, **arrays)
    assert "lacks train_distances" in refusal(model_copy)


# ----------------------------------------------------------------------------- special files
@pytest.mark.parametrize("name", [CONFIG_FILE, DETECTOR_FILE, WEIGHTS_FILE])
def test_a_fifo_is_refused_at_once(model_copy, name):
    (model_copy / name).unlink()
    os.mkfifo(model_copy / name)
    message = refusal(model_copy)
    assert f"{name} is not a regular file" in message


@pytest.mark.parametrize("name", [CONFIG_FILE, DETECTOR_FILE, WEIGHTS_FILE])
@pytest.mark.parametrize("to", ["/dev/zero", "/etc/passwd"])
def test_a_symlink_is_not_followed(model_copy, name, to):
    (model_copy / name).unlink()
    os.symlink(to, model_copy / name)
    message = refusal(model_copy)
    assert f"{name} is a symbolic link" in message and "allow_pickle" not in message


@pytest.mark.parametrize("content", [b"root:x:0:0:root:/root:/bin/bash\n", b"\x00" * 4096, b"PK\x03\x04" + b"\x00" * 100])
def test_a_detector_that_is_not_an_npz_is_named_in_imgcleans_words(model_copy, content):
    (model_copy / DETECTOR_FILE).write_bytes(content)
    message = refusal(model_copy)
    assert f"{DETECTOR_FILE} is not a valid detector file" in message
    assert "pickle" not in message


def test_a_huge_file_is_refused_before_it_is_read(model_copy, monkeypatch):
    from imgclean.store import model_files

    monkeypatch.setitem(model_files.SIZE_LIMITS, DETECTOR_FILE, 1000)
    assert "more than any detector.npz" in refusal(model_copy)


def test_a_head_with_wrong_shapes_is_refused(model_with_head, model_dir, tmp_path):
    import shutil

    model = shutil.copytree(model_with_head, tmp_path / "m")
    (model / HEAD_FILE).write_bytes((model_dir / WEIGHTS_FILE).read_bytes())  # a safetensors file, not a head
    assert HEAD_FILE in refusal(model)
