"""The learned rule as a detector: the registry's protocol, its threshold, its safety term, its state."""
import json

import numpy as np
import pytest
from learn_synthetic import far_misfits, inliers, near_misfits, training

from imgclean.detectors import NotFittedError, registry
from imgclean.detectors.reviewed import ReviewedDetector

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SMALL = dict(hidden=(16, 16), members=2, min_steps=120)


def fitted(seed: int = 0, **settings) -> tuple[ReviewedDetector, np.ndarray, object]:
    train, bundle = training(seed)
    rng = np.random.default_rng(seed + 1)
    rejects = near_misfits(80, rng)
    x = np.r_[train[:600], rejects]
    y = np.r_[np.ones(600), np.zeros(80)]
    det = ReviewedDetector(**{**SMALL, **settings}).fit(x, y, mahalanobis=bundle.detector, calibration=train[600:])
    return det, train, bundle


def test_it_follows_the_detector_protocol():
    # what tests/test_detectors.py checks of every registered detector
    det, _, _ = fitted()
    x = inliers(30, np.random.default_rng(5))
    score = det.score(features=x)
    assert score.shape == (30,) and np.isfinite(score).all()
    assert np.array_equal(det.predict(features=x), score > 1)
    assert det.score(features=np.full((5, 8), -25.0)).min() > np.median(score)
    arrays = det.to_arrays()
    assert all(isinstance(v, np.ndarray) and v.dtype.kind in "fiu" for v in arrays.values())  # npz, no pickle
    again = ReviewedDetector.from_state(arrays, json.loads(json.dumps(det.settings())))
    assert np.array_equal(again.score(features=x), score)
    ReviewedDetector.check_state(arrays, feature_dim=8, num_classes=3)
    assert ReviewedDetector.supervised and ReviewedDetector.inputs == ("features",)


def test_the_registry_test_can_fit_it_with_labels_alone():
    # tests/test_detectors.py fits supervised detectors as cls(min_steps=30).fit(features=, labels=)
    x = inliers(120, np.random.default_rng(0))
    det = ReviewedDetector(min_steps=30, members=1).fit(features=np.r_[x, far_misfits(40, np.random.default_rng(1))],
                                                         labels=np.r_[np.ones(120), np.zeros(40)])
    assert det.maha_.means_.shape == (1, 8)  # its own one-Gaussian view of what belongs
    ReviewedDetector.check_state(det.to_arrays(), feature_dim=8, num_classes=3)


def test_it_refuses_to_score_before_fit_and_bad_labels():
    with pytest.raises(NotFittedError):
        ReviewedDetector().score(features=np.zeros((2, 8)))
    with pytest.raises(ValueError, match="both kinds"):
        ReviewedDetector(**SMALL).fit(np.zeros((4, 2)), np.ones(4))
    with pytest.raises(ValueError, match="1 \\(belongs\\) or 0"):
        ReviewedDetector(**SMALL).fit(np.zeros((4, 2)), np.array([0, 1, 2, 1]))
    with pytest.raises(ValueError, match="member_rows"):
        ReviewedDetector(**SMALL).fit(np.zeros((4, 2)), np.array([0, 1, 0, 1]), member_rows=np.ones((2, 3), bool))


def test_the_threshold_rejects_the_percentile_of_the_calibration_images_less_one_standard_error():
    det, train, _ = fitted()
    calibration = train[600:]
    n = len(calibration)
    for percentile, d in ((97.5, det), (99.0, fitted(percentile=99.0)[0])):
        nominal = 1 - percentile / 100
        expected = nominal - np.sqrt(nominal * (1 - nominal) / n)
        assert np.mean(d.score(calibration) > 1) == pytest.approx(expected, abs=1 / n)
    # new images of the same classes: at the nominal rate or below, not above it
    assert np.mean(det.score(inliers(3000, np.random.default_rng(9))) > 1) < 0.035


def test_what_is_far_from_every_class_is_rejected_whatever_the_rejects_looked_like():
    det, _, bundle = fitted()
    # far in a direction none of the rejects came from: the Mahalanobis term rejects it
    far = far_misfits(20, np.random.default_rng(3)) * -1
    assert (det.score(far) > 1).all()
    assert (bundle.detector.score(far) / det.safety_ <= det.score(far) + 1e-12).all()


def test_it_learns_the_near_misfits_the_label_free_rule_misses():
    det, _, bundle = fitted()
    probe = near_misfits(500, np.random.default_rng(4))
    assert np.mean(det.score(probe) > 1) > np.mean(bundle.detector.score(probe) > 1) + 0.4


def test_damaged_states_are_refused_in_one_line():
    det, _, _ = fitted()
    good = det.to_arrays()
    cases = {
        "layer0_weight": lambda a: a.__setitem__("layer0_weight", np.full_like(a["layer0_weight"], np.nan)),
        "maha_means": lambda a: a.__setitem__("maha_means", a["maha_means"][:, :5]),
        "maha_thresholds": lambda a: a.__setitem__("maha_thresholds", -a["maha_thresholds"]),
        "safety": lambda a: a.__setitem__("safety", np.array(0.0)),
        "input_std": lambda a: a.pop("input_std"),
        "layer1_bias": lambda a: a.__setitem__("layer1_bias", a["layer1_bias"][:, :3]),
    }
    for name, damage in cases.items():
        arrays = {k: v.copy() for k, v in good.items()}
        damage(arrays)
        with pytest.raises(ValueError):
            ReviewedDetector.check_state(arrays, feature_dim=8, num_classes=3)
    with pytest.raises(ValueError, match="features"):
        ReviewedDetector.check_state(good, feature_dim=9, num_classes=3)


def test_once_registered_it_is_saved_and_loaded_with_the_model(model_dir, tmp_path, monkeypatch):
    # what the one line in detectors/registry.py gives: its file in the model directory, round trip
    from imgclean.store.artifact import load_model, save_model

    monkeypatch.setitem(registry.DETECTORS, ReviewedDetector.name, ReviewedDetector)
    bundle = load_model(model_dir)
    dim = bundle.config["feature_dim"]
    rng = np.random.default_rng(0)
    x = np.abs(rng.normal(0, 1, (200, dim)))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    far = -x[:40]
    det = ReviewedDetector(**SMALL).fit(np.r_[x, far], np.r_[np.ones(200), np.zeros(40)], mahalanobis=bundle.detector)
    bundle.detectors[ReviewedDetector.name] = det
    saved = save_model(bundle, tmp_path / "learned")
    assert (saved / ReviewedDetector.state_file).is_file()
    config = json.loads((saved / "config.json").read_text())
    assert config["detectors"]["reviewed"]["file"] == ReviewedDetector.state_file
    again = load_model(saved)
    assert np.array_equal(again.detectors["reviewed"].score(features=x), det.score(features=x))
    assert "reviewed" in again.available_methods()


def test_each_member_trains_on_its_own_rows_and_leaves_the_callers_rng_alone():
    import torch

    train, bundle = training(0)
    rng = np.random.default_rng(1)
    rejects = near_misfits(60, rng)
    x = np.r_[train[:300], rejects]
    y = np.r_[np.ones(300), np.zeros(60)]
    rows = np.ones((2, len(x)), dtype=bool)
    rows[1, 300:] = False  # member 1 sees no rejects at all
    rows[1, 300] = True  # ... but one, so it has both kinds to weigh
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    det = ReviewedDetector(**SMALL).fit(x, y, mahalanobis=bundle.detector, calibration=train[300:], member_rows=rows)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert det.members == 2
    member = det.member_raw(rejects[1:])
    # the member that learned from the rejects calls them "does not belong" more than the one that did not
    assert member[0].mean() > member[1].mean()
    with pytest.raises(ValueError, match="rows to train on"):
        ReviewedDetector(**SMALL).fit(x, y, member_rows=np.zeros((2, len(x)), dtype=bool))
