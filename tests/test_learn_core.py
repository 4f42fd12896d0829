"""learn(): what a review teaches, when it changes nothing, and when the learned rule becomes the default."""
import json

import numpy as np
import pytest
from learn_synthetic import FAST, Bundle, far_misfits, inliers, near_misfits, review_of, training

from imgclean.detectors import MahalanobisDetector
from imgclean.pipeline.learn.rule import (
    LEARNED_METHOD, LabelledFeatures, LearnError, LearnSettings, compare, fold_of, learn, one_sided_p,
    row_weights, split_training, too_few,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def apply(bundle: Bundle, result) -> Bundle:
    """What the CLI does with a result: the new detector and config.json's update (a new version)."""
    if result.detector is not None:
        bundle.detectors[LEARNED_METHOD] = result.detector
        bundle.config.update(result.config_update())
    return bundle


# ---- too few: nothing changes, with the reason ------------------------------------------------
def test_a_handful_of_decisions_changes_nothing_and_says_why():
    train, bundle = training()
    rng = np.random.default_rng(1)
    few = LabelledFeatures(np.r_[near_misfits(3, rng), inliers(2, rng)], ("rejected",) * 3 + ("accepted",) * 2)
    result = learn(bundle, few, train, settings=FAST)
    assert not result.changed and result.detector is None
    assert result.default_method == result.previous_default == "mahalanobis"
    assert "too few decisions" in result.reason and "5 made by a person" in result.reason
    assert result.counts == {"restored": 0, "accepted": 2, "rejected": 3, "deleted": 0, "left": 0}


def test_a_quarantine_nobody_reviewed_is_no_decision():
    train, bundle = training()
    left = LabelledFeatures(far_misfits(50, np.random.default_rng(2)), ("left",) * 50)
    result = learn(bundle, left, train, settings=FAST)
    assert not result.changed and "0 made by a person" in result.reason


def test_only_restores_teach_no_rule():
    train, bundle = training()
    restores = LabelledFeatures(inliers(30, np.random.default_rng(3)), ("restored",) * 30)
    result = learn(bundle, restores, train, settings=FAST)
    assert not result.changed and result.detector is None
    assert "too few rejects" in result.reason and "0 (rejected" in result.reason


def test_the_limits_are_settings():
    counts = {"restored": 0, "accepted": 0, "rejected": 4, "deleted": 0, "left": 0}
    assert too_few(counts, LearnSettings(min_decisions=4, min_rejects=4)) is None
    assert "too few rejects" in too_few(counts, LearnSettings(min_decisions=4, min_rejects=5))


# ---- what is learned -------------------------------------------------------------------------
def test_only_rejects_are_enough_the_training_images_are_what_belongs():
    train, bundle = training()
    rng = np.random.default_rng(4)
    rejects = LabelledFeatures(near_misfits(60, rng), ("rejected",) * 60)
    result = learn(bundle, rejects, train, settings=FAST)
    assert result.changed and result.detector is not None
    ev = result.evidence
    assert ev.held_out == 60 and np.isnan(ev.learned.belongs_rejected)
    fresh = near_misfits(200, rng)
    assert np.mean(result.detector.score(fresh) > 1) > np.mean(bundle.detector.score(fresh) > 1) + 0.3
    json.dumps(result.config_update(), allow_nan=False)  # no NaN in config.json: nan -> null


def test_the_learned_rule_becomes_the_default_when_held_out_decisions_say_it_is_better():
    train, bundle = training()
    rng = np.random.default_rng(5)
    result = learn(bundle, review_of(bundle, rng), train, settings=FAST)
    ev = result.evidence
    assert result.changed and result.switched and result.default_method == LEARNED_METHOD
    assert ev.learned_is_better and ev.learned_only_right > ev.current_only_right and ev.p_value < 0.05
    assert "the learned rule is the default" in result.reason
    update = result.config_update()
    assert update["default_method"] == LEARNED_METHOD
    assert update["learned"]["evidence"]["learned_only_right"] == ev.learned_only_right
    assert update["learned"]["decisions"] == result.counts
    # and on new files of the same kinds it does better, keeping in-class rejects near 2.5%
    x_in, x_near = inliers(600, rng), near_misfits(600, rng)
    assert np.mean(result.detector.score(x_near) > 1) > np.mean(bundle.detector.score(x_near) > 1) + 0.3
    assert np.mean(result.detector.score(x_in) > 1) < 0.06


def test_decisions_the_current_rule_already_gets_right_do_not_switch_it():
    # rejects it already rejects, files it already accepts: the learned rule cannot do better
    train, bundle = training()
    rng = np.random.default_rng(6)
    x_in = inliers(40, rng)
    x_in = x_in[bundle.detector.score(x_in) <= 1][:30]
    decisions = LabelledFeatures(np.r_[far_misfits(40, rng), x_in], ("left",) * 30 + ("deleted",) * 10 + ("accepted",) * 30)
    result = learn(bundle, decisions, train, settings=FAST)
    assert result.changed and result.detector is not None  # learned and kept, as --method reviewed
    assert result.default_method == "mahalanobis" and not result.switched
    assert result.evidence.learned_only_right == 0 and not result.evidence.learned_is_better
    assert "mahalanobis stays the default" in result.reason


def test_labels_that_are_noise_do_not_switch_the_default():
    train, bundle = training()
    rng = np.random.default_rng(7)
    x = inliers(80, rng)  # all in-class, half of them called rejects at random
    kinds = tuple(rng.permutation(["rejected"] * 40 + ["accepted"] * 40))
    result = learn(bundle, LabelledFeatures(x, kinds), train, settings=FAST)
    assert result.default_method == "mahalanobis" and not result.evidence.learned_is_better


def test_learning_twice_in_a_row_from_the_same_decisions_is_stable():
    train, bundle = training()
    decisions = review_of(bundle, np.random.default_rng(8))
    first = learn(bundle, decisions, train, settings=FAST)
    apply(bundle, first)
    assert bundle.config["default_method"] == LEARNED_METHOD
    second = learn(bundle, decisions, train, settings=FAST)
    # the learned rule is compared with the label-free one it replaced, not with itself
    assert second.previous_default == LEARNED_METHOD and second.label_free_method == "mahalanobis"
    assert second.default_method == LEARNED_METHOD and not second.switched
    assert second.evidence == first.evidence
    probe = np.r_[inliers(50, np.random.default_rng(9)), near_misfits(50, np.random.default_rng(9))]
    assert np.array_equal(second.detector.score(probe), first.detector.score(probe))


def test_learn_is_deterministic_for_a_seed():
    train, bundle = training()
    decisions = review_of(bundle, np.random.default_rng(10))
    a = learn(bundle, decisions, train, rng=3, settings=FAST)
    b = learn(bundle, decisions, train, rng=3, settings=FAST)
    arrays_a, arrays_b = a.detector.to_arrays(), b.detector.to_arrays()
    assert arrays_a.keys() == arrays_b.keys()
    assert all(np.array_equal(arrays_a[k], arrays_b[k]) for k in arrays_a)
    assert a.evidence == b.evidence and a.reason == b.reason


def test_deleted_files_teach_through_their_saved_features():
    # the learner never opens a file: "deleted" rows are rejects like any other
    train, bundle = training()
    rng = np.random.default_rng(11)
    x = near_misfits(60, rng)
    as_rejected = learn(bundle, LabelledFeatures(x, ("rejected",) * 60), train, settings=FAST)
    as_deleted = learn(bundle, LabelledFeatures(x, ("deleted",) * 60), train, settings=FAST)
    probe = near_misfits(100, rng)
    assert np.array_equal(as_rejected.detector.score(probe), as_deleted.detector.score(probe))


def test_restores_teach_the_rule_to_tell_files_like_them_from_the_rejects():
    from imgclean.metrics import auroc

    train, bundle = training()
    rng = np.random.default_rng(12)
    rejects = near_misfits(60, rng)
    # in-class files that look like the rejects but for one mark (dimension 5 raised): what a
    # person keeps restoring
    lookalike = near_misfits(80, rng)
    lookalike[:, 5] += 2.0
    without = learn(bundle, LabelledFeatures(rejects, ("rejected",) * 60), train, settings=FAST)
    with_restores = learn(bundle, LabelledFeatures(np.r_[rejects, lookalike[:40]], ("rejected",) * 60 + ("restored",) * 40),
                          train, settings=FAST)
    new_rejects, new_lookalikes = near_misfits(60, rng), lookalike[40:]
    truth = np.r_[np.ones(60), np.zeros(40)]

    def separation(result) -> float:
        return auroc(truth, result.detector.raw(np.r_[new_rejects, new_lookalikes]))

    assert separation(with_restores) > max(0.85, separation(without) + 0.1)  # measured: 0.77 -> 0.90


# ---- pieces ----------------------------------------------------------------------------------
def test_bad_decisions_are_refused_in_one_line():
    with pytest.raises(LearnError, match="unknown decision kind"):
        LabelledFeatures(np.zeros((1, 3)), ("kept",))
    with pytest.raises(LearnError, match="NaN"):
        LabelledFeatures(np.full((1, 3), np.nan), ("rejected",))
    with pytest.raises(LearnError, match="2 feature rows but 1"):
        LabelledFeatures(np.zeros((2, 3)), ("rejected",))
    with pytest.raises(LearnError, match="3 rows of logits"):
        LabelledFeatures(np.zeros((2, 3)), ("rejected",) * 2, logits=np.zeros((3, 5)))
    with pytest.raises(LearnError, match="2-D"):
        LabelledFeatures(np.zeros(3), ("rejected",) * 3)
    assert LabelledFeatures(np.zeros((0, 3)), ()).counts()["left"] == 0  # no decisions at all is valid input
    train, bundle = training()
    wrong_dim = LabelledFeatures(np.zeros((40, 5)), ("rejected",) * 40)
    with pytest.raises(LearnError, match="made with another model"):
        learn(bundle, wrong_dim, train, settings=FAST)


def test_the_threshold_is_set_on_images_the_network_did_not_train_on_when_known():
    x = np.arange(100, dtype=float)[:, None] * np.ones((1, 2))
    held = np.zeros(100, dtype=bool)
    held[90:] = True
    rows = split_training(x, LearnSettings(calibration_rows=5), np.random.default_rng(0), held_out=held)
    assert len(rows.calibration) == 5 and (rows.calibration[:, 0] >= 90).all()
    assert (rows.fit[:, 0] < 90).all() and len(rows.fit) == 90
    rows = split_training(x, LearnSettings(calibration_rows=5), np.random.default_rng(0), held_out=np.arange(90, 100))
    assert (rows.calibration[:, 0] >= 90).all()  # indices work as a mask does
    rows = split_training(x, LearnSettings(calibration_rows=5), np.random.default_rng(0))
    assert len(rows.calibration) == 5 and len(rows.fit) == 95
    for bad in (np.array([5, 100]), np.array([-1]), np.ones(99, dtype=bool), np.array([0.5])):
        with pytest.raises(LearnError, match="held-out"):
            split_training(x, LearnSettings(), np.random.default_rng(0), held_out=bad)


def test_rejects_and_what_belongs_weigh_half_each_however_many_rejects():
    kinds = ("left",) * 30 + ("rejected",) * 3 + ("restored",) * 5
    w = row_weights(100, kinds, LearnSettings(belongs_share=0.3))
    train, restored, rejects = w[:100], w[100:][np.array(kinds) == "restored"], w[100:][np.array(kinds) != "restored"]
    assert rejects.sum() == pytest.approx(0.5) and np.allclose(rejects, rejects[0])
    assert train.sum() == pytest.approx(0.35) and restored.sum() == pytest.approx(0.15)
    w = row_weights(100, ("rejected",) * 3, LearnSettings(belongs_share=0.3))  # nobody restored or accepted
    assert w[:100].sum() == pytest.approx(0.5) and w[100:].sum() == pytest.approx(0.5)


def test_folds_are_stratified_by_kind():
    kinds = ("left",) * 30 + ("restored",) * 6 + ("rejected",) * 9
    fold = fold_of(kinds, 3, np.random.default_rng(0))
    arr = np.array(kinds)
    for kind in ("left", "restored", "rejected"):
        assert sorted(np.bincount(fold[arr == kind], minlength=3)) == [len(fold[arr == kind]) // 3] * 3


def test_the_held_out_test_needs_a_lead_beyond_chance():
    assert one_sided_p(5, 0) == pytest.approx(1 / 32)
    assert one_sided_p(0, 0) == 1.0
    belongs = np.array([False] * 10 + [True] * 10)
    current = np.r_[np.full(10, 0.5), np.full(10, 0.5)]  # rejects nothing: wrong on the 10 rejects
    learned = np.r_[np.full(10, 2.0), np.full(10, 0.5)]
    ev = compare("mahalanobis", current, learned, belongs, 3, 0.05)
    assert (ev.learned_only_right, ev.current_only_right) == (10, 0) and ev.learned_is_better
    ev = compare("mahalanobis", current, np.r_[np.full(3, 2.0), np.full(17, 0.5)], belongs, 3, 0.05)
    assert ev.learned_only_right == 3 and not ev.learned_is_better  # p = 1/8


def test_the_comparison_is_with_the_label_free_method_the_model_was_fitted_with():
    train, bundle = training()
    bundle.config["default_method"] = "mahalanobis"
    result = learn(bundle, review_of(bundle, np.random.default_rng(13)), train, settings=FAST)
    assert result.label_free_method == "mahalanobis" == result.evidence.current.method
    assert result.config_update()["learned"]["compared_with"] == "mahalanobis"


def test_a_model_without_its_mahalanobis_detector_is_refused():
    train, bundle = training()
    bundle.detectors = {}
    with pytest.raises(LearnError):
        learn(bundle, review_of(training()[1], np.random.default_rng(14)), train, settings=FAST)


def test_a_method_scoring_logits_needs_decisions_with_logits():
    train, bundle = training()
    bundle.config["default_method"] = "energy"
    from imgclean.detectors import EnergyDetector
    bundle.detectors["energy"] = EnergyDetector().fit(logits=np.random.default_rng(0).normal(size=(50, 3)))
    with pytest.raises(LearnError, match="logits"):
        learn(bundle, review_of(bundle, np.random.default_rng(15)), train, settings=FAST)


def test_mahalanobis_fixture_rejects_about_the_percentile():
    # the fixture itself: a sanity check that the synthetic world is what the tests assume
    train, bundle = training()
    assert isinstance(bundle.detector, MahalanobisDetector)
    assert np.mean(bundle.detector.score(inliers(2000, np.random.default_rng(16))) > 1) < 0.06
    caught = np.mean(bundle.detector.score(near_misfits(2000, np.random.default_rng(16))) > 1)
    assert 0.05 < caught < 0.5
