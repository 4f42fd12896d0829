"""Streaming training data (issue 12): files decoded per batch, the decode-once cache under a
budget, statistics in one pass, and the Mahalanobis fit from sufficient statistics."""
import shutil
import warnings

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from imgclean.cli import app
from imgclean.config import FitConfig, TrainSettings
from imgclean.detectors.mahalanobis import MahalanobisDetector, first_moments, second_moments
from imgclean.nn import datasets
from imgclean.nn.runtime import predict_images
from imgclean.nn.training import channel_stats
from imgclean.pipeline.decode import DecodeSettings
from imgclean.pipeline.fit.fit_model import fit_model
from imgclean.pipeline.fit.trainset import read_training_set
from imgclean import data

SETTINGS = TrainSettings(epochs=2, batch_size=16, min_steps=0)


def fit(folder, **kw):
    return fit_model(folder, FitConfig(device="cpu", train=SETTINGS, **kw))


@pytest.fixture(scope="module")
def folder_with_a_broken_file(tmp_path_factory, train_dir):
    root = tmp_path_factory.mktemp("broken") / "train"
    shutil.copytree(train_dir, root)
    (root / "checker" / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    return root


def test_streamed_training_gives_the_cached_model_exactly(folder_with_a_broken_file):
    cached, report_c = fit(folder_with_a_broken_file)
    streamed, report_s = fit(folder_with_a_broken_file, cache_memory=0)
    for (name, a), (_, b) in zip(cached.model.state_dict().items(), streamed.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert np.array_equal(cached.detector.thresholds_, streamed.detector.thresholds_)
    for report in (report_c, report_s):
        assert [(p.rsplit("/", 1)[-1], status) for p, status, _ in report.skipped] == [("zz_broken.png", data.UNREADABLE)]
    assert cached.config["mean"] == streamed.config["mean"]


def test_the_first_pass_caches_only_within_the_budget(train_dir):
    names, files = data.list_image_folder(train_dir)
    settings = DecodeSettings(28, 1)
    small = read_training_set(names, files, settings, cache_bytes=10)
    big = read_training_set(names, files, settings, cache_bytes=1 << 30)
    assert not small.cached and isinstance(small.images, datasets.StreamedImages)
    assert big.cached and isinstance(big.images, np.ndarray) and big.images.shape == (len(big.labels), 28, 28, 1)
    assert small.mean == big.mean and small.std == big.std
    ref = big.images.reshape(-1, 1).astype(np.float64) / 255.0  # the float64 way it was measured before
    assert np.allclose(small.mean, ref.mean(axis=0), atol=1e-12) and np.allclose(small.std, ref.std(axis=0), atol=1e-12)
    assert np.allclose(channel_stats(big.images)[1], ref.std(axis=0), atol=1e-12)


def test_a_file_that_fails_later_is_left_out_of_its_batch(train_dir, tmp_path):
    root = tmp_path / "t"
    shutil.copytree(train_dir, root)
    names, files = data.list_image_folder(root)
    found = read_training_set(names, files, DecodeSettings(28, 1), cache_bytes=0)
    found.images.workers = 0  # in-process, so the test stays quick
    lost = found.images.items[3].path
    lost.write_bytes(b"not an image")
    from imgclean.nn.models import build_model

    model = build_model("lenet", len(names), 1, 28)
    logits, feats, kept = predict_images(model, found.images, None, [0.5], [0.25], "cpu", batch_size=8)
    assert 3 not in kept and len(kept) == len(found.labels) - 1 == len(feats) == len(logits)


def test_collate_drops_failed_items_and_an_empty_batch_is_none():
    a = np.zeros((2, 2, 1), np.uint8)
    idx, x = datasets.collate_ok([(0, a), (1, None), (2, a + 1)])
    assert idx.tolist() == [0, 2] and x.shape == (2, 2, 2, 1)
    assert datasets.collate_ok([(5, None)]) is None


@pytest.mark.parametrize("text,expected", [("0", 0), ("512M", 512 << 20), ("2G", 2 << 30), ("1.5GB", int(1.5 * (1 << 30))), ("100", 100)])
def test_cache_sizes_parse(text, expected):
    assert datasets.parse_size(text) == expected


def test_bad_cache_size_is_a_usage_error(train_dir, tmp_path):
    result = CliRunner().invoke(app, ["fit", str(train_dir), "-o", str(tmp_path / "m"), "--cache-memory", "lots"])
    assert result.exit_code == 2 and "--cache-memory" in result.output
    assert datasets.cache_budget(None) <= datasets.CACHE_CAP_BYTES and datasets.cache_budget(7) == 7


@pytest.mark.parametrize("covariance", ["tied", "class"])
def test_mahalanobis_from_chunks_equals_the_one_array_fit(covariance):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(500, 12)) * np.linspace(0.1, 3, 12)).astype(np.float32)
    y = rng.integers(0, 4, 500)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = MahalanobisDetector(covariance=covariance).fit(x, y, num_classes=4)
        chunked = MahalanobisDetector(covariance=covariance).fit_chunks(
            lambda: ((x[s : s + 37], y[s : s + 37]) for s in range(0, 500, 37)), 4)
    for key, value in whole.to_arrays().items():
        if value.dtype.kind == "f":
            assert np.allclose(value, chunked.to_arrays()[key], rtol=1e-6, atol=1e-9), key
    # the statistics are sums: two halves add up to the whole
    a, b = first_moments(x[:200], y[:200], 4), first_moments(x[200:], y[200:], 4)
    assert np.allclose(a["sum"] + b["sum"], first_moments(x, y, 4)["sum"])
    m = whole.means_
    g = x.astype(np.float64).mean(axis=0)
    s1, s2 = second_moments(x[:200], y[:200], m, g, True), second_moments(x[200:], y[200:], m, g, True)
    full = second_moments(x, y, m, g, True)
    assert np.allclose(s1["class_scatter"] + s2["class_scatter"], full["class_scatter"])
