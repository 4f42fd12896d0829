"""The detector protocol, for every registered detector, and the energy and KNN maths.

The conformance tests are parametrised over the registry: a new detector is tested by them as
soon as it is registered.
"""
import json

import numpy as np
import pytest

from imgclean.detectors import EnergyDetector, KNNDetector, NotFittedError, registry
from imgclean.detectors.base import INPUTS, Detector, FitContext
from imgclean.detectors.energy import energy
from imgclean.detectors.knn import kth_distances, normalise

pytestmark = pytest.mark.usefixtures("one_torch_thread")


CENTRES = np.eye(3, 6) * 6


def outputs(n=120, d=6, k=3, seed=0, shift=0.0):
    """Class clusters in d dimensions and linear-classifier logits for them."""
    rng = np.random.default_rng(seed)
    centres = np.eye(k, d) * 6
    y = np.arange(n) % k
    x = centres[y] + rng.normal(0, 1, (n, d)) + shift
    logits = x @ centres.T / 3
    return x, logits, y


def fitted(cls: type[Detector]) -> Detector:
    x, logits, y = outputs()
    if cls.supervised:  # belongs = 1, rejects = 0
        far = np.random.default_rng(9).normal(FAR, 1, (40, x.shape[1]))
        return cls(min_steps=30).fit(features=np.r_[x, far], labels=np.r_[np.ones(len(x)), np.zeros(40)])
    context = FitContext(features=x, logits=logits, labels=y, num_classes=3, percentile=97.5,
                         classifier_weight=CENTRES / 3, classifier_bias=np.zeros(3))  # outputs()' logits = W x + b
    return cls.for_context(context).fit(context)


DETECTORS = list(registry.DETECTORS.values())
FAR = -25.0  # a feature value no class cluster is near, in direction too


@pytest.mark.parametrize("cls", DETECTORS, ids=lambda c: c.name)
def test_every_registered_detector_follows_the_protocol(cls):
    assert issubclass(cls, Detector) and registry.DETECTORS[cls.name] is cls
    assert cls.inputs and set(cls.inputs) <= set(INPUTS)
    assert isinstance(cls.supervised, bool)
    assert cls.state_file.endswith((".npz", ".safetensors"))
    assert cls.name in registry.method_names()
    det = fitted(cls)
    x, logits, _ = outputs(n=30, seed=1)
    score = det.score(features=x, logits=logits)
    assert score.shape == (30,) and np.isfinite(score).all()
    assert np.array_equal(det.predict(features=x, logits=logits), score > 1)
    # far from everything it was fitted on: more out-of-distribution than the typical image
    far_x, far_logits = np.full((5, 6), FAR), np.zeros((5, 3))
    assert det.score(features=far_x, logits=far_logits).min() > np.median(score)
    # state: numbers only, settings JSON, and a rebuilt detector that scores the same
    arrays = det.to_arrays()
    assert all(isinstance(v, np.ndarray) and v.dtype.kind in "fiuU" for v in arrays.values())
    settings = json.loads(json.dumps(det.settings()))
    again = cls.from_state(arrays, settings)
    assert np.array_equal(again.score(features=x, logits=logits), score)
    cls.check_state(arrays, feature_dim=6, num_classes=3)


@pytest.mark.parametrize("cls", DETECTORS, ids=lambda c: c.name)
def test_every_detector_refuses_to_score_before_fit(cls):
    x, logits, _ = outputs(n=4)
    with pytest.raises(NotFittedError):
        cls().score(features=x, logits=logits)


def test_the_registry_lists_files_methods_and_combines_by_the_largest_score():
    files = registry.state_files()
    assert len(set(files)) == len(files) and files[0] == "detector.npz"
    assert registry.method_names()[0] == registry.DEFAULT_METHOD == "mahalanobis"
    assert {"energy", "knn", "head", "both"} <= set(registry.method_names())
    assert {"mahalanobis", "energy", "knn"} <= {c.name for c in registry.unsupervised()}
    assert all(not c.supervised for c in registry.unsupervised())
    assert registry.detector_names() == tuple(registry.DETECTORS)
    assert registry.available_methods(["mahalanobis"]) == ["mahalanobis"]
    assert registry.available_methods(["mahalanobis", "head", "knn"]) == ["mahalanobis", "knn", "head", "both"]
    assert registry.missing("both", ["mahalanobis"]) == ["head"]
    a, b = np.array([0.5, 2.0, 0.9]), np.array([1.5, 0.1, 0.8])
    assert np.array_equal(registry.combine("both", {"mahalanobis": a, "head": b}), [1.5, 2.0, 0.9])
    assert registry.combine("knn", {"knn": a}) is a


# ---- energy ---------------------------------------------------------------------------------
def test_energy_is_minus_logsumexp_and_threshold_the_training_percentile():
    _, logits, _ = outputs(n=400)
    direct = -np.log(np.exp(logits).sum(axis=1))
    assert np.allclose(energy(logits), direct)
    assert np.allclose(energy(logits, 2.0), -2.0 * np.log(np.exp(logits / 2.0).sum(axis=1)))
    assert np.isfinite(energy(np.array([[1000.0, 0.0], [-1000.0, -1000.0]]))).all()  # no overflow
    det = EnergyDetector(97.5).fit(logits=logits)
    assert det.threshold_ == pytest.approx(np.percentile(direct, 97.5))
    assert det.threshold_ < 0  # energies are negative here: the score is a shift, not a ratio
    assert det.spread_ == pytest.approx(det.threshold_ - np.median(direct))
    score = det.score(logits=logits)
    assert np.array_equal(score > 1, direct > det.threshold_)
    assert np.mean(score > 1) == pytest.approx(0.025, abs=0.005)
    order = np.argsort(direct)
    assert np.all(np.diff(score[order]) >= 0)  # monotone in E
    assert np.allclose(score, 1 + (direct - det.threshold_) / det.spread_)
    assert det.score(logits=logits[[np.argsort(direct)[len(direct) // 2]]])[0] == pytest.approx(0, abs=0.05)


def test_energy_spread_falls_back_when_the_energies_do_not_spread():
    det = EnergyDetector().fit(logits=np.zeros((10, 3)))
    assert det.spread_ == 1.0
    assert det.score(logits=np.zeros((1, 3)))[0] == pytest.approx(1.0)


def test_energy_calibration_moves_the_threshold_to_the_conformal_held_out_energy():
    from imgclean.detectors.calibration import conformal_rank

    _, logits, _ = outputs(n=300)
    det = EnergyDetector().fit(logits=logits)
    before = det.threshold_
    held_out = logits * 0.8  # less confident: higher energies
    e = np.sort(energy(held_out))
    k = conformal_rank(len(e), 97.5)
    cut = det.calibrate(logits=held_out)
    assert cut.rank == k and cut.held_out == 300
    assert det.threshold_ == pytest.approx(e[k - 1]) and det.threshold_ > before
    assert det.shift_ == pytest.approx(e[k - 1] - det.base_threshold_)
    assert det.score(logits=held_out[np.argsort(energy(held_out))][[k - 1]])[0] == pytest.approx(1.0)
    assert np.sum(det.predict(logits=held_out)) == len(e) - k
    # more confident held-out images lower it (the old rule only raised it); the state still loads
    det.calibrate(logits=logits * 1.5)
    assert det.threshold_ < before
    EnergyDetector.check_state(det.to_arrays(), 6, 3)


def test_energy_checks_its_inputs():
    det = EnergyDetector().fit(logits=outputs()[1])
    with pytest.raises(ValueError, match="dimensions"):
        det.score(logits=np.zeros((2, 5)))
    with pytest.raises(ValueError, match="needs logits"):
        det.score(features=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="percentile"):
        EnergyDetector(percentile=100).fit(logits=np.zeros((3, 2)))


# ---- KNN ------------------------------------------------------------------------------------
def brute_kth(queries, bank, k, leave_one_out=False):
    q, b = normalise(queries).astype(np.float64), normalise(bank).astype(np.float64)
    d = np.linalg.norm(q[:, None, :] - b[None, :, :], axis=2)
    if leave_one_out:
        np.fill_diagonal(d, np.inf)
    return np.sort(d, axis=1)[:, k - 1]


def test_knn_threshold_is_the_leave_one_out_percentile_and_scores_match_numpy():
    x, _, _ = outputs(n=200)
    det = KNNDetector(97.5, k=7).fit(features=x)
    loo = brute_kth(x, x, 7, leave_one_out=True)
    assert np.allclose(det.train_distances_, loo, atol=1e-5)
    assert det.threshold_ == pytest.approx(np.percentile(loo, 97.5), abs=1e-5)
    probe = np.random.default_rng(4).normal(0, 4, (50, 6))
    assert np.allclose(det.score(features=probe), brute_kth(probe, x, 7) / det.threshold_, atol=1e-4)
    # leave-one-out: the training images' own k-th distances are not shrunk by themselves
    with_self = brute_kth(x, x, 7)
    assert (with_self <= loo + 1e-6).all() and (with_self < loo - 1e-6).any()
    assert np.mean(loo > det.threshold_) == pytest.approx(0.025, abs=0.01)


def test_knn_is_scale_free_and_chunked_search_is_exact():
    x, _, _ = outputs(n=150)
    det = KNNDetector(k=5).fit(features=x)
    assert np.allclose(det.score(features=x[:10] * 7.0), det.score(features=x[:10]), atol=1e-5)  # L2-normalised
    bank = normalise(x)
    whole = kth_distances(bank, bank, 5, leave_one_out=True)
    for chunk_bytes in (1, 4 * len(bank) * 3, 4 * len(bank) * 64):  # 1 row, 3 rows, 64 rows a block
        blocks = kth_distances(bank, bank, 5, leave_one_out=True, chunk_bytes=chunk_bytes)
        assert np.allclose(blocks, whole, atol=1e-6)  # float32 products summed in another order at most


def test_knn_bank_is_capped_with_a_fixed_seed_and_k_never_exceeds_it():
    x, _, _ = outputs(n=300)
    det = KNNDetector(k=50, max_bank=40).fit(features=x)
    assert det.bank_.shape == (40, 6) and det.bank_.dtype == np.float32
    assert det.k_ == 39 and det.training_rows_ == 300
    again = KNNDetector(k=50, max_bank=40).fit(features=x)
    assert np.array_equal(det.bank_, again.bank_)  # the same sample every time
    assert np.allclose(np.linalg.norm(det.bank_, axis=1), 1.0, atol=1e-5)
    assert det.settings()["k"] == 39 and det.settings()["k_asked"] == 50
    # with labels, k stays below the smallest class: a k-th neighbour must be able to be of its own class
    y = np.r_[np.zeros(200), np.ones(70), np.full(30, 2)]
    assert KNNDetector(k=50).fit(features=x, labels=y).k_ == 29
    assert KNNDetector(k=50, max_bank=150).fit(features=x, labels=y).k_ < 29  # counted in the sampled bank
    small = KNNDetector(k=50).fit(features=x[:12])
    assert small.k_ == 11 and np.isfinite(small.score(features=x)).all()
    with pytest.raises(ValueError, match="two training images"):
        KNNDetector().fit(features=x[:1])


def test_knn_state_checks_refuse_what_cannot_be_a_bank():
    det = KNNDetector(k=5).fit(features=outputs(n=40)[0])
    good = det.to_arrays()
    KNNDetector.check_state(good, feature_dim=6, num_classes=3)
    bad_bank = good["bank"].copy()
    bad_bank[0, 0] = np.nan
    cases = [
        ({"bank": bad_bank}, "NaN"),
        ({"bank": good["bank"].astype(np.float64)}, "float32"),
        ({"bank": good["bank"] * 3}, "L2-normalised"),
        ({"k": np.array(40)}, "k is 40"),
        ({"threshold": np.array(-1.0)}, "threshold"),
        ({"percentile": np.array([1.0, 2.0])}, "percentile"),
    ]
    for change, text in cases:
        with pytest.raises(ValueError, match=text):
            KNNDetector.check_state({**good, **change}, feature_dim=6, num_classes=3)
    with pytest.raises(ValueError, match="7"):
        KNNDetector.check_state(good, feature_dim=7, num_classes=3)
    with pytest.raises(ValueError, match="lacks bank"):
        KNNDetector.check_state({k: v for k, v in good.items() if k != "bank"}, feature_dim=6, num_classes=3)
