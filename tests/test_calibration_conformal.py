"""Held-out calibration (detectors/calibration.py): the false-reject rate is the one promised.

Relationships, not magic numbers: after calibration, new in-distribution rows are rejected at
1 - percentile within binomial noise, for every detector that calibrates, where the earlier
ratio-of-medians rule left a heavy tail rejected several times too often.
"""
import math

import numpy as np
import pytest

from imgclean.detectors import calibration as cal
from imgclean.detectors import registry
from imgclean.detectors.mahalanobis import MahalanobisDetector


@pytest.mark.parametrize("percentile, needed", [(97.5, 39), (99.0, 99), (95.0, 19), (90.0, 9), (99.9, 999),
                                                (50.0, 1)])
def test_needed_held_out_is_the_conformal_minimum(percentile, needed):
    assert cal.needed_held_out(percentile) == needed
    p = percentile / 100
    assert math.ceil((needed + 1) * p - 1e-9) <= needed  # k = ceil((n + 1) p) is at most n ...
    assert math.ceil(needed * p - 1e-9) > needed - 1  # ... and with one image fewer it is not


def test_rank_and_interval():
    assert cal.conformal_rank(100, 97.5) == 99  # ceil(101 * 0.975) = ceil(98.475)
    assert cal.conformal_rank(39, 97.5) == 39  # exactly: 40 * 0.975 = 39, no rounding up to 40
    assert cal.conformal_rank(2, 97.5) == 2 and cal.conformal_rank(0, 97.5) == 1
    mean, low, high = cal.false_reject_interval(399, 390)
    assert mean == pytest.approx(10 / 400) and low < mean < high < 0.04
    cut = cal.conformal_cut([3.0, 1.0, 2.0], 97.5)  # too few: the largest, 1 / (n + 1) promised
    assert (cut.cut, cut.rank, cut.enough) == (3.0, 3, False)
    assert cut.expected_false_reject_rate == pytest.approx(0.25)
    with pytest.raises(ValueError):
        cal.conformal_cut([], 97.5)
    with pytest.raises(ValueError):
        cal.conformal_cut([1.0, np.nan], 97.5)


def test_conformal_cut_keeps_its_promise_and_its_interval_covers():
    """Over many held-out sets, a new score exceeds the cut at (n + 1 - k) / (n + 1) on average,
    and the conditional rate lies in the 90% interval about 90% of the time."""
    rng = np.random.default_rng(0)
    n, trials, rates, inside = 199, 400, [], 0
    for _ in range(trials):
        cut = cal.conformal_cut(rng.standard_cauchy(n), 97.5)  # a heavy tail, any distribution works
        rate = 0.5 - np.arctan(cut.cut) / np.pi  # P(new Cauchy > cut), exactly
        rates.append(rate)
        inside += cut.interval[0] <= rate <= cut.interval[1]
    expected = (n + 1 - cal.conformal_rank(n, 97.5)) / (n + 1)
    assert expected <= 0.025
    assert np.mean(rates) == pytest.approx(expected, abs=0.004)
    assert 0.84 <= inside / trials <= 0.96


def heavy_tailed_split(seed=0, d=6, k=3):
    """Training features Gaussian around their class centres; held-out and new ones of the same
    classes with about the same median but a heavier tail (what a network fitted to its training
    images gives: most new images look like the training ones, some do not)."""
    rng = np.random.default_rng(seed)
    centres = np.eye(k, d) * 8

    def draw(n, tail):
        y = np.arange(n) % k
        scale = np.where(rng.random(n) < tail, 2.5, 1.0)[:, None]  # this share from a wider component
        x = centres[y] + rng.normal(0, 1, (n, d)) * scale
        return x, x @ centres.T / 4, y

    return draw(600, 0.0), draw(400, 0.15), draw(4000, 0.15)


@pytest.mark.parametrize("cls", [c for c in registry.unsupervised()], ids=lambda c: c.name)
def test_every_calibrating_detector_rejects_new_images_at_the_rate_asked(cls):
    (xt, lt, yt), (xv, lv, _), (xn, ln, _) = heavy_tailed_split()
    det = cls(percentile=97.5).fit(features=xt, logits=lt, labels=yt, num_classes=3)
    uncalibrated = np.mean(det.predict(features=xn, logits=ln))
    cut = det.calibrate(features=xv, logits=lv)
    assert cut.held_out == 400 and cut.enough
    new = np.mean(det.predict(features=xn, logits=ln))
    # 4,000 new rows: the binomial standard error at 2.5% is 0.25 points; the held-out set's own
    # noise (the Beta interval) adds more, so the bound is the interval widened by that error
    assert cut.interval[0] - 0.0075 <= new <= cut.interval[1] + 0.0075, (uncalibrated, new)
    assert abs(new - 0.025) < abs(uncalibrated - 0.025)
    # the held-out row at the cut now scores exactly 1; the order of scores is kept
    held = det.score(features=xv, logits=lv)
    assert np.sort(held)[cut.rank - 1] == pytest.approx(1.0)


def test_the_ratio_of_medians_rule_misses_the_tail_the_conformal_cut_fixes():
    """The rule fit used before: thresholds times median(held-out) / median(training)."""
    (xt, _, yt), (xv, _, _), (xn, _, _) = heavy_tailed_split(seed=1)
    old = MahalanobisDetector().fit(xt, yt)
    old.set_threshold_scale(max(1.0, float(np.median(old.score(xv)) / np.median(old.score(xt)))))
    new = MahalanobisDetector().fit(xt, yt)
    new.calibrate(features=xv)
    assert np.mean(old.predict(xn)) > 0.05  # several times the 2.5% promised
    assert np.mean(new.predict(xn)) == pytest.approx(0.025, abs=0.012)


def test_supervised_head_is_not_calibrated():
    from imgclean.detectors.head import RejectHead

    assert RejectHead().calibrate(features=np.zeros((3, 2))) is None


def test_needs_name_the_shortfall_overall_and_per_class():
    names = ["vehicle", "animal", "plant"]
    needs = cal.assess(names, np.array([1, 1, 0]), np.array([7, 8, 6]), 97.5, 0.1, 10)
    assert not needs.enough and needs.needed == 39 and needs.held_out == 2
    text = needs.warning()
    assert "\n" not in text and "2 held-out image" in text and "39 are needed" in text
    assert "about 390 images" in text and "33.3%" in text  # 1 / (n + 1) with n = 2
    assert "'vehicle' (1 held out, 7 training)" in text and "13 held out" in text
    assert cal.assess(names, np.array([0, 0, 0]), np.array([9, 9, 9]), 97.5, 0.0, 10).warning().startswith(
        "no held-out images")
    plenty = cal.assess(names, np.array([20, 20, 20]), np.array([180, 180, 180]), 97.5, 0.1, 10)
    assert plenty.enough and plenty.warning() is None
    assert plenty.to_dict()["needed_held_out_images"] == 39
