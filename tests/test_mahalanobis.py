import warnings

import numpy as np
import pytest

from imgclean.detectors import MahalanobisDetector, NotFittedError
from imgclean.detectors.mahalanobis import ledoit_wolf


def gaussian_classes(n=3000, d=5, k=3, seed=0, equal_spread=False):
    rng = np.random.default_rng(seed)
    means = np.eye(k, d) * 40  # far apart: a point is only near its own class
    x = np.concatenate([rng.normal(means[j], 1.0 if equal_spread else 1.0 + j, size=(n, d)) for j in range(k)])
    y = np.repeat(np.arange(k), n)
    return x, y


@pytest.mark.parametrize("covariance", ["tied", "class"])
def test_flags_about_100_minus_percentile_of_training_points(covariance):
    x, y = gaussian_classes(equal_spread=covariance == "tied")
    det = MahalanobisDetector(97.5, covariance=covariance).fit(x, y)
    rate = det.predict(x).mean()
    assert 0.015 < rate < 0.035, rate
    assert MahalanobisDetector(90.0, covariance=covariance).fit(x, y).predict(x).mean() > 0.07


def test_new_samples_from_the_same_distribution_are_flagged_at_about_the_nominal_rate():
    x, y = gaussian_classes(seed=0)
    x_new, _ = gaussian_classes(seed=1)
    rate = MahalanobisDetector(97.5).fit(x, y).predict(x_new).mean()
    assert 0.015 < rate < 0.04, rate


def test_far_points_are_flagged_and_scores_order_by_distance():
    x, y = gaussian_classes()
    det = MahalanobisDetector().fit(x, y)
    far = np.full((5, 5), 200.0)
    assert det.predict(far).all()
    near, mid = det.score(x[:1]), det.score(x[:1] + 15)
    assert near < mid < det.score(far[:1])


def test_singular_covariance_gives_finite_scores():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 40))  # fewer images than dimensions
    x[:, 5] = 0.0  # a constant feature
    y = np.repeat([0, 1, 2], 4)
    for covariance in ("tied", "class"):
        with pytest.warns(UserWarning, match="shrinkage"):
            det = MahalanobisDetector(covariance=covariance).fit(x, y)
        scores = det.score(rng.normal(size=(7, 40)))
        assert np.isfinite(scores).all() and np.isfinite(det.thresholds_).all()


def test_one_image_class_borrows_pooled_covariance():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (50, 3)), rng.normal(10, 1, (1, 3))])
    y = np.array([0] * 50 + [1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        det = MahalanobisDetector(covariance="class").fit(x, y)
    assert np.isfinite(det.score(x)).all()
    assert det.thresholds_[1] > 0


@pytest.mark.parametrize("covariance", ["tied", "class"])
def test_save_load_round_trip_gives_identical_scores(tmp_path, covariance):
    x, y = gaussian_classes(n=200)
    det = MahalanobisDetector(covariance=covariance).fit(x, y).set_threshold_scale(1.3)
    np.savez(tmp_path / "d.npz", **det.to_arrays())
    with np.load(tmp_path / "d.npz", allow_pickle=False) as arrays:
        loaded = MahalanobisDetector.from_state(arrays)
    probe = np.random.default_rng(3).normal(size=(50, 5)) * 20
    assert np.array_equal(det.score(probe), loaded.score(probe))
    assert np.array_equal(det.nearest(probe), loaded.nearest(probe))


def test_ledoit_wolf_is_positive_definite_and_shrinks_small_samples():
    rng = np.random.default_rng(0)
    scales = np.linspace(0.2, 5.0, 20)  # anisotropic: the identity target is wrong, so less shrinkage with more data
    cov, s_small = ledoit_wolf(rng.normal(size=(5, 20)) * scales)
    assert np.linalg.eigvalsh(cov).min() > 0
    _, s_large = ledoit_wolf(rng.normal(size=(5000, 20)) * scales)
    assert 0 <= s_large < s_small <= 1


def test_thresholds_move_together_with_the_percentile():
    x, y = gaussian_classes(n=500)
    det = MahalanobisDetector().fit(x, y)
    assert (det.thresholds_at(99) > det.thresholds_at(90)).all()


def test_threshold_scale_multiplies_thresholds_and_lowers_scores():
    x, y = gaussian_classes(n=500)
    det = MahalanobisDetector().fit(x, y)
    before_t, before_s = det.thresholds_.copy(), det.score(x[:20])
    det.set_threshold_scale(2.0)
    assert np.allclose(det.thresholds_, 2 * before_t)
    assert np.allclose(det.score(x[:20]), before_s / 2)
    assert np.allclose(det.thresholds_at(90), 2 * MahalanobisDetector().fit(x, y).thresholds_at(90))
    with pytest.raises(ValueError):
        det.set_threshold_scale(0)


def test_tied_covariance_shares_one_precision_and_class_covariance_does_not():
    x, y = gaussian_classes(n=300)
    assert MahalanobisDetector(covariance="tied").fit(x, y).precisions_.shape == (1, 5, 5)
    assert MahalanobisDetector(covariance="class").fit(x, y).precisions_.shape == (3, 5, 5)
    with pytest.raises(ValueError, match="covariance"):
        MahalanobisDetector(covariance="diagonal").fit(x, y)


def test_errors_are_clear():
    with pytest.raises(NotFittedError):
        MahalanobisDetector().score(np.zeros((1, 2)))
    x, y = gaussian_classes(n=50)
    det = MahalanobisDetector().fit(x, y)
    with pytest.raises(ValueError, match="dimensions"):
        det.score(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="NaN"):
        det.score(np.full((1, 5), np.nan))
    with pytest.raises(ValueError, match="no training features"):
        MahalanobisDetector().fit(x, y, num_classes=4)
