"""The evaluation metrics against hand-computed small cases and relationships."""
import numpy as np
import pytest

from imgclean import metrics as M


def test_auroc_hand_cases():
    assert M.auroc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert M.auroc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 0.0
    # pairs (pos, neg): (0.35>0.1) (0.35>0.4? no) (0.8>0.1) (0.8>0.4) -> 3/4
    assert M.auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    # a tie between a positive and a negative counts one half
    assert M.auroc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert M.auroc([0, 0, 1], [0.2, 0.5, 0.5]) == pytest.approx(0.75)
    assert np.isnan(M.auroc([1, 1], [0.1, 0.2]))


def test_auroc_random_is_about_half_and_matches_the_roc_curve_area():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 4000)
    s = rng.normal(size=4000)
    assert abs(M.auroc(y, s) - 0.5) < 0.03
    s2 = s + y  # informative, with ties from rounding
    s2 = np.round(s2, 1)
    fpr, tpr, _ = M.roc_curve(y, s2)
    assert M.trapezoid_auc(fpr, tpr) == pytest.approx(M.auroc(y, s2), abs=1e-12)
    assert M.auroc(y, -s2) == pytest.approx(1 - M.auroc(y, s2))


def test_average_precision_hand_cases():
    assert M.average_precision([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    # ranking: 1 (P=1, R=.5), 0, 1 (P=2/3, R=1) -> 0.5*1 + 0.5*2/3
    assert M.average_precision([1, 0, 1], [0.9, 0.8, 0.7]) == pytest.approx(0.5 + 1 / 3)
    # reversed: positives last: R steps at P=1/3 and P=2/4
    assert M.average_precision([0, 0, 1, 1][::-1], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(0.5 * 1 / 3 + 0.5 * 2 / 4)
    # all tied: precision = prevalence
    assert M.average_precision([0, 1, 0, 1], [1, 1, 1, 1]) == pytest.approx(0.5)
    rng = np.random.default_rng(1)
    y = rng.random(5000) < 0.2
    assert abs(M.average_precision(y, rng.normal(size=5000)) - 0.2) < 0.03


def test_fpr_at_95_tpr():
    assert M.fpr_at_tpr([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 0.0
    assert M.fpr_at_tpr([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 1.0
    # 20 positives, 19 above every negative: 19/20 = 95% are caught with no false positive
    y = np.r_[np.ones(20), np.zeros(4)]
    s = np.r_[np.linspace(1, 2, 19), 0.05, 0.6, 0.1, 0.2, 0.3]
    assert M.fpr_at_tpr(y, s) == 0.0
    # 10 positives: 9/10 < 95%, so the threshold drops to 0.15; 3 of 4 negatives lie above it
    y = np.r_[np.ones(10), np.zeros(4)]
    s = np.r_[np.linspace(1, 2, 9), 0.15, 0.6, 0.1, 0.2, 0.3]
    assert M.fpr_at_tpr(y, s) == pytest.approx(0.75)


def test_precision_recall_f1_and_classification():
    r = M.precision_recall_f1([1, 1, 0, 0, 1], [1, 0, 1, 0, 1])
    assert r == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3})
    assert M.precision_recall_f1([0, 0], [0, 0]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert M.accuracy([0, 1, 2, 2], [0, 1, 2, 1]) == 0.75
    # class 0: f1 1; class 1: tp1 fp1 fn0 -> 2/3; class 2: tp1 fn1 -> 2/3
    assert M.macro_f1([0, 1, 2, 2], [0, 1, 2, 1]) == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


def test_bad_input():
    with pytest.raises(ValueError, match="length"):
        M.auroc([0, 1], [0.1])
    with pytest.raises(ValueError, match="NaN"):
        M.average_precision([0, 1], [0.1, float("nan")])
