"""The review-loop benchmark's scripted reviewer keeps to its budget and its script."""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_review_loop import Night, Scan, ScriptedReviewer, write_doc  # noqa: E402


def night_and_scan(seed: int = 0):
    rng = np.random.default_rng(seed)
    foreign = np.r_[np.zeros(30, bool), np.ones(70, bool)]
    scores = np.where(foreign, rng.uniform(0.5, 3.0, 100), rng.uniform(0.1, 1.2, 100))
    accepted = np.flatnonzero(scores <= 1)
    return Night(1, rng.normal(size=(100, 4)), foreign), Scan("mahalanobis", scores, rng.permutation(accepted))


def test_the_reviewer_restores_every_false_reject_and_spends_at_most_the_budget():
    night, scan = night_and_scan()
    review = ScriptedReviewer(budget=25, delete_most=5).review(night, scan)
    q = scan.quarantined
    assert set(review.restored) == set(np.flatnonzero(q & ~night.foreign))
    assert len(review.deleted) == 5 and night.foreign[review.deleted].all()
    assert set(review.left) | set(review.deleted) == set(np.flatnonzero(q & night.foreign))
    labelled = np.r_[review.accepted, review.rejected]
    assert len(review.restored) + len(review.deleted) + len(labelled) == 25
    assert set(labelled) == set(scan.sample[: len(labelled)])  # the sample, in its order
    assert not night.foreign[review.accepted].any() and night.foreign[review.rejected].all()
    # the deleted are the most obvious: the highest-scoring foreign files of the quarantine
    caught = np.flatnonzero(q & night.foreign)
    assert scan.scores[review.deleted].min() >= np.sort(scan.scores[caught])[-5]


def test_a_small_budget_goes_to_restores_first_then_deletions_then_labels():
    night, scan = night_and_scan()
    restores = int(np.sum(scan.quarantined & ~night.foreign))
    review = ScriptedReviewer(budget=restores + 2, delete_most=10).review(night, scan)
    assert len(review.restored) == restores and len(review.deleted) == 2
    assert len(review.accepted) + len(review.rejected) == 0


def test_the_tables_go_between_the_markers(tmp_path):
    doc = tmp_path / "learning.md"
    doc.write_text("before\n<!-- bench_review_loop: begin -->\nold\n<!-- bench_review_loop: end -->\nafter\n")
    write_doc(doc, "new table\n")
    assert doc.read_text() == "before\n<!-- bench_review_loop: begin -->\nnew table\n<!-- bench_review_loop: end -->\nafter\n"
