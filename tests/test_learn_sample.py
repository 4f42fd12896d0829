"""review_sample(): the accepted files a reviewer is shown, spread over the kinds of picture, with boundary and random parts."""
import numpy as np
import pytest
from learn_synthetic import FAST, inliers, review_of, training

from imgclean.pipeline.learn.rule import LEARNED_METHOD, learn
from imgclean.pipeline.scan.review_sample import PARTS, SampleShares, farthest_first, review_sample

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def clusters(per: int = 60, k: int = 6, seed: int = 0):
    """k tight clusters far apart; cluster 0 scores just under the threshold, the others lower."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10, (k, 8))
    label = np.repeat(np.arange(k), per)
    x = centres[label] + rng.normal(0, 0.3, (len(label), 8))
    score = np.where(label == 0, 0.95, 0.3) + rng.uniform(0, 0.04, len(label))
    return x, score, label


def test_the_sample_is_spread_over_the_kinds_of_picture_not_bunched_at_the_threshold():
    _, bundle = training()
    x, score, label = clusters()
    sample = review_sample(bundle, x, score, 12, rng=0)
    assert len(sample.indices) == 12 and len(set(sample.indices.tolist())) == 12
    assert len(set(label[sample.indices])) >= 5  # of 6 kinds; the top 12 scores are all of kind 0
    assert set(label[np.argsort(-score)[:12]]) == {0}
    assert np.argmax(score) in sample.indices  # the file nearest the threshold is shown
    assert {"boundary", "spread", "random"} <= set(sample.parts) and "other" not in sample.parts


def test_parts_are_dealt_in_turn_so_any_first_files_hold_each_part():
    _, bundle = training()
    x, score, _ = clusters(per=100)
    sample = review_sample(bundle, x, score, 40, rng=1, shares=SampleShares(0.25, 0.25, 0.25, 0.25))
    first = sample.parts[:8]
    assert {"boundary", "spread", "random"} <= set(first)
    counts = {p: sample.parts.count(p) for p in PARTS}
    assert counts["other"] == 0 and counts["spread"] == 20 and counts["boundary"] == 10 == counts["random"]


def test_with_a_learned_rule_the_sample_holds_files_near_its_threshold_too():
    train, bundle = training()
    result = learn(bundle, review_of(bundle, np.random.default_rng(2)), train, settings=FAST)
    bundle.detectors[LEARNED_METHOD] = result.detector
    x = np.r_[inliers(300, np.random.default_rng(3))]
    score = bundle.detector.score(x)
    ok = score <= 1
    sample = review_sample(bundle, x[ok], score[ok], 20, rng=0)
    assert "other" in sample.parts
    learned = result.detector.score(x[ok])
    closeness = np.abs(np.log(learned))
    picked = sample.indices[np.array(sample.parts) == "other"]
    # its picks come from the files the learned rule is least sure of
    assert np.median(closeness[picked]) < np.percentile(closeness, 25)
    # and while the learned rule is the default, "other" is the label-free rule's threshold
    bundle.config["default_method"] = LEARNED_METHOD
    sample = review_sample(bundle, x[ok], learned, 20, rng=0)
    picked = sample.indices[np.array(sample.parts) == "other"]
    maha_close = np.abs(np.log(score[ok]))
    assert np.median(maha_close[picked]) < np.percentile(maha_close, 25)


def test_the_sample_is_deterministic_for_a_seed_and_bounded():
    _, bundle = training()
    x, score, _ = clusters()
    a, b = review_sample(bundle, x, score, 15, rng=7), review_sample(bundle, x, score, 15, rng=7)
    assert np.array_equal(a.indices, b.indices) and a.parts == b.parts
    assert len(review_sample(bundle, x[:5], score[:5], 50).indices) == 5
    assert len(review_sample(bundle, x, score, 0).indices) == 0
    assert len(review_sample(bundle, x[:0], score[:0], 10).indices) == 0
    with pytest.raises(ValueError):
        review_sample(bundle, x, score[:3], 5)


def test_farthest_first_covers_and_stops_at_duplicates():
    x = np.r_[np.zeros((5, 2)), np.ones((5, 2)) * 10]
    chosen = farthest_first(x, 5, 0)
    assert len(chosen) == 2 and {tuple(x[i]) for i in chosen} == {(0.0, 0.0), (10.0, 10.0)}
